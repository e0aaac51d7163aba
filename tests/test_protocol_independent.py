"""A second implementation of the protocol, written from ``schemas/PROTOCOL.md`` alone.

It imports nothing from ``broker``: only the standard library and raw
libsodium through ``nacl.bindings``. It verifies the directory chain, builds
the valid envelope byte for byte, decides and opens envelopes, verifies
receipts and broker notices, verifies and opens key grants (rebuilding one byte
for byte) and verifies offline bundles, all against the published vectors. Where it agrees with the
reference implementation, the written specification is precise enough to
build from. Section numbers (§) refer to PROTOCOL.md.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.bindings as sodium
import pytest
from nacl.exceptions import CryptoError

VECTORS = Path(__file__).resolve().parent.parent / "schemas" / "vectors"

# The default policy (Appendix B).
LADDER = ("OFFENTLIG", "INTERN", "SEKRETESS", "BEGRÄNSAT HEMLIG", "KONFIDENTIELL", "HEMLIG")
LADDER += ("KVALIFICERAT HEMLIG",)
CEILING, POLICY_ID, MAX_ENVELOPE, MAX_RECIPIENTS = "SEKRETESS", "ssr", 1 << 20, 64
LEEWAY, MAX_LIFETIME = 120_000, 30 * 24 * 3_600_000
RIGHTS = {"mode_change": {"authority"}, "relabel": {"authority"}}
RIGHTS |= {"activation": {"authority", "activator"}, "incident_close": {"authority", "activator"}}
RECIPIENT_CODES = ("recipient_unknown", "recipient_inactive", "recipient_key_invalid")
RECIPIENT_CODES += ("recipient_not_cleared", "recipient_lacks_category")

# Member names of each document (§5): every member present, no others.
HEADER = {"v", "id", "type", "sender", "sender_key", "recipients", "label", "status"}
HEADER |= {"priority", "created", "expires", "incident", "references", "content_type", "control"}
CONTROL = {"mode", "incident_type", "communication_lead", "deadline", "press"}
LABEL = {"policy", "classification", "tlp", "categories", "legal"}
WRAP = {"recipient", "key_id", "sealed"}
RECEIPT = {"v", "kind", "message", "header_hash", "sender", "recipient", "signer_key", "at", "note"}
DIRECTORY = {"v", "region", "version", "previous", "issued", "authority_keys", "actors"}
DIRECTORY |= {"groups", "officers", "brokers"}
NOTICE = {"v", "kind", "broker", "signer_key", "to", "message", "header_hash", "submission"}
NOTICE |= {"reason", "recipients", "at", "detail"}
KEY = {"key_id", "public", "not_before", "not_after", "revoked_at"}
GRANT = {"v", "message", "header_hash", "sender", "signer_key", "recipient", "incident"}
GRANT |= {"key_id", "sealed", "at"}
BUNDLE = {"v", "exporter", "signer_key", "created", "incident", "items"}
MAX_GRANT_BODY, MAX_BUNDLE, MAX_BUNDLE_ITEMS = 4096, 64 << 20, 5000
NEVER_GRANTED = {"RED", "AMBER+STRICT"}


class Refused(Exception):
    def __init__(self, code: str, recipients: tuple[str, ...] = ()) -> None:
        super().__init__(code)
        self.code, self.recipients = code, recipients


def require(ok: bool, code: str, recipients: tuple[str, ...] = ()) -> None:
    if not ok:
        raise Refused(code, recipients)


def load(name: str) -> dict[str, Any]:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


# §2 canonical JSON ---------------------------------------------------------------------------

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r"}
_ESCAPES["\t"] = "\\t"


def _string(text: str) -> str:
    if any("\ud800" <= ch <= "\udfff" for ch in text):
        raise ValueError("lone surrogate")
    escaped = (_ESCAPES.get(ch) or (f"\\u{ord(ch):04x}" if ch < " " else ch) for ch in text)
    return '"' + "".join(escaped) + '"'


def _write(value: Any, depth: int) -> str:
    if depth > 16:
        raise ValueError("too deep")
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        if abs(value) > 2**53 - 1:
            raise ValueError("integer out of range")
        return str(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ",".join(_write(item, depth + 1) for item in value) + "]"
    if isinstance(value, dict):
        names = sorted(value, key=lambda name: name.encode("utf-16-be", "surrogatepass"))
        return "{" + ",".join(f"{_string(n)}:{_write(value[n], depth + 1)}" for n in names) + "}"
    raise TypeError(type(value).__name__)


def dumps(value: Any) -> bytes:
    return _write(value, 0).encode("utf-8")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({name for name, _ in pairs}) != len(pairs):
        raise ValueError("duplicate member")
    return dict(pairs)


def _no_float(text: str) -> Any:
    raise ValueError(f"not an integer: {text}")


def parse(data: bytes, members: set[str], code: str) -> dict[str, Any]:
    """Strict reader (§2.3): UTF-8, JSON, no duplicates, integers only, exact canonical bytes."""
    try:
        value = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_float=_no_float,
            parse_constant=_no_float,
        )
        canonical = dumps(value) == data
    except (ValueError, RecursionError) as exc:
        raise Refused(code) from exc
    require(canonical and isinstance(value, dict) and set(value) == members, code)
    require(type(value.get("v", 1)) is int and value.get("v", 1) == 1, code)
    return value


def unb64(text: str, length: int | None = None) -> bytes:
    raw = base64.b64decode(text, validate=True)
    if base64.b64encode(raw).decode() != text or length not in (None, len(raw)):
        raise ValueError("not canonical base64")
    return raw


# §3 frames, §4 crypto -------------------------------------------------------------------------


def key_id(public: bytes) -> bytes:
    return hashlib.sha256(public).digest()[:16]


@dataclass
class Frame:
    signer: bytes
    sections: list[bytes]
    signed: bytes
    signature: bytes

    def verifies(self, public: bytes) -> bool:
        if key_id(public) != self.signer:
            return False
        try:
            sodium.crypto_sign_open(self.signature + self.signed, public)
        except CryptoError:
            return False
        return True


def decode_frame(data: bytes, kind: bytes, max_bytes: int, bounds: tuple[int, ...]) -> Frame:
    require(len(data) <= max_bytes, "too_large")
    require(len(data) >= 86 and data[:3] == b"SSR", "malformed")
    require(data[3] == 1, "unsupported_version")
    require(data[4:5] == kind and data[21] == len(bounds), "malformed")
    end, offset, sections = len(data) - 64, 22, []
    for bound in bounds:
        require(offset + 4 <= end, "malformed")
        (length,) = struct.unpack_from(">I", data, offset)
        offset += 4
        require(length <= bound, "too_large")
        require(offset + length <= end, "malformed")
        sections.append(data[offset : offset + length])
        offset += length
    require(offset == end, "malformed")
    return Frame(data[5:21], sections, data[:end], data[end:])


def encode_frame(kind: bytes, seed: bytes, sections: list[bytes]) -> bytes:
    public, secret = sodium.crypto_sign_seed_keypair(seed)
    signed = b"SSR\x01" + kind + key_id(public) + bytes([len(sections)])
    signed += b"".join(struct.pack(">I", len(s)) + s for s in sections)
    return signed + sodium.crypto_sign(signed, secret)[:64]


def seal(message: bytes, public: bytes, ephemeral: bytes) -> bytes:
    """crypto_box_seal with a given ephemeral secret (§4.3)."""
    epk = sodium.crypto_scalarmult_base(ephemeral)
    nonce = hashlib.blake2b(epk + public, digest_size=24).digest()
    return epk + sodium.crypto_box_easy(message, nonce, public, ephemeral)


# §6 keys, §15 directory -----------------------------------------------------------------------


def usable(key: dict[str, Any], at: int) -> bool:
    revoked = key["revoked_at"] is not None and at >= key["revoked_at"]
    return key["not_before"] <= at < key["not_after"] and not revoked


def current_key(actor: dict[str, Any], at: int) -> dict[str, Any] | None:
    keys = [k for k in actor["encryption_keys"] if usable(k, at)]
    return max(keys, key=lambda k: (k["not_before"], k["key_id"])) if keys else None


def rank(level: str) -> int:
    return LADDER.index(level) if level in LADDER else -1


def cleared(actor: dict[str, Any], label: dict[str, Any]) -> bool:
    return (
        min(rank(actor["clearance"]), rank(label["classification"])) >= 0
        and rank(actor["clearance"]) >= rank(label["classification"])
        and set(label["categories"]) <= set(actor["categories"])
    )


def verify_directory(data: bytes, pinned: bytes, previous: dict | None = None) -> dict[str, Any]:
    try:
        frame = decode_frame(data, b"D", 4 << 20, (4 << 20,))
    except Refused as exc:
        raise Refused("directory_malformed") from exc
    keys = previous["doc"]["authority_keys"] if previous else []
    trusted = {bytes.fromhex(k["key_id"]): unb64(k["public"]) for k in keys}
    trusted = trusted if previous else {key_id(pinned): pinned}
    require(frame.signer in trusted, "directory_unknown_signer")
    require(frame.verifies(trusted[frame.signer]), "directory_bad_signature")
    doc = parse(frame.sections[0], DIRECTORY, "directory_malformed")
    records = [*doc["authority_keys"]]
    for entry in doc["actors"] + doc["officers"] + doc["brokers"]:
        records += entry["signing_keys"] + entry.get("encryption_keys", [])
    for record in records:
        require(set(record) == KEY, "directory_malformed")
        public = unb64(record["public"], 32)
        require(key_id(public).hex() == record["key_id"], "directory_malformed")
    require((doc["version"] == 1) == (doc["previous"] is None), "directory_malformed")
    signer = frame.signer.hex()
    if previous is None:
        require(signer in {k["key_id"] for k in doc["authority_keys"]}, "directory_unknown_signer")
    else:
        before = previous["doc"]
        require(doc["region"] == before["region"], "directory_chain_broken")
        require(doc["version"] == before["version"] + 1, "directory_not_next")
        require(doc["previous"] == previous["hash"], "directory_chain_broken")
        require(doc["issued"] >= before["issued"], "directory_chain_broken")
        authority = next(k for k in before["authority_keys"] if k["key_id"] == signer)
        require(usable(authority, doc["issued"]), "directory_unknown_signer")
    signers = {}  # key id -> (owner, "actor" | "officer" | "broker", key record)
    for kind in ("actor", "officer", "broker"):
        for owner in doc[kind + "s"]:
            signers |= {k["key_id"]: (owner["id"], kind, k) for k in owner["signing_keys"]}
    actors = {a["id"]: a for a in doc["actors"]}
    hash_ = hashlib.sha256(data).hexdigest()
    return {"doc": doc, "hash": hash_, "raw": data, "signers": signers, "actors": actors}


# §8 broker, §9 recipient ----------------------------------------------------------------------


@dataclass
class Envelope:
    header: dict[str, Any]
    header_bytes: bytes
    wraps: list[dict[str, Any]]
    ciphertext: bytes
    sender: dict[str, Any]
    key: dict[str, Any]


def read_envelope(data: bytes, directory: dict[str, Any]) -> Envelope:
    try:
        frame = decode_frame(data, b"E", MAX_ENVELOPE, (32 << 10, 64 << 10, MAX_ENVELOPE))
    except Refused as exc:
        passed = exc.code in {"too_large", "unsupported_version"}
        raise Refused(exc.code if passed else "malformed") from exc
    entry = directory["signers"].get(frame.signer.hex())
    require(entry is not None and entry[1] == "actor", "unknown_sender_key")
    principal, _, key = entry
    require(frame.verifies(unb64(key["public"])), "bad_signature")
    header_bytes, wraps_bytes, ciphertext = frame.sections
    header = parse(header_bytes, HEADER, "malformed")
    wraps = parse(wraps_bytes, {"wraps"}, "malformed")["wraps"]
    require(set(header["label"]) == LABEL and header["expires"] > header["created"], "malformed")
    control = header["control"]
    require(control is None or (isinstance(control, dict) and set(control) == CONTROL), "malformed")
    recipients = header["recipients"]
    require(recipients == sorted(set(recipients)) and len(recipients) >= 1, "malformed")
    require(all(set(w) == WRAP and len(w["sealed"]) == 108 for w in wraps), "malformed")
    signer_ok = header["sender"] == principal and header["sender_key"] == frame.signer.hex()
    require(signer_ok, "sender_mismatch")
    require([w["recipient"] for w in wraps] == recipients, "wraps_mismatch")
    require(len(ciphertext) >= 40, "malformed")
    return Envelope(header, header_bytes, wraps, ciphertext, directory["actors"][principal], key)


def recipient_problem(wrap: dict, directory: dict, label: dict, now: int) -> str | None:
    actor = directory["actors"].get(wrap["recipient"])
    if actor is None:
        return "recipient_unknown"
    if actor["status"] != "active":
        return "recipient_inactive"
    current = current_key(actor, now)
    if current is None or current["key_id"] != wrap["key_id"]:
        return "recipient_key_invalid"
    if rank(actor["clearance"]) < rank(label["classification"]):
        return "recipient_not_cleared"
    if not set(label["categories"]) <= set(actor["categories"]):
        return "recipient_lacks_category"
    return None


def decide(data: bytes, directory: dict[str, Any], now: int, seen: set[str]) -> Envelope:
    """The broker's checks of §8 in their order, under the default policy in mode ordinary."""
    env = read_envelope(data, directory)
    header, key, label = env.header, env.key, env.header["label"]
    created, expires = header["created"], header["expires"]
    roles = {*env.sender["roles"], "member"}
    require(env.sender["status"] == "active", "sender_inactive")
    revoked = key["revoked_at"] is not None and max(now, created) >= key["revoked_at"]
    require(not revoked, "sender_key_revoked")
    require(usable(key, now) and usable(key, created), "sender_key_expired")
    require(created <= now + LEEWAY, "not_yet_valid")
    require(expires > now, "expired")
    require(expires - created <= MAX_LIFETIME, "lifetime_too_long")
    require(header["id"] not in seen, "replay")
    require(len(header["recipients"]) <= MAX_RECIPIENTS, "too_many_recipients")
    require(label["policy"] == POLICY_ID and rank(label["classification"]) >= 0, "label_invalid")
    require(rank(label["classification"]) <= rank(CEILING), "above_ceiling")
    require(cleared(env.sender, label), "above_sender_clearance")
    allowed = RIGHTS.get(header["type"])  # None: every actor may send this type
    require(allowed is None or bool(roles & allowed), "type_not_allowed")
    region_wide = header["type"] == "activation" and len(header["recipients"]) >= 10
    require(not region_wide or "authority" in roles, "region_wide_not_allowed")
    # The default policy has no mode overlays, so no recipient is required (check 23).
    kind, control, incident = header["type"], header["control"], header["incident"]
    given = {name for name, value in (control or {}).items() if value is not None}
    if kind == "mode_change":
        fits = given == {"mode"}
    elif kind == "activation":
        fits = control is not None and incident is not None
        fits = fits and given <= {"incident_type", "communication_lead"}
        lead = control["communication_lead"] if control else None
        require(lead in (None, header["sender"], *header["recipients"]), "control_invalid")
    elif kind == "request":
        fits = given <= {"deadline"}
        deadline = control["deadline"] if control else None
        require(deadline is None or created < deadline <= expires, "control_invalid")
    elif kind == "communication":
        fits = given <= {"press"} and (not given or incident is not None)
    else:
        fits = control is None and (kind != "incident_close" or incident is not None)
    require(fits, "control_invalid")
    # The default policy's catalogue of incident types is empty: every type is known.
    if incident is not None:  # this implementation knows no incidents: every one is new
        require(kind == "activation", "incident_unknown")
        require(control["incident_type"] is not None, "control_invalid")
    if kind == "communication":  # press lines (check 25a)
        press = control["press"] if control else None
        public = label["tlp"] == "CLEAR" or label["classification"] == LADDER[0]
        require(press == "approved" or not public, "press_line_unapproved")
        require(press != "approved", "press_approval_not_lead")  # knows no incident or lead
    problems: dict[str, list[str]] = {}
    for wrap in env.wraps:
        code = recipient_problem(wrap, directory, label, now)
        if code:
            problems.setdefault(code, []).append(wrap["recipient"])
    for code in RECIPIENT_CODES:
        require(code not in problems, code, tuple(problems.get(code, ())))
    forwards = [r for r in header["references"] if r["kind"] == "forward"]
    require(not forwards, "forward_origin_unknown")  # this implementation knows no originals
    return env


def open_envelope(data: bytes, directory: dict, me: str, secret: bytes, now: int) -> bytes:
    try:
        env = read_envelope(data, directory)
    except Refused as exc:
        raise Refused("invalid") from exc
    header = env.header
    alive = usable(env.key, header["created"]) and env.sender["status"] == "active"
    require(alive, "sender_key_revoked")
    require(header["created"] <= now + LEEWAY, "not_yet_valid")
    require(header["expires"] > now - LEEWAY, "expired")
    wrap = next((w for w in env.wraps if w["recipient"] == me), None)
    require(wrap is not None, "not_addressed")
    myself = directory["actors"].get(me)
    require(myself is not None and cleared(myself, header["label"]), "not_cleared")
    public = sodium.crypto_scalarmult_base(secret)
    try:
        require(wrap["key_id"] == key_id(public).hex(), "invalid")
        content_key = sodium.crypto_box_seal_open(unb64(wrap["sealed"]), public, secret)
        require(len(content_key) == 32, "invalid")
        ad, body = hashlib.sha256(env.header_bytes).digest(), env.ciphertext[24:]
        return sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
            body, ad, env.ciphertext[:24], content_key
        )
    except (CryptoError, ValueError) as exc:
        raise Refused("invalid") from exc


# §13 receipts ---------------------------------------------------------------------------------


def verify_receipt(data: bytes, directory: dict[str, Any]) -> dict[str, Any]:
    try:
        frame = decode_frame(data, b"R", 4096 + 128, (4096,))
    except Refused as exc:
        raise Refused("receipt_malformed") from exc
    entry = directory["signers"].get(frame.signer.hex())
    require(entry is not None and entry[1] == "actor", "receipt_unknown_signer")
    principal, _, key = entry
    require(frame.verifies(unb64(key["public"])), "receipt_bad_signature")
    body = parse(frame.sections[0], RECEIPT, "receipt_malformed")
    signer_ok = body["recipient"] == principal and body["signer_key"] == frame.signer.hex()
    require(signer_ok, "receipt_signer_mismatch")
    require(usable(key, body["at"]), "receipt_key_invalid")
    return body


# §14 notices ----------------------------------------------------------------------------------


def verify_notice(data: bytes, directory: dict[str, Any], now: int) -> dict[str, Any]:
    try:
        frame = decode_frame(data, b"N", 16384 + 128, (16384,))
    except Refused as exc:
        raise Refused("notice_malformed") from exc
    entry = directory["signers"].get(frame.signer.hex())
    require(entry is not None and entry[1] == "broker", "notice_unknown_signer")
    principal, _, key = entry
    require(frame.verifies(unb64(key["public"])), "notice_bad_signature")
    body = parse(frame.sections[0], NOTICE, "notice_malformed")
    require(body["kind"] in {"accepted", "rejected", "escalation"}, "notice_malformed")
    require(len(body["detail"]) <= 500 and len(body["recipients"]) <= 200, "notice_malformed")
    signer_ok = body["broker"] == principal and body["signer_key"] == frame.signer.hex()
    require(signer_ok, "notice_unknown_signer")
    revoked = key["revoked_at"] is not None and now >= key["revoked_at"]
    require(not revoked and usable(key, body["at"]), "notice_key_invalid")
    return body


# §22 key grants -------------------------------------------------------------------------------


def verify_grant(data: bytes, directory: dict[str, Any], now: int) -> tuple[dict, Envelope]:
    try:
        frame = decode_frame(
            data, b"G", MAX_ENVELOPE + MAX_GRANT_BODY + 256, (MAX_GRANT_BODY, MAX_ENVELOPE)
        )
    except Refused as exc:
        raise Refused("grant_malformed") from exc
    entry = directory["signers"].get(frame.signer.hex())
    require(entry is not None and entry[1] == "actor", "grant_unknown_signer")
    principal, _, key = entry
    require(frame.verifies(unb64(key["public"])), "grant_bad_signature")
    body = parse(frame.sections[0], GRANT, "grant_malformed")
    try:
        unb64(body["sealed"], 80)
    except ValueError as exc:
        raise Refused("grant_malformed") from exc
    signer_ok = body["sender"] == principal and body["signer_key"] == frame.signer.hex()
    require(signer_ok, "grant_signer_mismatch")
    revoked = key["revoked_at"] is not None and now >= key["revoked_at"]
    require(not revoked and usable(key, body["at"]), "grant_key_invalid")
    env = read_envelope(frame.sections[1], directory)  # the envelope's own codes (§8, 1-9)
    header = env.header
    require(header["sender"] == body["sender"], "grant_signer_mismatch")
    same = (header["id"], hashlib.sha256(env.header_bytes).hexdigest(), header["incident"])
    require(same == (body["message"], body["header_hash"], body["incident"]), "grant_mismatch")
    has_it = body["recipient"] in header["recipients"] or body["recipient"] == header["sender"]
    require(not has_it, "grant_already_recipient")
    return body, env


def open_grant(body: dict, env: Envelope, directory: dict, me: str, secret: bytes, now: int):
    header = env.header
    require(body["recipient"] == me, "not_addressed")
    require(header["label"]["tlp"] not in NEVER_GRANTED, "grant_not_allowed")
    require(env.sender["status"] == "active", "sender_inactive")
    revoked = env.key["revoked_at"] is not None and now >= env.key["revoked_at"]
    require(not revoked and usable(env.key, header["created"]), "sender_key_revoked")
    require(header["created"] <= now + LEEWAY, "not_yet_valid")
    require(header["expires"] > now - LEEWAY, "expired")
    require(header["expires"] - header["created"] <= MAX_LIFETIME, "lifetime_too_long")
    require(header["label"]["policy"] == POLICY_ID, "label_invalid")
    myself = directory["actors"].get(me)
    require(myself is not None and cleared(myself, header["label"]), "not_cleared")
    public = sodium.crypto_scalarmult_base(secret)
    try:
        require(body["key_id"] == key_id(public).hex(), "invalid")
        content_key = sodium.crypto_box_seal_open(unb64(body["sealed"]), public, secret)
        require(len(content_key) == 32, "invalid")
        ad = hashlib.sha256(env.header_bytes).digest()
        return sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
            env.ciphertext[24:], ad, env.ciphertext[:24], content_key
        )
    except (CryptoError, ValueError) as exc:
        raise Refused("invalid") from exc


# §23 offline bundles ----------------------------------------------------------------------------


def verify_bundle(data: bytes, directory: dict[str, Any], now: int) -> list[bytes]:
    try:
        frame = decode_frame(data, b"B", MAX_BUNDLE + 256, (MAX_BUNDLE,))
    except Refused as exc:
        raise Refused(
            "bundle_too_large" if exc.code == "too_large" else "bundle_malformed"
        ) from exc
    entry = directory["signers"].get(frame.signer.hex())
    require(entry is not None and entry[1] == "actor", "bundle_unknown_signer")
    principal, _, key = entry
    require(frame.verifies(unb64(key["public"])), "bundle_bad_signature")
    body = parse(frame.sections[0], BUNDLE, "bundle_malformed")
    require(len(body["items"]) <= MAX_BUNDLE_ITEMS, "bundle_malformed")
    signer_ok = body["exporter"] == principal and body["signer_key"] == frame.signer.hex()
    require(signer_ok, "bundle_signer_mismatch")
    revoked = key["revoked_at"] is not None and now >= key["revoked_at"]
    exporter_ok = directory["actors"][principal]["status"] == "active"
    require(exporter_ok and not revoked and usable(key, body["created"]), "bundle_key_invalid")
    try:
        items = [unb64(item) for item in body["items"]]
    except ValueError as exc:
        raise Refused("bundle_malformed") from exc
    require(all(i[:3] == b"SSR" and i[4:5] in (b"E", b"G") for i in items), "bundle_malformed")
    return items


# The tests ------------------------------------------------------------------------------------

ENVELOPE, INVALID = load("envelope-valid.json"), load("envelope-invalid.json")
RECEIPT_VECTOR, CHAIN = load("receipt.json"), load("directory-chain.json")
NOTICE_VECTOR = load("notice.json")
GRANT_VECTOR, BUNDLE_VECTOR = load("grant.json"), load("bundle.json")
PINNED = bytes.fromhex(CHAIN["authority_public"])


def directory_of(vector: dict[str, Any]) -> dict[str, Any]:
    return verify_directory(bytes.fromhex(vector["directory"]), PINNED)


def test_canonical_writer_follows_the_spec():
    assert dumps({"b": 1, "a": [True, None, "x"]}) == b'{"a":[true,null,"x"],"b":1}'
    assert dumps({"a": 3, "\ue000": 1, "😀": 2}) == '{"a":3,"😀":2,"\ue000":1}'.encode()
    assert dumps(['"\\/\b\f\n\r\t\x1f\x7fä']) == '["\\"\\\\/\\b\\f\\n\\r\\t\\u001f\x7fä"]'.encode()
    for bad in (b'{"a":1,"a":1}', b'{"a":1.0}', b'{"a": 1}', b'{"a":"\\u00e4"}', b'{"a":"\xff"}'):
        with pytest.raises(Refused):
            parse(bad, {"a"}, "malformed")


def test_directory_chain_verifies_with_expected_hashes():
    chain: list[dict[str, Any]] = []
    for raw in CHAIN["versions"]:
        chain.append(verify_directory(bytes.fromhex(raw), PINNED, chain[-1] if chain else None))
    assert [v["hash"] for v in chain] == CHAIN["expected_hashes"]
    assert [v["doc"]["version"] for v in chain] == [1, 2, 3]
    assert all(
        dumps(v["doc"]) == decode_frame(v["raw"], b"D", 1 << 22, (1 << 22,)).sections[0]
        for v in chain
    )


@pytest.mark.parametrize("case", CHAIN["invalid"], ids=lambda c: c["name"])
def test_directory_chain_refuses_invalid_versions(case):
    chain: list[dict[str, Any]] = []
    for raw in CHAIN["versions"][: case["previous"]]:
        chain.append(verify_directory(bytes.fromhex(raw), PINNED, chain[-1] if chain else None))
    with pytest.raises(Refused) as caught:
        verify_directory(bytes.fromhex(case["version"]), PINNED, chain[-1])
    assert caught.value.code == case["reason"]


@pytest.mark.parametrize("recipient", ENVELOPE["recipients"], ids=lambda r: r["actor"])
def test_valid_envelope_is_accepted_and_opens(recipient):
    directory, raw = directory_of(ENVELOPE), bytes.fromhex(ENVELOPE["envelope"])
    expected, now = ENVELOPE["expected"], ENVELOPE["now"]
    env = decide(raw, directory, now, seen=set())
    assert env.header_bytes == expected["header_bytes"].encode()
    assert dumps(expected["header"]) == env.header_bytes
    assert dumps(expected["wraps"]) == decode_frame(raw, b"E", 1 << 20, (1 << 20,) * 3).sections[1]
    assert hashlib.sha256(env.header_bytes).hexdigest() == expected["header_hash"]
    secret = bytes.fromhex(recipient["encryption_secret"])
    payload = open_envelope(raw, directory, recipient["actor"], secret, now)
    assert payload == bytes.fromhex(expected["plaintext_hex"])
    assert payload.decode() == expected["plaintext"]


def test_building_reproduces_the_valid_envelope_byte_for_byte():
    """Appendix A's random stream and §7's procedure give exactly the published envelope."""
    seed, stream = b"ssr-test-vectors-v1", b""
    while len(stream) < 616:
        stream += hashlib.sha256(seed + (len(stream) // 32).to_bytes(8, "big")).digest()
    expected = ENVELOPE["expected"]
    header_bytes = dumps(dict(expected["header"], id=stream[448:464].hex()))
    content_key, nonce = stream[464:496], stream[496:520]
    payload = bytes.fromhex(expected["plaintext_hex"])
    ad = hashlib.sha256(header_bytes).digest()
    ciphertext = nonce + sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
        payload, ad, nonce, content_key
    )
    wraps = []
    for i, recipient in enumerate(sorted(ENVELOPE["recipients"], key=lambda r: r["actor"])):
        public = bytes.fromhex(recipient["encryption_public"])
        sealed = seal(content_key, public, stream[520 + 32 * i : 552 + 32 * i])
        wraps.append(
            {
                "recipient": recipient["actor"],
                "key_id": key_id(public).hex(),
                "sealed": base64.b64encode(sealed).decode(),
            }
        )
    sections = [header_bytes, dumps({"wraps": wraps}), ciphertext]
    assert encode_frame(b"E", stream[32:64], sections).hex() == ENVELOPE["envelope"]


def test_frame_parser_and_signature_refuse_broken_envelopes():
    cases = {case["name"]: bytes.fromhex(case["envelope"]) for case in INVALID["cases"]}
    nacka = bytes.fromhex(ENVELOPE["sender"]["signing_public"])
    bounds = (32 << 10, 64 << 10, MAX_ENVELOPE)
    for name in ("bad_signature", "tampered_label", "added_recipient", "truncated_ciphertext"):
        assert not decode_frame(cases[name], b"E", MAX_ENVELOPE, bounds).verifies(nacka), name
    for name, code in (
        ("unsupported_version", "unsupported_version"),
        ("truncated_frame", "malformed"),
    ):
        with pytest.raises(Refused, match=code):
            decode_frame(cases[name], b"E", MAX_ENVELOPE, bounds)
    assert decode_frame(bytes.fromhex(ENVELOPE["envelope"]), b"E", MAX_ENVELOPE, bounds).verifies(
        nacka
    )


@pytest.mark.parametrize("case", INVALID["cases"], ids=lambda c: c["name"])
def test_invalid_envelopes_are_refused_with_their_reason(case):
    directory, raw = directory_of(INVALID), bytes.fromhex(case["envelope"])
    now = case.get("now", INVALID["now"])
    if case["stage"] == "broker":
        with pytest.raises(Refused) as caught:
            decide(raw, directory, now, seen=set(case.get("seen", [])))
    else:
        secrets = {r["actor"]: r["encryption_secret"] for r in ENVELOPE["recipients"]}
        secret = bytes.fromhex(
            case.get("recipient_secret", secrets.get(case["recipient"], "00" * 32))
        )
        with pytest.raises(Refused) as caught:
            open_envelope(raw, directory, case["recipient"], secret, now)
    assert caught.value.code == case["reason"]
    assert list(caught.value.recipients) == case.get("recipients", [])


def test_receipt_verifies_and_is_bound_to_its_envelope():
    directory = directory_of(RECEIPT_VECTOR)
    raw = bytes.fromhex(RECEIPT_VECTOR["receipt"])
    body = verify_receipt(raw, directory)
    assert body == RECEIPT_VECTOR["expected"]["body"]
    assert dumps(body) == decode_frame(raw, b"R", 4224, (4096,)).sections[0]
    env = read_envelope(bytes.fromhex(RECEIPT_VECTOR["envelope"]), directory)
    assert body["message"] == env.header["id"]
    assert body["header_hash"] == hashlib.sha256(env.header_bytes).hexdigest()
    assert body["sender"] == env.header["sender"]
    assert body["recipient"] in env.header["recipients"]
    tampered = bytearray(raw)
    tampered[40] ^= 0x01  # inside the body: the signature no longer verifies
    with pytest.raises(Refused, match="receipt_bad_signature"):
        verify_receipt(bytes(tampered), directory)


def test_notice_verifies_and_names_the_refused_envelope():
    directory = directory_of(NOTICE_VECTOR)
    raw, now = bytes.fromhex(NOTICE_VECTOR["notice"]), NOTICE_VECTOR["now"]
    body = verify_notice(raw, directory, now)
    assert body == NOTICE_VECTOR["expected"]["body"]
    assert dumps(body) == NOTICE_VECTOR["expected"]["body_bytes"].encode()
    assert dumps(body) == decode_frame(raw, b"N", 16512, (16384,)).sections[0]
    broker = NOTICE_VECTOR["broker"]
    assert key_id(bytes.fromhex(broker["signing_public"])).hex() == broker["signing_key_id"]
    assert (body["broker"], body["signer_key"]) == (broker["id"], broker["signing_key_id"])
    # The notice names what the broker refused: this implementation refuses it the same way.
    submitted = bytes.fromhex(NOTICE_VECTOR["envelope"])
    assert body["submission"] == hashlib.sha256(submitted).hexdigest()
    with pytest.raises(Refused) as caught:
        decide(submitted, directory, body["at"], seen=set())
    assert (body["reason"], body["recipients"]) == (
        caught.value.code,
        list(caught.value.recipients),
    )
    env = read_envelope(submitted, directory)
    assert (body["message"], body["to"]) == (env.header["id"], env.header["sender"])
    assert body["header_hash"] == hashlib.sha256(env.header_bytes).hexdigest()


@pytest.mark.parametrize("case", NOTICE_VECTOR["invalid"], ids=lambda c: c["name"])
def test_invalid_notices_are_refused_with_their_reason(case):
    directory = directory_of(NOTICE_VECTOR)
    with pytest.raises(Refused) as caught:
        verify_notice(bytes.fromhex(case["notice"]), directory, NOTICE_VECTOR["now"])
    assert caught.value.code == case["reason"]


def test_a_notice_is_no_envelope_and_an_envelope_no_notice():
    """The kind byte keeps the objects apart, whoever signed them."""
    directory = directory_of(NOTICE_VECTOR)
    with pytest.raises(Refused, match="malformed"):
        decide(bytes.fromhex(NOTICE_VECTOR["notice"]), directory, NOTICE_VECTOR["now"], set())
    with pytest.raises(Refused, match="notice_malformed"):
        verify_notice(bytes.fromhex(ENVELOPE["envelope"]), directory, NOTICE_VECTOR["now"])


def test_grant_verifies_and_opens_for_the_newcomer():
    directory, now = directory_of(GRANT_VECTOR), GRANT_VECTOR["now"]
    raw, expected = bytes.fromhex(GRANT_VECTOR["grant"]), GRANT_VECTOR["expected"]
    body, env = verify_grant(raw, directory, now)
    assert body == expected["body"]
    assert dumps(body) == expected["body_bytes"].encode()
    assert decode_frame(raw, b"G", 1 << 21, (4096, 1 << 20)).sections == [
        dumps(body),
        bytes.fromhex(GRANT_VECTOR["envelope"]),
    ]
    assert hashlib.sha256(env.header_bytes).hexdigest() == expected["header_hash"]
    assert env.header["incident"] == GRANT_VECTOR["incident"] == body["incident"]
    newcomer = GRANT_VECTOR["newcomer"]
    assert newcomer["actor"] not in env.header["recipients"]
    # The broker would decide the original like any envelope; this one knows no incidents.
    with pytest.raises(Refused, match="incident_unknown"):
        decide(bytes.fromhex(GRANT_VECTOR["envelope"]), directory, now, seen=set())
    secret = bytes.fromhex(newcomer["encryption_secret"])
    payload = open_grant(body, env, directory, newcomer["actor"], secret, now)
    assert payload == bytes.fromhex(expected["plaintext_hex"])
    assert payload.decode() == expected["plaintext"]


def test_building_reproduces_the_grant_byte_for_byte():
    """§22.2's procedure with the published content key and ephemeral secret, signed with
    nacka's seed from Appendix A's stream, gives exactly the published grant."""
    seed, stream = b"ssr-test-vectors-v1", b""
    while len(stream) < 64:
        stream += hashlib.sha256(seed + (len(stream) // 32).to_bytes(8, "big")).digest()
    expected, newcomer = GRANT_VECTOR["expected"], GRANT_VECTOR["newcomer"]
    public = bytes.fromhex(newcomer["encryption_public"])
    content_key = bytes.fromhex(expected["content_key"])
    sealed = seal(content_key, public, bytes.fromhex(expected["ephemeral_secret"]))
    envelope = bytes.fromhex(GRANT_VECTOR["envelope"])
    env = read_envelope(envelope, directory_of(GRANT_VECTOR))
    body = {
        "v": 1,
        "message": env.header["id"],
        "header_hash": hashlib.sha256(env.header_bytes).hexdigest(),
        "sender": env.header["sender"],
        "signer_key": key_id(sodium.crypto_sign_seed_keypair(stream[32:64])[0]).hex(),
        "recipient": newcomer["actor"],
        "incident": env.header["incident"],
        "key_id": key_id(public).hex(),
        "sealed": base64.b64encode(sealed).decode(),
        "at": expected["body"]["at"],
    }
    grant = encode_frame(b"G", stream[32:64], [dumps(body), envelope])
    assert grant.hex() == GRANT_VECTOR["grant"]


@pytest.mark.parametrize("case", GRANT_VECTOR["invalid"], ids=lambda c: c["name"])
def test_invalid_grants_are_refused_with_their_reason(case):
    directory, raw = directory_of(GRANT_VECTOR), bytes.fromhex(case["grant"])
    now = case.get("now", GRANT_VECTOR["now"])
    newcomer = GRANT_VECTOR["newcomer"]
    if case["stage"] == "verify":
        with pytest.raises(Refused) as caught:
            verify_grant(raw, directory, now)
    else:
        body, env = verify_grant(raw, directory, GRANT_VECTOR["now"])
        me = case.get("recipient", newcomer["actor"])
        secret = bytes.fromhex(newcomer["encryption_secret"])
        with pytest.raises(Refused) as caught:
            open_grant(body, env, directory, me, secret, now)
    assert caught.value.code == case["reason"]


def test_no_single_bit_flip_of_the_grant_verifies():
    directory, raw = directory_of(GRANT_VECTOR), bytes.fromhex(GRANT_VECTOR["grant"])
    for position in range(0, len(raw), 3):
        flipped = bytearray(raw)
        flipped[position] ^= 1 << (position % 8)
        with pytest.raises(Refused):
            verify_grant(bytes(flipped), directory, GRANT_VECTOR["now"])


def test_bundle_verifies_and_each_item_verifies_on_its_own():
    directory, now = directory_of(BUNDLE_VECTOR), BUNDLE_VECTOR["now"]
    raw = bytes.fromhex(BUNDLE_VECTOR["bundle"])
    items = verify_bundle(raw, directory, now)
    assert [i.hex() for i in items] == BUNDLE_VECTOR["expected"]["items"]
    section = decode_frame(raw, b"B", MAX_BUNDLE + 256, (MAX_BUNDLE,)).sections[0]
    assert section == dumps(BUNDLE_VECTOR["expected"]["body"])
    envelope, grant = items
    read_envelope(envelope, directory)
    body, _env = verify_grant(grant, directory, now)
    assert body["message"] == read_envelope(envelope, directory).header["id"]
    # Dedupe on import: the envelope by its message id, the grant by (message, newcomer).
    keys = {read_envelope(envelope, directory).header["id"], (body["message"], body["recipient"])}
    assert len(keys) == 2


@pytest.mark.parametrize("case", BUNDLE_VECTOR["invalid"], ids=lambda c: c["name"])
def test_invalid_bundles_are_refused_with_their_reason(case):
    with pytest.raises(Refused) as caught:
        verify_bundle(
            bytes.fromhex(case["bundle"]), directory_of(BUNDLE_VECTOR), BUNDLE_VECTOR["now"]
        )
    assert caught.value.code == case["reason"]


def test_a_bundle_vouches_for_bytes_not_for_items():
    directory, now = directory_of(BUNDLE_VECTOR), BUNDLE_VECTOR["now"]
    tampered = BUNDLE_VECTOR["tampered_item"]
    items = verify_bundle(bytes.fromhex(tampered["bundle"]), directory, now)
    with pytest.raises(Refused) as caught:
        read_envelope(items[0], directory)
    assert [caught.value.code, None] == tampered["item_reasons"]
    verify_grant(items[1], directory, now)


def test_frame_kinds_keep_grants_bundles_and_envelopes_apart():
    directory, now = directory_of(GRANT_VECTOR), GRANT_VECTOR["now"]
    grant, bundle = bytes.fromhex(GRANT_VECTOR["grant"]), bytes.fromhex(BUNDLE_VECTOR["bundle"])
    with pytest.raises(Refused, match="malformed"):
        read_envelope(grant, directory)
    with pytest.raises(Refused, match="grant_malformed"):
        verify_grant(bundle, directory, now)
    with pytest.raises(Refused, match="bundle_malformed"):
        verify_bundle(grant, directory, now)
