"""The alert adapter's configuration: one TOML file read into one typed, frozen object.

    [adapter]
    actor = "sos-alarm"                 # the adapter is an actor with its own keys
    keys = "keys/sos-alarm.key"
    authority_key = "authority.pub"     # 64 hex digits, or a file holding them
    servers = ["nats://127.0.0.1:4222"]
    state_dir = "state"                 # the client's outbox, inbox, directory; ingest state
    policy = "policy.toml"              # optional: the built-in policy without it
    # directory_dir = "directory"       # optional: signed directory versions (v*.dir)
    # demo_dir = "../ssr-data"          # an 'ssr up' folder fills in what is not given
    rules = "rules.toml"
    quarantine_dir = "quarantine"
    http_host = "127.0.0.1"             # /metrics, /healthz and the webhooks
    http_port = 8471
    default_lifetime_s = 86400          # envelope lifetime for an alert without expiry

    [[source]]
    name = "vma"
    format = "cap-xml"                  # cap-xml, cap-json, trafikverket, datex2
    mode = "poll"                       # poll, webhook or files
    url = "https://example.org/vma.xml"
    interval_s = 60

Relative paths are relative to the configuration file's folder. Secrets never sit in
the file: a webhook's ``secret_env`` and ``${NAME}`` in a poll source's ``headers``
or ``body`` name environment variables, read here (the edge) and nowhere deeper.

:func:`load_config` raises :class:`IngestConfigError` naming the file, the line
where it can be found, and the field: ``ingest.toml:14: source "vma": interval_s
must be a number of seconds from 0.05 to 86400``.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, NoReturn
from urllib.parse import urlsplit

from broker.core.wire import SLUG_PATTERN

from .._errors import ClientError
from .formats import PARSERS

__all__ = [
    "DEFAULT_HTTP_HOST",
    "DEFAULT_HTTP_PORT",
    "DEFAULT_LIFETIME_S",
    "IngestConfig",
    "IngestConfigError",
    "Mode",
    "SourceConfig",
    "load_config",
    "parse_config",
]

DEFAULT_HTTP_HOST: Final = "127.0.0.1"  # loopback unless the operator says otherwise
DEFAULT_HTTP_PORT: Final = 8471  # the broker's is 8470
DEFAULT_LIFETIME_S: Final = 24 * 3600.0
DEFAULT_INTERVAL_S: Final = 60.0  # poll
DEFAULT_SCAN_INTERVAL_S: Final = 2.0  # files
DEFAULT_TIMEOUT_S: Final = 30.0
DEFAULT_MAX_BACKOFF_S: Final = 900.0
MIN_INTERVAL_S: Final = 0.05
MAX_INTERVAL_S: Final = 86_400.0
MAX_TIMEOUT_S: Final = 600.0
MAX_LIFETIME_S: Final = 30 * 86_400.0
MAX_CONFIG_BYTES: Final = 1024 * 1024
MAX_BODY_BYTES: Final = 64 * 1024  # a poll request's body
MAX_SOURCES: Final = 64
MAX_HEADERS: Final = 32
MAX_SERVERS: Final = 16
MAX_TEXT_CHARS: Final = 2000  # a URL, a header value, a path
MIN_SECRET_BYTES: Final = 16  # a webhook's shared secret
NATS_URL_FILE: Final = "nats.url"  # written by 'ssr up' into its data folder
NATS_SCHEMES: Final = ("nats", "tls", "ws", "wss")
RESERVED_PATHS: Final = ("/metrics", "/healthz")

Mode = Literal["poll", "webhook", "files"]
MODES: Final[tuple[Mode, ...]] = ("poll", "webhook", "files")
# Formats whose complete poll response lists every open item, so an item that is gone has ended.
SNAPSHOT_FORMATS: Final = ("trafikverket", "datex2")

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_ENV_REF = re.compile(r"\$\{([^}]*)\}")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")
_WEBHOOK_PATH = re.compile(r"^/[A-Za-z0-9._~/-]{1,200}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

_ADAPTER_KEYS = frozenset(
    {
        "actor",
        "keys",
        "authority_key",
        "servers",
        "state_dir",
        "policy",
        "demo_dir",
        "directory_dir",
        "rules",
        "quarantine_dir",
        "http_host",
        "http_port",
        "default_lifetime_s",
    }
)
_COMMON_SOURCE_KEYS = frozenset({"name", "format", "mode"})
_MODE_KEYS: Final[dict[str, frozenset[str]]] = {
    "poll": frozenset(
        {
            "url",
            "method",
            "body",
            "body_file",
            "headers",
            "interval_s",
            "timeout_s",
            "max_backoff_s",
            "complete",
        }
    ),
    "webhook": frozenset({"path", "secret_env"}),
    "files": frozenset({"directory", "interval_s"}),
}


class IngestConfigError(ClientError):
    """The adapter's configuration is invalid; ``field`` and ``line`` say where."""

    code = "ingest_config"

    def __init__(self, message: str, *, field: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.line = line


@dataclass(frozen=True)
class SourceConfig:
    """One feed: where its documents come from and how they are read."""

    name: str  # a slug: metrics label, quarantine file names, state key
    format: str  # a key of PARSERS
    mode: Mode
    # poll
    url: str = ""
    method: Literal["GET", "POST"] = "GET"
    body: bytes = field(default=b"", repr=False)  # may hold an API key (Trafikverket)
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    interval_s: float = DEFAULT_INTERVAL_S  # poll: between requests; files: between scans
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_backoff_s: float = DEFAULT_MAX_BACKOFF_S
    complete: bool = False  # poll: each response lists every open item
    # webhook
    path: str = ""
    secret_env: str = ""
    secret: bytes = field(default=b"", repr=False)
    # files
    directory: Path | None = None


@dataclass(frozen=True)
class IngestConfig:
    """Everything ``ssr ingest`` needs, resolved at the edge. Build with :func:`load_config`."""

    path: Path  # the configuration file
    actor: str
    keys: Path
    authority_key: str  # 64 hex digits or a file holding them; the client reads it
    servers: tuple[str, ...]
    state_dir: Path
    policy_file: Path | None
    directory_dir: Path | None  # signed directory versions to start from (v*.dir), if any
    rules_file: Path
    quarantine_dir: Path
    sources: tuple[SourceConfig, ...]
    http_host: str = DEFAULT_HTTP_HOST
    http_port: int = DEFAULT_HTTP_PORT
    default_lifetime_s: float = DEFAULT_LIFETIME_S

    @property
    def state_file(self) -> Path:
        """The adapter's own record of what it has seen and sent (beside the client's stores)."""
        return self.state_dir / "ingest.sqlite"

    def source(self, name: str) -> SourceConfig:
        for source in self.sources:
            if source.name == name:
                return source
        raise KeyError(name)


def load_config(path: str | os.PathLike[str], env: Mapping[str, str]) -> IngestConfig:
    """Read and check the configuration file at ``path``; ``env`` supplies the secrets."""
    file = Path(path)
    try:
        with file.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise IngestConfigError(f"{file}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise IngestConfigError(f"{file}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IngestConfigError(f"{file}: not UTF-8 text") from exc
    return parse_config(text, file, env)


def parse_config(text: str, path: Path, env: Mapping[str, str]) -> IngestConfig:
    """The configuration in ``text``; relative paths are taken from ``path``'s folder."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise IngestConfigError(f"{path}: not valid TOML: {exc}") from exc
    except RecursionError as exc:  # tomllib has no nesting bound
        raise IngestConfigError(f"{path}: arrays or tables nested too deeply") from exc
    except ValueError as exc:  # a number of more than 4300 digits
        raise IngestConfigError(f"{path}: a value cannot be read: {exc}") from exc
    return _Reader(text, path, env).read(data)


class _Reader:
    """Turns the parsed TOML into :class:`IngestConfig`, with errors that point at lines."""

    def __init__(self, text: str, path: Path, env: Mapping[str, str]) -> None:
        self.lines = text.splitlines()
        self.path = path
        self.base = path.parent
        self.env = env

    # --- errors ---------------------------------------------------------------------------

    def fail(
        self, where: str, key: str | None, problem: str, section: int | None = None
    ) -> NoReturn:
        line = self._line(key, section)
        at = f"{self.path}:{line}" if line else str(self.path)
        name = f"{where}: {key}" if key else where
        raise IngestConfigError(f"{at}: {name} {problem}", field=key, line=line)

    def _line(self, key: str | None, section: int | None) -> int | None:
        """The line of ``key`` in ``[adapter]`` (section None) or the n-th ``[[source]]``."""
        header = re.compile(
            r"^\s*\[\[\s*source\s*\]\]" if section is not None else r"^\s*\[\s*adapter\s*\]"
        )
        seen, start = -1, None
        for number, line in enumerate(self.lines, 1):
            if header.match(line):
                seen += 1
                if section is None or seen == section:
                    start = number
                    break
        if start is None:
            return None
        if key is None:
            return start
        pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
        for number in range(start, len(self.lines)):
            line = self.lines[number]
            if re.match(r"^\s*\[", line):
                break
            if pattern.match(line):
                return number + 1
        return start

    # --- the whole file ------------------------------------------------------------------------

    def read(self, data: dict[str, Any]) -> IngestConfig:
        unknown = set(data) - {"adapter", "source"}
        if unknown:
            raise IngestConfigError(
                f"{self.path}: unknown table {sorted(unknown)[0]!r} "
                "(expected [adapter] and [[source]])",
                field=sorted(unknown)[0],
            )
        adapter = data.get("adapter")
        if not isinstance(adapter, dict):
            raise IngestConfigError(f"{self.path}: no [adapter] table", field="adapter")
        where = "[adapter]"
        self._unknown_keys(adapter, _ADAPTER_KEYS, where, None)

        demo = self._path(adapter, "demo_dir", where, None)
        if demo is not None and not demo.is_dir():
            self.fail(where, "demo_dir", f"{demo} is not a folder")
        actor = self._text(adapter, "actor", where, None)
        if actor is None:
            self.fail(where, "actor", "is required (the adapter's actor id, e.g. 'sos-alarm')")
        if not re.match(SLUG_PATTERN, actor):
            self.fail(where, "actor", f"{actor!r} must be an actor id like 'sos-alarm'")

        keys = self._path(adapter, "keys", where, None)
        if keys is None and demo is not None:
            keys = demo / "keys" / f"{actor}.key"
        if keys is None:
            self.fail(where, "keys", "is required (the actor's secret key file), or give demo_dir")

        authority = self._text(adapter, "authority_key", where, None)
        if authority is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", authority):
            authority = str(self._resolve(authority))
        if authority is None and demo is not None:
            authority = str(demo / "authority.pub")
        if authority is None:
            self.fail(
                where, "authority_key", "is required (64 hex digits or a file), or give demo_dir"
            )

        servers = self._servers(adapter, demo, where)
        state_dir = self._path(adapter, "state_dir", where, None)
        if state_dir is None and demo is not None:
            state_dir = demo / "clients" / actor
        if state_dir is None:
            self.fail(
                where, "state_dir", "is required (the adapter's state folder), or give demo_dir"
            )

        policy = self._path(adapter, "policy", where, None)
        if policy is None and demo is not None and (demo / "policy.toml").is_file():
            policy = demo / "policy.toml"
        directory_dir = self._path(adapter, "directory_dir", where, None)
        if directory_dir is None and demo is not None and (demo / "directory").is_dir():
            directory_dir = demo / "directory"
        if directory_dir is not None and not directory_dir.is_dir():
            self.fail(where, "directory_dir", f"{directory_dir} is not a folder")
        rules = self._path(adapter, "rules", where, None) or self._resolve("rules.toml")
        quarantine = self._path(adapter, "quarantine_dir", where, None)
        if quarantine is None:
            quarantine = state_dir / "quarantine"

        host = self._text(adapter, "http_host", where, None) or DEFAULT_HTTP_HOST
        port = adapter.get("http_port", DEFAULT_HTTP_PORT)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            self.fail(where, "http_port", "must be a port number from 0 to 65535 (0: any free)")
        lifetime = self._seconds(
            adapter, "default_lifetime_s", where, None, DEFAULT_LIFETIME_S, 60.0, MAX_LIFETIME_S
        )

        raw_sources = data.get("source", [])
        if not isinstance(raw_sources, list) or not all(isinstance(s, dict) for s in raw_sources):
            raise IngestConfigError(
                f"{self.path}: source must be [[source]] tables", field="source"
            )
        if not raw_sources:
            raise IngestConfigError(f"{self.path}: no [[source]] given", field="source")
        if len(raw_sources) > MAX_SOURCES:
            raise IngestConfigError(f"{self.path}: at most {MAX_SOURCES} sources", field="source")
        sources = tuple(self._source(s, index) for index, s in enumerate(raw_sources))
        self._distinct(sources)
        return IngestConfig(
            path=self.path,
            actor=actor,
            keys=keys,
            authority_key=authority,
            servers=servers,
            state_dir=state_dir,
            policy_file=policy,
            directory_dir=directory_dir,
            rules_file=rules,
            quarantine_dir=quarantine,
            sources=sources,
            http_host=host,
            http_port=port,
            default_lifetime_s=lifetime,
        )

    def _servers(self, adapter: dict[str, Any], demo: Path | None, where: str) -> tuple[str, ...]:
        value = adapter.get("servers")
        if value is None and demo is not None:
            try:
                value = re.split(r"[\s,]+", (demo / NATS_URL_FILE).read_text("ascii").strip())
            except (OSError, UnicodeDecodeError):
                self.fail(
                    where,
                    "servers",
                    f"not given and {demo / NATS_URL_FILE} cannot be read (is 'ssr up' running?)",
                )
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            self.fail(
                where, "servers", 'must be a list of NATS URLs, e.g. ["nats://127.0.0.1:4222"]'
            )
        if len(value) > MAX_SERVERS:
            self.fail(where, "servers", f"may list at most {MAX_SERVERS} URLs")
        for url in value:
            parts = urlsplit(url) if len(url) <= MAX_TEXT_CHARS else None
            if parts is None or parts.scheme not in NATS_SCHEMES or not parts.hostname:
                self.fail(
                    where,
                    "servers",
                    f"{url[:80]!r} is not a NATS URL like nats://127.0.0.1:4222",
                )
        return tuple(value)

    # --- one source ---------------------------------------------------------------------------

    def _source(self, raw: dict[str, Any], index: int) -> SourceConfig:
        where = f"[[source]] #{index + 1}"
        name = self._text(raw, "name", where, index)
        if name is None or not re.match(r"^[a-z0-9][a-z0-9-]{0,62}$", name):
            self.fail(where, "name", "must be a short slug like 'vma' or 'trafikverket-e4'", index)
        where = f"source {name!r}"
        fmt = self._text(raw, "format", where, index)
        if fmt not in PARSERS:
            self.fail(where, "format", f"must be one of {', '.join(sorted(PARSERS))}", index)
        mode = self._text(raw, "mode", where, index)
        if mode not in MODES:
            self.fail(where, "mode", f"must be one of {', '.join(MODES)}", index)
        self._unknown_keys(raw, _COMMON_SOURCE_KEYS | _MODE_KEYS[str(mode)], where, index)
        if mode == "poll":
            return self._poll(raw, index, where, name, fmt)
        if mode == "webhook":
            return self._webhook(raw, index, where, name, fmt)
        return self._files(raw, index, where, name, fmt)

    def _poll(
        self, raw: dict[str, Any], index: int, where: str, name: str, fmt: str
    ) -> SourceConfig:
        url = self._text(raw, "url", where, index) or ""
        parts = urlsplit(url) if url else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            self.fail(where, "url", "must be an http:// or https:// URL", index)
        method = (self._text(raw, "method", where, index) or "GET").upper()
        if method not in ("GET", "POST"):
            self.fail(where, "method", "must be GET or POST", index)
        if "body" in raw and "body_file" in raw:
            self.fail(where, "body_file", "and body exclude each other", index)
        body_text = self._text(raw, "body", where, index)
        body_file = self._path(raw, "body_file", where, index)
        if body_file is not None:
            try:
                body_text = body_file.read_text("utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                self.fail(
                    where, "body_file", f"{body_file}: cannot be read as UTF-8 ({exc})", index
                )
        body = self._expand(body_text or "", where, "body", index).encode("utf-8")
        if len(body) > MAX_BODY_BYTES:
            self.fail(where, "body", f"is larger than {MAX_BODY_BYTES} bytes", index)
        if body and method != "POST":
            self.fail(where, "method", "must be POST when a body is given", index)
        interval = self._seconds(raw, "interval_s", where, index, DEFAULT_INTERVAL_S)
        timeout = self._seconds(
            raw, "timeout_s", where, index, DEFAULT_TIMEOUT_S, maximum=MAX_TIMEOUT_S
        )
        backoff = self._seconds(
            raw, "max_backoff_s", where, index, max(DEFAULT_MAX_BACKOFF_S, interval)
        )
        if backoff < interval:
            self.fail(where, "max_backoff_s", f"must be at least interval_s ({interval:g})", index)
        complete = raw.get("complete", fmt == "trafikverket")
        if not isinstance(complete, bool):
            self.fail(where, "complete", "must be true or false", index)
        if complete and fmt not in SNAPSHOT_FORMATS:
            self.fail(
                where,
                "complete",
                f"applies only to {' and '.join(SNAPSHOT_FORMATS)} (CAP messages never list "
                "what is still open)",
                index,
            )
        return SourceConfig(
            name=name,
            format=fmt,
            mode="poll",
            url=url,
            method="POST" if method == "POST" else "GET",
            body=body,
            headers=self._headers(raw, where, index),
            interval_s=interval,
            timeout_s=timeout,
            max_backoff_s=backoff,
            complete=complete,
        )

    def _webhook(
        self, raw: dict[str, Any], index: int, where: str, name: str, fmt: str
    ) -> SourceConfig:
        path = self._text(raw, "path", where, index) or f"/webhooks/{name}"
        if not _WEBHOOK_PATH.match(path) or ".." in path or path in RESERVED_PATHS:
            self.fail(
                where,
                "path",
                "must be a URL path like /webhooks/sos (not /metrics, /healthz)",
                index,
            )
        variable = self._text(raw, "secret_env", where, index)
        if variable is None or not _ENV_NAME.match(variable):
            self.fail(
                where,
                "secret_env",
                "must name the environment variable that holds the shared secret",
                index,
            )
        secret = self.env.get(variable, "")
        if len(secret.encode("utf-8")) < MIN_SECRET_BYTES:
            state = "is not set" if not secret else f"holds fewer than {MIN_SECRET_BYTES} bytes"
            self.fail(
                where, "secret_env", f"${variable} {state} (the webhook's shared secret)", index
            )
        return SourceConfig(
            name=name,
            format=fmt,
            mode="webhook",
            path=path,
            secret_env=variable,
            secret=secret.encode("utf-8"),
        )

    def _files(
        self, raw: dict[str, Any], index: int, where: str, name: str, fmt: str
    ) -> SourceConfig:
        directory = self._path(raw, "directory", where, index)
        if directory is None:
            self.fail(where, "directory", "is required (the drop folder)", index)
        interval = self._seconds(raw, "interval_s", where, index, DEFAULT_SCAN_INTERVAL_S)
        return SourceConfig(
            name=name, format=fmt, mode="files", directory=directory, interval_s=interval
        )

    def _distinct(self, sources: tuple[SourceConfig, ...]) -> None:
        for kind, values in (
            ("name", [s.name for s in sources]),
            ("path", [s.path for s in sources if s.mode == "webhook"]),
            ("directory", [str(s.directory) for s in sources if s.mode == "files"]),
        ):
            for index, value in enumerate(values):
                if value in values[:index]:
                    where = f"source {sources[index].name!r}" if kind != "name" else "[[source]]"
                    raise IngestConfigError(
                        f"{self.path}: {where}: two sources share the {kind} {value!r}", field=kind
                    )

    # --- values ---------------------------------------------------------------------------------

    def _unknown_keys(
        self, table: dict[str, Any], known: frozenset[str], where: str, section: int | None
    ) -> None:
        for key in table:
            if key not in known:
                self.fail(
                    where,
                    key,
                    f"is not a known setting here (known: {', '.join(sorted(known))})",
                    section,
                )

    def _text(self, table: dict[str, Any], key: str, where: str, section: int | None) -> str | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(where, key, "must be a non-empty string", section)
        if len(value) > MAX_BODY_BYTES or (
            key != "body" and (len(value) > MAX_TEXT_CHARS or _CONTROL.search(value))
        ):
            self.fail(where, key, "is too long or holds control characters", section)
        return str(value).strip() if key != "body" else str(value)

    def _path(
        self, table: dict[str, Any], key: str, where: str, section: int | None
    ) -> Path | None:
        value = self._text(table, key, where, section)
        return None if value is None else self._resolve(value)

    def _resolve(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base / path

    def _seconds(
        self,
        table: dict[str, Any],
        key: str,
        where: str,
        section: int | None,
        default: float,
        minimum: float = MIN_INTERVAL_S,
        maximum: float = MAX_INTERVAL_S,
    ) -> float:
        value = table.get(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not minimum <= value <= maximum
        ):
            self.fail(
                where, key, f"must be a number of seconds from {minimum:g} to {maximum:g}", section
            )
        return float(value)

    def _headers(self, raw: dict[str, Any], where: str, index: int) -> tuple[tuple[str, str], ...]:
        table = raw.get("headers", {})
        if not isinstance(table, dict):
            self.fail(
                where,
                "headers",
                'must be a table, e.g. headers = { Accept = "application/xml" }',
                index,
            )
        if len(table) > MAX_HEADERS:
            self.fail(where, "headers", f"may hold at most {MAX_HEADERS} headers", index)
        headers = []
        for name, value in table.items():
            if not _HEADER_NAME.match(name):
                self.fail(where, "headers", f"{name[:40]!r} is not a header name", index)
            if not isinstance(value, str) or len(value) > MAX_TEXT_CHARS or _CONTROL.search(value):
                self.fail(where, "headers", f"{name}: the value must be one line of text", index)
            if name.lower() in ("host", "content-length", "if-none-match", "if-modified-since"):
                self.fail(where, "headers", f"{name} is set by the adapter itself", index)
            expanded = self._expand(value, where, "headers", index)
            if _CONTROL.search(expanded):
                self.fail(
                    where,
                    "headers",
                    f"{name}: the environment variable holds control characters",
                    index,
                )
            headers.append((name, expanded))
        return tuple(headers)

    def _expand(self, text: str, where: str, key: str, section: int) -> str:
        """``${NAME}`` replaced by the environment variable NAME (which must be set)."""

        def value(match: re.Match[str]) -> str:
            name = match.group(1)
            if not _ENV_NAME.match(name):
                self.fail(
                    where, key, f"${{{name[:40]}}} is not an environment variable name", section
                )
            if name not in self.env:
                self.fail(
                    where, key, f"uses ${{{name}}}, which is not set in the environment", section
                )
            return self.env[name]

        return _ENV_REF.sub(value, text)
