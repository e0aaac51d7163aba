"""ssr-broker against a raw JetStream baseline measured in the same run (issue 10).

    .venv/bin/python bench/run.py [--quick] [--out bench/results/latest.json]
                                  [--plot bench/results/latest.png]

Starts its own nats-server on 127.0.0.1 (JetStream in a temporary folder), then:

1. R: raw JetStream. Pipelined publishes with acks (``publish_async``) of 1 KiB into a
   file-backed stream, and a pull consumer (fetch + ack) in another process. Messages/s.
2. Broker alone: pre-built signed envelopes for 3 recipients injected at full speed into
   a broker in its own process, which verifies, decides and fans out; a trivial consumer
   in another process drains the deliveries. Routed messages/s, ratio to R.
3. End to end: sender clients → broker → 3 recipient clients (another process) that
   verify, decrypt and return signed delivered receipts; the senders wait for all of
   them. Messages/s, ratio to R, and a check that nothing was lost.
4. Latency at a fixed 200 msg/s: raw publish→receive against secure sender→recipient and
   sender→all-receipts, p50/p99 and their ratios.
5. Fan-out: broker CPU per message for 1, 3, 10 and 36 recipients (36 = everyone but the
   sender in the 37-actor region); the marginal cost of one more recipient against the
   CPU cost of one raw publish measured in 1.
6. Memory: the broker's peak RSS (VmHWM) over the whole run.

Shared 2-core machines make absolute figures noisy; read the ratios. Every loop is
bounded in count and time, and only processes this script started are stopped (by pid).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
from benchlib import (
    PAYLOAD_BYTES,
    cpu_seconds,
    memory_kib,
    now_ns,
    percentile,
    slope,
    stamped_payload,
    summary_ms,
)
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext, api

from broker import subjects
from broker.config import BrokerConfig, StreamSettings
from broker.core import Label, MessageType, RecipientKey, Tlp, build_envelope
from broker.demo import DemoRegion, demo_region
from broker.demo_setup import EXAMPLE_POLICY, write_region
from broker.embedded import EmbeddedNats

BENCH_DIR = Path(__file__).resolve().parent
WORKERS = BENCH_DIR / "workers.py"
HOUR_MS = 3_600_000
LABEL = Label(policy="ssr", classification="INTERN", tlp=Tlp.GREEN)
RECIPIENTS_2 = ("polisen-stockholm", "sos-alarm", "stockholm")  # scenario 2
SENDERS_2 = ("botkyrka", "danderyd", "ekero", "haninge", "jarfalla", "lidingo", "nacka", "solna")
SENDERS_3 = ("huddinge", "sodertalje")  # end to end: sender clients
RECIPIENTS_3 = ("sundbyberg", "taby", "sos-alarm")  # end to end: recipient clients
FANOUT_SENDERS = ("vaxholm", "varmdo", "tyreso", "salem")
BACKLOG_FIELD = "submit_backlog_per_sender"  # StreamSettings field, where the broker has it
BACKLOG_ERROR = "maximum messages per subject exceeded"
STALL_S = 15.0  # a phase ends early when no delivery arrived for this long
TARGETS = {
    "broker_alone_ratio": 0.30,
    "end_to_end_ratio": 0.08,
    "latency_p50_ratio": 3.0,
    "latency_p99_ratio": 4.0,
    "fanout_marginal_ratio": 1.5,
    "broker_peak_rss_mb": 200.0,
}

# The broker as a process of its own, so /proc tells its CPU time and peak RSS.
BROKER_PROCESS = """
import asyncio, json, logging, os, sys
from pathlib import Path
from broker.config import BrokerConfig, StreamSettings
from broker.service import Service
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
config = BrokerConfig(
    data_dir=Path(sys.argv[1]), nats_urls=(sys.argv[2],), http_port=0,
    streams=StreamSettings(**json.loads(sys.argv[4])), **json.loads(sys.argv[3]),
)
profile = os.environ.get("SSR_BENCH_PROFILE")  # --profile: cProfile the broker
if profile:
    import cProfile
    profiler = cProfile.Profile()
    profiler.enable()
try:
    asyncio.run(Service(config).run())
finally:
    if profile:
        profiler.disable()
        profiler.dump_stats(profile)
"""


@dataclass(frozen=True)
class Sizes:
    """Counts and time bounds of one run; ``--quick`` shrinks them for a smoke test."""

    raw_messages: int = 30_000
    broker_messages: int = 3_000
    e2e_messages: int = 1_500
    latency_rate: float = 200.0
    latency_seconds: float = 10.0
    fanout_messages: int = 800
    fanout_levels: tuple[int, ...] = (1, 3, 10, 36)
    fanout_idle_s: float = 5.5  # idle broker CPU samples: longer than one sweep interval
    awaited_publishes: int = 2_000
    brokers_scaled: int = 2  # broker processes of phase 2b
    phase_timeout_s: float = 60.0

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            raw_messages=2_000,
            broker_messages=150,
            e2e_messages=60,
            latency_seconds=1.5,
            fanout_messages=20,
            fanout_idle_s=0.5,
            awaited_publishes=300,
            phase_timeout_s=20.0,
        )


# --- processes ---------------------------------------------------------------------------


@dataclass
class Worker:
    """A child process started by this script; JSON lines from its stdout become ``lines``."""

    name: str
    proc: asyncio.subprocess.Process
    lines: list[dict[str, Any]] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    async def start(
        cls,
        name: str,
        argv: Sequence[str],
        *,
        ready: Callable[[Worker], bool],
        timeout: float = 30.0,
    ) -> Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=BENCH_DIR.parent,
            limit=64 * 1024 * 1024,  # the final latency lines are long
        )
        worker = cls(name, proc)
        worker.reader = asyncio.create_task(worker._read())
        try:
            await worker.wait_for(ready, timeout, "start")
        except BaseException:
            await worker.kill()
            raise
        return worker

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            text = line.decode(errors="replace").rstrip()
            if text.startswith("{"):
                try:
                    self.lines.append(json.loads(text))
                except json.JSONDecodeError:
                    self.text.append(text)
            else:
                self.text.append(text)
            self.changed.set()
        self.changed.set()

    @property
    def last(self) -> dict[str, Any]:
        return self.lines[-1] if self.lines else {}

    async def wait_for(
        self, predicate: Callable[[Worker], bool], timeout: float, what: str
    ) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if self.proc.returncode is not None and self.reader is not None and self.reader.done():
                raise RuntimeError(f"{self.name} exited ({what}):\n" + "\n".join(self.text[-30:]))
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: {what} not within {timeout:.0f} s")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 0.5))

    async def stop(self, timeout: float = 20.0) -> None:
        """Ask the worker to finish (a line on stdin) and wait for it to exit."""
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            with contextlib.suppress(ConnectionError, OSError):
                self.proc.stdin.write(b"stop\n")
                await self.proc.stdin.drain()
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            await self.kill()
        if self.reader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.reader, 5.0)

    async def kill(self) -> None:
        """SIGKILL this child by its own pid (if it still runs) and reap it."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), 10.0)


def worker_argv(role: str, **args: Any) -> list[str]:
    return [str(WORKERS), role, json.dumps(args)]


def has_line(key: str) -> Callable[[Worker], bool]:
    return lambda w: any(key in line for line in w.lines)


@dataclass
class CpuMeter:
    """CPU seconds of the processes of the run, sampled at phase boundaries."""

    pids: dict[str, int] = field(default_factory=dict)

    def sample(self) -> dict[str, float]:
        found = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        found["runner"] = time.process_time()
        return found

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {
            name: round(after[name] - before[name], 3)
            for name in after
            if name in before and not math.isnan(after[name] - before[name])
        }


# --- JetStream helpers --------------------------------------------------------------------


async def pipelined_publish(
    js: JetStreamContext, items: Sequence[tuple[str, bytes]], *, deadline: float
) -> dict[str, int]:
    """Publish every (subject, data) with ``publish_async`` (the window is the context's
    ``publish_async_max_pending``), then await every ack. A publish refused because the
    sender's submit backlog is full is retried after a short wait, within ``deadline``."""
    pending = list(items)
    stats = {"published": 0, "backlog_retries": 0, "errors": 0}
    while pending and time.monotonic() < deadline:
        futures = [(await js.publish_async(s, d), (s, d)) for s, d in pending]
        pending = []
        for future, item in futures:
            try:
                await asyncio.wait_for(future, max(0.1, deadline - time.monotonic()))
                stats["published"] += 1
            except nats.js.errors.APIError as exc:
                if BACKLOG_ERROR in str(exc).lower():
                    stats["backlog_retries"] += 1
                    pending.append(item)
                else:
                    stats["errors"] += 1
            except (TimeoutError, nats.errors.Error):
                stats["errors"] += 1
        if pending:
            await asyncio.sleep(0.02)
    stats["errors"] += len(pending)
    return stats


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.05
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(interval)
    return await predicate()


async def broker_idle(js: JetStreamContext) -> bool:
    """The broker's submission consumer has nothing pending and nothing unacknowledged."""
    try:
        info = await js.consumer_info(subjects.SUBMIT_STREAM, subjects.BROKER_CONSUMER)
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
        return False
    return not info.num_pending and not info.num_ack_pending


# --- the run ------------------------------------------------------------------------------


class Bench:
    def __init__(self, sizes: Sizes, root: Path) -> None:
        self.sizes = sizes
        self.root = root
        self.server = EmbeddedNats(root / "nats", server_name="ssr-bench")
        self.workers: list[Worker] = []
        self.broker: Worker | None = None
        self.cpu = CpuMeter()
        self.results: dict[str, Any] = {}
        self.nc: NatsClient | None = None
        self.js: JetStreamContext | None = None
        self.region: DemoRegion | None = None
        self.rss_samples: list[int] = []
        self.sweep_interval_s = 5.0

    # --- set-up and tear-down -------------------------------------------------------------

    async def start_worker(
        self,
        name: str,
        argv: Sequence[str],
        *,
        ready: Callable[[Worker], bool] | None = None,
        timeout: float = 30.0,
    ) -> Worker:
        ready = ready or has_line("ready")
        worker = await Worker.start(name, argv, ready=ready, timeout=timeout)
        self.workers.append(worker)
        return worker

    async def close(self) -> None:
        if self.broker is not None:
            await self.stop_broker(self.broker)
        for worker in reversed(self.workers):
            with contextlib.suppress(Exception):
                await worker.kill()
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.close(), 5.0)
        with contextlib.suppress(Exception):
            await self.server.stop()

    async def connect(self) -> JetStreamContext:
        await self.server.start()
        assert self.server.pid is not None
        self.cpu.pids["nats-server"] = self.server.pid
        self.nc = await nats.connect(self.server.url, name="bench-runner")
        self.js = self.nc.jetstream(timeout=10.0, publish_async_max_pending=1024)
        return self.js

    # --- 1. the raw baseline --------------------------------------------------------------

    async def raw_throughput(self) -> None:
        js, n = self._js, self.sizes.raw_messages
        await js.add_stream(
            api.StreamConfig(
                name="BENCH_RAW", subjects=["bench.raw.>"], storage=api.StorageType.FILE
            )
        )
        consumer = await self.start_worker(
            "raw-consumer",
            worker_argv(
                "raw-consume",
                url=self.server.url,
                stream="BENCH_RAW",
                subject="bench.raw.>",
                durable="raw",
                count=n,
                latency=False,
                deadline_s=self.sizes.phase_timeout_s,
            ),
        )
        self.cpu.pids["raw-consumer"] = consumer.pid
        payload = bytes(PAYLOAD_BYTES)
        items = [("bench.raw.a", payload)] * n
        before = self.cpu.sample()
        start_ns, start = now_ns(), time.monotonic()
        stats = await pipelined_publish(js, items, deadline=start + self.sizes.phase_timeout_s)
        published_s = time.monotonic() - start
        runner_cpu = time.process_time() - before["runner"]
        await consumer.wait_for(has_line("done"), self.sizes.phase_timeout_s, "consume")
        after = self.cpu.sample()
        done = consumer.last
        elapsed = (done["last_ns"] - start_ns) / 1e9
        self.results["raw"] = {
            "description": "publish_async (acks awaited, window 1024) of 1 KiB into a file "
            "stream; pull consumer (fetch 256 + ack each) in another process",
            "messages": n,
            "received": done["count"],
            "publish": stats,
            "publish_seconds": round(published_s, 3),
            "seconds": round(elapsed, 3),
            "msgs_per_s": round(done["count"] / elapsed, 1),
            "publisher_cpu_us_per_msg": round(runner_cpu / n * 1e6, 2),
            "cpu_seconds": CpuMeter.delta(before, after),
        }
        await consumer.stop()
        del self.cpu.pids["raw-consumer"]
        # The cost of one publish the way the broker publishes (awaited request, msg id).
        m = self.sizes.awaited_publishes
        cpu0 = time.process_time()
        for i in range(0, m, 64):
            await asyncio.gather(
                *(
                    js.publish("bench.raw.b", payload, headers={"Nats-Msg-Id": f"aw.{j}"})
                    for j in range(i, min(i + 64, m))
                )
            )
        self.results["raw"]["awaited_publish_cpu_us_per_msg"] = round(
            (time.process_time() - cpu0) / m * 1e6, 2
        )
        await js.delete_stream("BENCH_RAW")

    # --- 4a. raw latency ----------------------------------------------------------------

    async def raw_latency(self) -> None:
        js = self._js
        rate, seconds = self.sizes.latency_rate, self.sizes.latency_seconds
        n = int(rate * seconds)
        await js.add_stream(
            api.StreamConfig(
                name="BENCH_LAT", subjects=["bench.lat.>"], storage=api.StorageType.FILE
            )
        )
        consumer = await self.start_worker(
            "raw-latency",
            worker_argv(
                "raw-consume",
                url=self.server.url,
                stream="BENCH_LAT",
                subject="bench.lat.>",
                durable="lat",
                count=n,
                latency=True,
                deadline_s=seconds + 30,
            ),
        )
        start = time.monotonic()
        for i in range(n):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await js.publish("bench.lat.a", stamped_payload(b"r"))
        await consumer.wait_for(has_line("done"), 30, "latency consume")
        latencies = [round(x, 1) for x in consumer.last["latency_us"]]
        self.results["latency_raw"] = {
            "rate": rate,
            "messages": n,
            "achieved_rate": round(n / (time.monotonic() - start), 1),
            **summary_ms(latencies),
            "samples_us": latencies,
        }
        await consumer.stop()
        await js.delete_stream("BENCH_LAT")

    # --- the broker ---------------------------------------------------------------------

    async def start_broker(self, name: str = "broker") -> Worker:
        """Start a broker process with a data folder of its own (every broker of the run
        holds the same region: directory, policy, broker key) on the run's nats-server."""
        data_dir = self.root / ("data" if name == "broker" else f"data-{name}")
        data_dir.mkdir(parents=True)
        # The policy of deploy/policy.toml with the sender budget at its ceiling: the
        # budget is a flood guard that a full-speed benchmark would otherwise trip.
        policy = EXAMPLE_POLICY.read_text(encoding="utf-8")
        policy = _set_toml(policy, "sender_deliveries_per_minute", "1000000")
        policy = _set_toml(policy, "sender_burst_deliveries", "100000")
        (data_dir / "policy.toml").write_text(policy, encoding="utf-8")
        if self.region is None:
            self.region = demo_region(now=time.time_ns() // 1_000_000 - 60_000)
        write_region(BrokerConfig(data_dir=data_dir), self.region)
        broker_config: dict[str, Any] = {
            "fetch_batch": 256,  # the broker's consumer allows 1024 unacknowledged
            "sweep_interval_s": self.sweep_interval_s,  # the default
        }
        names = {f.name for f in dataclasses.fields(StreamSettings)}
        streams: dict[str, Any] = {}
        if BACKLOG_FIELD in names:
            streams[BACKLOG_FIELD] = 1_000_000
        defaults = BrokerConfig(data_dir=data_dir)
        self.results["broker_config"] = {
            # Every scalar setting of the broker's defaults (whatever this version has).
            **{
                f.name: getattr(defaults, f.name)
                for f in dataclasses.fields(BrokerConfig)
                if isinstance(getattr(defaults, f.name), int | float)
            },
            **broker_config,
            "streams": {**dataclasses.asdict(StreamSettings()), **streams},
            "backlog_cap_field": BACKLOG_FIELD if BACKLOG_FIELD in names else None,
            "policy_overrides": {
                "sender_deliveries_per_minute": 1_000_000,
                "sender_burst_deliveries": 100_000,
            },
            "directory_actors": len(self.region.directory.document.actors),
        }
        broker = await self.start_worker(
            name,
            [
                "-c",
                BROKER_PROCESS,
                str(data_dir),
                self.server.url,
                json.dumps(broker_config),
                json.dumps(streams),
            ],
            ready=lambda w: any("ready; NATS" in line for line in w.text),
            timeout=60.0,
        )
        self.cpu.pids[name] = broker.pid
        return broker

    async def stop_broker(self, broker: Worker) -> None:
        """SIGTERM (a broker stops cleanly, writing its --profile stats), then reap it."""
        if broker.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                broker.proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(broker.proc.wait(), 20.0)
        self.cpu.pids.pop(broker.name, None)

    def envelope(self, sender: str, to: Sequence[str], phase: bytes = b"b") -> bytes:
        assert self.region is not None
        now = time.time_ns() // 1_000_000
        directory = self.region.directory
        keys = [RecipientKey.of(directory.actor(a), now) for a in sorted(to)]  # type: ignore[arg-type]
        return build_envelope(
            sender=self.region.identities[sender],
            recipients=keys,
            label=LABEL,
            message_type=MessageType.SITUATION_REPORT,
            payload=stamped_payload(phase),
            created=now,
            expires=now + HOUR_MS,
        )

    async def inject(
        self, drain: Worker, items: list[tuple[str, bytes]], deliveries: int
    ) -> dict[str, Any]:
        """Publish pre-built submissions at full speed; wait until the drain consumer saw
        ``deliveries`` more envelopes and the broker's consumer is empty."""
        js = self._js
        base = drain.last.get("e", 0)
        before = self.cpu.sample()
        start_ns, start = now_ns(), time.monotonic()
        deadline = start + self.sizes.phase_timeout_s
        stats = await pipelined_publish(js, items, deadline=deadline)
        injected_s = time.monotonic() - start
        # Until every delivery is seen, the phase's time is up, or nothing moved for STALL_S.
        seen, moved, stalled = drain.last.get("e", 0), time.monotonic(), False
        while seen < base + deliveries and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            if drain.last.get("e", 0) != seen:
                seen, moved = drain.last.get("e", 0), time.monotonic()
            elif time.monotonic() - moved > STALL_S:
                stalled = True
                break
        idle = await wait_until(
            lambda: broker_idle(js), max(1.0, min(STALL_S, deadline - time.monotonic()))
        )
        after = self.cpu.sample()
        self._sample_rss()
        got = drain.last.get("e", 0) - base
        last = drain.last.get("t_last_e", 0)
        elapsed = (last - start_ns) / 1e9 if last > start_ns else math.nan
        cpu = CpuMeter.delta(before, after)
        wall = time.monotonic() - start
        return {
            "submissions": len(items),
            "inject": stats,
            "inject_seconds": round(injected_s, 3),
            "deliveries_expected": deliveries,
            "deliveries_seen": got,
            "broker_idle_at_end": idle,
            "stalled": stalled,
            "seconds_to_last_delivery": round(elapsed, 3),
            "wall_seconds": round(wall, 3),
            "cpu_seconds": cpu,
            "cpu_share_of_wall": {k: round(v / wall, 2) for k, v in cpu.items()},
        }

    # --- 2. broker alone --------------------------------------------------------------

    async def broker_alone(self, drain: Worker, brokers: Sequence[str] = ("broker",)) -> None:
        n = self.sizes.broker_messages
        started = time.monotonic()
        items = [
            (subjects.submit_subject(s), self.envelope(s, RECIPIENTS_2))
            for s in (SENDERS_2[i % len(SENDERS_2)] for i in range(n))
        ]
        build_s = time.monotonic() - started
        result = await self.inject(drain, items, 3 * n)
        routed = result["deliveries_seen"] / 3
        seconds = result["seconds_to_last_delivery"]
        broker_cpu = sum(result["cpu_seconds"].get(b, math.nan) for b in brokers)
        key = "broker_alone" if len(brokers) == 1 else "brokers_scaled"
        self.results[key] = {
            "brokers": len(brokers),
            "recipients": list(RECIPIENTS_2),
            "senders": len(SENDERS_2),
            "build_seconds": round(build_s, 3),
            **result,
            "msgs_per_s": round(routed / seconds, 1) if seconds > 0 else math.nan,
            "broker_cpu_ms_per_msg": round(broker_cpu / n * 1000, 3),
        }

    async def brokers_scaled(self, drain: Worker) -> None:
        """The same injection with more broker processes sharing the submission consumer
        (as a production cluster runs them); the extra ones stop afterwards, so the later
        phases measure one broker as before."""
        extra = [
            await self.start_broker(f"broker-{i}") for i in range(2, self.sizes.brokers_scaled + 1)
        ]
        try:
            # A new broker first verifies the audit trail and indexes it into its own
            # data folder: work of its start, not of the routing measured here.
            started = time.monotonic()
            quiet = [await self._quiet(w.pid) for w in extra]
            settle_s = round(time.monotonic() - started, 1)
            await self.broker_alone(drain, ["broker", *(w.name for w in extra)])
            self.results["brokers_scaled"].update(start_settled=all(quiet), settle_s=settle_s)
        finally:
            for worker in extra:
                await self.stop_broker(worker)

    # --- 5. fan-out ---------------------------------------------------------------------

    async def fan_out(self, drain: Worker) -> None:
        assert self.region is not None
        actors = sorted(a.id for a in self.region.directory.document.actors)
        m = self.sizes.fanout_messages
        assert self.broker is not None
        levels: list[dict[str, Any]] = []
        # The broker's CPU while idle (periodic jobs: the deadline sweep reads every message
        # record still awaiting receipts, so it grows level by level), sampled over a whole
        # sweep interval before the first level and after each; each level is also read
        # with the mean of the samples around it subtracted.
        idle_window = self.sizes.fanout_idle_s
        idle_rate = await self._idle_rate(idle_window)
        for k in self.sizes.fanout_levels:
            items = []
            for i in range(m):
                sender = FANOUT_SENDERS[i % len(FANOUT_SENDERS)]
                to = [a for a in actors if a != sender][:k]
                items.append((subjects.submit_subject(sender), self.envelope(sender, to)))
            result = await self.inject(drain, items, m * len(to))
            broker_cpu = result["cpu_seconds"].get("broker", math.nan)
            idle_before, idle_rate = idle_rate, await self._idle_rate(idle_window)
            idle_mean = (idle_before + idle_rate) / 2
            levels.append(
                {
                    "recipients": len(to),
                    "envelope_bytes": len(items[0][1]),
                    **result,
                    "broker_cpu_us_per_msg": round(broker_cpu / m * 1e6, 1),
                    "broker_cpu_us_per_recipient": round(broker_cpu / m / len(to) * 1e6, 1),
                    "broker_idle_cpu_share_around": [round(idle_before, 4), round(idle_rate, 4)],
                    "broker_cpu_us_per_msg_minus_idle": round(
                        (broker_cpu - idle_mean * result["wall_seconds"]) / m * 1e6, 1
                    ),
                }
            )
        ks = [lv["recipients"] for lv in levels]
        per_msg = [lv["broker_cpu_us_per_msg"] for lv in levels]
        marginal, fixed = slope(ks, per_msg)
        corrected, _ = slope(ks, [lv["broker_cpu_us_per_msg_minus_idle"] for lv in levels])
        self.results["fan_out"] = {
            "messages_per_level": m,
            "marginal_minus_idle_us_per_recipient": round(corrected, 1),
            "levels": levels,
            "marginal_broker_cpu_us_per_recipient": round(marginal, 1),
            "fixed_broker_cpu_us_per_msg": round(fixed, 1),
            "note": "least-squares line through broker CPU per message against recipients; "
            "37 recipients is impossible in the 37-actor region (the sender is never its "
            "own recipient), so the top level is 36 = everyone else",
        }

    async def _quiet(self, pid: int, *, share: float = 0.1, timeout: float = 60.0) -> bool:
        """Wait until process ``pid`` uses less than ``share`` of a core over half a second
        (it finished its start-up work); False if it did not within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            await asyncio.sleep(0.5)
            if (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0) < share:
                return True
        return False

    async def _idle_rate(self, seconds: float) -> float:
        """The broker's CPU share of one core over ``seconds`` with nothing submitted."""
        assert self.broker is not None
        cpu0, t0 = cpu_seconds(self.broker.pid), time.monotonic()
        await asyncio.sleep(seconds)
        return (cpu_seconds(self.broker.pid) - cpu0) / (time.monotonic() - t0)

    # --- 3. end to end, and 4b. secure latency --------------------------------------------

    async def end_to_end(self) -> None:
        from clients import Client  # the client library, as an actor system uses it

        js = self._js
        await js.purge_stream(subjects.DELIVER_STREAM)  # recipients start with empty queues
        data_dir = self.root / "data"
        recipients = await self.start_worker(
            "recipients",
            worker_argv(
                "recipients",
                url=self.server.url,
                data_dir=str(data_dir),
                state_root=str(self.root / "clients"),
                actors=list(RECIPIENTS_3),
                deadline_s=self.sizes.phase_timeout_s * 3,
            ),
            timeout=60,
        )
        self.cpu.pids["recipients"] = recipients.pid
        senders = [
            Client.connect(
                servers=[self.server.url],
                actor=actor,
                keys=data_dir / "keys" / f"{actor}.key",
                authority_key=data_dir / "authority.pub",
                state_dir=self.root / "clients" / actor,
                policy=data_dir / "policy.toml",
            )
            for actor in SENDERS_3
        ]
        started: list[Client] = []
        try:
            for client in senders:
                await client.start()
                started.append(client)
            await self._e2e_throughput(started, recipients)
            rate = self.sizes.latency_rate
            self.results["latency_secure"] = await self._secure_latency(started, rate, b"l")
            # The same at a rate the secure path sustains (half its end-to-end throughput,
            # at most 50 msg/s): latency without the queueing of an overloaded path.
            low = float(max(5, min(50, round(0.5 * self.results["end_to_end"]["msgs_per_s"]))))
            self.results["latency_secure_sustainable"] = await self._secure_latency(
                started, low, b"m"
            )
        finally:
            for client in started:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.close(), 10)
        await recipients.stop(timeout=30)
        final = recipients.last
        for key, phase in (("latency_secure", "l"), ("latency_secure_sustainable", "m")):
            latencies = [round(x, 1) for x in final.get("latency_us", {}).get(phase, [])]
            self.results[key]["sender_to_recipient"] = {
                **summary_ms(latencies),
                "samples_us": latencies,
            }
        self.results["end_to_end"]["recipient_counts"] = final.get("counts", {})
        self.results["end_to_end"]["recipients_refused"] = final.get("refused")
        del self.cpu.pids["recipients"]

    async def _e2e_throughput(self, senders: list[Any], recipients: Worker) -> None:
        n = self.sizes.e2e_messages
        timeout = self.sizes.phase_timeout_s
        before = self.cpu.sample()
        start = time.monotonic()
        done: list[float] = []
        failures: list[str] = []

        async def confirm(handle: Any) -> None:
            try:
                await handle.delivered(timeout=max(1.0, start + timeout - time.monotonic()))
                done.append(time.monotonic())
            except Exception as exc:  # counted as lost; the run goes on
                failures.append(type(exc).__name__)

        async def send_all(client: Any, count: int) -> list[asyncio.Task[None]]:
            tasks = []
            for _ in range(count):
                handle = await client.send(
                    to=list(RECIPIENTS_3),
                    payload=stamped_payload(b"t"),
                    label="INTERN",
                    tlp="GREEN",
                    type="situation_report",
                )
                tasks.append(asyncio.create_task(confirm(handle)))
            return tasks

        shares = [n // len(senders) + (i < n % len(senders)) for i in range(len(senders))]
        batches = await asyncio.gather(
            *(send_all(c, k) for c, k in zip(senders, shares, strict=True))
        )
        sent_s = time.monotonic() - start
        await asyncio.gather(*(t for batch in batches for t in batch))
        after = self.cpu.sample()
        self._sample_rss()
        elapsed = (max(done) - start) if done else math.nan
        wall = time.monotonic() - start
        with contextlib.suppress(TimeoutError):
            await recipients.wait_for(
                lambda w: all(w.last.get("counts", {}).get(f"{a}:t", 0) >= n for a in RECIPIENTS_3),
                5.0,
                "recipient counts",
            )
        cpu = CpuMeter.delta(before, after)
        self.results["end_to_end"] = {
            "senders": list(SENDERS_3),
            "recipients": list(RECIPIENTS_3),
            "messages": n,
            "all_receipts": len(done),
            "lost_or_late": len(failures),
            "failure_kinds": sorted(set(failures)),
            "send_seconds": round(sent_s, 3),
            "seconds_to_last_receipts": round(elapsed, 3),
            "msgs_per_s": round(len(done) / elapsed, 1) if done else 0.0,
            "cpu_seconds": cpu,
            "cpu_share_of_wall": {k: round(v / wall, 2) for k, v in cpu.items()},
        }

    async def _secure_latency(
        self, senders: list[Any], rate: float, phase: bytes
    ) -> dict[str, Any]:
        """Send at a fixed ``rate`` (the senders take turns) for ``latency_seconds``; the
        sender→all-receipts times are measured here, sender→recipient in the recipients."""
        n = max(10, int(rate * self.sizes.latency_seconds))
        receipts_us: list[float] = []
        failures: list[str] = []

        async def confirm(handle: Any, sent: int) -> None:
            try:
                await handle.delivered(timeout=self.sizes.phase_timeout_s)
                receipts_us.append((now_ns() - sent) / 1000)
            except Exception as exc:
                failures.append(type(exc).__name__)

        tasks = []
        start = time.monotonic()
        for i in range(n):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = now_ns()
            handle = await senders[i % len(senders)].send(
                to=list(RECIPIENTS_3),
                payload=stamped_payload(phase, sent),
                label="INTERN",
                tlp="GREEN",
                type="situation_report",
            )
            tasks.append(asyncio.create_task(confirm(handle, sent)))
        achieved = n / (time.monotonic() - start)
        await asyncio.gather(*tasks)
        self._sample_rss()
        receipts_us = [round(x, 1) for x in receipts_us]
        return {
            "rate": rate,
            "senders": len(senders),
            "messages": n,
            "achieved_send_rate": round(achieved, 1),
            "lost_or_late": len(failures),
            "sender_to_all_receipts": {**summary_ms(receipts_us), "samples_us": receipts_us},
        }

    # --- 6. memory ----------------------------------------------------------------------

    def _sample_rss(self) -> None:
        if self.broker is not None:
            rss = memory_kib(self.broker.pid).get("VmRSS")
            if rss:
                self.rss_samples.append(rss)

    def memory(self) -> None:
        assert self.broker is not None
        mem = memory_kib(self.broker.pid)
        self.results["memory"] = {
            "broker_peak_rss_mb": round(mem.get("VmHWM", 0) / 1024, 1),
            "broker_rss_mb_at_end": round(mem.get("VmRSS", 0) / 1024, 1),
            "broker_rss_mb_samples": [round(s / 1024, 1) for s in self.rss_samples],
            "nats_server_peak_rss_mb": round(
                memory_kib(self.server.pid or 0).get("VmHWM", 0) / 1024, 1
            ),
        }

    @property
    def _js(self) -> JetStreamContext:
        assert self.js is not None
        return self.js

    # --- all of it ----------------------------------------------------------------------

    async def run(self, log: Callable[[str], None]) -> None:
        await self.connect()
        log("1. raw JetStream throughput (R)")
        await self.raw_throughput()
        log("4a. raw latency at 200 msg/s")
        await self.raw_latency()
        log("starting the broker")
        self.broker = await self.start_broker()
        self._sample_rss()
        drain = await self.start_worker(
            "drain",
            worker_argv(
                "drain",
                url=self.server.url,
                stream=subjects.DELIVER_STREAM,
                subject=subjects.DELIVER_WILDCARD,
                durable="bench-drain",
                deadline_s=self.sizes.phase_timeout_s * 8,
            ),
        )
        self.cpu.pids["drain"] = drain.pid
        log("2. broker alone")
        await self.broker_alone(drain)
        log(f"2b. broker alone, {self.sizes.brokers_scaled} brokers")
        await self.brokers_scaled(drain)
        log("5. fan-out scaling")
        await self.fan_out(drain)
        await drain.stop()
        del self.cpu.pids["drain"]
        await self._js.delete_consumer(subjects.DELIVER_STREAM, "bench-drain")
        log("3. end to end with receipts, then 4b. secure latency at 200 msg/s")
        await self.end_to_end()
        self.memory()


def _set_toml(text: str, key: str, value: str) -> str:
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.split("=")[0].strip() == key:
            lines[i] = f"{key} = {value}\n"
            return "".join(lines)
    raise KeyError(f"{key} not in the example policy")


# --- the report -----------------------------------------------------------------------------


def figures(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The table rows: figure, value, baseline, ratio, target, met."""
    rows: list[dict[str, Any]] = []
    raw = results.get("raw", {}).get("msgs_per_s", math.nan)

    def row(
        name: str,
        value: float,
        unit: str,
        baseline: float | None,
        target: str,
        met: bool | None,
        ratio: float | None = None,
    ) -> None:
        if ratio is None and baseline:
            ratio = value / baseline
        rows.append(
            {
                "figure": name,
                "value": value,
                "unit": unit,
                "baseline": baseline,
                "ratio": None if ratio is None or math.isnan(ratio) else round(ratio, 3),
                "target": target,
                "met": met,
            }
        )

    row("R: raw JetStream publish→consume", raw, "msg/s", None, "baseline", None)
    if "broker_alone" in results:
        v = results["broker_alone"]["msgs_per_s"]
        row(
            "broker alone, 3 recipients",
            v,
            "msg/s",
            raw,
            "≥ 0.30 × R",
            v / raw >= TARGETS["broker_alone_ratio"],
        )
    if "brokers_scaled" in results:
        part = results["brokers_scaled"]
        row(f"broker alone, {part['brokers']} broker processes, 3 recipients",
            part["msgs_per_s"], "msg/s", raw, "(info)", None)  # fmt: skip
    if "end_to_end" in results:
        e2e = results["end_to_end"]
        v = e2e["msgs_per_s"]
        ok = v / raw >= TARGETS["end_to_end_ratio"] and e2e["lost_or_late"] == 0
        row("end to end with receipts (nothing lost)", v, "msg/s", raw, "≥ 0.08 × R, 0 lost", ok)
    lat_raw = results.get("latency_raw", {})
    low = results.get("latency_secure_sustainable", {})
    for run, key, label, targeted in (
        ("latency_secure", "sender_to_recipient", "200 msg/s, secure sender→recipient", True),
        ("latency_secure", "sender_to_all_receipts", "200 msg/s, secure →all receipts", False),
        ("latency_secure_sustainable", "sender_to_recipient",
         f"{low.get('rate', 0):g} msg/s, secure sender→recipient", False),
        ("latency_secure_sustainable", "sender_to_all_receipts",
         f"{low.get('rate', 0):g} msg/s, secure →all receipts", False),
    ):  # fmt: skip
        part = results.get(run, {}).get(key, {})
        for p, limit_key in (("p50", "latency_p50_ratio"), ("p99", "latency_p99_ratio")):
            if f"{p}_ms" not in part or f"{p}_ms" not in lat_raw:
                continue
            v, b = part[f"{p}_ms"], lat_raw[f"{p}_ms"]
            limit = TARGETS[limit_key]
            row(
                f"latency {p}, {label}",
                v,
                "ms",
                b,
                f"≤ {limit:g} × raw" if targeted else "(info)",
                (v / b <= limit) if targeted else None,
            )
    for run in ("latency_secure", "latency_secure_sustainable"):
        lost = results.get(run, {}).get("lost_or_late", 0)
        if lost:
            part = results[run]
            row(f"latency run at {part['rate']:g} msg/s: messages without all receipts",
                lost, "msgs", None, "0", False)  # fmt: skip
    fan = results.get("fan_out")
    if fan:
        base = results["raw"]["publisher_cpu_us_per_msg"]
        v = fan["marginal_minus_idle_us_per_recipient"]
        row("fan-out: broker CPU per extra recipient (idle subtracted)", v, "µs", base,
            "≤ 1.5 × raw publish CPU", v / base <= TARGETS["fanout_marginal_ratio"])  # fmt: skip
        v = fan["marginal_broker_cpu_us_per_recipient"]
        row("fan-out: broker CPU per extra recipient (as measured)", v, "µs", base,
            "(info)", None)  # fmt: skip
        for level in fan["levels"]:
            row(
                f"fan-out {level['recipients']:>2}: broker CPU per recipient",
                level["broker_cpu_us_per_recipient"],
                "µs",
                base,
                "(info)",
                None,
            )
    mem = results.get("memory")
    if mem:
        v = mem["broker_peak_rss_mb"]
        row(
            "broker peak RSS, 37-actor directory",
            v,
            "MB",
            None,
            "< 200 MB",
            v < TARGETS["broker_peak_rss_mb"],
        )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    def fmt(x: Any) -> str:
        if x is None:
            return "-"
        if isinstance(x, bool):
            return "yes" if x else "NO"
        if isinstance(x, float):
            if math.isnan(x):
                return "nan"
            return f"{x:,.3f}" if abs(x) < 10 else f"{x:,.1f}"
        return str(x)

    header = ["figure", "value", "unit", "baseline", "ratio", "target", "met"]
    table = [[fmt(r[h]) for h in header] for r in rows]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for t in table:
        print("  ".join(c.ljust(w) for c, w in zip(t, widths, strict=True)))


def plot(results: dict[str, Any], path: Path) -> str:
    """Latency distributions and fan-out scaling as a PNG; returns what happened."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "skipped: matplotlib is not installed (pip install -e '.[bench]')"
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    series = [
        ("raw JetStream publish→receive", results.get("latency_raw", {})),
        (
            "secure sender→recipient",
            results.get("latency_secure", {}).get("sender_to_recipient", {}),
        ),
        (
            "secure sender→all receipts",
            results.get("latency_secure", {}).get("sender_to_all_receipts", {}),
        ),
    ]
    low = results.get("latency_secure_sustainable", {})
    for key, what in (
        ("sender_to_recipient", "recipient"),
        ("sender_to_all_receipts", "all receipts"),
    ):
        series.append((f"secure sender→{what} at {low.get('rate', 0):g} msg/s", low.get(key, {})))
    for name, part in series:
        samples = sorted(s / 1000 for s in part.get("samples_us", []))
        if samples:
            ys = [(i + 1) / len(samples) for i in range(len(samples))]
            style = "--" if " at " in name else "-"
            label = f"{name} (p50 {percentile(samples, 50):.2f} ms)"
            left.plot(samples, ys, style, label=label)
    left.set_xscale("log")
    left.set_xlabel("latency (ms, log scale)")
    left.set_ylabel("fraction of messages")
    left.set_title("Latency at 200 msg/s, and at a sustainable rate (dashed); CDF")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    fan = results.get("fan_out")
    if fan:
        ks = [lv["recipients"] for lv in fan["levels"]]
        per_msg = [lv["broker_cpu_us_per_msg"] for lv in fan["levels"]]
        per_rcpt = [lv["broker_cpu_us_per_recipient"] for lv in fan["levels"]]
        right.plot(ks, per_msg, "o-", label="broker CPU per message (µs)")
        right.plot(ks, per_rcpt, "s--", label="broker CPU per recipient (µs)")
        minus_idle = [lv["broker_cpu_us_per_msg_minus_idle"] for lv in fan["levels"]]
        right.plot(ks, minus_idle, "^-", label="per message, idle CPU subtracted (µs)")
        b, a = fan["marginal_broker_cpu_us_per_recipient"], fan["fixed_broker_cpu_us_per_msg"]
        right.plot(ks, [a + b * k for k in ks], ":", label=f"fit: {a:.0f} + {b:.0f}·k µs")
        raw_cost = results["raw"]["publisher_cpu_us_per_msg"]
        right.axhline(raw_cost, color="grey", lw=0.8, label=f"raw publish CPU ({raw_cost:.0f} µs)")
        right.set_xlabel("recipients per message")
        right.set_ylabel("CPU µs")
        right.set_title("Fan-out scaling (broker process CPU)")
        right.grid(True, alpha=0.3)
        right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"wrote {path}"


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        info["loadavg_at_start"] = Path("/proc/loadavg").read_text().split()[:3]
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts (< 60 s), a smoke test")
    parser.add_argument("--out", default="bench/results/latest.json")
    parser.add_argument("--plot", default="bench/results/latest.png")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SIZE=N",
        help="override one of the sizes, e.g. --set fanout_messages=100 (repeatable)",
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="run the broker under cProfile and write its stats to FILE (read with pstats)",
    )
    args = parser.parse_args()
    if args.profile:
        os.environ["SSR_BENCH_PROFILE"] = str(Path(args.profile).resolve())
    sizes = Sizes.quick() if args.quick else Sizes()
    for item in args.set:
        name, _, value = item.partition("=")
        current = getattr(sizes, name)  # AttributeError: not a size
        sizes = dataclasses.replace(sizes, **{name: type(current)(value)})
    began = time.monotonic()

    def log(text: str) -> None:
        print(f"[{time.monotonic() - began:6.1f} s] {text}", flush=True)

    root = Path(tempfile.mkdtemp(prefix="ssr-bench-"))
    bench = Bench(sizes, root)
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": args.quick,
        "machine": machine(),
        "sizes": dataclasses.asdict(sizes),
        "payload_bytes": PAYLOAD_BYTES,
        "targets": TARGETS,
    }
    error: str | None = None
    try:
        asyncio.run(_run(bench, log))
    except Exception as exc:  # report what was measured before the failure
        error = f"{type(exc).__name__}: {exc}"
        log(f"FAILED: {error}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results.update(bench.results)
    if bench.broker is not None:
        results["broker_log_tail"] = bench.broker.text[-40:]
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    results["seconds"] = round(time.monotonic() - began, 1)
    results["error"] = error
    rows = figures(results)
    results["figures"] = rows
    results["met"] = {r["figure"]: r["met"] for r in rows if r["met"] is not None}
    print()
    print_table(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"\nwrote {out}")
    try:
        print(plot(results, Path(args.plot)))
    except Exception as exc:  # the JSON is the result; a plot failure must not hide it
        print(f"plot skipped: {type(exc).__name__}: {exc}")
    print(f"total {results['seconds']} s")
    if error:
        sys.exit(1)


async def _run(bench: Bench, log: Callable[[str], None]) -> None:
    try:
        await bench.run(log)
    finally:
        await bench.close()


if __name__ == "__main__":
    main()
