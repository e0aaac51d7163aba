"""Properties of envelopes and receipts, checked with hypothesis over real crypto.

- any payload and any cleared set of recipients round-trips, and nobody else opens it;
- any single-bit flip, any edited header field re-framed with the original
  signature, and any surreptitious re-addressing by a recipient is refused;
- arbitrary bytes (also behind a valid prefix, also correctly signed) give a
  Reject, an OpenError or a ReceiptError, never another exception.

Only session- and module-scoped fixtures are used inside ``@given`` tests.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from broker.core import (
    Accept,
    Header,
    Label,
    Ladder,
    MessageType,
    Mode,
    OpenError,
    Priority,
    Reason,
    ReceiptError,
    ReceiptKind,
    ReferenceKind,
    Reject,
    Status,
    Tlp,
    build_envelope,
    canonical,
    crypto,
    make_receipt,
    read_envelope,
    verify_receipt,
)
from broker.core import frame as frame_module
from broker.core.envelope import KeyWraps, Wrap, header_hash
from broker.core.keys import b64, unb64
from broker.demo import DemoRegion

from .conftest import HOUR, NOW
from .envelope_helpers import (
    DEFAULT_TO,
    decide_at,
    flip_bit,
    open_as,
    recipient_keys,
    reframe,
    reframe_keeping_signature,
    resign,
    split,
    wraps_of,
)

LADDER = Ladder()


def fast(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def refused_by_broker(raw: bytes, region: DemoRegion) -> Reject:
    decision = decide_at(raw, region)
    assert isinstance(decision, Reject), decision
    return decision


def refused_by(raw: bytes, region: DemoRegion, recipient: str) -> OpenError:
    with pytest.raises(OpenError) as caught:
        open_as(raw, region, recipient)
    return caught.value


class QuietRegion:
    """The demo region with a short repr. Hypothesis prints every argument of a failing
    example and pretty-prints dataclasses field by field, so the plain region would fill
    ~100 kB with its (demo) secret keys."""

    def __init__(self, region: DemoRegion) -> None:
        self._region = region

    def __getattr__(self, name: str):
        return getattr(self._region, name)

    def __repr__(self) -> str:
        return "<demo region>"


@pytest.fixture(scope="module")
def region(region):
    return QuietRegion(region)


@pytest.fixture(scope="module")
def sample(region) -> bytes:
    """One valid envelope from nacka to polisen-stockholm, sos-alarm and stockholm, naming
    no incident (one that names an incident needs the broker's incident state)."""
    return build_envelope(
        sender=region.identities["nacka"],
        recipients=recipient_keys(region.directory, DEFAULT_TO),
        label=Label(policy="ssr", classification="SEKRETESS", tlp=Tlp.AMBER, legal="OSL 18:13"),
        message_type=MessageType.SITUATION_REPORT,
        payload=b"Storm warning for the archipelago",
        created=NOW,
        expires=NOW + HOUR,
        rand=crypto.seeded_random(b"properties-sample"),
    )


def test_sample_is_valid(region, sample):
    assert isinstance(decide_at(sample, region), Accept)
    for recipient in DEFAULT_TO:
        assert open_as(sample, region, recipient).payload == b"Storm warning for the archipelago"


# --- round trip ------------------------------------------------------------------

labels = st.builds(
    Label,
    policy=st.just("ssr"),
    classification=st.sampled_from(["OFFENTLIG", "INTERN", "SEKRETESS"]),
    tlp=st.sampled_from(list(Tlp)),
    categories=st.sampled_from([(), ("infrastruktur",), ("taktik",), ("infrastruktur", "taktik")]),
)


def cleared(region: DemoRegion, label: Label) -> list[str]:
    return [
        a.id
        for a in region.directory.document.actors
        if LADDER.cleared_for(a.clearance, a.categories, label)
    ]


@fast(60)
@given(
    data=st.data(),
    label=labels,
    payload=st.binary(max_size=4096),
    priority=st.sampled_from(list(Priority)),
    status=st.sampled_from(list(Status)),
)
def test_round_trip_for_any_payload_and_recipients(region, data, label, payload, priority, status):
    allowed = cleared(region, label)
    sender = data.draw(st.sampled_from(allowed), label="sender")
    to = data.draw(st.sets(st.sampled_from(allowed), min_size=1, max_size=8), label="to")
    raw = build_envelope(
        sender=region.identities[sender],
        recipients=recipient_keys(region.directory, to),
        label=label,
        message_type=MessageType.SITUATION_REPORT,
        payload=payload,
        created=NOW,
        expires=NOW + HOUR,
        priority=priority,
        status=status,
    )
    decision = decide_at(raw, region)
    assert isinstance(decision, Accept), decision
    assert decision.recipients == tuple(sorted(to))
    assert decision.status is status
    for recipient in to:
        opened = open_as(raw, region, recipient)
        assert opened.payload == payload
        assert opened.header.label == label
        assert opened.header.sender == sender
    others = sorted(a.id for a in region.directory.document.actors if a.id not in to)
    stranger = data.draw(st.sampled_from(others), label="stranger")
    assert refused_by(raw, region, stranger).code == "not_addressed"
    # Holding every wrap does not help a stranger: none of them opens with its key.
    secret = region.identities[stranger].encryption.secret
    for wrap in wraps_of(raw).wraps:
        with pytest.raises(crypto.CryptoFailure):
            crypto.seal_open(unb64(wrap.sealed), secret)


# --- single-bit flips ------------------------------------------------------------


def reasons_for_flip(raw: bytes, bit: int) -> set[Reason]:
    """What a broker must answer when ``bit`` of a valid envelope is flipped, by where
    the bit sits in the frame (see ``broker.core.frame``)."""
    position = bit // 8
    if position == 3:
        return {Reason.UNSUPPORTED_VERSION}  # format version
    if 5 <= position < 21:
        return {Reason.UNKNOWN_SENDER_KEY}  # signer key id
    if position < 22:
        return {Reason.MALFORMED}  # magic, kind, section count
    offset = 22
    for section in split(raw).sections:
        if position < offset + 4:  # a section length: misparsed, or above its bound
            return {Reason.MALFORMED, Reason.TOO_LARGE}
        offset += 4 + len(section)
        if position < offset:
            return {Reason.BAD_SIGNATURE}  # section contents
    return {Reason.BAD_SIGNATURE}  # the signature itself


@fast(200)
@given(data=st.data())
def test_any_single_bit_flip_is_refused(region, sample, data):
    bit = data.draw(st.integers(min_value=0, max_value=len(sample) * 8 - 1), label="bit")
    damaged = flip_bit(sample, bit)
    assert refused_by_broker(damaged, region).reason in reasons_for_flip(sample, bit)
    assert refused_by(damaged, region, "sos-alarm").code == "invalid"


def test_every_byte_flipped_is_refused(region, sample):
    """Exhaustive companion to the property: every byte position, low and high bit."""
    for position in range(len(sample)):
        for bit in (position * 8, position * 8 + 7):
            decision = decide_at(flip_bit(sample, bit), region)
            assert isinstance(decision, Reject), position
            assert decision.reason in reasons_for_flip(sample, bit), (position, decision.reason)


# --- header edits kept under the original signature -------------------------------

HeaderEdit = Callable[[dict, st.DataObject], None]


def _label_field(name, values):
    def edit(doc, data):
        doc["label"][name] = data.draw(
            st.sampled_from([v for v in values if v != doc["label"][name]])
        )

    return edit


def _add_recipient(doc, data):
    extra = data.draw(st.sampled_from(["huddinge", "solna", "trafikverket", "zzz-okand"]))
    doc["recipients"] = sorted({*doc["recipients"], extra})


def _remove_recipient(doc, data):
    gone = data.draw(st.sampled_from(doc["recipients"]))
    doc["recipients"] = [r for r in doc["recipients"] if r != gone]


def _shift(name):
    def edit(doc, data):
        delta = data.draw(st.integers(min_value=-HOUR // 2, max_value=HOUR // 2).filter(bool))
        doc[name] += delta

    return edit


def _replace(name, values):
    def edit(doc, data):
        doc[name] = data.draw(st.sampled_from([v for v in values if v != doc[name]]))

    return edit


def _add_reference(doc, data):
    kind = data.draw(st.sampled_from([k.value for k in ReferenceKind]))
    doc["references"] = [*doc["references"], {
        "kind": kind, "message": "01" * 16, "header_hash": "02" * 32
    }]  # fmt: skip


def _control(doc, data):
    """Add control fields (the sample has none), as if to make it a mode change or an
    activation the broker would act on."""
    mode = data.draw(st.sampled_from([None, *(m.value for m in Mode)]))
    incident_type = data.draw(st.sampled_from([None, "storm", "power-outage"]))
    doc["control"] = {"mode": mode, "incident_type": incident_type}


HEADER_EDITS: dict[str, HeaderEdit] = {
    "label.classification": _label_field("classification", ["OFFENTLIG", "INTERN", "SEKRETESS"]),
    "label.tlp": _label_field("tlp", [t.value for t in Tlp]),
    "label.categories": _label_field("categories", [[], ["taktik"], ["infrastruktur"]]),
    "label.legal": _label_field("legal", [None, "OSL 18:1", "OSL 18:13"]),
    "recipients.add": _add_recipient,
    "recipients.remove": _remove_recipient,
    "sender": _replace("sender", ["stockholm", "polisen-stockholm", "huddinge"]),
    "sender_key": _replace("sender_key", ["00" * 16, "ab" * 16]),
    "id": _replace("id", ["00" * 16, "ff" * 16]),
    "created": _shift("created"),
    "expires": _shift("expires"),
    "incident": _replace("incident", [None, "storm-2026", "annan-handelse"]),
    "references": _add_reference,
    "type": _replace("type", [t.value for t in MessageType]),
    "priority": _replace("priority", [p.value for p in Priority]),
    "status": _replace("status", [s.value for s in Status]),
    "content_type": _replace("content_type", ["application/octet-stream", "text/plain"]),
    "control": _control,
    "v": _replace("v", [0, 2]),
}


def _rewrap(region: DemoRegion, sample: bytes, recipients: list[str]) -> bytes:
    """Wraps matching an edited recipient list, sealing the real content key (as a
    recipient who opened the message could) for every recipient the directory knows."""
    content_key = crypto.seal_open(
        unb64(wraps_of(sample).wraps[1].sealed),
        region.identities["sos-alarm"].encryption.secret,
    )
    wraps = []
    for recipient in recipients:
        identity = region.identities.get(recipient) or region.identities["huddinge"]
        sealed = crypto.seal(content_key, identity.encryption.public, b"\x05" * 32)
        wraps.append(
            Wrap(recipient=recipient, key_id=identity.encryption.key_id, sealed=b64(sealed))
        )
    return KeyWraps(wraps=tuple(wraps)).to_bytes()


@fast(150)
@given(data=st.data(), edits=st.sets(st.sampled_from(sorted(HEADER_EDITS)), min_size=1, max_size=3))
def test_edited_header_under_the_original_signature_is_refused(region, sample, data, edits):
    original_header, wraps, ciphertext = split(sample).sections
    doc = json.loads(original_header)
    for name in sorted(edits):
        HEADER_EDITS[name](doc, data)
    if not doc["recipients"]:
        doc["recipients"] = ["huddinge"]
    edited = canonical.dumps(doc)
    assume(edited != original_header)  # e.g. the same recipient added, then removed
    if doc["recipients"] != json.loads(original_header)["recipients"]:
        wraps = _rewrap(region, sample, doc["recipients"])
    forged = reframe_keeping_signature(sample, (edited, wraps, ciphertext))
    assert refused_by_broker(forged, region).reason is Reason.BAD_SIGNATURE
    for recipient in {*doc["recipients"], *DEFAULT_TO} & set(region.identities):
        assert refused_by(forged, region, recipient).code == "invalid"


# --- surreptitious forwarding ----------------------------------------------------

FORWARD_STRATEGIES = (
    "keep-header-swap-wrap",
    "keep-signature",
    "keep-signature-reencrypt",
    "own-key-claiming-sender",
    "own-key-under-senders-key-id",
    "honest-resend",
)


def _readdress(region, sample, b: str, c: str, how: str) -> bytes:
    """Recipient ``b`` takes nacka's ``sample`` and addresses it to ``c`` instead."""
    opened = open_as(sample, region, b)
    ours = region.identities[b]
    c_key = recipient_keys(region.directory, [c])
    original = split(sample)
    if how == "keep-header-swap-wrap":  # b's own wrap entry becomes c's
        wraps = tuple(
            Wrap(recipient=c, key_id=c_key[0].key_id, sealed=w.sealed) if w.recipient == b else w
            for w in wraps_of(sample).wraps
        )
        sections = (original.sections[0], KeyWraps(wraps=wraps).to_bytes(), original.sections[2])
        return reframe(sections, signer_id=original.signer, signature=original.signature)
    if how == "honest-resend":  # b sends the content as its own message
        return build_envelope(
            sender=ours,
            recipients=c_key,
            label=opened.header.label,
            message_type=opened.header.type,
            payload=opened.payload,
            created=NOW,
            expires=NOW + HOUR,
        )
    doc = json.loads(original.sections[0])
    doc["recipients"] = [c]
    header = canonical.dumps(doc)
    content_key = b"\x09" * 32
    sealed = crypto.seal(content_key, c_key[0].public, b"\x03" * 32)
    wraps = KeyWraps(
        wraps=(Wrap(recipient=c, key_id=c_key[0].key_id, sealed=b64(sealed)),)
    ).to_bytes()
    if how == "keep-signature":
        return reframe((header, wraps, original.sections[2]), signer_id=original.signer,
                       signature=original.signature)  # fmt: skip
    nonce = b"\x04" * 24
    ciphertext = nonce + crypto.aead_encrypt(
        content_key, nonce, opened.payload, header_hash(header)
    )
    if how == "keep-signature-reencrypt":
        return reframe((header, wraps, ciphertext), signer_id=original.signer,
                       signature=original.signature)  # fmt: skip
    ours_signed = resign(ours, (header, wraps, ciphertext))
    if how == "own-key-claiming-sender":
        return ours_signed
    assert how == "own-key-under-senders-key-id"
    return reframe(
        (header, wraps, ciphertext), signer_id=original.signer, signature=ours_signed[-64:]
    )


@fast(60)
@given(data=st.data(), how=st.sampled_from(FORWARD_STRATEGIES))
def test_a_recipient_cannot_readdress_the_senders_message(region, sample, data, how):
    b = data.draw(st.sampled_from(DEFAULT_TO), label="b")
    others = [a for a in sorted(region.identities) if a not in DEFAULT_TO and a != "nacka"]
    c = data.draw(st.sampled_from([a for a in others if a != "stockholms-hamnar"]), label="c")
    forged = _readdress(region, sample, b, c, how)
    decision = decide_at(forged, region)
    if how == "honest-resend":
        # Allowed, but it is b's message: nothing says nacka addressed c.
        assert isinstance(decision, Accept)
        assert decision.envelope.sender.id == b
        opened = open_as(forged, region, c)
        assert opened.header.sender == b
        assert opened.header.sender_key == region.identities[b].signing.key_id
    else:
        assert isinstance(decision, Reject)
        assert decision.reason in {Reason.BAD_SIGNATURE, Reason.SENDER_MISMATCH}
        assert refused_by(forged, region, c).code == "invalid"


# --- arbitrary input never escapes as another exception ---------------------------


def _decides(raw: bytes, region: DemoRegion) -> None:
    decision = decide_at(raw, region)
    assert isinstance(decision, Accept | Reject)


def _opens_or_refuses(raw: bytes, region: DemoRegion) -> None:
    with contextlib.suppress(OpenError):
        open_as(raw, region, "sos-alarm")


def _receipt_refused(raw: bytes, region: DemoRegion) -> None:
    with pytest.raises(ReceiptError):
        verify_receipt(raw, region.directory, now=NOW)


@fast(200)
@given(raw=st.binary(max_size=2048))
def test_arbitrary_bytes(region, raw):
    assert isinstance(decide_at(raw, region), Reject)
    assert refused_by(raw, region, "sos-alarm").code == "invalid"
    _receipt_refused(raw, region)


@fast(200)
@given(tail=st.binary(max_size=2048), signer=st.sampled_from(["random", "nacka", "officer"]))
def test_arbitrary_bytes_behind_a_valid_prefix(region, tail, signer):
    ids = {
        "nacka": region.identities["nacka"].signing.public,
        "officer": region.officers["sakerhetschef-nacka"].public,
    }
    for kind in (b"E", b"R"):
        if signer == "random":
            raw = b"SSR\x01" + kind + tail
        else:
            count = b"\x03" if kind == b"E" else b"\x01"
            raw = b"SSR\x01" + kind + crypto.key_id(ids[signer]) + count + tail
        assert isinstance(decide_at(raw, region), Reject)
        assert refused_by(raw, region, "sos-alarm").code == "invalid"
        _receipt_refused(raw, region)


@fast(200)
@given(
    sections=st.tuples(st.binary(max_size=600), st.binary(max_size=600), st.binary(max_size=200))
)
def test_correctly_signed_garbage(region, sections):
    raw = resign(region.identities["nacka"], sections)
    decision = decide_at(raw, region)
    assert isinstance(decision, Reject)
    assert decision.reason is Reason.MALFORMED
    assert refused_by(raw, region, "sos-alarm").code == "invalid"
    receipt = resign(region.identities["sos-alarm"], sections[:1], frame_module.Kind.RECEIPT)
    _receipt_refused(receipt, region)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _canonical(doc) -> bytes:
    # json.dumps, not canonical.dumps: non-canonical output is welcome hostile input.
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


@fast(200)
@given(data=st.data(), value=json_values)
def test_correctly_signed_structured_edits_never_escape(region, sample, data, value):
    """Replace one header, wrap or receipt field by any JSON value and sign it with the
    real key: a decision or a refusal, never another exception."""
    header, wraps, ciphertext = split(sample).sections
    doc = json.loads(header)
    path = data.draw(st.sampled_from(sorted(doc) + [f"label.{k}" for k in doc["label"]]))
    target = doc["label"] if path.startswith("label.") else doc
    target[path.removeprefix("label.")] = value
    raw = resign(region.identities["nacka"], (_canonical(doc), wraps, ciphertext))
    _decides(raw, region)
    _opens_or_refuses(raw, region)

    wrap_doc = json.loads(wraps)
    field = data.draw(st.sampled_from(["recipient", "key_id", "sealed", None]))
    if field is None:
        wrap_doc["wraps"] = value
    else:
        wrap_doc["wraps"][0][field] = value
    raw = resign(region.identities["nacka"], (header, _canonical(wrap_doc), ciphertext))
    _decides(raw, region)
    _opens_or_refuses(raw, region)

    signed = read_envelope(sample, region.directory)
    me = region.identities["sos-alarm"]
    receipt = json.loads(
        split_receipt(make_receipt(me, signed.header, signed.header_hash, ReceiptKind.READ, at=NOW))
    )
    receipt[data.draw(st.sampled_from(sorted(receipt)))] = value
    raw = resign(me, (_canonical(receipt),), frame_module.Kind.RECEIPT)
    with contextlib.suppress(ReceiptError):
        verify_receipt(raw, region.directory, now=NOW)


def split_receipt(raw: bytes) -> bytes:
    decoded = frame_module.decode(
        raw, frame_module.Kind.RECEIPT, max_bytes=10_000, max_section=(10_000,)
    )
    return decoded.sections[0]


@fast(100)
@given(data=st.data())
def test_any_single_bit_flip_in_a_receipt_is_refused(region, sample, data):
    signed = read_envelope(sample, region.directory)
    receipt = make_receipt(
        region.identities["stockholm"],
        signed.header,
        signed.header_hash,
        ReceiptKind.DELIVERED,
        at=NOW,
    )
    assert verify_receipt(receipt, region.directory, now=NOW).body.recipient == "stockholm"
    bit = data.draw(st.integers(min_value=0, max_value=len(receipt) * 8 - 1))
    _receipt_refused(flip_bit(receipt, bit), region)


def test_header_edits_cover_every_field():
    assert {name.split(".")[0] for name in HEADER_EDITS} == set(Header.model_fields)
    assert {name.split(".")[1] for name in HEADER_EDITS if name.startswith("label.")} == (
        set(Label.model_fields) - {"policy"}
    )
