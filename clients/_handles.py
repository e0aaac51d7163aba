"""What the application holds for a message it sent: its handle, and the recipients' status.

A :class:`SendHandle` is updated by the client's receive task from signed notices
(the broker's verdict) and signed receipts (the recipients' confirmations).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from broker.core import Header, Label, ReceiptKind

from ._errors import ClientError, DeliveryTimeout

__all__ = ["MessageStatus", "RecipientStatus", "SendHandle", "SendState", "wait_for_event"]


async def wait_for_event(event: asyncio.Event, timeout: float | None) -> None:
    """Wait for ``event`` at most ``timeout`` seconds. ``asyncio.timeout``, not ``wait_for``:
    on Python 3.11 ``wait_for`` can swallow a cancellation that meets its own wake-up,
    and a task that ignores its cancel holds up ``Client.close``."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


class SendState(StrEnum):
    QUEUED = "queued"  # in the outbox, not yet stored by JetStream
    SUBMITTED = "submitted"  # stored by JetStream, no verdict from a broker yet
    ACCEPTED = "accepted"  # a broker accepted it and fanned it out
    REJECTED = "rejected"
    EXPIRED = "expired"  # expired in the outbox; never submitted


@dataclass(frozen=True)
class RecipientStatus:
    """What one recipient has confirmed, as epoch milliseconds (None: not yet)."""

    recipient: str
    delivered: int | None = None
    read: int | None = None
    acknowledged: int | None = None
    escalated: bool = False  # the delivery deadline passed without a delivered receipt

    @property
    def state(self) -> str:
        """``pending``, ``delivered``, ``read`` or ``acknowledged`` (the furthest reached)."""
        for name in ("acknowledged", "read", "delivered"):
            if getattr(self, name) is not None:
                return name
        return "pending"


class SendHandle:
    """A message this client sent: its id, its verdict and its receipts.

    Handles live in memory; after a restart :meth:`Client.status` asks the broker.
    """

    def __init__(self, header: Header, header_hash: str, submission: str) -> None:
        self.header = header
        self.header_hash = header_hash
        self.submission = submission  # sha256 of the submitted bytes, as notices name it
        self.state = SendState.QUEUED
        self.error: ClientError | None = None
        self._receipts: dict[str, dict[str, int]] = {r: {} for r in header.recipients}
        self._escalated: set[str] = set()
        # Recipients of a ``request`` that had not answered by its deadline (the broker's
        # ``overdue`` notice); empty until then.
        self.overdue: tuple[str, ...] = ()
        self._changed = asyncio.Event()

    @property
    def message_id(self) -> str:
        return self.header.id

    @property
    def recipients(self) -> tuple[str, ...]:
        return self.header.recipients

    def status(self) -> dict[str, RecipientStatus]:
        """Per recipient, what it has confirmed so far."""
        return {
            r: RecipientStatus(
                r,
                delivered=kinds.get(ReceiptKind.DELIVERED),
                read=kinds.get(ReceiptKind.READ),
                acknowledged=kinds.get(ReceiptKind.ACKNOWLEDGED),
                escalated=r in self._escalated,
            )
            for r, kinds in self._receipts.items()
        }

    async def accepted(self, timeout: float | None = 30.0) -> None:
        """Wait until a broker accepted the message.

        Raises :class:`Rejected` (with the reason code and recipients), :class:`Expired`,
        or :class:`DeliveryTimeout`.
        """
        await self._wait(lambda: self.state is SendState.ACCEPTED, timeout, "acceptance")

    async def delivered(self, timeout: float | None = 60.0) -> dict[str, RecipientStatus]:
        """Wait until every recipient signed a delivered receipt; returns :meth:`status`."""
        return await self.confirmed(ReceiptKind.DELIVERED, timeout=timeout)

    async def confirmed(
        self,
        kind: ReceiptKind | str = ReceiptKind.DELIVERED,
        *,
        recipients: Iterable[str] | None = None,
        timeout: float | None = 60.0,
    ) -> dict[str, RecipientStatus]:
        """Wait until ``recipients`` (default: all) signed a ``kind`` receipt (``delivered``,
        ``read`` or ``acknowledged``); returns :meth:`status`.

            >>> await handle.confirmed("acknowledged", recipients=["sos-alarm"])  # doctest: +SKIP
        """
        wanted = ReceiptKind(kind)
        chosen = tuple(self._receipts) if recipients is None else tuple(recipients)
        unknown = [r for r in chosen if r not in self._receipts]
        if unknown:
            raise ValueError(f"not recipients of {self.message_id}: {', '.join(unknown)}")

        def done() -> bool:
            return self.state is SendState.ACCEPTED and all(
                wanted in self._receipts[r] for r in chosen
            )

        await self._wait(done, timeout, f"{wanted.value} receipts from {len(chosen)} recipient(s)")
        return self.status()

    async def _wait(self, done: Callable[[], bool], timeout: float | None, what: str) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.error is not None:
                raise self.error
            if done():
                return
            self._changed.clear()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise DeliveryTimeout(
                    f"no {what} of {self.message_id} within {timeout:g} s (state {self.state})"
                )
            await wait_for_event(self._changed, left)

    @property
    def settled(self) -> bool:
        return self.error is not None or (
            self.state is SendState.ACCEPTED
            and all(ReceiptKind.DELIVERED in k for k in self._receipts.values())
        )

    def _set(self, state: SendState, error: ClientError | None = None) -> None:
        if self.state in (SendState.ACCEPTED, SendState.REJECTED, SendState.EXPIRED):
            return  # a verdict is final
        self.state, self.error = state, error
        self._changed.set()

    def _receipt(self, recipient: str, kind: ReceiptKind, at: int) -> None:
        kinds = self._receipts.get(recipient)
        if kinds is not None and kind not in kinds:
            kinds[kind] = at
            self._changed.set()

    def _escalate(self, recipients: Iterable[str]) -> None:
        self._escalated.update(r for r in recipients if r in self._receipts)
        self._changed.set()

    def _overdue(self, recipients: Iterable[str]) -> None:
        self.overdue = tuple(
            sorted({*self.overdue, *(r for r in recipients if r in self._receipts)})
        )
        self._changed.set()

    def __repr__(self) -> str:
        return f"SendHandle({self.message_id}, {self.state}, {len(self.recipients)} recipients)"


@dataclass(frozen=True)
class MessageStatus:
    """The broker's record of a message: its recipients and their receipts."""

    message_id: str
    state: str  # queued (still in this client's outbox), accepted, or unknown
    sender: str | None = None
    label: Label | None = None
    recipients: dict[str, RecipientStatus] = field(default_factory=dict)
