"""``ssr audit verify`` and ``ssr audit export``: the tamper-evident audit trail from the
command line (``broker.auditlog``).

- ``ssr audit verify --data-dir DIR [--nats URL]`` reads the whole trail from NATS and
  checks it against its signed checkpoints and the latest checkpoint in the state
  bucket; it names every place where it breaks. Exit 0 verified, 1 not.
- ``ssr audit verify --export FILE --authority-key HEX|FILE`` checks an export
  offline, with only the pinned authority key.
- ``ssr audit export --data-dir DIR --from T --to T [--actor ID] --out FILE`` writes a
  signed export (signed with the broker key in ``DIR/keys/broker.key``).

Times are ISO 8601 with a timezone, or epoch milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from clients.cli import (
    EXIT_CHECK_FAILED,
    EXIT_OK,
    CliError,
    _emit,
    _public_key,
    _read,
    _time,
)

MAX_EXPORT_READ = 512 * 1024 * 1024


def _findings_text(report: dict[str, Any], title: str) -> str:
    lines = [title]
    lines.append(
        f"  events: {report.get('events', 0)}, checkpoints: {report.get('checkpoints', 0)},"
        f" sealed through sequence {report.get('sealed_through', 0)},"
        f" not yet sealed: {report.get('unsealed', 0)}"
    )
    for finding in report["findings"][:50]:
        where = f"sequence {finding['seq']}" if finding["seq"] is not None else "trail"
        lines.append(f"  ✗ {where}: {finding['problem']}: {finding['detail']}")
    if len(report["findings"]) > 50:
        lines.append(f"  ... {len(report['findings']) - 50} more (use --json)")
    return "\n".join(lines)


def _config(args: argparse.Namespace) -> Any:
    from broker.config import BrokerConfig
    from broker.up import NATS_URL_FILE

    config = BrokerConfig.from_env()
    if args.data_dir:
        config = replace(config, data_dir=Path(args.data_dir))
    urls = tuple(args.nats or ())
    url_file = config.data_dir / NATS_URL_FILE
    if not urls and not config.nats_urls and url_file.is_file():
        urls = (url_file.read_text(encoding="ascii").strip(),)
    if urls:
        config = replace(config, nats_urls=urls)
    if not config.nats_urls:
        raise CliError(
            f"no NATS server: give --nats URL, set SSR_NATS_URLS, or run the broker so that "
            f"{url_file} exists"
        )
    return config


async def _connect(config: Any) -> Any:
    from broker.bus import JetStreamBus
    from broker.errors import NatsUnavailable

    try:
        bus = await JetStreamBus.connect(config.nats_urls, config=config, startup_timeout=10.0)
        await bus.bind_buckets("ssr_state", "ssr_directory")
    except NatsUnavailable as exc:
        raise CliError(exc.message, EXIT_CHECK_FAILED) from exc
    return bus


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from broker.auditlog import verify_export

    if args.export:
        if not args.authority_key:
            raise CliError("--export needs --authority-key (the pinned authority public key)")
        pinned = _public_key(args.authority_key)
        path = Path(args.export)
        data = _read(path, MAX_EXPORT_READ)
        report = verify_export(data, pinned).as_dict()
        title = f"export {path}: " + ("verifies" if report["verified"] else "DOES NOT VERIFY")
        _emit(args, report, _findings_text(report, title))
        return EXIT_OK if report["verified"] else EXIT_CHECK_FAILED
    return asyncio.run(_verify_online(args))


async def _verify_online(args: argparse.Namespace) -> int:
    from broker import datadir
    from broker.auditlog import directory_versions, verify_stream
    from broker.errors import BrokerError

    config = _config(args)
    try:
        pinned = datadir.pinned_authority(config)
    except BrokerError as exc:
        raise CliError(exc.message) from exc
    bus = await _connect(config)
    try:
        versions = await directory_versions(bus, pinned)
        if not versions:
            raise CliError("no directory version in NATS verifies against the pinned key", 1)
        report = (await verify_stream(bus, versions, anchor=_anchor(args.expect))).as_dict()
    finally:
        await bus.close()
    title = "audit trail: " + ("verifies" if report["verified"] else "DOES NOT VERIFY")
    _emit(args, report, _findings_text(report, title))
    return EXIT_OK if report["verified"] else EXIT_CHECK_FAILED


def _anchor(value: str | None) -> dict[str, Any] | None:
    """``--expect N:HASH``: a checkpoint noted earlier, outside NATS."""
    if value is None:
        return None
    number, _, digest = value.partition(":")
    if not (number.isascii() and number.isdigit() and len(digest) == 64):
        raise CliError("--expect takes NUMBER:HASH of a checkpoint (see /api/v1/audit/status)")
    try:
        bytes.fromhex(digest)
    except ValueError as exc:
        raise CliError("--expect: the hash must be 64 hex digits") from exc
    return {"number": int(number), "hash": digest.lower()}


def cmd_audit_export(args: argparse.Namespace) -> int:
    start = _time(args.start, "--from", epoch_ms=True)
    end = _time(args.end, "--to", epoch_ms=True)
    if end <= start:
        raise CliError("--to must be later than --from")
    out = Path(args.out)
    if out.exists():
        raise CliError(f"{out} exists; not overwriting it")
    return asyncio.run(_export(args, start, end, out))


async def _export(args: argparse.Namespace, start: int, end: int, out: Path) -> int:
    import time

    from broker import datadir, subjects
    from broker.auditlog import (
        CHECKPOINT_KEY,
        ExportRefused,
        build_export,
        directory_versions,
        read_trail,
    )
    from broker.core.auditchain import AuditChainError, parse_checkpoint
    from broker.errors import BrokerError

    config = _config(args)
    try:
        pinned = datadir.pinned_authority(config)
        directory = datadir.verified_directory(datadir.directory_files(config), pinned)
        identity = datadir.broker_identity(config, directory)
    except BrokerError as exc:
        raise CliError(exc.message) from exc
    bus = await _connect(config)
    try:
        versions = await directory_versions(bus, pinned) or [directory]
        latest = await bus.kv_get(subjects.STATE_BUCKET, CHECKPOINT_KEY)
        entries = await read_trail(bus)
    finally:
        await bus.close()
    expected = None
    if latest is not None:
        try:
            checkpoint = parse_checkpoint(latest.value)
            expected = {"number": checkpoint.number, "hash": checkpoint.hash}
        except AuditChainError:
            expected = {"number": -1, "hash": ""}  # unreadable: the export is refused below
    try:
        data, summary = build_export(
            entries,
            directories=versions,
            start=start,
            end=end,
            actor=args.actor,
            identity=identity,
            at=time.time_ns() // 1_000_000,
            expected_latest=expected,
        )
    except ExportRefused as exc:
        raise CliError(f"not exported: {exc.message}", EXIT_CHECK_FAILED) from exc
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    result = {
        "file": str(out),
        "bytes": len(data),
        "selected": summary.selected,
        "redacted": summary.redacted,
        "unsealed_left_out": summary.unsealed_left_out,
        "first_seq": summary.first_seq,
        "last_seq": summary.last_seq,
    }
    text = (
        f"wrote {out} ({len(data)} bytes): {summary.selected} event(s),"
        f" {summary.redacted} other sealed event(s) redacted to their hashes,"
        f" sequences {summary.first_seq}..{summary.last_seq}"
    )
    if summary.unsealed_left_out:
        text += f"; {summary.unsealed_left_out} matching event(s) not sealed yet were left out"
    _emit(args, result, text)
    return EXIT_OK


def add_audit_verbs(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = commands.add_parser("audit", help="the tamper-evident audit trail").add_subparsers(
        dest="verb", metavar="VERB", required=True
    )
    verify = audit.add_parser("verify", help="verify the trail (from NATS) or an export (offline)")
    verify.add_argument("--data-dir", help="the broker's data folder (online verification)")
    verify.add_argument("--nats", action="append", metavar="URL", help="NATS URL (repeatable)")
    verify.add_argument("--export", metavar="FILE", help="verify this export file offline")
    verify.add_argument(
        "--authority-key", metavar="HEX|FILE", help="pinned authority key (with --export)"
    )
    verify.add_argument(
        "--expect",
        metavar="N:HASH",
        help="a checkpoint noted earlier outside NATS: the trail must still hold it",
    )
    verify.set_defaults(handler=cmd_audit_verify)
    export = audit.add_parser("export", help="write a signed export of part of the trail")
    export.add_argument("--data-dir", help="the broker's data folder (broker key, authority key)")
    export.add_argument("--nats", action="append", metavar="URL", help="NATS URL (repeatable)")
    export.add_argument("--from", dest="start", required=True, metavar="TIME")
    export.add_argument("--to", dest="end", required=True, metavar="TIME")
    export.add_argument("--actor", metavar="ID", help="only events concerning this actor")
    export.add_argument("--out", required=True, metavar="FILE", help="file to create (mode 600)")
    export.set_defaults(handler=cmd_audit_export)
