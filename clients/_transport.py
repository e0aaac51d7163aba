"""The client's one boundary to NATS: the broker's :class:`~broker.bus.JetStreamBus`,
with its errors mapped to :class:`~clients._errors.Unavailable`.

The client never creates streams or buckets (the broker owns the layout); it
publishes to its own submit subject, pulls from its own delivery subject
through a durable consumer, and reads the directory, incident and message
buckets.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from broker import subjects
from broker.bus import JetStreamBus, PublishRefused
from broker.errors import NatsUnavailable

from ._errors import SendError, Unavailable

ACK_WAIT_S = 30.0


@contextlib.contextmanager
def _mapped() -> Iterator[None]:
    try:
        yield
    except NatsUnavailable as exc:
        raise Unavailable(exc.message) from exc
    except PublishRefused as exc:
        raise SendError(exc.message, code="too_large") from exc


@dataclass(frozen=True)
class Delivery:
    """One message from the actor's delivery subject; ack once it is safely handled."""

    data: bytes
    _msg: Msg

    async def ack(self) -> None:
        with contextlib.suppress(Exception):  # a lost ack means a redelivery, which dedupes
            await self._msg.ack()


def inbox_prefix(actor: str) -> str:
    return f"_INBOX_{actor}"


class Transport:
    def __init__(self, bus: JetStreamBus, actor: str, durable: str) -> None:
        self.bus = bus
        self.actor = actor
        self.durable = durable
        self._sub: JetStreamContext.PullSubscription | None = None

    @classmethod
    async def connect(
        cls,
        servers: tuple[str, ...],
        *,
        actor: str,
        durable: str,
        creds: Path | None = None,
        tls_ca: Path | None = None,
        timeout: float = 5.0,
        on_state: Callable[[str], Awaitable[None]] | None = None,
    ) -> Transport:
        """Connect (failing over across ``servers``), open the buckets and the consumer."""
        # A per-actor inbox, so that the generated NATS permissions can let each actor
        # receive replies on its own inbox subjects only (``ssr deploy nats-config``).
        options: dict[str, Any] = {"inbox_prefix": inbox_prefix(actor)}
        if creds is not None:
            options["user_credentials"] = str(creds)
        if tls_ca is not None:
            options["tls"] = ssl.create_default_context(cafile=str(tls_ca))
        with _mapped():
            bus = await JetStreamBus.connect(
                servers,
                name=f"ssr-client:{actor}",
                on_state=on_state,
                startup_timeout=timeout,
                options=options,
            )
        transport = cls(bus, actor, durable)
        try:
            with _mapped():
                await bus.bind_buckets(
                    subjects.DIRECTORY_BUCKET,
                    subjects.STATE_BUCKET,
                    subjects.MESSAGES_BUCKET,
                    subjects.INDEX_BUCKET,
                )
                transport._sub = await bus.pull(
                    subjects.deliver_subject(actor),
                    stream=subjects.DELIVER_STREAM,
                    durable=durable,
                    ack_wait_s=ACK_WAIT_S,
                    max_ack_pending=256,
                )
        except BaseException:
            await bus.close()
            raise
        return transport

    @property
    def connected(self) -> bool:
        return self.bus.connected

    async def close(self) -> None:
        await self.bus.close()

    async def submit(self, data: bytes, msg_id: str) -> None:
        """Publish to the actor's submit subject; returns once JetStream stored it."""
        with _mapped():
            await self.bus.publish(subjects.submit_subject(self.actor), data, msg_id=msg_id)

    async def fetch(self, batch: int, timeout: float) -> list[Delivery]:
        assert self._sub is not None
        with _mapped():
            messages = await self.bus.fetch(self._sub, batch, timeout)
        return [Delivery(m.data, m) for m in messages]

    async def kv_get(self, bucket: str, key: str) -> bytes | None:
        with _mapped():
            try:
                entry = await self.bus.kv_get(bucket, key)
            except ValueError:  # not a valid key: nothing stored under it
                return None
        return None if entry is None else entry.value

    async def kv_keys(self, bucket: str) -> list[str]:
        with _mapped():
            return await self.bus.kv_keys(bucket)

    async def kv_entries(self, bucket: str, pattern: str, *, limit: int) -> list[tuple[str, bytes]]:
        """``(key, value)`` of at most ``limit`` keys matching ``pattern`` (server-filtered)."""
        with _mapped():
            return await self.bus.kv_entries(bucket, pattern, limit=limit)


__all__ = ["Delivery", "Transport", "inbox_prefix"]
