"""Concurrency for routing: one lane per sender, and locks by key.

The broker takes submissions from one work queue in stream order. Routed one at a time,
every submission waits for all before it, whoever sent them: a sender with a long backlog
(a flood, a burst of receipts) delays everyone, and each submission's NATS round trips
add up. ``Lanes`` runs submissions of different senders concurrently and those of one
sender strictly in the order they were taken, with at most ``limit`` held at once.
A *barrier* (a submission that changes what later ones are decided against: a mode
change, an activation, a close, a directory version) waits for every job before it and
holds every job after it, so state changes apply to the very next submission taken, as
when everything was routed one at a time. ``KeyedLocks`` serialises updates of one record
within the process, so concurrent lanes do not spend their compare-and-set retries on
each other (other brokers still may; those conflicts are retried as before).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

Job = Callable[[], Awaitable[None]]


class Lanes:
    """Jobs in order per key, concurrently across keys, at most ``limit`` admitted."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a lane limit must be at least 1")
        self.limit = limit
        self._tails: dict[str, asyncio.Task[None]] = {}
        self._barrier: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()
        self._room.set()

    @property
    def held(self) -> int:
        """Jobs admitted and not yet finished."""
        return len(self._tasks)

    def room(self) -> int:
        return self.limit - len(self._tasks)

    async def wait_for_room(self) -> None:
        while self.room() <= 0:
            self._room.clear()
            await self._room.wait()

    def start(self, key: str, job: Job, *, barrier: bool = False) -> None:
        """Run ``job`` after every job already started under ``key`` (with ``barrier``:
        after every job already started) and after the last barrier. A job must handle its
        own errors: one that raises is logged by asyncio and does not stop its lane.

        Never refuses: the limit is kept by callers waiting for room before they take more
        work, and what they already took must run (a fetch can hand over more messages
        than asked for, from earlier pull requests that were answered late)."""
        before: set[asyncio.Task[None] | None] = (
            set(self._tasks) if barrier else {self._tails.get(key), self._barrier}
        )
        task = asyncio.create_task(self._after(before, job), name=f"lane {key}")
        if barrier:
            self._barrier = task
        self._tails[key] = task
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._finished(key, done))

    async def drain(self, timeout: float) -> bool:
        """Wait for every admitted job to finish; False if some did not within ``timeout``."""
        if not self._tasks:
            return True
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        return not pending

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    @staticmethod
    async def _after(before: set[asyncio.Task[None] | None], job: Job) -> None:
        waiting = {task for task in before if task is not None and not task.done()}
        if waiting:
            await asyncio.wait(waiting)  # their outcomes are their own; only order matters
        await job()

    def _finished(self, key: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._tails.get(key) is task:
            del self._tails[key]
        if self._barrier is task:
            self._barrier = None
        self._room.set()


class KeyedLocks:
    """One asyncio lock per key, kept only while someone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
