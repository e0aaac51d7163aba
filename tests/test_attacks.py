"""An attacker's view of the protocol core: attacks not covered elsewhere, one test each.

Each test tries one attack against the real core (real keys, real signatures, directories
signed by the demo authority) and states the outcome the protocol requires. Several of them
found bugs, now fixed:

- a policy file with a 4301-digit integer made ``load_policy`` raise ``ValueError``;
- a policy line starting with ``[`` followed by many spaces made the error-line finder's
  regular expression backtrack cubically (seconds for 2 000 spaces, hours for 256 KiB);
- a recipient whose X25519 key is a small-order point made ``build_envelope`` raise
  PyNaCl's ``RuntimeError``;
- ``make_receipt`` signed receipts every verifier refuses (a 1000-character note of
  4-byte characters exceeds the 4096-byte body bound).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from broker.core import (
    Accept,
    BrokerIdentity,
    Control,
    DirectoryError,
    EnvelopeError,
    Identity,
    Incident,
    Label,
    MessageType,
    Mode,
    NoticeError,
    NoticeKind,
    OpenError,
    Policy,
    PolicyError,
    Reason,
    ReceiptError,
    ReceiptKind,
    RecipientKey,
    Reference,
    ReferenceKind,
    Reject,
    Status,
    Tlp,
    crypto,
    load_policy,
    make_notice,
    make_receipt,
    read_envelope,
    sign_directory,
    successor,
    verify_directory,
    verify_notice,
    verify_receipt,
)
from broker.core import frame as frame_module
from broker.core.envelope import header_hash
from broker.core.incidents import closed_by, opened_by
from broker.core.keys import EncryptionKeyPair
from broker.core.limits import MAX_RECEIPT_BYTES
from broker.demo import MUNICIPALITIES, DemoRegion

from .conftest import HOUR, NOW
from .envelope_helpers import (
    build_as,
    decide_at,
    open_as,
    origin_of,
    resign,
    split,
)

ROOT = Path(__file__).resolve().parents[1]
ED25519_ORDER = 2**252 + 27742317777372353535851937790883648493


def _malleate(raw: bytes) -> bytes:
    """The same frame with signature scalar S replaced by S + L: valid under a lax verifier."""
    r, s = raw[-64:-32], int.from_bytes(raw[-32:], "little")
    return raw[:-64] + r + (s + ED25519_ORDER).to_bytes(32, "little")


def _signed_header_edit(region: DemoRegion, raw: bytes, edit: Callable[[bytes], bytes]) -> bytes:
    """``raw`` with its header bytes edited and the frame re-signed with nacka's real key."""
    header, wraps, ciphertext = split(raw).sections
    return resign(region.identities["nacka"], (edit(header), wraps, ciphertext))


def _replace(old: bytes, new: bytes) -> Callable[[bytes], bytes]:
    def edit(header: bytes) -> bytes:
        assert old in header
        return header.replace(old, new, 1)

    return edit


def _refused_everywhere(raw: bytes, region: DemoRegion, reason: Reason) -> None:
    decision = decide_at(raw, region)
    assert isinstance(decision, Reject), decision
    assert decision.reason is reason
    with pytest.raises(OpenError) as caught:
        open_as(raw, region, "sos-alarm")
    assert caught.value.code == "invalid"


# --- hostile input: no exception other than the core's ------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "format = " + "1" * 4301,
        "version = " + "9" * 5000,
        "[limits]\nmax_recipients = -" + "1" * 5000,
        "ladder = [" + "7" * 4400 + "]",
    ],
    ids=["format", "version", "negative-in-table", "in-array"],
)
def test_policy_integer_beyond_pythons_digit_limit_is_a_policy_error(text):
    """Attack: an integer longer than Python's 4300-digit str->int limit; tomllib raises a
    bare ValueError (not TOMLDecodeError), which used to escape load_policy."""
    with pytest.raises(PolicyError) as caught:
        load_policy(text)
    assert caught.value.code == "policy_invalid"


@pytest.mark.parametrize(
    "text",
    [
        "ladder = [\n[" + " " * 3000 + '"AB"], ["CD"]\n]\n',  # an array of arrays: not strings
        'id = """\n[' + " " * 3000 + '\n"""\n',  # a multi-line string, not a slug
    ],
    ids=["nested-array-line", "multi-line-string-line"],
)
def test_policy_error_line_lookup_is_not_catastrophic(text):
    """Attack: valid TOML whose failing field spans a line '[' + many spaces; the old
    table-header pattern backtracked cubically (about 15 s at 3000 spaces)."""
    started = time.perf_counter()
    with pytest.raises(PolicyError) as caught:
        load_policy(text)
    assert time.perf_counter() - started < 1.0
    assert caught.value.line == 1


def test_policy_error_line_lookup_on_a_maximal_line():
    text = 'id = """\n[' + " " * 250_000 + '\n"""\n'
    started = time.perf_counter()
    with pytest.raises(PolicyError) as caught:
        load_policy(text)
    assert time.perf_counter() - started < 2.0
    assert caught.value.field == "id"


SMALL_ORDER_X25519 = [
    bytes(32),  # the identity point
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),  # order 8
]


@pytest.mark.parametrize("public", SMALL_ORDER_X25519, ids=["zero", "one", "order-8"])
def test_building_for_a_small_order_recipient_key_is_recipient_key_invalid(public, region):
    """Attack: a directory entry (or a caller) offers a small-order X25519 key, whose shared
    secret is all zeros; libsodium refuses to seal, and that must surface as the builder's
    own refusal, not PyNaCl's RuntimeError."""
    good = RecipientKey.of(region.directory.actor("sos-alarm"), NOW)
    bad = RecipientKey("polisen-stockholm", crypto.key_id(public).hex(), public)
    with pytest.raises(EnvelopeError) as caught:
        build_as(region, region.identities["nacka"], to=(), recipients=[good, bad])
    assert caught.value.code == "recipient_key_invalid"
    assert "polisen-stockholm" in caught.value.message


def _header_at_depth(depth: int) -> Callable[[bytes], bytes]:
    nested = b"[" * depth + b"]" * depth  # as bytes: json.loads itself stops at ~1000
    return _replace(b'"incident":null', b'"incident":' + nested)


def _header_with_long_integer(header: bytes) -> bytes:
    doc = json.loads(header)
    return header.replace(str(doc["created"]).encode(), b"1" * 5000)


@pytest.mark.parametrize(
    "edit",
    [
        _header_at_depth(17),  # one deeper than the canonical bound
        _header_at_depth(300),  # past the second parser's (pydantic's) recursion limit
        _header_at_depth(5000),  # past the standard library's recursion limit
        _header_with_long_integer,
    ],
    ids=["depth-17", "depth-300", "depth-5000", "5000-digit-integer"],
)
def test_correctly_signed_hostile_json_is_malformed(edit, region):
    """Attack: a key holder signs headers built to break the two JSON parsers."""
    raw = _signed_header_edit(region, build_as(region, region.identities["nacka"]), edit)
    _refused_everywhere(raw, region, Reason.MALFORMED)


def test_correctly_signed_deep_directory_is_malformed(region):
    """Attack: an authority-signed directory nested deeper than any parser allows."""
    document = region.directory.document.to_bytes()
    deep = document[:-1] + b',"groups":' + b"[" * 5000 + b"]" * 5000 + b"}"
    data = frame_module.encode(frame_module.Kind.DIRECTORY, region.authority, (deep,))
    with pytest.raises(DirectoryError) as caught:
        verify_directory(data, pinned=region.authority.public)
    assert caught.value.code == "directory_malformed"


# --- one document, one encoding --------------------------------------------------------


EQUIVALENT_HEADERS = {
    "escaped-member-name": _replace(b'"id":', b'"\\u0069d":'),
    "escaped-ascii-value": _replace(b'"sender":"nacka"', b'"sender":"n\\u0061cka"'),
    "escaped-solidus": _replace(b"application/octet", b"application\\/octet"),
    "duplicate-member-same-value": _replace(b'"v":1', b'"v":1,"v":1'),
    "exponent-time": _replace(b'"created":1790000000000', b'"created":179e10'),
    "fraction-time": _replace(b'"created":1790000000000', b'"created":1790000000000.0'),
    "byte-order-mark": lambda header: b"\xef\xbb\xbf" + header,
    "trailing-newline": lambda header: header + b"\n",
}


@pytest.mark.parametrize("edit", EQUIVALENT_HEADERS.values(), ids=EQUIVALENT_HEADERS.keys())
def test_equivalent_but_non_canonical_header_is_malformed(edit, region):
    """Attack: a second encoding of the same header value, signed by the real key; a lax
    reader would accept both, so one signed value would have two header hashes (and a
    receipt or forward reference for one would not match the other)."""
    raw = _signed_header_edit(region, build_as(region, region.identities["nacka"]), edit)
    _refused_everywhere(raw, region, Reason.MALFORMED)


def test_sealed_key_with_non_zero_padding_bits_is_malformed(region):
    """Attack: another base64 text for the same 80-byte sealed box (the 2 unused low bits of
    the last symbol set); it decodes to the same bytes under a lax decoder."""
    raw = build_as(region, region.identities["nacka"])
    header, wraps, ciphertext = split(raw).sections
    doc = json.loads(wraps)
    sealed = doc["wraps"][0]["sealed"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = sealed[-2]  # 80 bytes: 107 symbols and one "="; the 107th has 2 unused low bits
    variant = sealed[:-2] + alphabet[alphabet.index(last) | 1] + "="
    assert variant != sealed
    assert base64.b64decode(variant) == base64.b64decode(sealed)  # the same sealed box
    doc["wraps"][0]["sealed"] = variant
    edited = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    signed = resign(region.identities["nacka"], (header, edited, ciphertext))
    _refused_everywhere(signed, region, Reason.MALFORMED)


@pytest.mark.parametrize(
    "classification",
    [
        "SEKR\u0415TESS",  # Cyrillic capital IE
        "BEGRA\u0308NSAT HEMLIG",  # decomposed Ä (the ladder uses U+00C4)
        "sekretess",
        "SEKRETESS\u00a0",
    ],
    ids=["homoglyph", "decomposed", "lower-case", "no-break-space"],
)
def test_look_alike_classification_is_malformed(classification, region):
    """Attack: a label that reads like a ladder level but is not one, to slip past a
    comparison that normalises; no normalisation happens, and the pattern refuses it."""
    edit = _replace(b'"classification":"SEKRETESS"', json.dumps(classification).encode())
    raw = _signed_header_edit(region, build_as(region, region.identities["nacka"]), edit)
    _refused_everywhere(raw, region, Reason.MALFORMED)


# --- signatures ------------------------------------------------------------------------


def test_malleated_envelope_signature_is_refused(region):
    """Attack: S + L gives a second signature for the same bytes under a lax verifier."""
    _refused_everywhere(
        _malleate(build_as(region, region.identities["nacka"])), region, Reason.BAD_SIGNATURE
    )


def test_malleated_directory_signature_cannot_fork_the_chain(region):
    """Attack: a version's hash covers its signature, so a second valid signature would give
    a second hash for the same version and split clients between two chains."""
    v2 = sign_directory(successor(region.directory, issued=NOW + 1), region.authority)
    assert verify_directory(v2, pinned=region.authority.public, previous=region.directory)
    with pytest.raises(DirectoryError) as caught:
        verify_directory(_malleate(v2), pinned=region.authority.public, previous=region.directory)
    assert caught.value.code == "directory_bad_signature"


def test_malleated_receipt_signature_is_refused(region):
    signed = read_envelope(build_as(region, region.identities["nacka"]), region.directory)
    receipt = make_receipt(
        region.identities["sos-alarm"],
        signed.header,
        signed.header_hash,
        ReceiptKind.DELIVERED,
        at=NOW,
    )
    with pytest.raises(ReceiptError) as caught:
        verify_receipt(_malleate(receipt), region.directory, now=NOW)
    assert caught.value.code == "receipt_bad_signature"


def test_the_authority_key_signs_neither_envelopes_nor_receipts(region):
    """Attack: the registry authority key (e.g. stolen from the coordination office) used as
    Länsstyrelsen's actor key."""
    authority = Identity(
        "lansstyrelsen-stockholm",
        region.authority,
        region.identities["lansstyrelsen-stockholm"].encryption,
    )
    raw = build_as(region, authority, message_type=MessageType.MODE_CHANGE)
    _refused_everywhere(raw, region, Reason.UNKNOWN_SENDER_KEY)
    to_authority = build_as(region, region.identities["nacka"], to=("lansstyrelsen-stockholm",))
    signed = read_envelope(to_authority, region.directory)
    receipt = make_receipt(
        authority, signed.header, signed.header_hash, ReceiptKind.DELIVERED, at=NOW
    )
    with pytest.raises(ReceiptError) as caught:
        verify_receipt(receipt, region.directory, now=NOW)
    assert caught.value.code == "receipt_unknown_signer"


def test_the_broker_key_signs_neither_envelopes_nor_receipts(region):
    """Attack: the broker's notice key (held by the service, so more exposed than an
    actor's) used as Länsstyrelsen's actor key, e.g. to change the region's mode."""
    stolen = Identity(
        "lansstyrelsen-stockholm",
        region.broker.signing,
        region.identities["lansstyrelsen-stockholm"].encryption,
    )
    raw = build_as(
        region, stolen, message_type=MessageType.MODE_CHANGE, control=Control(mode=Mode.ACTIVATED)
    )
    _refused_everywhere(raw, region, Reason.UNKNOWN_SENDER_KEY)
    to_authority = build_as(region, region.identities["nacka"], to=("lansstyrelsen-stockholm",))
    signed = read_envelope(to_authority, region.directory)
    receipt = make_receipt(stolen, signed.header, signed.header_hash, ReceiptKind.DELIVERED, at=NOW)
    with pytest.raises(ReceiptError) as caught:
        verify_receipt(receipt, region.directory, now=NOW)
    assert caught.value.code == "receipt_unknown_signer"


def test_an_actor_cannot_forge_the_brokers_notice(region):
    """Attack: an actor tells another that its message was accepted (or refused), posing
    as the broker, with its own real key or the broker's id and key id in the body."""
    nacka = region.identities["nacka"].signing
    for forged in (
        make_notice(
            BrokerIdentity(region.broker.broker, nacka),
            NoticeKind.ACCEPTED, to="stockholm", submission=b"x", at=NOW,
        ),
        resign(nacka, (_notice_body(region),), frame_module.Kind.NOTICE),
    ):  # fmt: skip
        with pytest.raises(NoticeError) as caught:
            verify_notice(forged, region.directory, now=NOW)
        assert caught.value.code == "notice_unknown_signer"


def _notice_body(region: DemoRegion) -> bytes:
    notice = make_notice(
        region.broker, NoticeKind.ACCEPTED, to="stockholm", submission=b"x", at=NOW
    )
    return frame_module.decode(
        notice, frame_module.Kind.NOTICE, max_bytes=1 << 16, max_section=(1 << 16,)
    ).sections[0]


def test_previous_hash_is_over_the_frame_not_the_document(region):
    """Attack (chain confusion): a successor naming the hash of the previous document
    section, which a second implementation might compute instead of the frame's."""
    document_hash = crypto.sha256(region.directory.document.to_bytes()).hex()
    fields = dict(successor(region.directory, issued=NOW + 1)) | {"previous": document_hash}
    data = sign_directory(type(region.directory.document)(**fields), region.authority)
    with pytest.raises(DirectoryError) as caught:
        verify_directory(data, pinned=region.authority.public, previous=region.directory)
    assert caught.value.code == "directory_chain_broken"


# --- key substitution and addressing ------------------------------------------------------


def test_wrap_naming_the_recipients_signing_key_id_is_recipient_key_invalid(region):
    """Attack (key kind confusion): the wrap names the recipient's Ed25519 key id."""
    sos = region.identities["sos-alarm"]
    confused = RecipientKey("sos-alarm", sos.signing.key_id, sos.encryption.public)
    raw = build_as(region, region.identities["nacka"], to=(), recipients=[confused])
    decision = decide_at(raw, region)
    assert decision.reason is Reason.RECIPIENT_KEY_INVALID
    assert decision.recipients == ("sos-alarm",)


def test_wrap_for_an_attacker_key_under_the_recipients_key_id_cannot_be_opened(region):
    """Attack (key substitution): the wrap carries sos-alarm's key id but is sealed to a
    key the sender chose; the broker cannot see it, the recipient refuses as 'invalid'."""
    sos = region.directory.actor("sos-alarm")
    other = EncryptionKeyPair(b"\x07" * 32)
    swapped = RecipientKey("sos-alarm", sos.encryption_keys[0].key_id, other.public)
    raw = build_as(region, region.identities["nacka"], to=(), recipients=[swapped])
    assert isinstance(decide_at(raw, region), Accept)
    with pytest.raises(OpenError) as caught:
        open_as(raw, region, "sos-alarm")
    assert caught.value.code == "invalid"


@pytest.mark.parametrize("name", ["kommuner", "sakerhetschef-nacka"], ids=["group", "officer"])
def test_a_group_or_officer_id_is_not_a_recipient(name, region):
    """Attack: address a group (hoping the broker fans out) or an officer (who has no
    encryption key) by its id; both are unknown recipients."""
    key = RecipientKey.of(region.directory.actor("sos-alarm"), NOW)
    fake = RecipientKey(name, key.key_id, key.public)
    raw = build_as(region, region.identities["nacka"], to=(), recipients=[key, fake])
    decision = decide_at(raw, region)
    assert decision.reason is Reason.RECIPIENT_UNKNOWN
    assert decision.recipients == (name,)


def test_two_hundred_unknown_recipients_are_refused_and_all_named(region):
    """Attack: the hard ceiling of recipients, none of them real, under a policy that allows
    that many; one pass over the wraps, every one named in header order."""
    key = RecipientKey.of(region.directory.actor("sos-alarm"), NOW)
    fakes = [RecipientKey(f"{'x' * 60}{i:04d}", key.key_id, key.public) for i in range(200)]
    raw = build_as(region, region.identities["nacka"], to=(), recipients=fakes)
    started = time.perf_counter()
    decision = decide_at(raw, region, policy=load_policy("[limits]\nmax_recipients = 200\n"))
    assert time.perf_counter() - started < 1.0
    assert decision.reason is Reason.RECIPIENT_UNKNOWN
    assert decision.recipients == tuple(f.actor for f in fakes)


# --- rights in modes ----------------------------------------------------------------------


def test_a_mode_overlay_opening_activation_keeps_the_region_wide_rule(region):
    """Attack: in a mode whose overlay lets every actor activate, a plain municipality
    activates the whole region."""
    policy = load_policy('[modes.activated.rights]\nactivation = ["member"]\n')
    nacka = region.identities["nacka"]
    activation = {
        "message_type": MessageType.ACTIVATION,
        "incident": "storm-2026",
        "control": Control(incident_type="storm"),
    }
    few = build_as(region, nacka, to=MUNICIPALITIES[:3], **activation)
    many = build_as(region, nacka, to=MUNICIPALITIES[:12], **activation)
    assert isinstance(decide_at(few, region, policy=policy, mode=Mode.ACTIVATED), Accept)
    assert decide_at(few, region, policy=policy, mode=Mode.ORDINARY).reason is (
        Reason.TYPE_NOT_ALLOWED
    )
    assert decide_at(many, region, policy=policy, mode=Mode.ACTIVATED).reason is (
        Reason.REGION_WIDE_NOT_ALLOWED
    )


def test_an_empty_rights_list_closes_a_type_to_everyone(region):
    """Fail closed: `mode_change = []` is nobody, not everybody (an empty tuple is falsy)."""
    policy = load_policy("[rights]\nmode_change = []\n")
    authority = region.identities["lansstyrelsen-stockholm"]
    raw = build_as(
        region,
        authority,
        message_type=MessageType.MODE_CHANGE,
        control=Control(mode=Mode.ACTIVATED),
    )
    assert isinstance(decide_at(raw, region), Accept)
    assert decide_at(raw, region, policy=policy).reason is Reason.TYPE_NOT_ALLOWED


# --- incidents -----------------------------------------------------------------------------


def _storm(region: DemoRegion, status: Status = Status.ACTUAL) -> dict[str, Incident]:
    """polisen-stockholm's open incident with nacka and sos-alarm."""
    raw = build_as(
        region,
        region.identities["polisen-stockholm"],
        to=("nacka", "sos-alarm"),
        message_type=MessageType.ACTIVATION,
        incident="storm-2026",
        control=Control(incident_type="storm"),
        status=status,
    )
    decision = decide_at(raw, region)
    assert isinstance(decision, Accept)
    return {"storm-2026": opened_by(decision.envelope.header, None)}


def test_an_activator_cannot_hijack_another_actors_incident(region):
    """Attack: another activator re-activates a running incident to replace its
    participants (dropping the owner, adding itself and a friend)."""
    incidents = _storm(region)
    hijack = build_as(
        region,
        region.identities["storstockholms-brandforsvar"],
        to=("huddinge",),
        message_type=MessageType.ACTIVATION,
        incident="storm-2026",
        control=Control(incident_type="storm"),
    )
    decision = decide_at(hijack, region, incidents=incidents)
    assert decision.reason is Reason.INCIDENT_OWNER_ONLY


def test_a_closed_incident_id_cannot_be_reopened_under_new_participants(region):
    """Attack: open a new incident under a closed incident's id, so that its old
    traffic (which names the id) seems to belong to the new participants."""
    (incident,) = _storm(region).values()
    closed = {incident.id: closed_by(incident, NOW - 1)}
    reopen = build_as(
        region,
        region.identities["polisen-stockholm"],
        to=("huddinge",),
        message_type=MessageType.ACTIVATION,
        incident=incident.id,
        control=Control(incident_type="storm"),
    )
    assert decide_at(reopen, region, incidents=closed).reason is Reason.INCIDENT_CLOSED


def test_exercise_traffic_cannot_reach_an_actual_incident_and_back(region):
    """Attack (or mistake): an exercise message slipped into a real incident, or a real
    message into an exercise, where the recipients would act on it differently."""
    for incident_status, message_status in (
        (Status.ACTUAL, Status.EXERCISE),
        (Status.EXERCISE, Status.ACTUAL),
        (Status.ACTUAL, Status.TEST),
    ):
        raw = build_as(
            region,
            region.identities["nacka"],
            to=("polisen-stockholm",),
            incident="storm-2026",
            status=message_status,
        )
        decision = decide_at(raw, region, incidents=_storm(region, incident_status))
        assert decision.reason is Reason.INCIDENT_STATUS_MISMATCH


def test_a_mode_change_needs_its_mode_in_the_signed_header(region):
    """Attack: a mode change whose mode is only in the (encrypted) payload, where the
    broker cannot see it; or with the mode set but smuggling an incident type."""
    authority = region.identities["lansstyrelsen-stockholm"]
    for control in (None, Control(), Control(mode=Mode.ACTIVATED, incident_type="storm")):
        raw = build_as(
            region,
            authority,
            message_type=MessageType.MODE_CHANGE,
            control=control,
            payload=b'{"mode": "heightened_alert"}',
        )
        assert decide_at(raw, region).reason is Reason.CONTROL_INVALID


# --- forwards -----------------------------------------------------------------------------


def _label(tlp: Tlp) -> Label:
    return Label(policy="ssr", classification="SEKRETESS", tlp=tlp)


def _forward_of(region: DemoRegion, original: bytes, sender: str, to: tuple[str, ...]) -> bytes:
    header = split(original).sections[0]
    reference = Reference(
        kind=ReferenceKind.FORWARD,
        message=json.loads(header)["id"],
        header_hash=header_hash(header).hex(),
    )
    return build_as(
        region, region.identities[sender], to=to, label=_label(Tlp.RED), references=(reference,)
    )


def test_a_chain_of_forwards_never_widens_a_red_audience(region):
    """Attack: forward a RED message inside its audience, then forward the forward outside
    it; each hop's audience is the previous hop's, so nobody new is ever reached."""
    original = build_as(
        region,
        region.identities["nacka"],
        to=("polisen-stockholm", "sos-alarm"),
        label=_label(Tlp.RED),
    )
    hop = _forward_of(region, original, "polisen-stockholm", ("sos-alarm",))
    assert isinstance(decide_at(hop, region, origin=origin_of(original, region)), Accept)
    onward = _forward_of(region, hop, "sos-alarm", ("huddinge", "polisen-stockholm"))
    decision = decide_at(onward, region, origin=origin_of(hop, region, approved={"huddinge"}))
    assert decision.reason is Reason.TLP_FORWARD_FORBIDDEN
    assert decision.recipients == ("huddinge",)


# --- replay at the recipient ---------------------------------------------------------------


def test_recipient_replay_window_is_expires_plus_leeway_and_the_spec_says_so(region):
    """Attack: replay an envelope to a recipient just after its `expires`. The recipient
    still opens it within the clock leeway, so a seen-id store that forgets ids at
    `expires` (what PROTOCOL.md sections 9 and 10 used to say) lets the replay through."""
    raw = build_as(region, region.identities["nacka"])
    leeway = Policy().limits.clock_skew_seconds * 1000
    expires = NOW + HOUR
    assert open_as(raw, region, "sos-alarm", now=expires + leeway - 1).header.expires == expires
    with pytest.raises(OpenError) as caught:
        open_as(raw, region, "sos-alarm", now=expires + leeway)
    assert caught.value.code == "expired"
    spec = " ".join((ROOT / "schemas" / "PROTOCOL.md").read_text(encoding="utf-8").split())
    assert "a recipient keeps them at least until `expires` + leeway" in spec
    assert "their `expires` **plus the leeway**" in spec


# --- receipts -----------------------------------------------------------------------------


@pytest.fixture
def received(region):
    signed = read_envelope(build_as(region, region.identities["nacka"]), region.directory)
    return signed.header, signed.header_hash


@pytest.mark.parametrize(
    "note",
    ["\U0001f600" * 1000, "\x01" * 1000, "ok \ud800"],
    ids=["4-byte-characters", "control-characters", "lone-surrogate"],
)
def test_make_receipt_refuses_a_body_no_verifier_accepts(note, region, received):
    """A note within 1000 characters can still need more than the 4096-byte body bound
    (or be unencodable); the builder used to sign a receipt every verifier refuses."""
    header, hash_ = received
    with pytest.raises(ReceiptError) as caught:
        make_receipt(
            region.identities["sos-alarm"],
            header,
            hash_,
            ReceiptKind.ACKNOWLEDGED,
            at=NOW,
            note=note,
        )
    assert caught.value.code == "receipt_malformed"


def _receipt_body(data: bytes) -> bytes:
    decoded = frame_module.decode(
        data, frame_module.Kind.RECEIPT, max_bytes=1 << 16, max_section=(1 << 16,)
    )
    return decoded.sections[0]


def _note_of_bytes(size: int) -> str:
    """A note of at most 1000 characters whose UTF-8 takes exactly ``size`` bytes."""
    wide = max(0, -(-(size - 1000) // 3))  # 4-byte characters needed to fit the count
    note = "\U0001f600" * wide + "x" * (size - 4 * wide)
    assert len(note) <= 1000
    assert len(note.encode()) == size
    return note


def test_a_receipt_body_of_exactly_the_bound_is_made_and_verified(region, received):
    header, hash_ = received
    me = region.identities["sos-alarm"]

    def body_size(data: bytes) -> int:
        return len(_receipt_body(data))

    empty = make_receipt(me, header, hash_, ReceiptKind.ACKNOWLEDGED, at=NOW, note="")
    note = _note_of_bytes(MAX_RECEIPT_BYTES - body_size(empty))
    data = make_receipt(me, header, hash_, ReceiptKind.ACKNOWLEDGED, at=NOW, note=note)
    assert body_size(data) == MAX_RECEIPT_BYTES
    assert verify_receipt(data, region.directory, now=NOW).body.note == note
    with pytest.raises(ReceiptError):
        make_receipt(me, header, hash_, ReceiptKind.ACKNOWLEDGED, at=NOW, note=note[:-1] + "é")
