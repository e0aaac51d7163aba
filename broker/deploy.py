"""NATS server configuration generated from the signed directory: who may touch which subject.

Defence in depth (DESIGN.md §3): even with a broker bug or a stolen actor password, an
actor's NATS user can only publish to its own ``ssr.submit.<actor>``, consume its own
``ssr.deliver.<actor>`` through its own durable consumer, and read (never write) the
KV buckets. The broker user has full rights on the SSR subjects and the JetStream API.

Pure: a :class:`~broker.core.VerifiedDirectory` and :class:`DeployOptions` in, config
text out; the passwords come from a function passed in (``secrets.token_urlsafe`` in
:func:`random_password`), so a fixed set of placeholders gives the checked-in examples.

    users = nats_users(directory, random_password)
    text = render_single(users, DeployOptions(store_dir="/var/lib/ssr-nats"))

The permission set per actor ``A`` (worked out against nats-server 2.15 and nats-py 2.16,
see ``tests/test_deploy_nats.py``)::

    publish   ssr.submit.A                                         its submissions
              $JS.API.CONSUMER.INFO.SSR_DELIVER.ssr-client-A       bind its consumer
              $JS.API.CONSUMER.CREATE.SSR_DELIVER.ssr-client-A.ssr.deliver.A
                                                                   create it, filter pinned
              $JS.API.CONSUMER.MSG.NEXT.SSR_DELIVER.ssr-client-A   fetch
              $JS.ACK.SSR_DELIVER.ssr-client-A.>                   ack
              $JS.API.STREAM.INFO.KV_<b>                           bind a bucket
              $JS.API.DIRECT.GET.KV_<b>.>, $JS.API.STREAM.MSG.GET.KV_<b>   get a key
              $JS.API.CONSUMER.CREATE.KV_<b>, $JS.API.CONSUMER.INFO.KV_<b>.>,
              $JS.FC.KV_<b>.>                                      keys/watch (ordered consumer)
    subscribe _INBOX_A.>                                           replies and fetched messages

The KV grants cover the incident message index in ``ssr_index``: a client lists
``<incident>.>`` with a watch (the filter travels in the consumer request to
``CONSUMER.CREATE.KV_ssr_index``, which carries no consumer name) and reads entries by key.
Like ``ssr_messages``, it is readable by every actor's user: header metadata of every
incident, not only the actor's own (see docs/decisions.md).

Not allowed, so refused by the server: ``$KV.>`` (KV writes), other actors' submit and
deliver subjects, the legacy ``CONSUMER.DURABLE.CREATE`` (its filter is not in the
subject, so it could point a consumer at another actor's deliveries), and any stream
management. Replies and fetched messages use a per-actor inbox prefix (``_INBOX_<actor>``,
set by the client library), so no actor can listen on another's inbox.

Known limit of subject permissions: nats-server does not check a consumer's
``deliver_subject`` against its creator's publish permissions. An actor allowed to
create a consumer on a KV stream (needed for ``keys``/``watch``) can make the server push
that stream's (broker-written) entries onto any subject, another actor's submit subject
included. The broker must therefore keep checking that a submission's signed sender is
the actor of its subject; separate NATS accounts per actor would close this fully.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from broker import subjects
from broker.core import ActorStatus, VerifiedDirectory
from broker.embedded import DEFAULT_MAX_PAYLOAD

__all__ = [
    "BROKER_USER",
    "CLUSTER_SIZE",
    "DEFAULT_CLUSTER_PORT",
    "DEFAULT_HOST",
    "DEFAULT_MONITOR_PORT",
    "DEFAULT_PORT",
    "DEFAULT_STORE_DIR",
    "ROUTE_USER",
    "DeployOptions",
    "NatsUser",
    "Permissions",
    "TlsFiles",
    "actor_permissions",
    "broker_permissions",
    "client_urls",
    "nats_users",
    "placeholder_password",
    "random_password",
    "render_cluster",
    "render_single",
]

BROKER_USER = "ssr_broker"  # an underscore: no directory slug can take this name
ROUTE_USER = "ssr_route"  # cluster routes authenticate as this user
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4222
DEFAULT_CLUSTER_PORT = 6222
DEFAULT_MONITOR_PORT = 8222
DEFAULT_STORE_DIR = "/var/lib/ssr-nats"
CLUSTER_SIZE = 3
PASSWORD_BYTES = 32
MAX_PAYLOAD = DEFAULT_MAX_PAYLOAD  # as the embedded server: a 4 MiB envelope plus headers
KV_BUCKETS = (
    subjects.DIRECTORY_BUCKET,
    subjects.STATE_BUCKET,
    subjects.MESSAGES_BUCKET,
    subjects.INDEX_BUCKET,
)
JS_API = "$JS.API"


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


@dataclass(frozen=True)
class NatsUser:
    name: str
    password: str = field(repr=False)
    permissions: Permissions


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for the client (and route) listener; with ``ca``, client certificates are
    verified too (``verify: true``)."""

    cert: str
    key: str
    ca: str | None = None


@dataclass(frozen=True)
class DeployOptions:
    """Where the server(s) listen and store. In a cluster, node ``i`` (1-based) uses
    ``port + i - 1``, ``cluster_port + i - 1``, ``monitor_port + i - 1`` and
    ``<store_dir>/node-<i>``: three nodes on one host; edit the routes for three hosts."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    cluster_port: int = DEFAULT_CLUSTER_PORT
    monitor_port: int = DEFAULT_MONITOR_PORT
    store_dir: str = DEFAULT_STORE_DIR
    tls: TlsFiles | None = None
    sync_always: bool = True
    cluster_name: str = "ssr"


# --- users and permissions ----------------------------------------------------------------


def random_password(user: str) -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


def placeholder_password(user: str) -> str:
    return f"CHANGE-ME-{user}"


def _kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


def actor_permissions(actor: str) -> Permissions:
    """What actor ``actor``'s client needs, and nothing of any other actor."""
    durable = f"ssr-client-{actor}"
    deliver = subjects.DELIVER_STREAM
    publish = [
        subjects.submit_subject(actor),
        f"{JS_API}.CONSUMER.INFO.{deliver}.{durable}",
        f"{JS_API}.CONSUMER.CREATE.{deliver}.{durable}.{subjects.deliver_subject(actor)}",
        f"{JS_API}.CONSUMER.MSG.NEXT.{deliver}.{durable}",
        f"$JS.ACK.{deliver}.{durable}.>",
    ]
    for bucket in KV_BUCKETS:
        stream = _kv_stream(bucket)
        publish += [
            f"{JS_API}.STREAM.INFO.{stream}",
            f"{JS_API}.DIRECT.GET.{stream}.>",
            f"{JS_API}.STREAM.MSG.GET.{stream}",
            f"{JS_API}.CONSUMER.CREATE.{stream}",
            f"{JS_API}.CONSUMER.INFO.{stream}.>",
            f"$JS.FC.{stream}.>",
        ]
    # The client library sets this inbox prefix (clients._transport.inbox_prefix).
    return Permissions(publish=tuple(publish), subscribe=(f"_INBOX_{actor}.>",))


def broker_permissions() -> Permissions:
    everything = ("ssr.>", f"{JS_API}.>", "$JS.ACK.>", "$JS.FC.>", "$KV.>", "_INBOX.>")
    return Permissions(publish=everything, subscribe=everything)


def nats_users(
    directory: VerifiedDirectory, password: Callable[[str], str] = random_password
) -> tuple[NatsUser, ...]:
    """The broker user, then one user per actor that is not retired (by actor id).

    Suspended actors keep their user: the broker refuses their submissions with a reason,
    and they still receive notices. A retired actor has no user at all.
    """
    users = [NatsUser(BROKER_USER, password(BROKER_USER), broker_permissions())]
    for actor in directory.document.actors:
        if actor.status is not ActorStatus.RETIRED:
            users.append(NatsUser(actor.id, password(actor.id), actor_permissions(actor.id)))
    return tuple(users)


def client_urls(user: NatsUser, options: DeployOptions, nodes: int = 1) -> tuple[str, ...]:
    """The URLs a user connects with (one per node), user and password included."""
    scheme = "tls" if options.tls is not None else "nats"
    host = _client_host(options.host)
    return tuple(
        f"{scheme}://{user.name}:{user.password}@{_host_port(host, options.port + i)}"
        for i in range(nodes)
    )


# --- rendering ------------------------------------------------------------------------------


def _q(value: str) -> str:
    # A JSON string is a valid double-quoted string in the NATS config syntax.
    return json.dumps(value, ensure_ascii=False)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _client_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104


def _list(values: tuple[str, ...], indent: str) -> list[str]:
    return [f"{indent}{_q(v)}" for v in values]


def _authorization(users: tuple[NatsUser, ...]) -> list[str]:
    lines = ["authorization {", "  users = ["]
    for user in users:
        lines += [
            "    {",
            f"      user: {_q(user.name)}",
            f"      password: {_q(user.password)}",
            "      permissions: {",
            "        publish: { allow: [",
            *_list(user.permissions.publish, "          "),
            "        ] }",
            "        subscribe: { allow: [",
            *_list(user.permissions.subscribe, "          "),
            "        ] }",
            "      }",
            "    }",
        ]
    return [*lines, "  ]", "}"]


def _tls(tls: TlsFiles | None, indent: str = "") -> list[str]:
    if tls is None:
        return []
    lines = [
        f"{indent}tls {{",
        f"{indent}  cert_file: {_q(tls.cert)}",
        f"{indent}  key_file: {_q(tls.key)}",
    ]
    if tls.ca is not None:
        lines += [f"{indent}  ca_file: {_q(tls.ca)}", f"{indent}  verify: true"]
    return [*lines, f"{indent}}}"]


def _header(title: str) -> list[str]:
    return [
        f"# {title}",
        "# Generated by 'ssr deploy nats-config' from the signed directory.",
        "# It holds every NATS password in plain text (bcrypt hashes would need a library",
        "# ssr-broker does not ship): keep it mode 0600, owned by the nats-server user, on",
        "# the server only (e.g. /etc/nats/), never in version control or backups in clear.",
    ]


def _server(
    users: tuple[NatsUser, ...], options: DeployOptions, node: int, store_dir: str, name: str
) -> list[str]:
    lines = [
        f"server_name: {_q(name)}",
        f"listen: {_q(_host_port(options.host, options.port + node))}",
        "# Monitoring (/healthz, /varz) on loopback only; it needs no NATS user.",
        f"http: {_q(_host_port('127.0.0.1', options.monitor_port + node))}",
        f"max_payload: {MAX_PAYLOAD}",
        "",
        "jetstream {",
        f"  store_dir: {_q(store_dir)}",
    ]
    if options.sync_always:
        lines.append("  # fsync every write before JetStream acknowledges it")
        lines.append("  sync_interval: always")
    lines += ["}", ""]
    lines += _tls(options.tls)
    if options.tls is not None:
        lines.append("")
    return [*lines, *_authorization(users)]


def render_single(users: tuple[NatsUser, ...], options: DeployOptions) -> str:
    """One nats-server with JetStream; streams with one replica (``SSR_REPLICAS=1``)."""
    lines = _header("nats-server for ssr-broker: a single node")
    lines += ["", *_server(users, options, 0, options.store_dir, "ssr-nats-1")]
    return "\n".join(lines) + "\n"


def render_cluster(
    users: tuple[NatsUser, ...], options: DeployOptions, route_password: str
) -> tuple[str, ...]:
    """Three nodes (``node-1.conf`` .. ``node-3.conf``) forming one JetStream cluster.

    Run the broker with ``SSR_REPLICAS=3`` (``StreamSettings(replicas=3)``): every stream
    and bucket is then kept on all three nodes (R3) and survives the loss of one.
    """
    route_host = _client_host(options.host)
    configs = []
    for node in range(CLUSTER_SIZE):
        name = f"ssr-nats-{node + 1}"
        lines = _header(
            f"nats-server for ssr-broker: node {node + 1} of a {CLUSTER_SIZE}-node "
            "JetStream cluster"
        )
        lines += [
            "# Streams and buckets use three replicas: run the broker with SSR_REPLICAS=3.",
            "",
            *_server(users, options, node, f"{options.store_dir}/node-{node + 1}", name),
            "",
            "cluster {",
            f"  name: {_q(options.cluster_name)}",
            f"  listen: {_q(_host_port(options.host, options.cluster_port + node))}",
            "  authorization {",
            f"    user: {_q(ROUTE_USER)}",
            f"    password: {_q(route_password)}",
            "  }",
            *_tls(options.tls, "  "),
            "  routes = [",
        ]
        scheme = "nats-route"
        for other in range(CLUSTER_SIZE):
            if other != node:
                address = _host_port(route_host, options.cluster_port + other)
                lines.append(f"    {_q(f'{scheme}://{ROUTE_USER}:{route_password}@{address}')}")
        lines += ["  ]", "}"]
        configs.append("\n".join(lines) + "\n")
    return tuple(configs)
