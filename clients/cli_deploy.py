"""``ssr deploy nats-config``: NATS server configs with one user per actor, from the directory.

Verifies the directory chain in ``--dir`` against the pinned authority key, generates
random passwords, and writes into a new ``--out`` folder (never overwriting)::

    OUTDIR/nats.conf                  single node, or node-1.conf .. node-3.conf (--cluster 3)
    OUTDIR/creds/<actor>.url          the actor's NATS URL(s), user and password included
    OUTDIR/creds/ssr_broker.url       the broker's

Every file is mode 0600: the server configs hold the passwords in plain text. Each
written config is then checked with ``nats-server --config FILE -t``; exit 1 if the
server refuses one. The permission set is described in :mod:`broker.deploy`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path
from typing import Any

from broker import deploy
from broker.embedded import nats_server_binary
from broker.errors import EmbeddedNatsError
from clients.cli import EXIT_CHECK_FAILED, EXIT_OK, CliError, _emit
from clients.cli_directory import _chain_folder, _pinned, _verify_files, _version_files

CHECK_TIMEOUT_S = 20.0  # for one 'nats-server -t'
FILE_MODE = 0o600
DIR_MODE = 0o700


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 from the start; refuse an existing file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(text)


def check_config(path: Path, binary: Path | None = None) -> tuple[bool, str]:
    """Run ``nats-server --config path -t``: (accepted, what the server said)."""
    try:
        server = binary or nats_server_binary()
    except EmbeddedNatsError as exc:
        return False, exc.message
    try:
        done = subprocess.run(  # noqa: S603 - our own binary, our own file
            [str(server), "--config", str(path), "-t"],
            capture_output=True,
            text=True,
            timeout=CHECK_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    return done.returncode == 0, (done.stdout + done.stderr).strip()


def _options(args: argparse.Namespace) -> deploy.DeployOptions:
    tls_given = [args.tls_cert, args.tls_key, args.tls_ca]
    if any(tls_given) and not (args.tls_cert and args.tls_key):
        raise CliError("TLS needs at least --tls-cert and --tls-key (and --tls-ca to verify)")
    tls = (
        deploy.TlsFiles(
            str(Path(args.tls_cert).resolve()),
            str(Path(args.tls_key).resolve()),
            str(Path(args.tls_ca).resolve()) if args.tls_ca else None,
        )
        if args.tls_cert
        else None
    )
    for name in ("port", "cluster_port", "monitor_port"):
        value = getattr(args, name)
        if not 1 <= value <= 65535 - deploy.CLUSTER_SIZE:
            raise CliError(f"--{name.replace('_', '-')} {value}: not a usable port")
    return deploy.DeployOptions(
        host=args.host,
        port=args.port,
        cluster_port=args.cluster_port,
        monitor_port=args.monitor_port,
        store_dir=args.store_dir,
        tls=tls,
    )


def cmd_nats_config(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists():
        raise CliError(f"{out}: exists; give a new folder (nothing is overwritten)")
    folder, data_dir = _chain_folder(args.dir)
    pinned = _pinned(args, data_dir)
    if pinned is None:
        raise CliError("give --authority-key (the pinned authority public key, hex or file)")
    directory = _verify_files(_version_files(folder), pinned)
    options = _options(args)
    users = deploy.nats_users(directory, deploy.random_password)
    nodes = args.cluster
    if nodes == 1:
        configs = {"nats.conf": deploy.render_single(users, options)}
    else:
        texts = deploy.render_cluster(users, options, deploy.random_password(deploy.ROUTE_USER))
        configs = {f"node-{i + 1}.conf": text for i, text in enumerate(texts)}

    out.mkdir(parents=True, mode=DIR_MODE)
    (out / "creds").mkdir(mode=DIR_MODE)
    for name, text in configs.items():
        _write_private(out / name, text)
    for user in users:
        urls = deploy.client_urls(user, options, nodes)
        _write_private(out / "creds" / f"{user.name}.url", "\n".join(urls) + "\n")

    results: dict[str, Any] = {}
    failed = False
    for name in configs:
        accepted, said = check_config(out / name)
        results[name] = {"accepted": accepted, "nats_server": said}
        failed |= not accepted
    lines = [f"wrote {out} ({len(users) - 1} actors + broker, {len(configs)} config file(s))"]
    lines += [
        f"  {name}: {'accepted' if r['accepted'] else 'REFUSED'} by nats-server -t"
        + ("" if r["accepted"] else f"\n    {r['nats_server']}")
        for name, r in results.items()
    ]
    lines.append("  the configs hold passwords in plain text: keep them 0600 on the server only")
    if nodes > 1:
        lines.append("  run the broker with SSR_REPLICAS=3 (streams and buckets in R3)")
    _emit(
        args,
        {"out": str(out), "users": [u.name for u in users], "configs": results},
        "\n".join(lines),
    )
    return EXIT_CHECK_FAILED if failed else EXIT_OK


def _cluster_size(value: str) -> int:
    if value not in ("1", str(deploy.CLUSTER_SIZE)):
        raise argparse.ArgumentTypeError(f"1 or {deploy.CLUSTER_SIZE}")
    return int(value)


def add_deploy_verbs(commands: Any) -> None:
    verbs = commands.add_parser("deploy", help="deployment files").add_subparsers(
        dest="verb", metavar="VERB", required=True
    )
    config = verbs.add_parser(
        "nats-config", help="NATS server config with one user per actor, from the directory"
    )
    config.add_argument(
        "--dir", required=True, help="folder of vNNNNNNNN.dir files, or the broker data folder"
    )
    config.add_argument(
        "--authority-key",
        help="pinned authority public key, hex or file (default: authority.pub in the data folder)",
    )
    config.add_argument("--out", required=True, help="new folder to write into")
    config.add_argument("--cluster", type=_cluster_size, default=1, help="1 (default) or 3 nodes")
    config.add_argument("--host", default=deploy.DEFAULT_HOST, help="listen address")
    config.add_argument("--port", type=int, default=deploy.DEFAULT_PORT, help="client port")
    config.add_argument(
        "--cluster-port", type=int, default=deploy.DEFAULT_CLUSTER_PORT, help="route port"
    )
    config.add_argument(
        "--monitor-port", type=int, default=deploy.DEFAULT_MONITOR_PORT, help="HTTP monitor port"
    )
    config.add_argument(
        "--store-dir", default=deploy.DEFAULT_STORE_DIR, help="JetStream store folder"
    )
    config.add_argument("--tls-cert", help="server certificate (PEM)")
    config.add_argument("--tls-key", help="server private key (PEM)")
    config.add_argument("--tls-ca", help="CA of client certificates; enables verify: true")
    config.set_defaults(handler=cmd_nats_config)
