"""The broker's JetStream acknowledgements: whatever arrives on its inbox is either a
sequence, a JetStream error, or NatsUnavailable; never an unhandled exception."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
import pytest

from broker.bus import _Acks, _Drops
from broker.errors import NatsUnavailable


@dataclass
class Reply:
    subject: str
    data: bytes
    headers: dict[str, str] | None = None


class AnsweringNats:
    """Answers every publish on its reply subject with ``answer``."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.callback: Callable[[Reply], Awaitable[None]] | None = None
        self.replies: list[str] = []

    def new_inbox(self) -> str:
        return "_INBOX.test"

    async def subscribe(self, subject: str, cb: Callable[[Reply], Awaitable[None]]) -> None:
        assert subject == "_INBOX.test.*"
        self.callback = cb

    async def publish(self, subject: str, data: bytes, *, reply: str, headers: Any) -> None:
        self.replies.append(reply)
        assert self.callback is not None
        callback = self.callback
        asyncio.get_running_loop().call_soon(
            lambda: asyncio.ensure_future(callback(Reply(reply, self.answer)))
        )


async def publish(answer: bytes) -> dict[str, Any]:
    (ack,) = await _Acks(_Drops()).publish(AnsweringNats(answer), [("s", b"x", None)], 2.0)  # type: ignore[arg-type]
    return ack


async def test_a_sequence_is_returned() -> None:
    assert (await publish(b'{"stream":"S","seq":5}'))["seq"] == 5


async def test_a_jetstream_error_keeps_its_code() -> None:
    with pytest.raises(nats.js.errors.APIError) as caught:
        await publish(b'{"error":{"code":400,"err_code":10071,"description":"wrong last"}}')
    assert caught.value.err_code == 10071


@pytest.mark.parametrize(
    "answer",
    [b"", b"garbage", b"[]", b"null", b'{"seq":"5"}', b'{"seq":true}', b'{"error":"x"}', b"{}"],
)
async def test_an_unreadable_acknowledgement_is_nats_unavailable(answer: bytes) -> None:
    with pytest.raises(NatsUnavailable):
        await publish(answer)


async def test_reply_subjects_are_unique_and_not_guessable() -> None:
    nc = AnsweringNats(b'{"seq":1}')
    acks = _Acks(_Drops())
    for _ in range(3):
        await acks.publish(nc, [("s", b"x", None)], 2.0)  # type: ignore[arg-type]
    tokens = [r.removeprefix("_INBOX.test.") for r in nc.replies]
    assert len(set(tokens)) == 3
    assert all("." not in t and len(t.split("-")[1]) == 12 for t in tokens)
    assert acks._waiting == {}


async def test_a_batch_that_meets_an_unreadable_acknowledgement_leaves_nothing_waiting() -> None:
    nc = AnsweringNats(b"garbage")
    acks = _Acks(_Drops())
    with pytest.raises(NatsUnavailable):
        await acks.publish(nc, [("s", b"x", None)] * 5, 2.0)  # type: ignore[arg-type]
    assert len(nc.replies) == 5  # all were published before the first answer was read
    assert acks._waiting == {}


async def test_a_batch_with_no_answers_times_out_once_and_leaves_nothing_waiting() -> None:
    class Silent(AnsweringNats):
        async def publish(self, subject: str, data: bytes, *, reply: str, headers: Any) -> None:
            self.replies.append(reply)

    nc = Silent(b"")
    acks = _Acks(_Drops())
    started = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError):
        await acks.publish(nc, [("s", b"x", None)] * 4, 0.2)  # type: ignore[arg-type]
    assert asyncio.get_running_loop().time() - started < 1.0
    assert len(nc.replies) == 4
    assert acks._waiting == {}


async def test_a_publish_that_raises_midway_sends_no_more_and_leaves_nothing_waiting() -> None:
    class Breaking(AnsweringNats):
        async def publish(self, subject: str, data: bytes, *, reply: str, headers: Any) -> None:
            if len(self.replies) == 2:
                raise nats.errors.OutboundBufferLimitError
            await super().publish(subject, data, reply=reply, headers=headers)

    nc = Breaking(b'{"seq":1}')
    acks = _Acks(_Drops())
    with pytest.raises(nats.errors.OutboundBufferLimitError):
        await acks.publish(nc, [("s", b"x", None)] * 5, 2.0)  # type: ignore[arg-type]
    assert len(nc.replies) == 2  # the items after the one that raised were not sent
    assert acks._waiting == {}


async def test_a_batch_slower_to_publish_than_its_timeout_still_times_out() -> None:
    """The deadline counts from the call; a future made after it passed expires too."""

    class Slow(AnsweringNats):
        async def publish(self, subject: str, data: bytes, *, reply: str, headers: Any) -> None:
            if len(self.replies) < 2:
                await super().publish(subject, data, reply=reply, headers=headers)
            else:
                self.replies.append(reply)  # the last is never answered
            await asyncio.sleep(0.15)

    acks = _Acks(_Drops())
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(
            acks.publish(Slow(b'{"seq":1}'), [("s", b"x", None)] * 3, 0.2),  # type: ignore[arg-type]
            5.0,
        )
    assert loop.time() - started < 2.0  # its own deadline, not the test's guard
    assert acks._waiting == {}


async def test_the_failures_not_raised_are_not_reported_as_never_retrieved() -> None:
    class Silent(AnsweringNats):
        async def publish(self, subject: str, data: bytes, *, reply: str, headers: Any) -> None:
            self.replies.append(reply)

    async def timed_out() -> bool:  # returns without keeping the traceback (and futures)
        try:
            await _Acks(_Drops()).publish(Silent(b""), [("s", b"x", None)] * 6, 0.05)  # type: ignore[arg-type]
        except TimeoutError:
            return True
        return False

    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        assert await timed_out()
        await asyncio.sleep(0.2)  # past the (cancelled) timer: the loop lets go of it
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert reported == []
