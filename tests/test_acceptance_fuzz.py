"""Acceptance, issue 9 security item 6: fuzzing every parser, and single-bit flips of 200
varied valid envelopes.

Every parser the broker, a client or an adapter runs on input from outside gets hostile
input three ways (hypothesis, derandomized): arbitrary bytes, a valid sample with bytes
cut, inserted and flipped, and — for signed frames — a valid sample whose body was edited
(bytes or one JSON value anywhere) and then *re-signed with the real key*, so the input
gets past the signature into the parser proper. The outcome must be a valid object or
the parser's own typed error (the core's exception tree, the adapters' ``FeedError``, the
officer API's refusal), never another exception.

``tests/test_properties.py`` covers envelopes and receipts from one sample; here each
parser is driven from its own valid sample and the figures are recorded per parser
(``fuzz.<parser>``: examples, valid, typed errors).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker import officer_api
from broker.core import (
    Accept,
    BundleError,
    CoreError,
    DirectoryError,
    GrantError,
    Label,
    MessageType,
    NoticeError,
    NoticeKind,
    OpenError,
    Policy,
    PolicyError,
    Priority,
    ReceiptError,
    ReceiptKind,
    Reject,
    Status,
    Tlp,
    load_policy,
    make_bundle,
    make_grant,
    make_notice,
    make_receipt,
    open_grant,
    read_envelope,
    seal_envelope,
    verify_bundle,
    verify_directory,
    verify_grant,
    verify_notice,
    verify_receipt,
)
from broker.core import frame as frames
from broker.core.keys import SigningKeyPair
from broker.demo import DemoRegion
from clients.adapters.cap import parse_cap_json, parse_cap_xml
from clients.adapters.datex import parse_datex
from clients.adapters.model import FeedError, ParseResult
from clients.adapters.trafikverket import parse_trafikverket

from .acceptance import record
from .conftest import HOUR, NOW
from .envelope_helpers import (
    DEFAULT_LABEL,
    actor,
    build_as,
    decide_at,
    flip_bit,
    open_as,
    recipient_keys,
    split,
)

ROOT = Path(__file__).resolve().parents[1]
FEEDS = Path(__file__).parent / "feeds"
BIG = 8 * 1024 * 1024
EXAMPLES = 300  # per parser and input kind; ~15 parsers x 3 kinds stay within ~25 s


def fuzz_settings(examples: int = EXAMPLES) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
    )


class QuietRegion:
    """The demo region with a short repr (hypothesis prints arguments of a failure)."""

    def __init__(self, region: DemoRegion) -> None:
        self._region = region

    def __getattr__(self, name: str) -> Any:
        return getattr(self._region, name)

    def __repr__(self) -> str:
        return "<demo region>"


# --- the parsers and their valid samples ------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One parser: a valid sample, the call, the errors it may raise, and how to re-sign
    an edited body (frame kind, section index, signer) when it is a signed frame."""

    name: str
    sample: bytes
    parse: Callable[[bytes], object]
    errors: tuple[type[BaseException], ...]
    kind: frames.Kind | None = None
    section: int = 0
    signer: SigningKeyPair | None = None


def _envelope_parse(region: DemoRegion) -> Callable[[bytes], object]:
    def parse(raw: bytes) -> object:
        decision = decide_at(raw, region)
        assert isinstance(decision, Accept | Reject), decision
        try:
            open_as(raw, region, "sos-alarm")
        except OpenError:
            return Reject(decision.reason, "") if isinstance(decision, Reject) else decision
        return decision

    return parse


def _grant_parse(region: DemoRegion) -> Callable[[bytes], object]:
    def parse(raw: bytes) -> object:
        grant = verify_grant(raw, region.directory, now=NOW + 60_000)
        return open_grant(
            grant,
            me=region.identities["solna"],
            directory=region.directory,
            policy=Policy(),
            now=NOW + 60_000,
        )

    return parse


def _policy_parse(raw: bytes) -> object:
    return load_policy(raw.decode("utf-8", "replace"))


def _feed(parse: Callable[[bytes], ParseResult]) -> Callable[[bytes], object]:
    def checked(raw: bytes) -> object:
        result = parse(raw)
        assert isinstance(result, ParseResult)
        return result

    return checked


_QUERY_ALLOWED = {**officer_api._EVENT_PARAMETERS, "message": False}


def _officer_query_parse(region: DemoRegion) -> Callable[[bytes], object]:
    """The officer API's query-string parsing (``_Query``, ``_actor``), on a real aiohttp
    request whose query string is the input, percent-encoded where it must be."""

    def parse(raw: bytes) -> object:
        text = raw.decode("latin-1")
        query = quote(text, safe="=&;%+,:-._~")
        request = make_mocked_request("GET", f"/officer/events?{query}")
        parsed = officer_api._Query(request, _QUERY_ALLOWED)
        out = {
            "period": parsed.period(NOW),
            "limit": parsed.integer("limit", officer_api.DEFAULT_LIMIT, 1, officer_api.MAX_LIMIT),
            "after": parsed.time("after"),
            "kinds": parsed.all("kind"),
        }
        if parsed.get("actor") is not None:
            out["actor"] = officer_api._actor(parsed.get("actor"), region.directory)
        return out

    return parse


def _targets(region: DemoRegion) -> dict[str, Target]:
    nacka, sos = region.identities["nacka"], region.identities["sos-alarm"]
    envelope = build_as(region, nacka)
    signed = read_envelope(envelope, region.directory)
    receipt = make_receipt(sos, signed.header, signed.header_hash, ReceiptKind.READ, at=NOW)
    notice = make_notice(
        region.broker,
        NoticeKind.REJECTED,
        to="nacka",
        submission=envelope,
        at=NOW,
        message=signed.header.id,
        header_hash=signed.header_hash,
        reason="recipient_not_cleared",
        recipients=("sos-alarm",),
        detail="not cleared",
    )
    sealed = seal_envelope(
        sender=nacka,
        recipients=recipient_keys(region.directory, ("polisen-stockholm", "sos-alarm")),
        label=DEFAULT_LABEL,
        message_type=MessageType.SITUATION_REPORT,
        payload=b"lagesbild",
        created=NOW,
        expires=NOW + HOUR,
        incident="storm-2026",
    )
    grant = make_grant(
        nacka,
        sealed.raw,
        sealed.content_key,
        newcomer=actor(region, "solna"),
        directory=region.directory,
        policy=Policy(),
        at=NOW + 60_000,
    )
    bundle = make_bundle(nacka, [sealed.raw, grant], created=NOW + 1000, incident="storm-2026")
    policy_text = (ROOT / "deploy" / "policy.toml").read_bytes()
    directory = region.directory.raw
    officer_query = b"from=2026-09-01T00:00:00Z&to=1790000000000&kind=accepted&actor=nacka&limit=5"
    feeds = {
        "cap_xml": (parse_cap_xml, FEEDS / "cap" / "vma-nacka-alert.xml"),
        "cap_xml_feed": (parse_cap_xml, FEEDS / "cap" / "atom-feed.xml"),
        "vma_json": (parse_cap_json, FEEDS / "cap" / "sr-vma-alerts.json"),
        "trafikverket": (parse_trafikverket, FEEDS / "trafikverket" / "situations_v1.json"),
        "datex2": (parse_datex, FEEDS / "datex" / "situation_publication.xml"),
    }
    targets = [
        Target(
            "envelope",
            envelope,
            _envelope_parse(region),
            (),
            frames.Kind.ENVELOPE,
            0,
            nacka.signing,
        ),
        Target(
            "envelope_wraps",
            envelope,
            _envelope_parse(region),
            (),
            frames.Kind.ENVELOPE,
            1,
            nacka.signing,
        ),
        Target(
            "receipt",
            receipt,
            lambda raw: verify_receipt(raw, region.directory, now=NOW),
            (ReceiptError,),
            frames.Kind.RECEIPT,
            0,
            sos.signing,
        ),
        Target(
            "notice",
            notice,
            lambda raw: verify_notice(raw, region.directory, now=NOW),
            (NoticeError,),
            frames.Kind.NOTICE,
            0,
            region.broker.signing,
        ),
        Target(
            "directory",
            directory,
            lambda raw: verify_directory(raw, pinned=region.authority.public),
            (DirectoryError,),
            frames.Kind.DIRECTORY,
            0,
            region.authority,
        ),
        Target(
            "grant",
            grant,
            _grant_parse(region),
            (GrantError, OpenError),
            frames.Kind.GRANT,
            0,
            nacka.signing,
        ),
        Target(
            "bundle",
            bundle,
            lambda raw: verify_bundle(raw, region.directory, now=NOW + 2000),
            (BundleError,),
            frames.Kind.BUNDLE,
            0,
            nacka.signing,
        ),
        Target("policy", policy_text, _policy_parse, (PolicyError,)),
        Target(
            "officer_query",
            officer_query,
            _officer_query_parse(region),
            (officer_api._Refusal,),
        ),
        *(
            Target(name, path.read_bytes(), _feed(parse), (FeedError,))
            for name, (parse, path) in feeds.items()
        ),
    ]
    return {t.name: t for t in targets}


TARGET_NAMES = [
    "envelope",
    "envelope_wraps",
    "receipt",
    "notice",
    "directory",
    "grant",
    "bundle",
    "policy",
    "officer_query",
    "cap_xml",
    "cap_xml_feed",
    "vma_json",
    "trafikverket",
    "datex2",
]
SIGNED = ["envelope", "envelope_wraps", "receipt", "notice", "directory", "grant", "bundle"]


@pytest.fixture(scope="module")
def targets(region: DemoRegion) -> dict[str, Target]:
    return _targets(QuietRegion(region))  # type: ignore[arg-type]


OUTCOMES: dict[str, Counter[str]] = {}


def run(target: Target, raw: bytes, how: str) -> None:
    """Parse ``raw``: a valid object or a typed error; anything else propagates (a bug)."""
    counts = OUTCOMES.setdefault(target.name, Counter())
    try:
        outcome = target.parse(raw)
        counts["typed_error" if isinstance(outcome, Reject) else "valid"] += 1
    except target.errors:
        counts["typed_error"] += 1
    except CoreError as exc:  # a core error, but not the one this parser documents
        raise AssertionError(f"{target.name}: {type(exc).__name__} ({exc.code})") from exc
    counts[how] += 1
    counts["examples"] += 1
    record(
        f"fuzz.{target.name}",
        examples=counts["examples"],
        valid=counts["valid"],
        typed_errors=counts["typed_error"],
        unhandled=0,
    )


def test_every_sample_is_valid(targets: dict[str, Target]) -> None:
    assert sorted(targets) == sorted(TARGET_NAMES)
    for target in targets.values():
        target.parse(target.sample)  # no error at all on the valid sample


# --- input strategies -----------------------------------------------------------------------

edits = st.lists(
    st.tuples(
        st.floats(0, 1, allow_nan=False),
        st.integers(0, 24),
        st.binary(max_size=12),
        st.integers(0, 7),
    ),
    min_size=1,
    max_size=5,
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.sampled_from(["", "nacka", "00" * 16, "AAAA", "OFFENTLIG", "storm", "2026-09-21"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)


def mutate(sample: bytes, changes: list[tuple[float, int, bytes, int]]) -> bytes:
    """Cut ``n`` bytes and insert some at each place, and flip one bit there."""
    data = bytearray(sample)
    for where, cut, insert, bit in changes:
        at = int(where * len(data))
        data[at : at + cut] = insert
        if data:
            data[min(at, len(data) - 1)] ^= 1 << bit
    return bytes(data)


def resigned(target: Target, body: bytes) -> bytes:
    assert target.kind is not None
    assert target.signer is not None
    decoded = frames.decode(
        target.sample, target.kind, max_bytes=BIG, max_section=(BIG,) * target.kind.sections
    )
    sections = list(decoded.sections)
    sections[target.section] = body
    return frames.encode(target.kind, target.signer, tuple(sections))


def body_of(target: Target) -> bytes:
    assert target.kind is not None
    decoded = frames.decode(
        target.sample, target.kind, max_bytes=BIG, max_section=(BIG,) * target.kind.sections
    )
    return decoded.sections[target.section]


def replace_somewhere(doc: Any, data: st.DataObject, value: Any) -> Any:
    """``doc`` with one value anywhere in it (at most four levels down) replaced."""
    if not isinstance(doc, dict | list) or not doc or data.draw(st.integers(0, 4)) == 0:
        return value
    if isinstance(doc, dict):
        key = data.draw(st.sampled_from(sorted(doc)))
        if data.draw(st.integers(0, 9)) == 0:
            return {k: v for k, v in doc.items() if k != key}  # a field left out
        return {**doc, key: replace_somewhere(doc[key], data, value)}
    index = data.draw(st.integers(0, len(doc) - 1))
    return [*doc[:index], replace_somewhere(doc[index], data, value), *doc[index + 1 :]]


# --- the properties ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", TARGET_NAMES)
@fuzz_settings()
@given(raw=st.binary(max_size=3000))
def test_arbitrary_bytes_give_a_typed_error(targets: dict[str, Target], name: str, raw: bytes):
    target = targets[name]
    if name in SIGNED:  # a valid frame prefix, so the bytes reach past the magic
        raw = target.sample[:5] + raw
    run(target, raw, "arbitrary")


@pytest.mark.parametrize("name", TARGET_NAMES)
@fuzz_settings()
@given(changes=edits)
def test_mutated_samples_give_a_typed_error(targets: dict[str, Target], name: str, changes):
    target = targets[name]
    run(target, mutate(target.sample, changes), "mutated")


@pytest.mark.parametrize("name", SIGNED)
@fuzz_settings()
@given(data=st.data(), changes=edits, value=json_values)
def test_resigned_edited_bodies_give_a_typed_error(
    targets: dict[str, Target], name: str, data: st.DataObject, changes, value
):
    """The signer's real key signs the hostile body: the parser behind the signature."""
    target = targets[name]
    body = body_of(target)
    if data.draw(st.booleans(), label="structured"):
        doc = json.loads(body)
        edited = replace_somewhere(doc, data, value)
        # json.dumps, not canonical.dumps: non-canonical output is welcome hostile input.
        canonical_ish = data.draw(st.booleans(), label="sorted")
        body = json.dumps(
            edited, ensure_ascii=False, separators=(",", ":"), sort_keys=canonical_ish
        ).encode("utf-8", "surrogatepass")
    else:
        body = mutate(body, changes)
    run(target, resigned(target, body), "resigned")


# --- single-bit flips of 200 varied envelopes -----------------------------------------------

FLIP_ENVELOPES = 200
FLIPS_PER_ENVELOPE = 10
LABELS = [
    Label(policy="ssr", classification="OFFENTLIG", tlp=Tlp.CLEAR),
    Label(policy="ssr", classification="INTERN", tlp=Tlp.GREEN),
    Label(policy="ssr", classification="SEKRETESS", tlp=Tlp.AMBER, legal="OSL 18:13"),
    Label(policy="ssr", classification="SEKRETESS", tlp=Tlp.RED, categories=("taktik",)),
    Label(policy="ssr", classification="INTERN", tlp=Tlp.AMBER_STRICT),
    Label(policy="ssr", classification="SEKRETESS", tlp=Tlp.GREEN, categories=("infrastruktur",)),
]
TYPES = [
    MessageType.SITUATION_REPORT,
    MessageType.COORDINATION,
    MessageType.DIRECTION,
    MessageType.COMMUNICATION,
    MessageType.REQUEST,
    MessageType.ALERT,
]
PAYLOAD_SIZES = [0, 1, 64, 1000, 10_000, 100_000]


def _varied_envelopes(region: DemoRegion) -> list[tuple[bytes, tuple[str, ...]]]:
    rng = random.Random(9_006)
    ladder = Policy().ladder_order
    actors = region.directory.document.actors
    made: list[tuple[bytes, tuple[str, ...]]] = []
    attempts = 0
    while len(made) < FLIP_ENVELOPES:
        attempts += 1
        assert attempts < FLIP_ENVELOPES * 20, "too few acceptable combinations"
        label = rng.choice(LABELS)
        cleared = [a.id for a in actors if ladder.cleared_for(a.clearance, a.categories, label)]
        if len(cleared) < 2:
            continue
        sender = rng.choice(cleared)
        to = tuple(
            sorted(
                rng.sample(
                    [a for a in cleared if a != sender], rng.randint(1, min(8, len(cleared) - 1))
                )
            )
        )
        raw = build_as(
            region,
            region.identities[sender],
            to=to,
            label=label,
            message_type=rng.choice(TYPES),
            payload=rng.randbytes(rng.choice(PAYLOAD_SIZES)),
            priority=rng.choice(list(Priority)),
            status=rng.choice(list(Status)),
        )
        if isinstance(decide_at(raw, region), Accept):
            made.append((raw, to))
    return made


def _bits_to_flip(raw: bytes, rng: random.Random) -> list[int]:
    """Ten bits, spread over the frame: its fixed prefix, the section lengths, the header,
    the wraps, the ciphertext and the signature."""
    layout = split(raw)
    header_len, wraps_len, cipher_len = (len(s) for s in layout.sections)
    header_at = 22 + 4
    wraps_at = header_at + header_len + 4
    cipher_at = wraps_at + wraps_len + 4
    signature_at = cipher_at + cipher_len
    lengths = [22, 23, 24, 25, header_at + header_len, wraps_at + wraps_len]
    regions = [
        (0, 22),
        (0, 22),
        (header_at, header_at + header_len),
        (header_at, header_at + header_len),
        (header_at, header_at + header_len),
        (wraps_at, wraps_at + wraps_len),
        (wraps_at, wraps_at + wraps_len),
        (cipher_at, signature_at),
        (signature_at, len(raw)),
    ]
    positions = [rng.choice(lengths)] + [rng.randrange(lo, hi) for lo, hi in regions]
    return [p * 8 + rng.randrange(8) for p in positions]


@pytest.mark.slow
def test_single_bit_flips_of_200_varied_envelopes_are_never_accepted(region: DemoRegion):
    envelopes = _varied_envelopes(region)
    rng = random.Random(9_066)
    tried = broker_accepted = recipient_opened = 0
    for raw, to in envelopes:
        for bit in _bits_to_flip(raw, rng):
            damaged = flip_bit(raw, bit)
            tried += 1
            if not isinstance(decide_at(damaged, region), Reject):
                broker_accepted += 1
            for recipient in (to[0], to[-1]):
                try:
                    open_as(damaged, region, recipient)
                    recipient_opened += 1
                except OpenError:
                    pass
    record(
        "6 fuzz: single-bit flips",
        envelopes=len(envelopes),
        types=len({read_envelope(r, region.directory).header.type for r, _ in envelopes}),
        flips_tried=tried,
        accepted_by_broker=broker_accepted,
        opened_by_recipient=recipient_opened,
    )
    assert tried == FLIP_ENVELOPES * FLIPS_PER_ENVELOPE
    assert (broker_accepted, recipient_opened) == (0, 0)
