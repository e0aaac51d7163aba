"""Building and opening envelopes: round trips, the recipient's checks, opaque crypto failures,
build-time validation, libsodium interoperability and reproducible output."""

from __future__ import annotations

import json

import nacl.bindings
import nacl.public
import pytest

from broker.core import (
    Accept,
    ActorStatus,
    EnvelopeError,
    Identity,
    Label,
    MessageType,
    OpenError,
    Policy,
    Priority,
    RecipientKey,
    Reference,
    ReferenceKind,
    Status,
    Tlp,
    build_envelope,
    canonical,
    crypto,
    read_envelope,
)
from broker.core.crypto import seeded_random
from broker.core.envelope import KeyWraps, Wrap, header_hash
from broker.core.keys import b64, unb64
from broker.core.limits import MAX_REFERENCES
from broker.core.policy import Limits

from .conftest import HOUR, NOW
from .envelope_helpers import (
    DEFAULT_TO,
    actor,
    build_as,
    decide_at,
    edit_directory,
    header_of,
    impostor,
    open_as,
    recipient_keys,
    reframe_keeping_signature,
    resign,
    signing_key_update,
    split,
    wraps_of,
)

SKEW = 120_000
PAYLOAD = b'{"text": "Storm warning for the archipelago"}'


def hemlig(tlp: Tlp = Tlp.AMBER) -> Label:
    return Label(policy="ssr", classification="HEMLIG", tlp=tlp)


def open_code(raw: bytes, region, me, **kwargs) -> str:
    with pytest.raises(OpenError) as caught:
        open_as(raw, region, me, **kwargs)
    return caught.value.code


# --- round trip ------------------------------------------------------------------


@pytest.mark.parametrize("recipient", DEFAULT_TO)
def test_each_recipient_opens_the_same_payload(recipient, region, make_envelope, label):
    raw = make_envelope(priority=Priority.IMMEDIATE, incident="storm-2026")
    opened = open_as(raw, region, recipient)
    assert opened.payload == PAYLOAD
    assert opened.raw == raw
    header = opened.header
    assert header.sender == "nacka"
    assert header.sender_key == region.identities["nacka"].signing.key_id
    assert header.recipients == DEFAULT_TO
    assert header.label == label
    assert header.type is MessageType.SITUATION_REPORT
    assert header.priority is Priority.IMMEDIATE
    assert header.status is Status.ACTUAL
    assert (header.created, header.expires) == (NOW, NOW + HOUR)
    assert header.incident == "storm-2026"
    assert opened.header_hash == crypto.sha256(split(raw).sections[0]).hex()


def test_recipients_are_sorted_whatever_the_given_order(region, make_envelope):
    raw = make_envelope(to=("stockholm", "polisen-stockholm", "sos-alarm"))
    assert header_of(raw).recipients == DEFAULT_TO
    assert tuple(w.recipient for w in wraps_of(raw).wraps) == DEFAULT_TO


@pytest.mark.parametrize("size", [0, 1, 4096, 100_000])
def test_payload_sizes(size, region, make_envelope):
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    raw = make_envelope(payload=payload)
    assert open_as(raw, region, "sos-alarm").payload == payload
    assert len(split(raw).sections[2]) == crypto.AEAD_NONCE_BYTES + size + crypto.AEAD_TAG_BYTES


def test_content_type_references_and_status_round_trip(region, make_envelope):
    earlier = make_envelope()
    references = (
        Reference(
            kind=ReferenceKind.UPDATE,
            message=header_of(earlier).id,
            header_hash=header_hash(split(earlier).sections[0]).hex(),
        ),
        Reference(kind=ReferenceKind.REPLY, message="01" * 16, header_hash="02" * 32),
    )
    raw = make_envelope(
        content_type="application/vnd.ssr.lagesbild+json",
        references=references,
        status=Status.EXERCISE,
    )
    header = open_as(raw, region, "stockholm").header
    assert header.content_type == "application/vnd.ssr.lagesbild+json"
    assert header.references == references
    assert header.status is Status.EXERCISE
    assert header.forwarded() is None


def test_forwarded_names_the_forward_reference(make_envelope):
    forward = Reference(kind=ReferenceKind.FORWARD, message="03" * 16, header_hash="04" * 32)
    reply = Reference(kind=ReferenceKind.REPLY, message="05" * 16, header_hash="06" * 32)
    header = header_of(make_envelope(references=(reply, forward)))
    assert header.forwarded() == forward


def test_default_content_type(make_envelope):
    assert header_of(make_envelope()).content_type == "application/octet-stream"


def test_read_envelope_exposes_the_signed_parts(region, make_envelope):
    raw = make_envelope()
    signed = read_envelope(raw, region.directory)
    assert signed.raw == raw
    assert signed.sender.id == "nacka"
    assert signed.sender_key.key_id == region.identities["nacka"].signing.key_id
    assert signed.wraps == wraps_of(raw).wraps
    assert signed.ciphertext == split(raw).sections[2]
    assert signed.header_hash == crypto.sha256(split(raw).sections[0]).hex()


def test_reprs_do_not_show_payload_or_raw_bytes(region, make_envelope):
    raw = make_envelope(payload=b"hemligt-innehall")
    opened = open_as(raw, region, "sos-alarm")
    assert "hemligt" not in repr(opened)
    assert "payload" not in repr(opened)
    assert "ciphertext" not in repr(read_envelope(raw, region.directory))


# --- the recipient's refusals ----------------------------------------------------


def test_a_non_recipient_is_not_addressed(region, make_envelope):
    assert open_code(make_envelope(), region, "huddinge") == "not_addressed"


def test_a_recipient_with_other_keys_cannot_open(region, make_envelope):
    """Claiming to be sos-alarm is not enough: the wrap is for sos-alarm's real key."""
    assert open_code(make_envelope(), region, impostor("sos-alarm")) == "invalid"


@pytest.mark.parametrize(
    ("now", "code"),
    [
        (NOW + HOUR + SKEW - 1, None),  # within the leeway after expiry
        (NOW + HOUR + SKEW, "expired"),
        (NOW + 10 * HOUR, "expired"),
        (NOW - SKEW, None),  # the recipient's clock is behind by exactly the leeway
        (NOW - SKEW - 1, "not_yet_valid"),
    ],
)
def test_open_time_checks(now, code, region, make_envelope):
    raw = make_envelope()
    if code is None:
        assert open_as(raw, region, "sos-alarm", now=now).payload == PAYLOAD
    else:
        assert open_code(raw, region, "sos-alarm", now=now) == code


def test_open_uses_the_policy_clock_leeway(region, make_envelope):
    raw = make_envelope()
    strict = Policy(limits=Limits(clock_skew_seconds=0))
    assert open_code(raw, region, "sos-alarm", now=NOW + HOUR, policy=strict) == "expired"
    assert open_code(raw, region, "sos-alarm", now=NOW - 1, policy=strict) == "not_yet_valid"


def test_label_above_the_recipients_clearance(region, make_envelope):
    """The region raised its ceiling to HEMLIG; polisen-stockholm (SEKRETESS) still refuses."""
    raised = Policy(ceiling="HEMLIG")
    raw = make_envelope(
        sender="forsvarsmakten-mmr", to=("forsvarsmakten-mmr", "polisen-stockholm"), label=hemlig()
    )
    assert open_code(raw, region, "polisen-stockholm", policy=raised) == "not_cleared"
    assert open_as(raw, region, "forsvarsmakten-mmr", policy=raised).payload == PAYLOAD


def test_client_rechecks_with_its_own_newer_directory(region, make_envelope):
    """The broker's directory still lists sos-alarm at SEKRETESS and accepts; the
    recipient's newer directory lowers it to INTERN, and its client refuses."""
    raw = make_envelope()
    assert isinstance(decide_at(raw, region), Accept)
    lowered = edit_directory(region, {"sos-alarm": {"clearance": "INTERN"}})
    assert open_code(raw, region, "sos-alarm", directory=lowered) == "not_cleared"
    assert open_as(raw, region, "stockholm", directory=lowered).payload == PAYLOAD


def test_recipient_lacking_a_category_is_not_cleared(region, make_envelope):
    label = Label(policy="ssr", classification="SEKRETESS", tlp=Tlp.AMBER, categories=("taktik",))
    raw = make_envelope(sender="polisen-stockholm", to=("sos-alarm", "trafikverket"), label=label)
    assert open_code(raw, region, "trafikverket") == "not_cleared"
    assert open_as(raw, region, "sos-alarm").payload == PAYLOAD


def test_label_level_unknown_to_the_recipients_ladder(region, make_envelope):
    raw = make_envelope(label=Label(policy="ssr", classification="TOPPHEMLIG", tlp=Tlp.RED))
    assert open_code(raw, region, "sos-alarm") == "not_cleared"


def test_recipient_clearance_unknown_to_the_ladder(region, make_envelope):
    odd = edit_directory(region, {"sos-alarm": {"clearance": "OKLASSAD"}})
    assert open_code(make_envelope(), region, "sos-alarm", directory=odd) == "not_cleared"


def test_recipient_missing_from_the_directory(region, make_envelope):
    ghost = impostor("okand-aktor")
    keys = [RecipientKey("okand-aktor", ghost.encryption.key_id, ghost.encryption.public)]
    raw = make_envelope(recipients=keys)
    assert open_code(raw, region, ghost) == "not_cleared"


def test_sender_key_revoked_at_creation(region, make_envelope):
    revoked = edit_directory(region, {"nacka": signing_key_update(region, "nacka", revoked_at=NOW)})
    assert open_code(make_envelope(), region, "sos-alarm", directory=revoked) == (
        "sender_key_revoked"
    )


def test_sender_key_not_yet_valid_at_creation(region, make_envelope):
    later = edit_directory(
        region, {"nacka": signing_key_update(region, "nacka", not_before=NOW + 1)}
    )
    assert open_code(make_envelope(), region, "sos-alarm", directory=later) == (
        "sender_key_revoked"
    )


@pytest.mark.parametrize("status", [ActorStatus.SUSPENDED, ActorStatus.RETIRED])
def test_inactive_sender(status, region, make_envelope):
    inactive = edit_directory(region, {"nacka": {"status": status}})
    assert open_code(make_envelope(), region, "sos-alarm", directory=inactive) == (
        "sender_inactive"
    )


def test_sender_key_revoked_after_creation(region, make_envelope):
    """Revocation also refuses what the key signed before: a recipient cannot tell an
    old signature from a backdated one made with a stolen key."""
    revoked = edit_directory(
        region, {"nacka": signing_key_update(region, "nacka", revoked_at=NOW + 60_000)}
    )
    raw = make_envelope()
    assert open_as(raw, region, "sos-alarm", directory=revoked, now=NOW + 59_999).payload
    assert open_code(raw, region, "sos-alarm", directory=revoked, now=NOW + 60_000) == (
        "sender_key_revoked"
    )


def test_backdated_envelope_from_a_revoked_key(region):
    """A thief of nacka's key, after its revocation, backdates an envelope to before it."""
    revoked = edit_directory(
        region, {"nacka": signing_key_update(region, "nacka", revoked_at=NOW + HOUR)}
    )
    raw = build_as(region, region.identities["nacka"], created=NOW, expires=NOW + 30 * 24 * HOUR)
    assert open_code(raw, region, "sos-alarm", directory=revoked, now=NOW + 2 * HOUR) == (
        "sender_key_revoked"
    )


@pytest.mark.parametrize(
    ("lifetime", "code"), [(30 * 24 * HOUR, None), (30 * 24 * HOUR + 1, "lifetime_too_long")]
)
def test_open_bounds_the_lifetime(lifetime, code, region, make_envelope):
    raw = make_envelope(expires=NOW + lifetime)
    if code is None:
        assert open_as(raw, region, "sos-alarm").payload == PAYLOAD
    else:
        assert open_code(raw, region, "sos-alarm") == code


# --- every cryptographic failure is the one opaque code ---------------------------


def _flip_ciphertext(region, raw):
    data = bytearray(raw)
    data[-65] ^= 0x01  # last ciphertext byte (the AEAD tag), just before the signature
    return bytes(data)


def _flip_ciphertext_resigned(region, raw):
    header, wraps, ciphertext = split(raw).sections
    tampered = ciphertext[:30] + bytes([ciphertext[30] ^ 0x01]) + ciphertext[31:]
    return resign(region.identities["nacka"], (header, wraps, tampered))


def _swapped_wraps(region, raw):
    header, _, ciphertext = split(raw).sections
    first, second, third = wraps_of(raw).wraps
    swapped = (
        first.model_copy(update={"sealed": second.sealed}),
        second.model_copy(update={"sealed": first.sealed}),
        third,
    )
    return reframe_keeping_signature(raw, (header, KeyWraps(wraps=swapped).to_bytes(), ciphertext))


def _swapped_wraps_resigned(region, raw):
    swapped = split(_swapped_wraps(region, raw)).sections
    return resign(region.identities["nacka"], swapped)


def _edit_wrap_for(recipient, **update):
    """The sender signs wraps edited as JSON (so even what the Wrap model refuses)."""

    def edit(region, raw):
        header, wraps, ciphertext = split(raw).sections
        doc = json.loads(wraps)
        for wrap in doc["wraps"]:
            if wrap["recipient"] == recipient:
                wrap.update(update)
        return resign(region.identities["nacka"], (header, canonical.dumps(doc), ciphertext))

    return edit


def _header_changed_resigned(region, raw):
    """The sender re-signs an edited header over the old ciphertext: the AEAD, bound to
    the original header's hash, refuses it."""
    _, wraps, ciphertext = split(raw).sections
    header = header_of(raw).model_copy(update={"priority": Priority.FLASH})
    return resign(region.identities["nacka"], (header.to_bytes(), wraps, ciphertext))


def _ciphertext_from_another_envelope(region, raw):
    header, wraps, _ = split(raw).sections
    other = build_as(region, region.identities["nacka"])
    return resign(region.identities["nacka"], (header, wraps, split(other).sections[2]))


def _unknown_signer(region, raw):
    return resign(impostor("nacka"), split(raw).sections)


def _bad_signature(region, raw):
    return raw[:-1] + bytes([raw[-1] ^ 0x80])


def _truncated(region, raw):
    return raw[:-1]


def _not_a_frame(region, raw):
    return b"not an envelope at all, but long enough to look at" * 3


def _seal(message: bytes, public: bytes) -> str:
    return b64(crypto.seal(message, public, b"\x07" * 32))


def _content_key_too_long(region, raw):
    public = actor(region, "sos-alarm").encryption_keys[0].raw
    return _edit_wrap_for("sos-alarm", sealed=_seal(b"k" * 33, public))(region, raw)


def _sealed_not_base64(region, raw):
    return _edit_wrap_for("sos-alarm", sealed="!" * 108)(region, raw)


def _sealed_for_another_key(region, raw):
    public = actor(region, "polisen-stockholm").encryption_keys[0].raw
    return _edit_wrap_for("sos-alarm", sealed=_seal(b"k" * 32, public))(region, raw)


def _wrap_names_another_key_id(region, raw):
    other = actor(region, "polisen-stockholm").encryption_keys[0].key_id
    return _edit_wrap_for("sos-alarm", key_id=other)(region, raw)


CRYPTO_FAILURES = {
    "ciphertext-byte-flipped": _flip_ciphertext,
    "ciphertext-byte-flipped-and-resigned": _flip_ciphertext_resigned,
    "wraps-swapped": _swapped_wraps,
    "wraps-swapped-and-resigned": _swapped_wraps_resigned,
    "header-changed-and-resigned": _header_changed_resigned,
    "ciphertext-of-another-envelope": _ciphertext_from_another_envelope,
    "unknown-signer": _unknown_signer,
    "bad-signature": _bad_signature,
    "truncated": _truncated,
    "not-a-frame": _not_a_frame,
    "content-key-33-bytes": _content_key_too_long,
    "sealed-not-base64": _sealed_not_base64,
    "sealed-for-another-key": _sealed_for_another_key,
    "wrap-names-another-key-id": _wrap_names_another_key_id,
}


@pytest.mark.parametrize("damage", CRYPTO_FAILURES.values(), ids=CRYPTO_FAILURES.keys())
def test_crypto_failures_are_one_opaque_code(damage, region, make_envelope):
    raw = damage(region, make_envelope())
    with pytest.raises(OpenError) as caught:
        open_as(raw, region, "sos-alarm")
    assert caught.value.code == "invalid"
    assert type(caught.value) is OpenError
    assert caught.value.message in {"envelope does not verify", "envelope cannot be opened"}


def test_an_envelope_above_the_policy_size_is_invalid(region, make_envelope):
    raw = make_envelope(payload=b"x" * 2048)
    small = Policy(limits=Limits(max_envelope_bytes=2048))
    assert open_code(raw, region, "sos-alarm", policy=small) == "invalid"


# --- building --------------------------------------------------------------------


def _build(region, **overrides):
    args = {
        "sender": region.identities["nacka"],
        "recipients": recipient_keys(region.directory, DEFAULT_TO),
        "label": Label(policy="ssr", classification="SEKRETESS", tlp=Tlp.AMBER),
        "message_type": MessageType.ALERT,
        "payload": PAYLOAD,
        "created": NOW,
        "expires": NOW + HOUR,
    }
    return build_envelope(**(args | overrides))


BUILD_ERRORS = {
    "duplicate-recipient": {"recipients_dup": True},
    "expires-equals-created": {"expires": NOW},
    "expires-before-created": {"expires": NOW - 1},
    "incident-not-a-slug": {"incident": "Storm 2026"},
    "incident-trailing-dash": {"incident": "storm-"},
    "content-type-uppercase": {"content_type": "Application/JSON"},
    "message-id-not-hex": {"message_id": "not-a-hex-id"},
    "negative-time": {"created": -1},
    "too-many-references": {
        "references": tuple(
            Reference(kind=ReferenceKind.REPLY, message=f"{i:032x}", header_hash="00" * 32)
            for i in range(MAX_REFERENCES + 1)
        )
    },
    "no-recipients": {"recipients": []},
    "two-forward-references": {
        "references": tuple(
            Reference(kind=ReferenceKind.FORWARD, message=f"{i:032x}", header_hash="00" * 32)
            for i in range(2)
        )
    },
}


@pytest.mark.parametrize("overrides", BUILD_ERRORS.values(), ids=BUILD_ERRORS.keys())
def test_build_errors_are_malformed(overrides, region):
    overrides = dict(overrides)
    if overrides.pop("recipients_dup", False):
        keys = recipient_keys(region.directory, ["sos-alarm", "stockholm"])
        overrides["recipients"] = [*keys, keys[0]]
    with pytest.raises(EnvelopeError) as caught:
        _build(region, **overrides)
    assert caught.value.code == "malformed"
    assert not isinstance(caught.value, OpenError)


def test_at_most_references_are_allowed(region):
    references = tuple(
        Reference(kind=ReferenceKind.REPLY, message=f"{i:032x}", header_hash="00" * 32)
        for i in range(MAX_REFERENCES)
    )
    raw = _build(region, references=references)
    assert header_of(raw).references == references


def test_recipient_key_of_an_actor(region):
    sos = actor(region, "sos-alarm")
    key = RecipientKey.of(sos, NOW)
    assert key == RecipientKey(
        "sos-alarm", sos.encryption_keys[0].key_id, sos.encryption_keys[0].raw
    )
    assert key.public == region.identities["sos-alarm"].encryption.public


@pytest.mark.parametrize(
    "at",
    [NOW - 1, NOW + 2 * 365 * 24 * HOUR],  # before not_before; at not_after
    ids=["before-validity", "after-validity"],
)
def test_recipient_key_of_an_actor_without_a_usable_key(at, region):
    with pytest.raises(EnvelopeError) as caught:
        RecipientKey.of(actor(region, "sos-alarm"), at)
    assert caught.value.code == "recipient_key_invalid"


def test_recipient_key_of_an_actor_with_a_revoked_key(region):
    sos = actor(region, "sos-alarm")
    revoked = sos.model_copy(
        update={"encryption_keys": (sos.encryption_keys[0].model_copy(update={"revoked_at": NOW}),)}
    )
    with pytest.raises(EnvelopeError) as caught:
        RecipientKey.of(revoked, NOW)
    assert caught.value.code == "recipient_key_invalid"


def test_recipient_key_of_picks_the_newest_usable_key(region):
    sos = actor(region, "sos-alarm")
    old = sos.encryption_keys[0]
    fresh = Identity.generate("sos-alarm", seeded_random(b"fresh")).encryption.public
    new = type(old).for_key(fresh, not_before=NOW + HOUR, not_after=old.not_after)
    rotated = sos.model_copy(update={"encryption_keys": (old, new)})
    assert RecipientKey.of(rotated, NOW).key_id == old.key_id
    assert RecipientKey.of(rotated, NOW + HOUR).key_id == new.key_id


# --- libsodium interoperability ---------------------------------------------------


def test_a_wrap_opens_with_libsodium_sealed_box(region, make_envelope):
    """Any libsodium binding can open a wrap (crypto_box_seal_open) and then the payload
    (XChaCha20-Poly1305-IETF, SHA-256 of the header bytes as associated data)."""
    raw = make_envelope()
    header, _, ciphertext = split(raw).sections
    for wrap in wraps_of(raw).wraps:
        secret = region.identities[wrap.recipient].encryption.secret
        box = nacl.public.SealedBox(nacl.public.PrivateKey(secret))
        content_key = box.decrypt(unb64(wrap.sealed))
        assert len(content_key) == crypto.CONTENT_KEY_BYTES
        payload = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            ciphertext[24:], crypto.sha256(header), ciphertext[:24], content_key
        )
        assert payload == PAYLOAD


def test_seal_is_crypto_box_seal_both_ways(region):
    recipient = region.identities["sos-alarm"].encryption
    ephemeral = b"\x42" * 32
    sealed = crypto.seal(b"content key", recipient.public, ephemeral)
    assert len(sealed) == len(b"content key") + crypto.SEAL_OVERHEAD_BYTES
    assert sealed[:32] == nacl.bindings.crypto_scalarmult_base(ephemeral)
    box = nacl.public.SealedBox(nacl.public.PrivateKey(recipient.secret))
    assert box.decrypt(sealed) == b"content key"
    by_libsodium = nacl.public.SealedBox(nacl.public.PublicKey(recipient.public)).encrypt(b"k2")
    assert crypto.seal_open(by_libsodium, recipient.secret) == b"k2"


# --- reproducible output ---------------------------------------------------------


def test_seeded_random_gives_identical_envelopes(make_envelope):
    one = make_envelope(rand=seeded_random(b"vector-1"))
    two = make_envelope(rand=seeded_random(b"vector-1"))
    other = make_envelope(rand=seeded_random(b"vector-2"))
    assert one == two
    assert one != other
    assert make_envelope() != make_envelope()  # the system random source differs each time


def test_randomness_is_drawn_in_the_documented_order(region, make_envelope):
    """message id (16), content key (32), nonce (24), one ephemeral key (32) per
    recipient in sorted order."""
    raw = make_envelope(rand=seeded_random(b"order"))
    stream = seeded_random(b"order")
    message_id, content_key, nonce = stream(16), stream(32), stream(24)
    ephemerals = [stream(32) for _ in DEFAULT_TO]
    assert header_of(raw).id == message_id.hex()
    assert split(raw).sections[2][:24] == nonce
    for wrap, ephemeral in zip(wraps_of(raw).wraps, ephemerals, strict=True):
        sealed = unb64(wrap.sealed)
        assert sealed[:32] == nacl.bindings.crypto_scalarmult_base(ephemeral)
        secret = region.identities[wrap.recipient].encryption.secret
        assert crypto.seal_open(sealed, secret) == content_key


def test_a_given_message_id_draws_no_randomness_for_it(make_envelope):
    raw = make_envelope(message_id="aa" * 16, rand=seeded_random(b"order"))
    stream = seeded_random(b"order")
    stream(32)  # content key
    assert split(raw).sections[2][:24] == stream(24)
    assert header_of(raw).id == "aa" * 16


def test_wrap_model_bounds():
    with pytest.raises(ValueError, match="sealed"):
        Wrap(recipient="nacka", key_id="00" * 16, sealed="A" * 107)


def test_label_of_another_policy_is_refused_by_the_recipient(region, make_envelope):
    foreign = Label(policy="other-region", classification="INTERN", tlp=Tlp.GREEN)
    raw = make_envelope(label=foreign)
    assert open_code(raw, region, "sos-alarm") == "label_invalid"
    assert open_as(raw, region, "sos-alarm", policy=Policy(id="other-region")).payload == PAYLOAD
