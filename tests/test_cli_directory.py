"""The authority's directory verbs of ``ssr``: each edit is a verified successor, and it bites.

Every verb runs in-process through ``clients.cli.main`` against a real data folder
(``write_region`` of the demo region); the resulting chain is checked with
``verify_chain`` and the broker's ``decide`` and the recipient's ``open_envelope``
show the effect of the new version. One test goes through the installed ``ssr``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from broker.config import BrokerConfig
from broker.core import (
    Accept,
    ActorStatus,
    Identity,
    MessageType,
    OpenError,
    Policy,
    Reason,
    Reject,
    VerifiedDirectory,
    build_envelope,
    open_envelope,
    save_identity,
    verify_chain,
)
from broker.core.crypto import seeded_random
from broker.demo import DemoRegion
from broker.demo_setup import write_region
from clients.cli import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE, MAX_INPUT_BYTES, main

from .conftest import HOUR, NOW
from .envelope_helpers import DEFAULT_LABEL, decide_at, recipient_keys

DAY = 24 * HOUR
T0 = NOW + HOUR  # issue time of the first edit in each test


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def data(region: DemoRegion, tmp_path: Path) -> Path:
    """A broker data folder holding version 1 of the demo directory and the authority key."""
    config = BrokerConfig(data_dir=tmp_path / "data")
    write_region(config, region)
    return config.data_dir


def versions(data: Path) -> list[str]:
    return sorted(p.name for p in (data / "directory").glob("*.dir"))


def chain(data: Path, region: DemoRegion) -> VerifiedDirectory:
    files = sorted((data / "directory").glob("*.dir"))
    return verify_chain([p.read_bytes() for p in files], pinned=region.authority.public)


def edit_argv(data: Path, verb: str, *argv: str, issued: int = T0) -> list[str]:
    authority = data / "keys" / "authority.key"
    return [
        "directory",
        verb,
        "--dir",
        str(data),
        "--authority-key-file",
        str(authority),
        "--issued",
        iso(issued),
        *argv,
    ]


def edit(capsys, data: Path, verb: str, *argv: str, issued: int = T0) -> dict[str, Any]:
    code, out, err = run(capsys, "--json", *edit_argv(data, verb, *argv, issued=issued))
    assert code == EXIT_OK, err
    result: dict[str, Any] = json.loads(out)
    return result


def refused(capsys, data: Path, verb: str, *argv: str, code: int, issued: int = T0) -> str:
    before = versions(data)
    got, out, err = run(capsys, *edit_argv(data, verb, *argv, issued=issued))
    assert got == code, (out, err)
    assert err.startswith("ssr: "), err
    assert err.count("\n") == 1, err  # one line, no traceback
    assert versions(data) == before  # nothing written
    return err


def key_json(capsys, folder: Path, identity: Identity) -> Path:
    """What an actor hands the authority: the output of ``ssr --json keys show``."""
    secret = folder / f"{identity.principal}-{identity.signing.key_id[:8]}.key"
    save_identity(secret, identity)
    code, out, _ = run(capsys, "--json", "keys", "show", str(secret))
    assert code == EXIT_OK
    public = secret.with_suffix(".json")
    public.write_text(out)
    return public


def decide_now(raw: bytes, region: DemoRegion, directory: VerifiedDirectory, now: int):
    return decide_at(raw, region, directory=directory, now=now)


def message(
    region: DemoRegion,
    sender: Identity,
    to: tuple[str, ...],
    *,
    at: int,
    keys_from: VerifiedDirectory | None = None,
) -> bytes:
    """An envelope created at ``at``, wrapped for ``to``'s keys in ``keys_from``."""
    return build_envelope(
        sender=sender,
        recipients=recipient_keys(keys_from or region.directory, to, at=at),
        label=DEFAULT_LABEL,
        message_type=MessageType.SITUATION_REPORT,
        payload=b'{"text": "Storm warning for the archipelago"}',
        created=at,
        expires=at + HOUR,
    )


# --- show and draft ----------------------------------------------------------------------


def test_show_prints_the_verified_directory(region, data, capsys):
    key = region.authority.public.hex()
    code, out, err = run(capsys, "directory", "show", "--authority-key", key, "--dir", str(data))
    assert code == EXIT_OK, err
    assert "directory ssr v1 verifies" in out
    assert "  nacka  Nacka kommun" in out
    assert "municipality, active; clearance SEKRETESS" in out
    assert "sakerhetschef-nacka" in out
    assert "(scope: nacka)" in out
    assert "ssr-broker" in out
    assert region.identities["nacka"].signing.key_id in out

    at = iso(NOW + HOUR)
    files = [str(p) for p in sorted((data / "directory").glob("*.dir"))]
    code, out, _ = run(capsys, "--json", "directory", "show", "--at", at, *files,
                       "--authority-key", str(data / "authority.pub"))  # fmt: skip
    assert code == EXIT_OK
    shown = json.loads(out)
    assert shown["version"] == 1
    assert shown["region"] == "ssr"
    assert shown["hash"] == region.directory.hash
    assert len(shown["actors"]) == 37
    nacka = next(a for a in shown["actors"] if a["id"] == "nacka")
    assert nacka["groups"] == ["kommuner", "kommunikatorer", "tib"]
    assert nacka["signing_keys"][0]["key_id"] == region.identities["nacka"].signing.key_id
    assert nacka["signing_keys"][0]["state"] == "usable"
    assert nacka["signing_keys"][0]["revoked_at"] is None
    blaljus = next(g for g in shown["groups"] if g["id"] == "blaljus")
    assert "polisen-stockholm" in blaljus["members"]
    assert {o["id"] for o in shown["officers"]} == {
        "sakerhetschef-lansstyrelsen",
        "sakerhetschef-nacka",
    }

    # The data folder's authority.pub pins the chain when no key is given.
    assert run(capsys, "directory", "show", "--dir", str(data))[0] == EXIT_OK


def test_show_refuses_a_tampered_chain_and_a_wrong_pin(region, data, capsys):
    v1 = data / "directory" / "v00000001.dir"
    other = Identity.generate("x", seeded_random(b"other")).signing.public.hex()
    code, _, err = run(capsys, "directory", "show", "--authority-key", other, "--dir", str(data))
    assert code == EXIT_CHECK_FAILED
    assert "directory_unknown_signer" in err
    raw = bytearray(v1.read_bytes())
    raw[200] ^= 1
    v1.write_bytes(bytes(raw))
    code, _, err = run(capsys, "directory", "show", "--dir", str(data))
    assert code == EXIT_CHECK_FAILED
    assert "v00000001.dir: directory refused" in err
    assert "Traceback" not in err


# --- add-actor ---------------------------------------------------------------------------


def test_add_actor_makes_a_recipient_the_broker_accepts(region, data, capsys, tmp_path):
    newcomer = Identity.generate("kista-it", seeded_random(b"kista-it"))
    public = key_json(capsys, tmp_path, newcomer)
    result = edit(
        capsys, data, "add-actor", "--id", "kista-it", "--name", "Kista IT-centrum",
        "--kind", "other", "--clearance", "SEKRETESS", "--group", "tib",
        "--group", "samordnande", "--category", "taktik", "--role", "activator",
        "--public-keys", str(public),
    )  # fmt: skip
    assert result["version"] == 2
    assert result["changes"] == ["added actor kista-it (Kista IT-centrum)"]
    assert Path(result["file"]) == data / "directory" / "v00000002.dir"
    directory = chain(data, region)
    assert directory.hash == result["hash"]
    added = directory.actor("kista-it")
    assert added is not None
    assert added.groups == ("samordnande", "tib")
    assert added.categories == ("taktik",)
    assert added.signing_keys[0].key_id == newcomer.signing.key_id
    assert added.signing_keys[0].not_before == T0
    assert "kista-it" in (directory.members("tib") or ())

    at = T0 + HOUR
    raw = message(region, region.identities["nacka"], ("kista-it",), at=at, keys_from=directory)
    assert isinstance(decide_now(raw, region, directory, at), Accept)
    opened = open_envelope(raw, me=newcomer, directory=directory, policy=Policy(), now=at)
    assert b"Storm warning" in opened.payload
    # The broker still on version 1 does not know the newcomer.
    assert decide_now(raw, region, region.directory, at) == Reject(
        Reason.RECIPIENT_UNKNOWN,
        "recipients refused by policy",
        ("kista-it",),
        opened.header.id,
        "nacka",
    )


def test_add_actor_from_a_secret_key_file_lists_only_public_keys(region, data, capsys, tmp_path):
    newcomer = Identity.generate("vaxholm-it", seeded_random(b"vaxholm-it"))
    secret = tmp_path / "vaxholm-it.key"
    save_identity(secret, newcomer)
    code, out, err = run(capsys, *edit_argv(
        data, "add-actor", "--id", "vaxholm-it", "--name", "Vaxholm IT", "--kind",
        "municipality", "--clearance", "INTERN", "--public-keys", str(secret),
    ))  # fmt: skip
    assert code == EXIT_OK, err
    assert "signed directory ssr v2" in out
    assert "added actor vaxholm-it" in out
    raw = (data / "directory" / "v00000002.dir").read_bytes()
    secrets = json.loads(secret.read_text())
    assert secrets["signing_seed"].encode() not in raw
    assert secrets["encryption_secret"].encode() not in raw
    assert chain(data, region).actor("vaxholm-it") is not None


@pytest.fixture
def key_files(capsys, tmp_path, region) -> dict[str, Path]:
    newcomer = Identity.generate("kista-it", seeded_random(b"kista-it"))
    files = {"good": key_json(capsys, tmp_path, newcomer)}
    shown = json.loads(files["good"].read_text())
    taken = {  # nacka's listed keys, handed in as if they were new
        "signing_public": region.identities["nacka"].signing.public.hex(),
        "encryption_public": Identity.generate("z").encryption.public.hex(),
    }
    cases: dict[str, Any] = {
        "taken": taken,
        "zero": shown | {"encryption_public": "00" * 32, "encryption_key_id": None},
        "short": {"signing_public": "ab", "encryption_public": shown["encryption_public"]},
        "wrong-id": shown | {"signing_key_id": "0" * 32},
        "array": [shown],
    }
    for name, value in cases.items():
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if v is not None}
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(value))
    files["garbage"] = tmp_path / "garbage.json"
    files["garbage"].write_bytes(b'{"signing_public": "ab", \xff')
    files["duplicate"] = tmp_path / "duplicate.json"
    files["duplicate"].write_text('{"signing_public": "a", "signing_public": "b"}')
    files["huge"] = tmp_path / "huge.json"
    with files["huge"].open("wb") as handle:
        handle.truncate(MAX_INPUT_BYTES + 1)
    return files


ADD = {
    "--id": "kista-it",
    "--name": "Kista IT",
    "--kind": "other",
    "--clearance": "SEKRETESS",
    "--group": "tib",
    "--public-keys": "good",
}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"--id": "nacka"}, "actor 'nacka' already exists"),
        ({"--group": "krisgrupp"}, "unknown group(s) krisgrupp; known groups: blaljus, "),
        ({"--clearance": "TOPPHEMLIG"}, "not on the ladder (OFFENTLIG, INTERN"),
        ({"--id": "Kista IT"}, "must be a slug"),
        ({"--group": "Tib"}, "must be a slug"),
        ({"--id": "kista-it-2"}, "keys are for 'kista-it', not 'kista-it-2'"),
        ({"--public-keys": "taken"}, "already listed (for nacka)"),
        ({"--public-keys": "zero"}, "not a usable X25519 key"),
        ({"--public-keys": "short"}, "signing_public must be 64 hex digits"),
        ({"--public-keys": "wrong-id"}, "signing_key_id does not match"),
        ({"--public-keys": "array"}, "not a public key document"),
        ({"--public-keys": "garbage"}, "not valid UTF-8"),
        ({"--public-keys": "duplicate"}, "duplicate object member"),
        ({"--public-keys": "huge"}, "larger than"),
        ({"--public-keys": "missing"}, "No such file"),
        ({"--name": "x" * 201}, "invalid actor at name"),
    ],
)
def test_add_actor_refusals(data, capsys, key_files, change, expected):
    args = ADD | change
    argv: list[str] = []
    for flag, value in args.items():
        if flag == "--public-keys":
            value = str(key_files.get(value, Path(value)))
        argv += [flag, value]
    err = refused(capsys, data, "add-actor", *argv, code=EXIT_USAGE)
    assert expected in err


# --- revoke --------------------------------------------------------------------------------


def test_revoke_one_key_refuses_its_messages_at_broker_and_recipient(region, data, capsys):
    nacka, stockholm = region.identities["nacka"], region.identities["stockholm"]
    before = message(region, nacka, ("stockholm",), at=T0)
    assert open_envelope(before, me=stockholm, directory=region.directory, policy=Policy(), now=T0)

    compromised = T0 + 10 * 60_000
    key = nacka.signing.key_id
    result = edit(capsys, data, "revoke", "--id", "nacka", "--key", key, "--at", iso(compromised),
                  issued=T0 + HOUR)  # fmt: skip
    assert result["changes"] == [f"actor nacka: signing key {key} revoked at {iso_z(compromised)}"]
    directory = chain(data, region)
    record = actor_in(directory, "nacka").signing_keys[0]
    assert record.revoked_at == compromised
    assert actor_in(directory, "nacka").status is ActorStatus.ACTIVE

    later = T0 + 2 * HOUR
    fresh = message(region, nacka, ("stockholm",), at=later)
    verdict = decide_now(fresh, region, directory, later)
    assert isinstance(verdict, Reject)
    assert verdict.reason is Reason.SENDER_KEY_REVOKED
    # The recipient refuses even the message signed before the revocation.
    with pytest.raises(OpenError) as caught:
        open_envelope(before, me=stockholm, directory=directory, policy=Policy(), now=later)
    assert caught.value.code == "sender_key_revoked"
    # Nacka's encryption key was not revoked: it still receives.
    to_nacka = message(region, stockholm, ("nacka",), at=later, keys_from=directory)
    assert isinstance(decide_now(to_nacka, region, directory, later), Accept)

    # A revocation only moves earlier.
    err = refused(capsys, data, "revoke", "--id", "nacka", "--key", key, "--at", iso(later),
                  code=EXIT_USAGE, issued=later)  # fmt: skip
    assert "nothing to change" in err
    err = refused(capsys, data, "revoke", "--id", "nacka", "--key", "0" * 32, code=EXIT_USAGE,
                  issued=later)  # fmt: skip
    assert "nacka has no key 00000000000000000000000000000000; its keys: " in err


def test_revoke_an_actor_stops_it_as_sender_and_recipient(region, data, capsys):
    result = edit(capsys, data, "revoke", "--id", "nacka")
    assert "actor nacka: status suspended (was active)" in result["changes"]
    assert len(result["changes"]) == 3
    directory = chain(data, region)
    nacka = actor_in(directory, "nacka")
    assert nacka.status is ActorStatus.SUSPENDED
    assert all(k.revoked_at == T0 for k in (*nacka.signing_keys, *nacka.encryption_keys))

    at = T0 + HOUR
    to_nacka = message(region, region.identities["stockholm"], ("nacka", "solna"), at=at)
    verdict = decide_now(to_nacka, region, directory, at)
    assert isinstance(verdict, Reject)
    assert verdict.reason is Reason.RECIPIENT_INACTIVE
    assert verdict.recipients == ("nacka",)
    from_nacka = message(region, region.identities["nacka"], ("stockholm",), at=at)
    verdict = decide_now(from_nacka, region, directory, at)
    assert isinstance(verdict, Reject)
    assert verdict.reason is Reason.SENDER_INACTIVE

    err = refused(capsys, data, "revoke", "--id", "nacka", code=EXIT_USAGE, issued=at)
    assert "nothing to change" in err
    # Officers' keys are revoked the same way (a chain of three versions now).
    result = edit(capsys, data, "revoke", "--id", "sakerhetschef-nacka", issued=at)
    assert result["version"] == 3
    officer = chain(data, region).officer("sakerhetschef-nacka")
    assert officer is not None
    assert officer.signing_keys[0].revoked_at == at
    err = refused(capsys, data, "revoke", "--id", "nobody", code=EXIT_USAGE, issued=at)
    assert "no actor, officer or broker 'nobody'" in err


# --- rotate-key ----------------------------------------------------------------------------


def test_rotate_key_keeps_the_old_key_for_the_overlap_only(region, data, capsys, tmp_path):
    old = region.identities["nacka"]
    new = Identity.generate("nacka", seeded_random(b"nacka-2"))
    public = key_json(capsys, tmp_path, new)
    result = edit(capsys, data, "rotate-key", "--id", "nacka", "--public-keys", str(public),
                  "--overlap-days", "7")  # fmt: skip
    assert f"actor nacka: added signing key {new.signing.key_id}" in result["changes"][1]
    assert result["changes"][0] == (
        f"actor nacka: signing key {old.signing.key_id} not_after {iso_z(T0 + 7 * DAY)} "
        f"(was {iso_z(NOW + 2 * 365 * DAY)})"
    )
    directory = chain(data, region)
    nacka = actor_in(directory, "nacka")
    assert [k.key_id for k in nacka.signing_keys] == [old.signing.key_id, new.signing.key_id]
    assert nacka.signing_keys[0].not_after == T0 + 7 * DAY
    assert nacka.encryption_keys[0].not_after == T0 + 7 * DAY

    within = T0 + DAY
    for sender in (old, new):
        raw = message(region, sender, ("stockholm",), at=within)
        assert isinstance(decide_now(raw, region, directory, within), Accept)
    # Senders now encrypt to the new key; one still wrapping for the old key gets through.
    in_flight = message(region, region.identities["stockholm"], ("nacka",), at=within)
    assert isinstance(decide_now(in_flight, region, directory, within), Accept)
    current = message(region, region.identities["solna"], ("nacka",), at=within,
                      keys_from=directory)  # fmt: skip
    opened = open_envelope(current, me=new, directory=directory, policy=Policy(), now=within)
    assert opened.header.recipients == ("nacka",)

    after = T0 + 8 * DAY
    raw = message(region, old, ("stockholm",), at=after)
    verdict = decide_now(raw, region, directory, after)
    assert isinstance(verdict, Reject)
    assert verdict.reason is Reason.SENDER_KEY_EXPIRED
    stale = message(region, region.identities["stockholm"], ("nacka",), at=after)
    verdict = decide_now(stale, region, directory, after)
    assert isinstance(verdict, Reject)
    assert verdict.reason is Reason.RECIPIENT_KEY_INVALID
    assert isinstance(decide_now(message(region, new, ("stockholm",), at=after), region,
                                 directory, after), Accept)  # fmt: skip

    err = refused(capsys, data, "rotate-key", "--id", "nacka", "--public-keys", str(public),
                  code=EXIT_USAGE, issued=after)  # fmt: skip
    assert "already listed (for nacka)" in err


# --- set-clearance ---------------------------------------------------------------------------


def test_set_clearance(region, data, capsys):
    result = edit(capsys, data, "set-clearance", "--id", "nacka", "--clearance", "INTERN")
    assert result["changes"] == ["actor nacka: clearance INTERN (was SEKRETESS)"]
    directory = chain(data, region)
    at = T0 + HOUR
    raw = message(region, region.identities["stockholm"], ("nacka",), at=at, keys_from=directory)
    verdict = decide_now(raw, region, directory, at)
    assert isinstance(verdict, Reject)
    assert verdict.reason is Reason.RECIPIENT_NOT_CLEARED

    result = edit(capsys, data, "set-clearance", "--id", "nacka", "--clearance", "SEKRETESS",
                  "--category", "taktik", "--category", "infrastruktur", issued=at)  # fmt: skip
    assert result["version"] == 3
    nacka = actor_in(chain(data, region), "nacka")
    assert (nacka.clearance, nacka.categories) == ("SEKRETESS", ("infrastruktur", "taktik"))

    for argv, expected in [
        (("--id", "nacka", "--clearance", "SEKRETESS"), "nothing changes from v3"),
        (("--id", "nacka", "--clearance", "sekretess"), "not on the ladder"),
        (("--id", "atlantis", "--clearance", "INTERN"), "no actor 'atlantis'"),
        (("--id", "nacka", "--clearance", "INTERN", "--category", "Bad"), "must be a slug"),
    ]:
        assert expected in refused(capsys, data, "set-clearance", *argv, code=EXIT_USAGE, issued=at)


# --- draft and sign ------------------------------------------------------------------------


def test_sign_a_hand_edited_document(region, data, capsys, tmp_path):
    code, out, _ = run(capsys, "directory", "draft", "--dir", str(data))
    assert code == EXIT_OK
    draft = json.loads(out)
    assert draft["version"] == 2
    assert draft["previous"] == region.directory.hash
    assert "issued" not in draft
    draft["groups"] = sorted([*draft["groups"], {"id": "kris", "name": "Krisledning"}],
                             key=lambda g: g["id"])  # fmt: skip
    nacka = next(a for a in draft["actors"] if a["id"] == "nacka")
    nacka["groups"] = sorted([*nacka["groups"], "kris"])
    document = tmp_path / "next.json"
    document.write_text(json.dumps(draft, indent=2, ensure_ascii=False))

    result = edit(capsys, data, "sign", "--document", str(document))
    assert result["changes"] == [
        "actor nacka: groups kommuner, kommunikatorer, kris, tib "
        "(was kommuner, kommunikatorer, tib)",
        "added group kris (Krisledning)",
    ]
    directory = chain(data, region)
    assert directory.members("kris") == ("nacka",)
    assert directory.document.issued == T0

    # Without version and previous, sign chains the document to the current version.
    del draft["version"], draft["previous"]
    draft["groups"] = [g for g in draft["groups"] if g["id"] != "kris"]
    nacka["groups"].remove("kris")
    document.write_text(json.dumps(draft))
    assert edit(capsys, data, "sign", "--document", str(document), issued=T0 + 1)["version"] == 3
    assert chain(data, region).members("kris") is None


@pytest.mark.parametrize(
    ("edit_draft", "code", "expected"),
    [
        (lambda d: d.update(version=7), EXIT_CHECK_FAILED, "version is 7 but the next version"),
        (lambda d: d.update(previous="ab" * 32), EXIT_CHECK_FAILED, "previous is 'abab"),
        (lambda d: d.update(region="gotland"), EXIT_CHECK_FAILED, "another region"),
        (lambda d: d.update(issued=NOW - 1), EXIT_CHECK_FAILED, "issued before the version"),
        (lambda d: d.update(colour="red"), EXIT_CHECK_FAILED, "at colour: Extra inputs"),
        (lambda d: d["actors"].reverse(), EXIT_CHECK_FAILED, "sorted by id"),
        (lambda d: d["actors"][0].update(groups=["nope"]), EXIT_CHECK_FAILED, "unknown groups"),
        (lambda d: d.update(version=1.5), EXIT_USAGE, "numbers must be integers"),
        (lambda d: d.clear(), EXIT_CHECK_FAILED, "Field required"),
    ],
)
def test_sign_refuses_documents_that_do_not_chain_or_validate(
    region, data, capsys, tmp_path, edit_draft, code, expected
):
    draft = region.directory.document.wire() | {"version": 2, "previous": region.directory.hash}
    edit_draft(draft)
    document = tmp_path / "next.json"
    document.write_text(json.dumps(draft))
    assert expected in refused(capsys, data, "sign", "--document", str(document), code=code)


def test_sign_refuses_garbage_and_an_unchanged_document(region, data, capsys, tmp_path):
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    assert "not JSON" in refused(capsys, data, "sign", "--document", str(garbage), code=2)
    garbage.write_text("[]")
    assert "not a JSON object" in refused(capsys, data, "sign", "--document", str(garbage), code=2)
    same = tmp_path / "same.json"
    _, out, _ = run(capsys, "directory", "draft", "--dir", str(data))
    same.write_text(out)
    assert "nothing changes" in refused(capsys, data, "sign", "--document", str(same), code=2)


# --- the authority key, the folder, the output ----------------------------------------------


def test_edits_refuse_a_wrong_authority_key_a_bad_chain_and_overwrites(
    region, data, capsys, tmp_path
):
    argv = ["--id", "nacka", "--clearance", "INTERN"]
    impostor = tmp_path / "impostor.key"
    save_identity(impostor, Identity.generate("authority", seeded_random(b"impostor")))
    code, _, err = run(capsys, "directory", "set-clearance", "--dir", str(data),
                       "--authority-key-file", str(impostor), *argv)  # fmt: skip
    assert code == EXIT_USAGE
    assert "is not an authority key of directory v1" in err
    impostor.chmod(0o644)
    code, _, err = run(capsys, "directory", "set-clearance", "--dir", str(data),
                       "--authority-key-file", str(impostor), *argv)  # fmt: skip
    assert code == EXIT_USAGE
    assert "chmod 600" in err
    pin = Identity.generate("x", seeded_random(b"pin")).signing.public.hex()
    err = refused(capsys, data, "set-clearance", *argv, "--authority-key", pin, code=1)
    assert "directory_unknown_signer" in err

    err = refused(capsys, data, "set-clearance", *argv, code=EXIT_USAGE, issued=NOW - 1)
    assert "authority key" in err
    assert "is not usable at 2026-09-21T14:13:19.999Z" in err
    for bad in ("yesterday", "2026-09-21T14:00:00"):
        err = refused(capsys, data, "set-clearance", *argv, "--issued", bad, code=EXIT_USAGE)
        assert "--issued" in err

    existing = tmp_path / "existing.dir"
    existing.write_bytes(b"keep me")
    err = refused(capsys, data, "set-clearance", *argv, "--out", str(existing), code=EXIT_USAGE)
    assert "refusing to overwrite" in err
    assert existing.read_bytes() == b"keep me"
    elsewhere = tmp_path / "v2.dir"
    assert edit(capsys, data, "set-clearance", *argv, "--out", str(elsewhere))["version"] == 2
    assert versions(data) == ["v00000001.dir"]
    assert verify_chain([region.frame, elsewhere.read_bytes()], pinned=region.authority.public)
    # The next version's name is taken (here by a misnamed copy of the chain).
    (data / "directory" / "v00000001.dir").rename(data / "directory" / "v00000002.dir")
    assert "refusing to overwrite" in refused(capsys, data, "set-clearance", *argv, code=2)

    v1 = data / "directory" / "v00000002.dir"
    v1.write_bytes(v1.read_bytes()[:-1] + b"\0")
    err = refused(capsys, data, "set-clearance", *argv, code=EXIT_CHECK_FAILED)
    assert "directory_bad_signature" in err


def test_missing_and_empty_folders(data, capsys, tmp_path):
    authority = str(data / "keys" / "authority.key")
    for folder, expected in [
        (tmp_path / "nowhere", "no such folder"),
        (tmp_path, "no signed directory versions"),
    ]:
        code, _, err = run(capsys, "directory", "revoke", "--dir", str(folder),
                           "--authority-key-file", authority, "--id", "nacka")  # fmt: skip
        assert code == EXIT_USAGE
        assert expected in err
        code, _, err = run(capsys, "directory", "show", "--authority-key", "ab" * 32,
                           "--dir", str(folder))  # fmt: skip
        assert code == EXIT_USAGE
        assert expected in err
    code, _, err = run(capsys, "directory", "show", str(data / "directory" / "v00000001.dir"))
    assert code == EXIT_USAGE
    assert "give --authority-key" in err


def test_installed_entry_point(region, data, tmp_path):
    ssr = Path(sys.executable).with_name("ssr")
    revoke = [str(ssr), "--json", *edit_argv(data, "revoke", "--id", "solna")]
    result = subprocess.run(revoke, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == EXIT_OK, result.stderr
    assert json.loads(result.stdout)["version"] == 2
    show = [str(ssr), "--json", "directory", "show", "--dir", str(data)]
    result = subprocess.run(show, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == EXIT_OK, result.stderr
    solna = next(a for a in json.loads(result.stdout)["actors"] if a["id"] == "solna")
    assert solna["status"] == "suspended"
    assert solna["signing_keys"][0]["state"] == "revoked"
    result = subprocess.run(revoke, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == EXIT_USAGE
    assert result.stderr.startswith("ssr: ")
    assert "Traceback" not in result.stderr


# --- helpers over verified directories --------------------------------------------------------


def actor_in(directory: VerifiedDirectory, actor_id: str):
    found = directory.actor(actor_id)
    assert found is not None, actor_id
    return found


def iso_z(ms: int) -> str:
    return iso(ms).replace("+00:00", "Z")
