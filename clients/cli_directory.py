"""The registry authority's directory verbs of ``ssr``: read, edit and sign the directory chain.

Reading: ``show`` verifies a chain and prints who is in it; ``draft`` prints the
current document as the editable JSON of the next version.

Writing: ``add-actor``, ``rotate-key``, ``revoke``, ``set-clearance`` and
``sign`` each load and verify the chain in ``--dir``, build the next
:class:`DirectoryDocument`, sign it with the authority's secret key file, verify
the signed bytes as the successor exactly as a broker will, and only then write
them, as ``vNNNNNNNN.dir`` next to the chain (never overwriting) or to ``--out``.
Nothing is written when any step fails.

``--dir`` takes the folder of ``*.dir`` files or the broker's data folder
(``<data>/directory``). The chain is pinned to ``--authority-key`` when given,
else to ``<data>/authority.pub``, else (edits only) to the authority key file's
own public key.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from broker.core import (
    Actor,
    ActorKind,
    ActorStatus,
    BrokerService,
    DirectoryDocument,
    DirectoryError,
    KeyRecord,
    Ladder,
    Officer,
    PolicyError,
    Role,
    SigningKeyPair,
    VerifiedDirectory,
    canonical,
    crypto,
    load_identity,
    load_policy,
    sign_directory,
    successor,
    verify_directory,
)
from broker.core.errors import CanonicalJsonError
from broker.core.keys import KEY_FILE_KIND
from broker.core.limits import MAX_KEYS_PER_ACTOR
from broker.core.wire import SLUG_PATTERN, validation_error
from clients.cli import (
    EXIT_CHECK_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    MAX_INPUT_BYTES,
    CliError,
    _emit,
    _public_key,
    _read,
    _time,
)

DAY_MS = 24 * 3600 * 1000
DEFAULT_KEY_VALIDITY_DAYS = 730  # two years, as the demo region issues
DEFAULT_OVERLAP_DAYS = 7  # long enough for messages in flight and clients to fetch the version
MAX_DAYS = 10 * 366
MAX_PUBLIC_KEYS_BYTES = 16 * 1024  # 'ssr keys show --json' prints about 300 bytes

M = TypeVar("M", bound=BaseModel)


# --- small parsers --------------------------------------------------------------------


def _clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _iso(ms: int) -> str:
    """UTC time as ISO 8601 with a Z, milliseconds only when there are any."""
    moment = datetime.fromtimestamp(ms // 1000, UTC) + timedelta(milliseconds=ms % 1000)
    text = moment.isoformat(timespec="milliseconds" if ms % 1000 else "seconds")
    return text.replace("+00:00", "Z")


def _days(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of days from ``minimum`` to ``MAX_DAYS``."""

    def parse(value: str) -> int:
        try:
            days = int(value)
        except ValueError:
            days = -1
        if not minimum <= days <= MAX_DAYS:
            raise argparse.ArgumentTypeError(f"need a whole number of days, {minimum}..{MAX_DAYS}")
        return days

    return parse


def _slug(value: str, what: str) -> str:
    if not re.match(SLUG_PATTERN, value):
        raise CliError(f"{what} {value!r} must be a slug like 'nacka' or 'sos-alarm'")
    return value


def _slugs(values: Iterable[str] | None, what: str) -> tuple[str, ...]:
    return tuple(sorted({_slug(v, what) for v in values or ()}))


def _model(cls: type[M], what: str, exit_code: int = EXIT_USAGE, **fields: Any) -> M:
    """Build a wire model with full validation (``model_copy`` would skip it)."""
    try:
        return cls(**fields)
    except ValidationError as exc:
        raise CliError(validation_error(exc, what).message, exit_code) from exc


def _replace(model: M, **changes: Any) -> M:
    fields = dict(model) | changes
    return _model(type(model), type(model).__name__, EXIT_CHECK_FAILED, **fields)


def _json_file(path: str, *, max_bytes: int) -> Any:
    raw = _read(path, max_bytes)
    try:
        return canonical.loads(raw, max_bytes=max_bytes, require_canonical=False)
    except CanonicalJsonError as exc:
        raise CliError(f"{path}: {exc.message}") from exc


# --- the chain on disk ----------------------------------------------------------------


def _chain_folder(value: str) -> tuple[Path, Path | None]:
    """The folder of ``*.dir`` files and, when recognisable, the broker data folder."""
    folder = Path(value)
    if not folder.is_dir():
        raise CliError(f"{value}: no such folder")
    if not any(folder.glob("*.dir")) and (folder / "directory").is_dir():
        return folder / "directory", folder
    return folder, (folder.parent if folder.name == "directory" else None)


def _version_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.dir"))
    if not files:
        raise CliError(f"{folder}: no signed directory versions (*.dir)")
    return files


def _verify_files(paths: Sequence[Path], pinned: bytes) -> VerifiedDirectory:
    """Verify versions oldest first, holding one version in memory at a time."""
    current: VerifiedDirectory | None = None
    for path in paths:
        if path.exists() and not path.is_file():
            raise CliError(f"{path}: not a regular file")
        try:
            current = verify_directory(_read(str(path)), pinned=pinned, previous=current)
        except DirectoryError as exc:
            raise CliError(
                f"{path}: directory refused ({exc.code}): {exc.message}", EXIT_CHECK_FAILED
            ) from exc
    if current is None:
        raise CliError("no directory versions given")
    return current


def _pinned(args: argparse.Namespace, data_dir: Path | None) -> bytes | None:
    if args.authority_key:
        return _public_key(args.authority_key)
    if data_dir is not None and (data_dir / "authority.pub").is_file():
        return _public_key(data_dir / "authority.pub")
    return None


def _read_chain(args: argparse.Namespace) -> tuple[VerifiedDirectory, int, Path | None]:
    """Verify the chain named by ``--dir`` or ``files`` (for show and draft)."""
    data_dir: Path | None = None
    if args.dir and args.files:
        raise CliError("give either --dir or version files, not both")
    if args.dir:
        folder, data_dir = _chain_folder(args.dir)
        files = _version_files(folder)
    elif args.files:
        files = [Path(f) for f in args.files]
    else:
        raise CliError("give --dir FOLDER or the version files, oldest first")
    pinned = _pinned(args, data_dir)
    if pinned is None:
        raise CliError("give --authority-key (the pinned authority public key, hex or file)")
    return _verify_files(files, pinned), len(files), data_dir


def _write_new(target: Path, data: bytes) -> None:
    """Create ``target`` with ``data`` atomically; never overwrite.

    Written under a temporary name and hard-linked into place, so a broker reading
    the folder never sees half a version and a concurrent writer cannot be clobbered.
    """
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(temporary, target)
    except FileExistsError as exc:
        raise CliError(f"{target} exists; refusing to overwrite it") from exc
    except OSError as exc:
        raise CliError(f"cannot write {target}: {exc.strerror}") from exc
    finally:
        temporary.unlink(missing_ok=True)


# --- describing a directory -------------------------------------------------------------


def _key_state(record: KeyRecord, at: int) -> str:
    if record.revoked_by(at):
        return "revoked"
    if at < record.not_before:
        return "not yet valid"
    if at >= record.not_after:
        return "expired"
    return "usable"


def _key_data(record: KeyRecord, at: int) -> dict[str, Any]:
    return {
        "key_id": record.key_id,
        "not_before": _iso(record.not_before),
        "not_after": _iso(record.not_after),
        "revoked_at": None if record.revoked_at is None else _iso(record.revoked_at),
        "state": _key_state(record, at),
    }


def _key_line(kind: str, key: dict[str, Any]) -> str:
    state = key["state"]
    if key["revoked_at"]:  # revoked now, or a revocation that is still to come
        state += (
            f" at {key['revoked_at']}"
            if state == "revoked"
            else f", revoked from {key['revoked_at']}"
        )
    return f"    {kind:<10} {key['key_id']}  {key['not_before']} .. {key['not_after']}  {state}"


def _listed(values: Iterable[str]) -> str:
    return ", ".join(values) or "-"


def describe(directory: VerifiedDirectory, *, at: int) -> dict[str, Any]:
    """The directory as plain data: what ``show --json`` prints (key states at ``at``)."""
    doc = directory.document

    def keys(records: tuple[KeyRecord, ...]) -> list[dict[str, Any]]:
        return [_key_data(k, at) for k in records]

    return {
        "region": doc.region,
        "version": doc.version,
        "hash": directory.hash,
        "previous": doc.previous,
        "issued": _iso(doc.issued),
        "authority_keys": keys(doc.authority_keys),
        "actors": [
            {
                "id": a.id,
                "name": a.name,
                "kind": a.kind.value,
                "status": a.status.value,
                "clearance": a.clearance,
                "categories": list(a.categories),
                "groups": list(a.groups),
                "roles": [r.value for r in a.roles],
                "signing_keys": keys(a.signing_keys),
                "encryption_keys": keys(a.encryption_keys),
            }
            for a in doc.actors
        ],
        "groups": [
            {"id": g.id, "name": g.name, "members": list(directory.members(g.id) or ())}
            for g in doc.groups
        ],
        "officers": [
            {"id": o.id, "name": o.name, "scope": o.actor, "signing_keys": keys(o.signing_keys)}
            for o in doc.officers
        ],
        "brokers": [
            {"id": b.id, "name": b.name, "signing_keys": keys(b.signing_keys)} for b in doc.brokers
        ],
    }


def _show_text(data: dict[str, Any], chained: int, at: int) -> str:
    lines = [
        f"directory {data['region']} v{data['version']} verifies "
        f"({chained} version(s) chained; key states at {_iso(at)})",
        f"  hash: {data['hash']}",
        f"  issued: {data['issued']}",
        "  authority keys:",
        *(_key_line("signing", k) for k in data["authority_keys"]),
        f"actors ({len(data['actors'])}):",
    ]
    for a in data["actors"]:
        lines.append(f"  {a['id']}  {a['name']}")
        lines.append(
            f"    {a['kind']}, {a['status']}; clearance {a['clearance']}; "
            f"categories {_listed(a['categories'])}; groups {_listed(a['groups'])}; "
            f"roles {_listed(a['roles'])}"
        )
        lines += [_key_line("signing", k) for k in a["signing_keys"]]
        lines += [_key_line("encryption", k) for k in a["encryption_keys"]]
    lines.append(f"groups ({len(data['groups'])}):")
    for g in data["groups"]:
        lines.append(f"  {g['id']}  {g['name']} ({len(g['members'])} members)")
        lines.append(f"    {_listed(g['members'])}")
    lines.append(f"officers ({len(data['officers'])}):")
    for o in data["officers"]:
        lines.append(f"  {o['id']}  {o['name']} (scope: {o['scope'] or 'whole region'})")
        lines += [_key_line("signing", k) for k in o["signing_keys"]]
    lines.append(f"brokers ({len(data['brokers'])}):")
    for b in data["brokers"]:
        lines.append(f"  {b['id']}  {b['name']}")
        lines += [_key_line("signing", k) for k in b["signing_keys"]]
    return "\n".join(lines)


def _value(value: Any) -> str:
    if isinstance(value, tuple):
        return _listed(str(_value(v)) for v in value)
    if value is None:
        return "-"
    return str(getattr(value, "value", value))


def _key_changes(
    where: str, kind: str, before: Iterable[KeyRecord], after: Iterable[KeyRecord]
) -> Iterator[str]:
    old = {k.key_id: k for k in before}
    new = {k.key_id: k for k in after}
    for key_id, k in new.items():
        if key_id not in old:
            yield (
                f"{where}: added {kind} key {key_id} "
                f"(valid {_iso(k.not_before)} .. {_iso(k.not_after)})"
            )
            continue
        was = old[key_id]
        if k.revoked_at != was.revoked_at:
            yield (
                f"{where}: {kind} key {key_id} revoked at {_iso(k.revoked_at)}"
                if k.revoked_at is not None
                else f"{where}: {kind} key {key_id} revocation REMOVED"
            )
        for bound in ("not_before", "not_after"):
            if getattr(k, bound) != getattr(was, bound):
                yield (
                    f"{where}: {kind} key {key_id} {bound} {_iso(getattr(k, bound))} "
                    f"(was {_iso(getattr(was, bound))})"
                )
    for key_id in old.keys() - new.keys():
        yield f"{where}: removed {kind} key {key_id}"


_KEY_FIELDS = {"signing_keys": "signing", "encryption_keys": "encryption"}


def _entity_changes(kind: str, before: Sequence[Any], after: Sequence[Any]) -> Iterator[str]:
    old = {e.id: e for e in before}
    new = {e.id: e for e in after}
    for entity_id, entity in new.items():
        if entity_id not in old:
            yield f"added {kind} {entity_id} ({entity.name})"
            continue
        was = old[entity_id]
        for name in type(entity).model_fields:
            a, b = getattr(was, name), getattr(entity, name)
            if a == b:
                continue
            if name in _KEY_FIELDS:
                yield from _key_changes(f"{kind} {entity_id}", _KEY_FIELDS[name], a, b)
            else:
                yield f"{kind} {entity_id}: {name} {_value(b)} (was {_value(a)})"
    for entity_id in sorted(old.keys() - new.keys()):
        yield f"removed {kind} {entity_id}"


def changes_between(before: DirectoryDocument, after: DirectoryDocument) -> list[str]:
    """What a new version changes, one line per change (keys, fields, entries)."""
    found = (
        [f"region {after.region} (was {before.region})"] if after.region != before.region else []
    )
    found += _key_changes("authority", "signing", before.authority_keys, after.authority_keys)
    found += _entity_changes("actor", before.actors, after.actors)
    found += _entity_changes("group", before.groups, after.groups)
    found += _entity_changes("officer", before.officers, after.officers)
    found += _entity_changes("broker", before.brokers, after.brokers)
    return found


# --- reading verbs ----------------------------------------------------------------------


def cmd_show(args: argparse.Namespace) -> int:
    directory, chained, _ = _read_chain(args)
    at = _time(args.at, "--at", now=_clock_ms())
    data = describe(directory, at=at)
    _emit(args, data | {"versions_chained": chained}, _show_text(data, chained, at))
    return EXIT_OK


def cmd_draft(args: argparse.Namespace) -> int:
    """Print the current document as the next version's JSON, for ``sign --document``."""
    directory, _, _ = _read_chain(args)
    draft = directory.document.wire()
    draft |= {"version": directory.version + 1, "previous": directory.hash}
    del draft["issued"]  # sign fills in the time of signing
    print(json.dumps(draft, indent=2, ensure_ascii=False))
    return EXIT_OK


# --- editing: the shared path -------------------------------------------------------------


@dataclass(frozen=True)
class Edit:
    """A verified chain and a checked authority key, ready to produce the next version."""

    current: VerifiedDirectory
    pinned: bytes
    authority: SigningKeyPair
    issued: int
    target: Path
    data_dir: Path | None

    @property
    def document(self) -> DirectoryDocument:
        return self.current.document


def _ladder(args: argparse.Namespace, data_dir: Path | None) -> Ladder:
    """The ladder of ``--policy``, else of the data folder's policy, else the standard one."""
    path = Path(args.policy) if args.policy else None
    if path is None and data_dir is not None and (data_dir / "policy.toml").is_file():
        path = data_dir / "policy.toml"
    if path is None:
        return Ladder()
    try:
        text = _read(str(path)).decode("utf-8")
        return load_policy(text).ladder_order
    except UnicodeDecodeError as exc:
        raise CliError(f"{path}: not UTF-8 text") from exc
    except PolicyError as exc:
        raise CliError(f"{path}: {exc.message}") from exc


def _begin(args: argparse.Namespace) -> Edit:
    folder, data_dir = _chain_folder(args.dir)
    files = _version_files(folder)
    identity = load_identity(Path(args.authority_key_file))  # KeyFileError: exit 2
    pinned = _pinned(args, data_dir) or identity.signing.public
    current = _verify_files(files, pinned)
    issued = _time(args.issued, "--issued", now=_clock_ms())
    key_id = identity.signing.key_id
    record = next((k for k in current.document.authority_keys if k.key_id == key_id), None)
    if record is None:
        listed = _listed(k.key_id for k in current.document.authority_keys)
        raise CliError(
            f"{args.authority_key_file}: key {key_id} is not an authority key of directory "
            f"v{current.version} (authority keys: {listed})"
        )
    if not record.usable_at(issued):
        raise CliError(
            f"{args.authority_key_file}: authority key {key_id} is not usable at {_iso(issued)}"
        )
    target = Path(args.out) if args.out else folder / f"v{current.version + 1:08d}.dir"
    if target.exists() or target.is_symlink():
        raise CliError(f"{target} exists; refusing to overwrite it")
    return Edit(current, pinned, identity.signing, issued, target, data_dir)


def _publish(args: argparse.Namespace, edit: Edit, document: DirectoryDocument) -> int:
    """Sign, verify as the successor, write, report."""
    raw = sign_directory(document, edit.authority)
    try:
        new = verify_directory(raw, pinned=edit.pinned, previous=edit.current)
    except DirectoryError as exc:
        raise CliError(
            f"new version refused ({exc.code}): {exc.message}", EXIT_CHECK_FAILED
        ) from exc
    changed = changes_between(edit.document, document)
    if not changed:
        raise CliError(f"nothing changes from v{edit.current.version}; no version written")
    _write_new(edit.target, raw)
    data = {
        "region": document.region,
        "version": new.version,
        "hash": new.hash,
        "previous": document.previous,
        "issued": _iso(document.issued),
        "file": str(edit.target),
        "changes": changed,
    }
    text = "\n".join(
        [
            f"signed directory {document.region} v{new.version}: wrote {edit.target}",
            f"  hash: {new.hash}",
            f"  previous: {document.previous}",
            f"  issued: {data['issued']}",
            *(f"  {line}" for line in changed),
        ]
    )
    _emit(args, data, text)
    return EXIT_OK


def _next(edit: Edit, **fields: Any) -> DirectoryDocument:
    try:
        return successor(edit.current, issued=edit.issued, **fields)
    except ValidationError as exc:
        message = validation_error(exc, "directory document").message
        raise CliError(f"new version would be invalid: {message}", EXIT_CHECK_FAILED) from exc


def _level(args: argparse.Namespace, edit: Edit) -> str:
    """``--clearance``, checked against the ladder (read only by the verbs that need it)."""
    value: str = args.clearance
    ladder = _ladder(args, edit.data_dir)
    if not ladder.knows(value):
        raise CliError(
            f"clearance {value!r} is not on the ladder ({', '.join(ladder.levels)}); "
            "give --policy FILE for another ladder"
        )
    return value


def _actor(edit: Edit, actor_id: str) -> Actor:
    found = edit.current.actor(actor_id)
    if found is None:
        raise CliError(f"no actor {actor_id!r} in directory v{edit.current.version}")
    return found


def _with_actor(edit: Edit, actor: Actor) -> tuple[Actor, ...]:
    others = [a for a in edit.document.actors if a.id != actor.id]
    return tuple(sorted([*others, actor], key=lambda a: a.id))


@dataclass(frozen=True)
class PublicKeys:
    """The public half of an actor's key file: what the directory lists."""

    principal: str | None
    signing: bytes
    encryption: bytes


def _hex_key(doc: dict[str, Any], name: str, path: str) -> bytes:
    value = doc.get(name)
    try:
        key = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        key = b""
    if len(key) != crypto.PUBLIC_KEY_BYTES:
        raise CliError(f"{path}: {name} must be {crypto.PUBLIC_KEY_BYTES * 2} hex digits")
    return key


def public_keys(path: str) -> PublicKeys:
    """Public keys from 'ssr --json keys show' output or a secret key file (public parts only)."""
    doc = _json_file(path, max_bytes=MAX_PUBLIC_KEYS_BYTES)
    hint = "give the JSON of 'ssr --json keys show FILE' or the actor's key file"
    if not isinstance(doc, dict):
        raise CliError(f"{path}: not a public key document; {hint}")
    if doc.get("kind") == KEY_FILE_KIND:
        identity = load_identity(Path(path))  # refuses a secret key file others can read
        keys = PublicKeys(identity.principal, identity.signing.public, identity.encryption.public)
    else:
        if "signing_public" not in doc or "encryption_public" not in doc:
            raise CliError(f"{path}: no signing_public and encryption_public; {hint}")
        keys = PublicKeys(
            doc.get("principal") if isinstance(doc.get("principal"), str) else None,
            _hex_key(doc, "signing_public", path),
            _hex_key(doc, "encryption_public", path),
        )
        for name, key in (("signing_key_id", keys.signing), ("encryption_key_id", keys.encryption)):
            if name in doc and doc[name] != crypto.key_id(key).hex():
                raise CliError(f"{path}: {name} does not match the public key")
    if keys.signing == keys.encryption:
        raise CliError(f"{path}: the signing and encryption keys are the same bytes")
    try:  # libsodium refuses small-order points; no sender could ever encrypt to one
        crypto.seal(b"", keys.encryption, crypto.SYSTEM_RANDOM(crypto.SECRET_KEY_BYTES))
    except crypto.CryptoFailure as exc:
        raise CliError(f"{path}: encryption_public is not a usable X25519 key") from exc
    return keys


def _check_new_keys(edit: Edit, keys: PublicKeys, owner: str, path: str) -> None:
    if keys.principal is not None and keys.principal != owner:
        raise CliError(f"{path}: keys are for {keys.principal!r}, not {owner!r}")
    doc = edit.document
    signing_id = crypto.key_id(keys.signing).hex()
    signer = edit.current.signer(signing_id)
    if signer is not None or any(k.key_id == signing_id for k in doc.authority_keys):
        who = signer.principal if signer else "the authority"
        raise CliError(f"{path}: signing key {signing_id} is already listed (for {who})")
    encryption_id = crypto.key_id(keys.encryption).hex()
    for actor in doc.actors:
        if any(k.key_id == encryption_id for k in actor.encryption_keys):
            raise CliError(
                f"{path}: encryption key {encryption_id} is already listed (for {actor.id})"
            )


# --- editing verbs ------------------------------------------------------------------------


def cmd_add_actor(args: argparse.Namespace) -> int:
    edit = _begin(args)
    actor_id = _slug(args.id, "actor id")
    if edit.current.actor(actor_id) is not None:
        raise CliError(
            f"actor {actor_id!r} already exists in v{edit.current.version}; "
            "use rotate-key, set-clearance or revoke to change it"
        )
    clearance = _level(args, edit)
    categories = _slugs(args.category, "category")
    groups = _slugs(args.group, "group")
    unknown = sorted(set(groups) - {g.id for g in edit.document.groups})
    if unknown:
        raise CliError(
            f"unknown group(s) {', '.join(unknown)}; known groups: "
            f"{_listed(g.id for g in edit.document.groups)} (add a group with 'sign --document')"
        )
    keys = public_keys(args.public_keys)
    _check_new_keys(edit, keys, actor_id, args.public_keys)
    until = edit.issued + args.valid_days * DAY_MS
    actor = _model(
        Actor,
        "actor",
        id=actor_id,
        name=args.name,
        kind=ActorKind(args.kind),
        clearance=clearance,
        categories=categories,
        groups=groups,
        roles=tuple(sorted({Role(r) for r in args.role or ()})),
        signing_keys=(KeyRecord.for_key(keys.signing, not_before=edit.issued, not_after=until),),
        encryption_keys=(
            KeyRecord.for_key(keys.encryption, not_before=edit.issued, not_after=until),
        ),
    )
    return _publish(args, edit, _next(edit, actors=_with_actor(edit, actor)))


def cmd_rotate_key(args: argparse.Namespace) -> int:
    edit = _begin(args)
    actor = _actor(edit, args.id)
    keys = public_keys(args.public_keys)
    _check_new_keys(edit, keys, actor.id, args.public_keys)
    end = edit.issued + args.overlap_days * DAY_MS
    until = edit.issued + args.valid_days * DAY_MS
    if until <= end:
        raise CliError("the new keys must outlive the overlap (--valid-days > --overlap-days)")

    def retire(record: KeyRecord) -> KeyRecord:
        if record.not_after <= end or record.revoked_by(end):
            return record  # ends by then anyway
        if record.not_before >= end:
            raise CliError(
                f"key {record.key_id} of {actor.id} only becomes valid at "
                f"{_iso(record.not_before)}, after the overlap; revoke it instead"
            )
        return _replace(record, not_after=end)

    rotated = {}
    for field, public in (("signing_keys", keys.signing), ("encryption_keys", keys.encryption)):
        records = (
            *map(retire, getattr(actor, field)),
            KeyRecord.for_key(public, not_before=edit.issued, not_after=until),
        )
        if len(records) > MAX_KEYS_PER_ACTOR:
            raise CliError(
                f"{actor.id} would list more than {MAX_KEYS_PER_ACTOR} {_KEY_FIELDS[field]} keys; "
                "drop keys that ended long ago with 'draft' and 'sign --document' first"
            )
        rotated[field] = records
    new_actor = _replace(actor, **rotated)
    return _publish(args, edit, _next(edit, actors=_with_actor(edit, new_actor)))


Principal = Actor | Officer | BrokerService


def _principal(edit: Edit, principal_id: str) -> tuple[str, Principal]:
    doc = edit.document
    found: list[tuple[str, Principal]] = [
        *(("actors", a) for a in doc.actors if a.id == principal_id),
        *(("officers", o) for o in doc.officers if o.id == principal_id),
        *(("brokers", b) for b in doc.brokers if b.id == principal_id),
    ]
    if not found:
        raise CliError(f"no actor, officer or broker {principal_id!r} in v{doc.version}")
    if len(found) > 1:
        raise CliError(f"{principal_id!r} names more than one principal; edit with 'sign'")
    return found[0]


def cmd_revoke(args: argparse.Namespace) -> int:
    edit = _begin(args)
    section, principal = _principal(edit, args.id)
    at = _time(args.at, "--at", now=edit.issued)
    fields = [f for f in _KEY_FIELDS if f in type(principal).model_fields]
    listed = [k.key_id for f in fields for k in getattr(principal, f)]
    if args.key is not None and args.key not in listed:
        raise CliError(f"{principal.id} has no key {args.key}; its keys: {_listed(listed)}")
    if args.status is not None and not isinstance(principal, Actor):
        raise CliError("--status applies to actors only")

    def revoke(record: KeyRecord) -> KeyRecord:
        if args.key is not None and record.key_id != args.key:
            return record
        earliest = at if record.revoked_at is None else min(record.revoked_at, at)
        return _replace(record, revoked_at=earliest)  # a revocation only ever moves earlier

    update: dict[str, Any] = {f: tuple(map(revoke, getattr(principal, f))) for f in fields}
    if isinstance(principal, Actor):
        status = args.status or (None if args.key else ActorStatus.SUSPENDED.value)
        if status is not None:
            update["status"] = ActorStatus(status)
    revoked = _replace(principal, **update)
    entries = tuple(e if e.id != revoked.id else revoked for e in getattr(edit.document, section))
    if revoked == principal:
        raise CliError(f"nothing to change: {principal.id} is already revoked at or before then")
    return _publish(args, edit, _next(edit, **{section: entries}))


def cmd_set_clearance(args: argparse.Namespace) -> int:
    edit = _begin(args)
    actor = _actor(edit, args.id)
    update: dict[str, Any] = {"clearance": _level(args, edit)}
    if args.no_categories:
        update["categories"] = ()
    elif args.category:
        update["categories"] = _slugs(args.category, "category")
    return _publish(args, edit, _next(edit, actors=_with_actor(edit, _replace(actor, **update))))


def cmd_sign(args: argparse.Namespace) -> int:
    edit = _begin(args)
    doc = _json_file(args.document, max_bytes=MAX_INPUT_BYTES)
    if not isinstance(doc, dict):
        raise CliError(f"{args.document}: not a JSON object with DirectoryDocument fields")
    expected = {"version": edit.current.version + 1, "previous": edit.current.hash}
    for name, value in expected.items():
        given = doc.setdefault(name, value)
        if given != value:
            raise CliError(
                f"{args.document}: {name} is {given!r} but the next version needs {value!r} "
                f"(the chain in --dir is at v{edit.current.version})",
                EXIT_CHECK_FAILED,
            )
    doc.setdefault("issued", edit.issued)
    try:
        document = DirectoryDocument.model_validate_json(json.dumps(doc), strict=True)
    except ValidationError as exc:
        message = validation_error(exc, "directory document").message
        raise CliError(f"{args.document}: {message}", EXIT_CHECK_FAILED) from exc
    return _publish(args, edit, document)


# --- the parser ---------------------------------------------------------------------------


def _chain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--authority-key",
        help="pinned authority public key, hex or file (default: authority.pub in the data folder)",
    )
    parser.add_argument("--dir", help="folder of vNNNNNNNN.dir files, or the broker data folder")
    parser.add_argument("files", nargs="*", help="directory version files, oldest first")


def _edit_parser(directory: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = directory.add_parser(name, help=help_text)
    parser.add_argument(
        "--dir", required=True, help="folder of vNNNNNNNN.dir files, or the broker data folder"
    )
    parser.add_argument(
        "--authority-key-file", required=True, help="the authority's secret key file (mode 600)"
    )
    parser.add_argument(
        "--authority-key",
        help="pinned authority public key, hex or file (default: the data folder's "
        "authority.pub, else the key file's own)",
    )
    parser.add_argument("--out", help="write the new version here instead of into --dir")
    parser.add_argument(
        "--issued",
        default="now",
        metavar="ISO8601",
        help="issue time of the new version (default: now)",
    )
    return parser


def _actor_choices() -> tuple[list[str], list[str]]:
    kinds = [k.value for k in ActorKind]
    roles = [r.value for r in Role if r is not Role.MEMBER]  # every actor is a member
    return kinds, roles


def add_directory_verbs(directory: Any) -> None:
    """Register show, draft and the authority's edit verbs on ``ssr directory``."""
    show = directory.add_parser("show", help="verify a chain and list who is in it")
    _chain_arguments(show)
    show.add_argument("--at", default="now", metavar="ISO8601", help="show key states at this time")
    show.set_defaults(handler=cmd_show)

    draft = directory.add_parser(
        "draft", help="print the current document as JSON of the next version (for sign)"
    )
    _chain_arguments(draft)
    draft.set_defaults(handler=cmd_draft)

    kinds, roles = _actor_choices()
    add = _edit_parser(directory, "add-actor", "add an actor with its public keys")
    add.add_argument("--id", required=True, help="actor id (slug), e.g. kista-it")
    add.add_argument("--name", required=True)
    add.add_argument("--kind", required=True, choices=kinds)
    add.add_argument("--clearance", required=True, metavar="LEVEL", help="a level on the ladder")
    add.add_argument("--category", action="append", help="need-to-know category (repeatable)")
    add.add_argument("--group", action="append", help="existing group id (repeatable)")
    add.add_argument("--role", action="append", choices=roles, help="role (repeatable)")
    add.add_argument(
        "--public-keys", required=True, metavar="FILE", help="'ssr --json keys show' output"
    )
    add.add_argument(
        "--valid-days",
        type=_days(1),
        default=DEFAULT_KEY_VALIDITY_DAYS,
        help=f"key validity (default {DEFAULT_KEY_VALIDITY_DAYS})",
    )
    add.add_argument(
        "--policy", help="policy whose ladder to check (default: the data folder's, or standard)"
    )
    add.set_defaults(handler=cmd_add_actor)

    rotate = _edit_parser(directory, "rotate-key", "add new keys; the old ones end after overlap")
    rotate.add_argument("--id", required=True, help="actor id")
    rotate.add_argument("--public-keys", required=True, metavar="FILE")
    rotate.add_argument(
        "--overlap-days",
        type=_days(0),
        default=DEFAULT_OVERLAP_DAYS,
        help=f"how long the old keys stay valid (default {DEFAULT_OVERLAP_DAYS})",
    )
    rotate.add_argument("--valid-days", type=_days(1), default=DEFAULT_KEY_VALIDITY_DAYS)
    rotate.set_defaults(handler=cmd_rotate_key)

    revoke = _edit_parser(directory, "revoke", "revoke one key, or every key of a principal")
    revoke.add_argument("--id", required=True, help="actor (or officer or broker) id")
    revoke.add_argument("--key", metavar="KEY_ID", help="only this key (default: every key)")
    revoke.add_argument(
        "--at",
        default="now",
        metavar="ISO8601",
        help="earliest time the key may have been compromised (default: now)",
    )
    revoke.add_argument(
        "--status",
        choices=[ActorStatus.SUSPENDED.value, ActorStatus.RETIRED.value],
        help="actor status (default without --key: suspended)",
    )
    revoke.set_defaults(handler=cmd_revoke)

    clearance = _edit_parser(directory, "set-clearance", "change an actor's clearance")
    clearance.add_argument("--id", required=True, help="actor id")
    clearance.add_argument("--clearance", required=True, metavar="LEVEL")
    categories = clearance.add_mutually_exclusive_group()
    categories.add_argument("--category", action="append", help="replace the categories")
    categories.add_argument("--no-categories", action="store_true", help="remove all categories")
    clearance.add_argument(
        "--policy", help="policy whose ladder to check (default: the data folder's, or standard)"
    )
    clearance.set_defaults(handler=cmd_set_clearance)

    sign = _edit_parser(directory, "sign", "sign a hand-edited document as the next version")
    sign.add_argument("--document", required=True, metavar="FILE.json")
    sign.set_defaults(handler=cmd_sign)
