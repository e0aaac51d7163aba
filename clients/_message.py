"""A message as the application receives it, with the answers it can give."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from broker.core import (
    Header,
    Label,
    MessageType,
    Priority,
    ReceiptKind,
    Reference,
    ReferenceKind,
    Status,
)
from broker.core.labels import NEVER_FORWARDED

from ._errors import ForwardRefused
from ._handles import SendHandle

if TYPE_CHECKING:
    from .client import Client

__all__ = ["Message"]


@dataclass(frozen=True, eq=False)
class Message:
    """A verified, decrypted message addressed to this actor (or granted to it)."""

    header: Header
    header_hash: str
    payload: bytes = field(repr=False)
    _client: Client = field(repr=False)
    granted: bool = False
    """It arrived as a key grant: this actor joined the incident after the message was
    sent, and its originator granted it. It is not among the signed recipients, so no
    receipts are signed for it (:meth:`mark_read` and :meth:`acknowledge` do nothing)."""

    @property
    def id(self) -> str:
        return self.header.id

    @property
    def sender(self) -> str:
        return self.header.sender

    @property
    def type(self) -> MessageType:
        return self.header.type

    @property
    def label(self) -> Label:
        return self.header.label

    @property
    def incident(self) -> str | None:
        return self.header.incident

    @property
    def priority(self) -> Priority:
        return self.header.priority

    @property
    def status(self) -> Status:
        """Distribution status: actual, exercise or test."""
        return self.header.status

    @property
    def references(self) -> tuple[Reference, ...]:
        """Earlier messages this one replies to, updates, cancels or forwards."""
        return self.header.references

    @property
    def created(self) -> datetime:
        return datetime.fromtimestamp(self.header.created / 1000).astimezone()

    @property
    def text(self) -> str:
        """The payload as UTF-8 text (invalid bytes replaced)."""
        return self.payload.decode("utf-8", "replace")

    def json(self) -> Any:
        """The payload parsed as JSON; raises :class:`ValueError` if it is not JSON."""
        return json.loads(self.payload)

    async def mark_read(self) -> None:
        """Send a signed ``read`` receipt to the sender (not for a granted message)."""
        if self.granted:
            return
        await self._client._receipt_for(self.header, self.header_hash, ReceiptKind.READ)

    async def acknowledge(self, note: str | None = None) -> None:
        """Send a signed ``acknowledged`` receipt (someone has acted), with an optional note
        (not for a granted message)."""
        if self.granted:
            return
        await self._client._receipt_for(
            self.header, self.header_hash, ReceiptKind.ACKNOWLEDGED, note
        )

    async def reply(
        self,
        payload: bytes | str | dict[str, Any] | list[Any],
        *,
        type: MessageType | str = MessageType.COORDINATION,
        label: Label | None = None,
        priority: Priority | str | None = None,
    ) -> SendHandle:
        """Answer the sender only, linked by a ``reply`` reference, with this message's
        label (or a higher one), distribution status and incident.

            >>> await message.reply({"answer": "two buses at 15:00"})  # doctest: +SKIP
        """
        label = label or self.header.label
        self._check_not_lower(label, "a reply must carry at least this label")
        return await self._client.send(
            to=[self.sender],
            payload=payload,
            label=label,
            type=type,
            priority=priority or self.header.priority,
            status=self.header.status,
            incident=self.header.incident,
            references=[
                Reference(kind=ReferenceKind.REPLY, message=self.id, header_hash=self.header_hash)
            ],
        )

    def _check_not_lower(self, label: Label, text: str) -> None:
        ladder = self._client.policy.ladder_order
        original = self.header.label
        if not (ladder.knows(label.classification) and ladder.dominates(label, original)):
            raise ForwardRefused(text, code="forward_label_lowered")

    async def forward(
        self,
        *,
        to: Sequence[str] = (),
        groups: Sequence[str] = (),
        label: Label | None = None,
    ) -> SendHandle:
        """Send this message on to other actors, pinned to the original by a forward reference.

        TLP:RED and TLP:AMBER+STRICT are never forwarded to actors that were not on the
        original, and a forward never carries a lower label than the original (both raise
        :class:`ForwardRefused`). TLP:AMBER onward sharing needs the originator's approval,
        which the broker checks.
        """
        original = self.header.label
        if original.tlp in NEVER_FORWARDED:
            known = {*self.header.recipients, self.header.sender}
            new = set(await self._client._addressees(to, groups, None)) - known
            if new:
                raise ForwardRefused(
                    f"TLP:{original.tlp.value} is never forwarded to other actors"
                    f" ({', '.join(sorted(new))})",
                    code="tlp_forward_forbidden",
                )
        label = label or original
        self._check_not_lower(label, "a forward must carry at least the original label")
        return await self._client.send(
            to=to,
            groups=groups,
            payload=self.payload,
            label=label,
            type=self.header.type,
            priority=self.header.priority,
            status=self.header.status,
            content_type=self.header.content_type,
            references=[
                Reference(kind=ReferenceKind.FORWARD, message=self.id, header_hash=self.header_hash)
            ],
        )
