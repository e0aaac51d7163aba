"""The ``ssr`` command line: keys, policy files, the signed directory (verify, show and
the authority's verbs in ``cli_directory``), sending and receiving as an actor (``send``,
``inbox``, ``status`` and ``directory publish`` in ``cli_messages``), the crisis verbs
(``activate``, ``situation``, ``request(s)``, ``press``, ``export``, ``import`` in
``cli_crisis``) and ``up``.

Exit codes: 0 success, 1 a check failed (a document does not verify),
2 bad usage or unreadable input. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from broker import __version__
from broker.core import (
    CoreError,
    DirectoryError,
    Identity,
    KeyFileError,
    PolicyError,
    load_identity,
    load_policy,
    save_identity,
    verify_chain,
)
from broker.core.limits import MAX_SAFE_INTEGER
from broker.core.wire import SLUG_PATTERN
from broker.datadir import authority_key
from broker.errors import ConfigError

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
MAX_INPUT_BYTES = 8 * 1024 * 1024


class CliError(Exception):
    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _read(path: str | Path, bound: int = MAX_INPUT_BYTES, what: str = "") -> bytes:
    """The bytes of ``path``, at most ``bound``: a larger regular file is refused before
    it is read, and reading stops one byte past the bound whatever the file is (a pipe,
    a device). Errors name ``what`` (e.g. ``policy``) and the path."""
    name = f"{what} {path}" if what else str(path)
    try:
        with Path(path).open("rb") as handle:
            if os.fstat(handle.fileno()).st_size > bound:
                raise CliError(f"{name}: larger than {bound} bytes")
            data = handle.read(bound + 1)
    except OSError as exc:
        raise CliError(f"{name}: {exc.strerror or exc}") from exc
    if len(data) > bound:
        raise CliError(f"{name}: larger than {bound} bytes")
    return data


def _public_key(value: str | Path) -> bytes:
    """An authority public key: 64 hex digits, or a file holding them."""
    try:
        return authority_key(value)
    except ConfigError as exc:
        raise CliError(exc.message) from exc


def _time(value: str, what: str, *, now: int | None = None, epoch_ms: bool = False) -> int:
    """An ISO 8601 time with a UTC offset as epoch milliseconds; also ``now`` (when
    ``now`` is given) or epoch milliseconds (with ``epoch_ms``)."""
    text = value.strip()
    if now is not None and text == "now":
        return now
    if epoch_ms and text.isascii() and text.isdigit():
        ms = int(text)
    else:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError as exc:
            also = " or epoch milliseconds" if epoch_ms else ""
            also += " (or 'now')" if now is not None else ""
            raise CliError(f"{what} {value!r}: not an ISO 8601 time{also}") from exc
        if moment.tzinfo is None:
            raise CliError(f"{what} {value!r} has no UTC offset; write e.g. 2026-09-21T14:00:00Z")
        ms = (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    if not 0 <= ms <= MAX_SAFE_INTEGER:
        raise CliError(f"{what} {value!r} is out of range")
    return ms


def _emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False) if args.json else text)


def cmd_keys_new(args: argparse.Namespace) -> int:
    if not re.match(SLUG_PATTERN, args.principal):
        raise CliError(f"principal {args.principal!r} must be a slug like 'nacka' or 'sos-alarm'")
    identity = Identity.generate(args.principal)
    save_identity(Path(args.out), identity)
    return _show(args, identity, f"wrote {args.out} (mode 600)")


def cmd_keys_show(args: argparse.Namespace) -> int:
    return _show(args, load_identity(Path(args.file)), str(args.file))


def _show(args: argparse.Namespace, identity: Identity, title: str) -> int:
    data = {
        "principal": identity.principal,
        "signing_key_id": identity.signing.key_id,
        "signing_public": identity.signing.public.hex(),
        "encryption_key_id": identity.encryption.key_id,
        "encryption_public": identity.encryption.public.hex(),
    }
    lines = [title] + [f"  {name}: {value}" for name, value in data.items()]
    _emit(args, data, "\n".join(lines))
    return EXIT_OK


def cmd_policy_check(args: argparse.Namespace) -> int:
    raw = _read(args.file)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CliError(f"{args.file}: not UTF-8 text") from exc
    try:
        policy = load_policy(text)
    except PolicyError as exc:
        raise CliError(f"{args.file}: {exc.message}", EXIT_CHECK_FAILED) from exc
    data = {
        "id": policy.id,
        "version": policy.version,
        "ceiling": policy.ceiling,
        "ladder": list(policy.ladder),
        "modes": sorted(policy.modes),
    }
    _emit(
        args,
        data,
        f"{args.file}: policy {policy.id} v{policy.version} is valid; ceiling {policy.ceiling}",
    )
    return EXIT_OK


def cmd_directory_verify(args: argparse.Namespace) -> int:
    pinned = _public_key(args.authority_key)
    versions = [_read(path) for path in args.files]
    try:
        directory = verify_chain(versions, pinned=pinned)
    except DirectoryError as exc:
        raise CliError(f"directory refused ({exc.code}): {exc.message}", EXIT_CHECK_FAILED) from exc
    document = directory.document
    data = {
        "region": document.region,
        "version": document.version,
        "hash": directory.hash,
        "actors": len(document.actors),
        "groups": len(document.groups),
        "officers": len(document.officers),
    }
    text = (
        f"directory {document.region} v{document.version} verifies "
        f"({len(versions)} version(s) chained)\n  hash: {directory.hash}\n"
        f"  actors: {data['actors']}, groups: {data['groups']}, officers: {data['officers']}"
    )
    _emit(args, data, text)
    return EXIT_OK


def cmd_up(args: argparse.Namespace) -> int:
    import asyncio
    import dataclasses
    import logging

    from broker.config import BrokerConfig
    from broker.errors import BrokerError
    from broker.up import up

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = BrokerConfig.from_env()
    changes: dict[str, Any] = {}
    if args.data_dir:
        changes["data_dir"] = Path(args.data_dir)
    if args.nats:
        changes["nats_urls"] = tuple(args.nats)
    if args.http_port is not None:
        changes["http_port"] = args.http_port
    config = dataclasses.replace(config, **changes)
    try:
        asyncio.run(up(config, demo=not args.no_demo, once=args.once))
    except BrokerError as exc:
        raise CliError(f"{exc.code}: {exc.message}") from exc
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssr",
        description="ssr-broker: secure information sharing for Samverkan Stockholmsregionen.",
    )
    parser.add_argument("--version", action="version", version=f"ssr {__version__}")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    keys = commands.add_parser("keys", help="create and inspect key files").add_subparsers(
        dest="verb", metavar="VERB", required=True
    )
    new = keys.add_parser("new", help="create a signing and an encryption key pair")
    new.add_argument("--principal", required=True, help="actor or officer id, e.g. nacka")
    new.add_argument("--out", required=True, help="secret key file to create (mode 600)")
    new.set_defaults(handler=cmd_keys_new)
    show = keys.add_parser("show", help="print the public keys and key ids of a key file")
    show.add_argument("file")
    show.set_defaults(handler=cmd_keys_show)

    policy = commands.add_parser("policy", help="policy files").add_subparsers(
        dest="verb", metavar="VERB", required=True
    )
    check = policy.add_parser("check", help="validate a policy file")
    check.add_argument("file")
    check.set_defaults(handler=cmd_policy_check)

    directory = commands.add_parser("directory", help="the signed directory").add_subparsers(
        dest="verb", metavar="VERB", required=True
    )
    verify = directory.add_parser("verify", help="verify a chain of directory versions")
    verify.add_argument(
        "--authority-key", required=True, help="pinned authority public key (hex or file)"
    )
    verify.add_argument("files", nargs="+", help="directory version files, oldest first")
    verify.set_defaults(handler=cmd_directory_verify)
    # Imported here: clients.cli_directory builds on this module's helpers.
    from clients.cli_directory import add_directory_verbs

    add_directory_verbs(directory)
    from clients.cli_messages import add_publish_verb

    add_publish_verb(directory)

    run = commands.add_parser(
        "up", help="run the broker (embedded NATS and the demo region by default)"
    )
    run.add_argument("--data-dir", help="data folder (default: $SSR_DATA_DIR or ./ssr-data)")
    run.add_argument(
        "--nats",
        action="append",
        metavar="URL",
        help="NATS server URL (repeatable); none: embedded",
    )
    run.add_argument("--http-port", type=int, help="HTTP port for /healthz, /readyz, /metrics")
    run.add_argument(
        "--no-demo", action="store_true", help="do not create or exercise the demo region"
    )
    run.add_argument(
        "--once", action="store_true", help="stop after the demo scenario (for scripts and tests)"
    )
    run.set_defaults(handler=cmd_up)
    # send, inbox, status and the global --demo-dir (imported here: it builds on this module).
    from clients.cli_messages import add_message_verbs

    add_message_verbs(parser, commands)
    from clients.cli_crisis import add_crisis_verbs

    add_crisis_verbs(commands)
    from clients.cli_audit import add_audit_verbs

    add_audit_verbs(commands)
    from clients.cli_officer import add_officer_verbs

    add_officer_verbs(commands)
    from clients.cli_ingest import add_ingest_verbs

    add_ingest_verbs(commands)
    from clients.cli_deploy import add_deploy_verbs

    add_deploy_verbs(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except CliError as exc:
        print(f"ssr: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyFileError as exc:
        print(f"ssr: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except CoreError as exc:
        print(f"ssr: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())
