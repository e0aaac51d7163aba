"""The broker's one configuration object, built at the edge (CLI or environment).

Nothing below this module reads the environment. ``BrokerConfig.from_env``
maps ``SSR_*`` variables; the CLI maps flags; tests construct it directly.

Data folder layout (``ssr up`` creates it for the demo region):

    <data_dir>/authority.pub        pinned registry-authority public key (hex)
    <data_dir>/directory/*.dir      signed directory versions, oldest first
    <data_dir>/keys/broker.key      the broker's secret key file (mode 600)
    <data_dir>/policy.toml          the policy (optional; default policy otherwise)
    <data_dir>/nats/                embedded nats-server store (when no NATS URL is set)
    <data_dir>/audit-index.sqlite   queryable index of the audit stream (rebuilt when missing)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

DEFAULT_HTTP_PORT = 8470
DAY_S = 24 * 3600.0


@dataclass(frozen=True)
class StreamSettings:
    """JetStream sizing: R1 embedded, R3 in a cluster."""

    replicas: int = 1
    deliver_max_age_s: float = 14 * DAY_S
    audit_max_age_s: float = 0.0  # 0: keep forever
    duplicate_window_s: float = 600.0
    max_msg_bytes: int = 4 * 1024 * 1024 + 64 * 1024  # the hard envelope ceiling plus headers
    message_state_ttl_s: float = 31 * DAY_S  # longest lifetime a policy allows, plus a day
    # At most this many of one actor's submissions wait in SSR_SUBMIT; JetStream refuses
    # the next publish until the broker has taken one (the sender's outbox retries). It
    # bounds how far a flooding sender can push others' messages back in the shared queue.
    submit_backlog_per_sender: int = 100

    def __post_init__(self) -> None:
        if self.replicas not in (1, 3, 5):
            raise ConfigError("replicas must be 1, 3 or 5", field="replicas")
        if self.duplicate_window_s <= 0:
            raise ConfigError("duplicate window must be positive", field="duplicate_window_s")
        if self.submit_backlog_per_sender < 1:
            raise ConfigError(
                "the submit backlog per sender must be at least 1",
                field="submit_backlog_per_sender",
            )


@dataclass(frozen=True)
class BrokerConfig:
    data_dir: Path
    nats_urls: tuple[str, ...] = ()  # empty: start an embedded nats-server
    nats_creds: Path | None = None
    nats_tls_ca: Path | None = None
    nats_startup_timeout_s: float = 15.0  # how long start-up tries to reach NATS
    http_host: str = "127.0.0.1"
    http_port: int = DEFAULT_HTTP_PORT
    streams: StreamSettings = field(default_factory=StreamSettings)
    fetch_batch: int = 32
    # Submissions held at once: routed concurrently across senders, in order per sender.
    # Above the submit backlog per sender, so one sender's backlog cannot fill it alone.
    max_in_flight: int = 256
    ack_wait_s: float = 30.0
    max_deliver: int = 20
    sweep_interval_s: float = 5.0
    join_interval_s: float = 1.0  # how often queued late joiners' grant requests go out
    audit_seal_interval_s: float = 2.0  # how often new audit events are sealed
    audit_verify_interval_s: float = 60.0  # how often the trail is verified (see below)
    # A check verifies what was added since the previous clean one; the whole trail is
    # verified again at start-up, after any finding or failed check and at least this
    # often. Tampering with events already verified shows at the next full check.
    audit_full_verify_interval_s: float = 3600.0
    shutdown_timeout_s: float = 15.0

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ConfigError("max_in_flight must be at least 1", field="max_in_flight")

    @property
    def embedded(self) -> bool:
        return not self.nats_urls

    @property
    def authority_key_file(self) -> Path:
        return self.data_dir / "authority.pub"

    @property
    def directory_dir(self) -> Path:
        return self.data_dir / "directory"

    @property
    def broker_key_file(self) -> Path:
        return self.data_dir / "keys" / "broker.key"

    @property
    def policy_file(self) -> Path:
        return self.data_dir / "policy.toml"

    @property
    def audit_index_file(self) -> Path:
        """The queryable index of the audit stream (rebuilt from the stream when missing)."""
        return self.data_dir / "audit-index.sqlite"

    @property
    def nats_dir(self) -> Path:
        return self.data_dir / "nats"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BrokerConfig:
        """``SSR_DATA_DIR``, ``SSR_NATS_URLS`` (comma-separated), ``SSR_NATS_CREDS``,
        ``SSR_NATS_TLS_CA``, ``SSR_HTTP_HOST``, ``SSR_HTTP_PORT``, ``SSR_REPLICAS``."""
        env = os.environ if env is None else env
        try:
            port = int(env.get("SSR_HTTP_PORT", DEFAULT_HTTP_PORT))
            replicas = int(env.get("SSR_REPLICAS", 1))
        except ValueError as exc:
            raise ConfigError(f"not a number: {exc}") from exc
        if not 0 <= port <= 65535:
            raise ConfigError("SSR_HTTP_PORT must be 0..65535", field="http_port")
        urls = tuple(u.strip() for u in env.get("SSR_NATS_URLS", "").split(",") if u.strip())
        creds = env.get("SSR_NATS_CREDS")
        ca = env.get("SSR_NATS_TLS_CA")
        return cls(
            data_dir=Path(env.get("SSR_DATA_DIR", "ssr-data")),
            nats_urls=urls,
            nats_creds=Path(creds) if creds else None,
            nats_tls_ca=Path(ca) if ca else None,
            http_host=env.get("SSR_HTTP_HOST", "127.0.0.1"),
            http_port=port,
            streams=StreamSettings(replicas=replicas),
        )
