"""Offline bundles (``broker.core.bundles``), hostile input first.

A bundle's signature vouches only for what the exporter put in it: each item (an
envelope or a key grant) must still verify on its own against its sender's key, so
a bundle can carry a tampered item that verify_bundle lets through and the item's own
verification refuses.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from broker.core import (
    ActorStatus,
    BundleBody,
    BundleError,
    MessageType,
    Policy,
    ReceiptKind,
    Reject,
    bundles,
    make_bundle,
    make_grant,
    make_receipt,
    read_envelope,
    seal_envelope,
    verify_bundle,
    verify_grant,
)
from broker.core import frame as frames
from broker.core.errors import EnvelopeError, GrantError
from broker.core.limits import MIB
from broker.demo import DemoRegion

from .conftest import HOUR, NOW
from .envelope_helpers import (
    DEFAULT_LABEL,
    actor,
    decide_at,
    edit_directory,
    impostor,
    recipient_keys,
    reframe,
    resign,
    signing_key_update,
)

EXPORTER = "nacka"
INCIDENT = "storm-2026"
CREATED = NOW + 120_000


def envelope(region: DemoRegion, payload: bytes = b"lagesbild", **overrides: Any):
    args: dict[str, Any] = {
        "sender": region.identities[EXPORTER],
        "recipients": recipient_keys(region.directory, ("polisen-stockholm", "sos-alarm")),
        "label": DEFAULT_LABEL,
        "message_type": MessageType.SITUATION_REPORT,
        "payload": payload,
        "created": NOW,
        "expires": NOW + HOUR,
        "incident": INCIDENT,
    }
    args.update(overrides)
    return seal_envelope(**args)


def items(region: DemoRegion) -> list[bytes]:
    first, second = envelope(region), envelope(region, b"second")
    granted = make_grant(
        region.identities[EXPORTER],
        first.raw,
        first.content_key,
        newcomer=actor(region, "solna"),
        directory=region.directory,
        policy=Policy(),
        at=NOW + 60_000,
    )
    return [first.raw, second.raw, granted]


def bundle(region: DemoRegion, content: list[bytes] | None = None, **kw: Any) -> bytes:
    exporter = kw.pop("exporter", EXPORTER)
    return make_bundle(
        region.identities[exporter],
        items(region) if content is None else content,
        created=kw.pop("created", CREATED),
        incident=kw.pop("incident", INCIDENT),
    )


def verify(raw: bytes, region: DemoRegion, *, now: int = CREATED + 1_000, **kw: Any):
    return verify_bundle(raw, kw.pop("directory", region.directory), now=now)


def section(raw: bytes) -> bytes:
    decoded = frames.decode(
        raw, frames.Kind.BUNDLE, max_bytes=1 << 27, max_section=(bundles.MAX_BUNDLE_BYTES,)
    )
    return decoded.sections[0]


def signed_body(region: DemoRegion, body: bytes | dict[str, Any], who: str = EXPORTER) -> bytes:
    """A correctly signed B frame around any body (what a signer could produce)."""
    data = (
        body
        if isinstance(body, bytes)
        else json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )
    return resign(region.identities[who], (data,), frames.Kind.BUNDLE)


def refused(code: str, raw: bytes, region: DemoRegion, **kw: Any) -> None:
    with pytest.raises(BundleError) as caught:
        verify(raw, region, **kw)
    assert caught.value.code == code


# --- round trip ---------------------------------------------------------------------


def test_a_bundle_round_trips_and_each_item_verifies(region):
    content = items(region)
    raw = bundle(region, content)
    assert raw[:5] == b"SSR\x01B"
    assert raw[21] == 1
    verified = verify(raw, region)
    assert verified.items == tuple(content)
    assert verified.body.exporter == EXPORTER
    assert verified.body.signer_key == region.identities[EXPORTER].signing.key_id
    assert (verified.body.created, verified.body.incident) == (CREATED, INCIDENT)
    first, second, granted = verified.items
    assert read_envelope(first, region.directory).header.incident == INCIDENT
    assert read_envelope(second, region.directory).header.incident == INCIDENT
    assert verify_grant(granted, region.directory, now=CREATED).body.recipient == "solna"
    assert BundleBody.parse(section(raw), max_bytes=bundles.MAX_BUNDLE_BYTES) == verified.body


def test_an_empty_bundle_and_one_without_incident_are_allowed(region):
    verified = verify(bundle(region, [], incident=None), region)
    assert verified.items == ()
    assert verified.body.incident is None


def test_items_are_canonical_base64_in_the_body(region):
    raw = bundle(region)
    body = json.loads(section(raw))
    assert set(body) == {"v", "exporter", "signer_key", "created", "incident", "items"}
    assert body["v"] == 1
    assert section(raw) == json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


# --- tampering --------------------------------------------------------------------------


def test_bit_flips_in_the_body_or_signature_are_bad_signatures(region):
    raw = bundle(region)
    body_start, body_end = 26, len(raw) - 64
    positions = [*range(body_start, body_end, 97), body_end - 1, *range(body_end, len(raw), 7)]
    for position in positions:
        flipped = bytearray(raw)
        flipped[position] ^= 1 << (position % 8)
        refused("bundle_bad_signature", bytes(flipped), region)


@pytest.mark.parametrize("change", ["drop", "reorder", "add"])
def test_items_changed_under_the_original_signature_are_refused(region, change):
    raw = bundle(region)
    body = json.loads(section(raw))
    content = body["items"]
    body["items"] = {
        "drop": content[1:],
        "reorder": content[::-1],
        "add": [*content, content[0]],
    }[change]
    data = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    original = frames.decode(raw, frames.Kind.BUNDLE, max_bytes=1 << 27, max_section=(1 << 27,))
    forged = reframe(
        (data,), signer_id=original.signer, signature=original.signature, kind=frames.Kind.BUNDLE
    )
    refused("bundle_bad_signature", forged, region)


def test_a_tampered_item_passes_the_bundle_but_not_its_own_verification(region):
    """The exporter's signature covers the bytes it exported, not their truth."""
    first, second, granted = items(region)
    bad_envelope = bytearray(first)
    bad_envelope[40] ^= 0x01  # inside the header: the sender's signature no longer verifies
    bad_grant = bytearray(granted)
    bad_grant[40] ^= 0x01
    verified = verify(bundle(region, [bytes(bad_envelope), second, bytes(bad_grant)]), region)
    one, two, three = verified.items
    with pytest.raises(EnvelopeError) as caught:
        read_envelope(one, region.directory)
    assert caught.value.code == "bad_signature"
    decision = decide_at(one, region)
    assert isinstance(decision, Reject)
    assert decision.reason == "bad_signature"
    read_envelope(two, region.directory)  # the untouched item still verifies
    with pytest.raises(GrantError) as grant_caught:
        verify_grant(three, region.directory, now=CREATED)
    assert grant_caught.value.code == "grant_bad_signature"


# --- who exports ------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["impostor", "officer", "broker"])
def test_an_unknown_exporter_key_is_refused(region, who):
    key = {
        "impostor": impostor(EXPORTER).signing,
        "officer": region.officers["sakerhetschef-nacka"],
        "broker": region.broker.signing,
    }[who]
    forged = frames.encode(frames.Kind.BUNDLE, key, (section(bundle(region)),))
    refused("bundle_unknown_signer", forged, region)


def test_a_bundle_naming_another_exporter_is_refused(region):
    body = json.loads(section(bundle(region)))
    refused("bundle_signer_mismatch", signed_body(region, {**body, "exporter": "solna"}), region)
    other_key = region.identities["solna"].signing.key_id
    forged = signed_body(region, {**body, "signer_key": other_key})
    refused("bundle_signer_mismatch", forged, region)
    refused("bundle_signer_mismatch", signed_body(region, body, who="solna"), region)


def test_a_revoked_or_suspended_exporter_is_refused(region):
    raw = bundle(region)
    revoked = edit_directory(
        region, {EXPORTER: signing_key_update(region, EXPORTER, revoked_at=CREATED + 5_000)}
    )
    verify(raw, region, directory=revoked, now=CREATED + 4_999)
    refused("bundle_key_invalid", raw, region, directory=revoked, now=CREATED + 5_000)
    suspended = edit_directory(region, {EXPORTER: {"status": ActorStatus.SUSPENDED}})
    refused("bundle_key_invalid", raw, region, directory=suspended)


def test_a_bundle_dated_outside_the_key_validity_is_refused(region):
    """A key usable now does not vouch for a bundle claiming a time it was not valid."""
    refused("bundle_key_invalid", bundle(region, [], created=NOW - HOUR), region)
    record = actor(region, EXPORTER).signing_keys[0]
    refused("bundle_key_invalid", bundle(region, [], created=record.not_after), region)


# --- what a bundle may hold ----------------------------------------------------------------


def test_make_bundle_holds_envelopes_and_grants_only(region):
    first = envelope(region)
    signed = read_envelope(first.raw, region.directory)
    receipt = make_receipt(
        region.identities["sos-alarm"], signed.header, signed.header_hash,
        ReceiptKind.DELIVERED, at=NOW,
    )  # fmt: skip
    for item in (receipt, region.directory.raw, b"", b"SSR", b"garbage" * 10, b"XSR\x01E" * 20):
        with pytest.raises(BundleError) as caught:
            bundle(region, [first.raw, item])
        assert caught.value.code == "bundle_malformed"


def _body_with_items(region: DemoRegion, content: list[str]) -> bytes:
    body = json.loads(section(bundle(region, [])))
    return signed_body(region, {**body, "items": content})


@pytest.mark.parametrize(
    "item",
    ["!!!!", "U1NS AUU=", "U1NSAUU", "U1NSAUV=", "U1NSAUU=\n", "AAAA"],
    ids=["alphabet", "space", "unpadded", "non_canonical", "newline", "not_a_frame"],
)
def test_items_that_are_not_canonical_base64_of_a_frame_are_refused(region, item):
    assert _body_with_items(region, ["U1NSAUU="])  # "SSR\x01E": canonical, an E frame's start
    verify(_body_with_items(region, ["U1NSAUU="]), region)
    refused("bundle_malformed", _body_with_items(region, [item]), region)


def test_verify_refuses_other_frame_kinds_inside(region):
    """Only E and G items: a directory, receipt or notice frame smuggled in is refused."""
    import base64

    raw = base64.b64encode(region.directory.raw).decode()
    refused("bundle_malformed", _body_with_items(region, [raw]), region)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda body: json.dumps(json.loads(body), indent=1).encode(),
        lambda body: body.replace(b'"v":1', b'"v":2'),
        lambda body: body.replace(b'"v":1', b'"extra":null,"v":1'),
        lambda body: body.replace(b',"v":1', b""),
        lambda body: b"[]",
        lambda body: b"",
    ],
    ids=["indented", "version_2", "unknown_member", "missing_member", "array", "empty"],
)
def test_a_malformed_body_signed_by_the_exporter_is_refused(region, mangle):
    refused("bundle_malformed", signed_body(region, mangle(section(bundle(region)))), region)


def test_too_many_items_are_refused(region):
    with pytest.raises(BundleError) as caught:
        bundle(region, [b"SSR\x01E"] * (bundles.MAX_BUNDLE_ITEMS + 1))
    assert caught.value.code == "bundle_malformed"
    refused("bundle_malformed", _body_with_items(region, ["U1NSAUU="] * 5001), region)


def test_the_size_bound(region, monkeypatch):
    oversized = b"SSR\x01B" + bytes(bundles.MAX_BUNDLE_BYTES + 300)
    refused("bundle_too_large", oversized, region)
    monkeypatch.setattr(bundles, "MAX_BUNDLE_BYTES", 4 * 1024)
    with pytest.raises(BundleError) as caught:
        bundle(region)
    assert caught.value.code == "bundle_too_large"
    small = bundle(region, [])
    verify(small, region)
    monkeypatch.setattr(bundles, "MAX_BUNDLE_BYTES", 64 * MIB)
    assert bundles.MAX_BUNDLE_BYTES == 64 * MIB


# --- broken frames and kinds ----------------------------------------------------------


def test_truncated_and_garbage_frames_are_malformed(region):
    raw = bundle(region)
    for broken in (raw[:-1], raw[:85], b"", bytes(200), raw + b"\x00"):
        refused("bundle_malformed", broken, region)
    version_2 = bytearray(raw)
    version_2[3] = 2
    refused("bundle_malformed", bytes(version_2), region)


def test_frame_kinds_are_not_interchangeable(region):
    first, _second, granted = items(region)
    refused("bundle_malformed", first, region)
    refused("bundle_malformed", granted, region)
    raw = bundle(region)
    with pytest.raises(EnvelopeError) as caught:
        read_envelope(raw, region.directory)
    assert caught.value.code == "malformed"
    with pytest.raises(GrantError) as grant_caught:
        verify_grant(raw, region.directory, now=CREATED)
    assert grant_caught.value.code == "grant_malformed"
