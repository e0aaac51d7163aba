"""Officers' challenge-response login and bearer tokens (``broker.officer_auth``), sans I/O.

Every directory here is signed by the demo authority and verified as a successor of
the demo directory; every signature is real Ed25519. The clock is the fixed ``NOW``.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker import officer_auth
from broker.core import (
    BrokerService,
    EncryptionKeyPair,
    Identity,
    KeyRecord,
    Officer,
    SigningKeyPair,
    VerifiedDirectory,
    canonical,
    save_identity,
    sign_directory,
    successor,
    verify_directory,
)
from broker.core.crypto import seeded_random
from broker.core.notices import BrokerIdentity
from broker.demo import DemoRegion, demo_region
from broker.officer_auth import (
    CHALLENGE_TTL_MS,
    MAX_TOKEN_CHARS,
    SESSION_TTL_MS,
    AuthCode,
    AuthError,
    RedeemedNonces,
    Session,
    issue_challenge,
    login_message,
    peek_challenge,
    redeem,
    sign_challenge,
    verify_token,
)
from clients import cli

from .conftest import NOW

NACKA = "sakerhetschef-nacka"
REGIONAL = "sakerhetschef-lansstyrelsen"
T1 = NOW + 1_000  # when challenges are issued
T2 = NOW + 5_000  # when they are redeemed


# --- helpers ------------------------------------------------------------------------------


def next_version(
    region: DemoRegion, base: VerifiedDirectory | None = None, **changes: Any
) -> VerifiedDirectory:
    previous = base or region.directory
    document = successor(previous, issued=NOW, **changes)
    return verify_directory(
        sign_directory(document, region.authority),
        pinned=region.authority.public,
        previous=previous,
    )


def with_officer(region: DemoRegion, officer_id: str, **update: Any) -> VerifiedDirectory:
    officers = tuple(
        o.model_copy(update=update) if o.id == officer_id else o
        for o in region.directory.document.officers
    )
    return next_version(region, officers=officers)


def officer_key_update(region: DemoRegion, officer_id: str, **update: Any) -> dict[str, Any]:
    officer = region.directory.officer(officer_id)
    assert officer is not None
    (record,) = officer.signing_keys
    return {"signing_keys": (record.model_copy(update=update),)}


def login(
    region: DemoRegion,
    officer: str = NACKA,
    *,
    directory: VerifiedDirectory | None = None,
    identity: BrokerIdentity | None = None,
) -> Session:
    directory = directory or region.directory
    identity = identity or region.broker
    issued = issue_challenge(identity, officer, directory, T1)
    signature = sign_challenge(region.officers[officer], issued.challenge)
    return redeem(
        issued.challenge, signature, officer, directory, T2, identity, redeemed=RedeemedNonces()
    )


@contextlib.contextmanager
def refused(code: AuthCode) -> Iterator[None]:
    """Assert an AuthError with exactly ``code`` and a detail safe to show."""
    with pytest.raises(AuthError) as info:
        yield
    assert info.value.code == code.value, info.value.code
    assert info.value.message


def unpack(text: str) -> tuple[bytes, bytes, bytes]:
    """Split a challenge or token into (prefix, body, signature)."""
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    return data[:18], data[18:-64], data[-64:]


def pack(prefix: bytes, body: bytes, signature: bytes) -> str:
    return base64.urlsafe_b64encode(prefix + body + signature).rstrip(b"=").decode()


def flip(text: str, position: int) -> str:
    prefix, body, signature = unpack(text)
    data = bytearray(prefix + body + signature)
    data[position] ^= 0x01
    return pack(bytes(data[:18]), bytes(data[18:-64]), bytes(data[-64:]))


@pytest.fixture
def second_broker(region: DemoRegion) -> tuple[BrokerIdentity, VerifiedDirectory]:
    """Another broker process group listed in a new directory version."""
    other = BrokerIdentity("ssr-broker-2", SigningKeyPair.generate(seeded_random(b"broker-2")))
    record = KeyRecord.for_key(other.signing.public, not_before=NOW, not_after=NOW + 10**10)
    brokers = (
        *region.directory.document.brokers,
        BrokerService(id=other.broker, name="second broker", signing_keys=(record,)),
    )
    return other, next_version(region, brokers=brokers)


# --- the happy path -----------------------------------------------------------------------


def test_full_login_flow(region: DemoRegion) -> None:
    issued = issue_challenge(region.broker, NACKA, region.directory, T1)
    assert issued.expires == T1 + CHALLENGE_TTL_MS
    assert peek_challenge(issued.challenge) == (NACKA, issued.expires)
    assert len(issued.challenge) < MAX_TOKEN_CHARS
    assert set(issued.challenge) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    )
    signature = sign_challenge(region.officers[NACKA], issued.challenge)
    assert login_message(issued.challenge) == b"ssr-officer-login\n" + issued.challenge.encode()
    session = redeem(
        issued.challenge,
        signature,
        NACKA,
        region.directory,
        T2,
        region.broker,
        redeemed=RedeemedNonces(),
    )
    assert (session.officer, session.scope, session.expires) == (
        NACKA,
        "nacka",
        T2 + SESSION_TTL_MS,
    )
    assert verify_token(session.token, region.directory, T2 + 1) == session


def test_regional_officer_has_no_scope(region: DemoRegion) -> None:
    session = login(region, REGIONAL)
    assert session.scope is None
    assert verify_token(session.token, region.directory, T2).scope is None


def test_an_uppercase_hex_signature_is_accepted(region: DemoRegion) -> None:
    issued = issue_challenge(region.broker, NACKA, region.directory, T1)
    signature = sign_challenge(region.officers[NACKA], issued.challenge).upper()
    session = redeem(
        issued.challenge,
        signature,
        NACKA,
        region.directory,
        T2,
        region.broker,
        redeemed=RedeemedNonces(),
    )
    assert session.officer == NACKA


def test_challenges_are_fresh(region: DemoRegion) -> None:
    first = issue_challenge(region.broker, NACKA, region.directory, T1)
    second = issue_challenge(region.broker, NACKA, region.directory, T1)
    assert first.challenge != second.challenge


def test_fixed_randomness_gives_a_fixed_challenge(region: DemoRegion) -> None:
    one = issue_challenge(region.broker, NACKA, region.directory, T1, rand=seeded_random(b"v"))
    two = issue_challenge(region.broker, NACKA, region.directory, T1, rand=seeded_random(b"v"))
    assert one == two


def test_any_broker_of_the_directory_redeems_and_verifies(
    region: DemoRegion, second_broker: tuple[BrokerIdentity, VerifiedDirectory]
) -> None:
    other, directory = second_broker
    issued = issue_challenge(region.broker, NACKA, directory, T1)  # issued by broker 1
    signature = sign_challenge(region.officers[NACKA], issued.challenge)
    session = redeem(  # redeemed at broker 2, which signs the token
        issued.challenge, signature, NACKA, directory, T2, other, redeemed=RedeemedNonces()
    )
    assert unpack(session.token)[0][2:].hex() == other.signing.key_id
    assert verify_token(session.token, directory, T2).officer == NACKA  # at either broker


# --- challenges refused -------------------------------------------------------------------


def test_unknown_officer_gets_no_challenge(region: DemoRegion) -> None:
    with refused(AuthCode.UNKNOWN_OFFICER):
        issue_challenge(region.broker, "sakerhetschef-solna", region.directory, T1)


def test_expired_challenge(region: DemoRegion) -> None:
    issued = issue_challenge(region.broker, NACKA, region.directory, T1)
    signature = sign_challenge(region.officers[NACKA], issued.challenge)
    args = (issued.challenge, signature, NACKA, region.directory)
    redeem(*args, issued.expires - 1, region.broker, redeemed=RedeemedNonces())
    with refused(AuthCode.CHALLENGE_EXPIRED):
        redeem(*args, issued.expires, region.broker, redeemed=RedeemedNonces())


def test_reused_challenge_in_one_process(region: DemoRegion) -> None:
    issued = issue_challenge(region.broker, NACKA, region.directory, T1)
    signature = sign_challenge(region.officers[NACKA], issued.challenge)
    seen = RedeemedNonces()
    args = (issued.challenge, signature, NACKA, region.directory, T2, region.broker)
    redeem(*args, redeemed=seen)
    with refused(AuthCode.CHALLENGE_REUSED):
        redeem(*args, redeemed=seen)
    # The documented limit: another process, with its own memory, accepts it once more.
    redeem(*args, redeemed=RedeemedNonces())


def test_the_process_wide_nonce_set_is_the_default(region: DemoRegion) -> None:
    issued = issue_challenge(region.broker, NACKA, region.directory, T1)
    signature = sign_challenge(region.officers[NACKA], issued.challenge)
    args = (issued.challenge, signature, NACKA, region.directory, T2, region.broker)
    redeem(*args)
    with refused(AuthCode.CHALLENGE_REUSED):
        redeem(*args)


def test_a_failed_redemption_does_not_burn_the_challenge(region: DemoRegion) -> None:
    issued = issue_challenge(region.broker, NACKA, region.directory, T1)
    seen = RedeemedNonces()
    wrong = sign_challenge(region.officers[REGIONAL], issued.challenge)
    with refused(AuthCode.BAD_SIGNATURE):
        redeem(issued.challenge, wrong, NACKA, region.directory, T2, region.broker, redeemed=seen)
    right = sign_challenge(region.officers[NACKA], issued.challenge)
    redeem(issued.challenge, right, NACKA, region.directory, T2, region.broker, redeemed=seen)


def test_redeemed_nonces_are_bounded_and_fail_closed() -> None:
    seen = RedeemedNonces(capacity=2)
    seen.claim("a" * 32, NOW + 10, NOW)
    seen.claim("b" * 32, NOW + 20, NOW)
    with refused(AuthCode.CHALLENGE_REUSED):
        seen.claim("c" * 32, NOW + 30, NOW + 5)  # full, nothing expired: refuse
    seen.claim("c" * 32, NOW + 30, NOW + 10)  # "a" expired and is dropped
    assert len(seen) == 2
    with refused(AuthCode.CHALLENGE_REUSED):
        seen.claim("b" * 32, NOW + 20, NOW + 11)


def test_forged_challenge_byte_flipped(region: DemoRegion) -> None:
    issued = issue_challenge(region.broker, NACKA, region.directory, T1)
    size = len(unpack(issued.challenge)[1]) + 18 + 64
    for position in (0, 1, 2, 17, 18, 40, size - 65, size - 1):
        forged = flip(issued.challenge, position)
        signature = sign_challenge(region.officers[NACKA], forged)
        with refused(AuthCode.BAD_CHALLENGE):
            redeem(
                forged,
                signature,
                NACKA,
                region.directory,
                T2,
                region.broker,
                redeemed=RedeemedNonces(),
            )


def test_challenge_edited_to_name_another_officer(region: DemoRegion) -> None:
    issued = issue_challenge(region.broker, NACKA, region.directory, T1)
    prefix, body, signature = unpack(issued.challenge)
    forged = pack(prefix, body.replace(NACKA.encode(), REGIONAL.encode()), signature)
    officer_signature = sign_challenge(region.officers[REGIONAL], forged)
    with refused(AuthCode.BAD_CHALLENGE):
        redeem(
            forged,
            officer_signature,
            REGIONAL,
            region.directory,
            T2,
            region.broker,
            redeemed=RedeemedNonces(),
        )


def test_challenge_from_a_key_that_is_not_a_broker_of_the_directory(region: DemoRegion) -> None:
    impostor = BrokerIdentity("ssr-broker", SigningKeyPair.generate(seeded_random(b"impostor")))
    issued = issue_challenge(impostor, NACKA, region.directory, T1)
    signature = sign_challenge(region.officers[NACKA], issued.challenge)
    with refused(AuthCode.BAD_CHALLENGE):
        redeem(
            issued.challenge,
            signature,
            NACKA,
            region.directory,
            T2,
            region.broker,
            redeemed=RedeemedNonces(),
        )


def test_challenge_signed_by_an_officer_or_actor_key(region: DemoRegion) -> None:
    """A directory key that is not a broker's cannot issue challenges."""
    for key in (region.officers[REGIONAL], region.identities["nacka"].signing):
        fake = BrokerIdentity("ssr-broker", key)
        issued = issue_challenge(fake, NACKA, region.directory, T1)
        signature = sign_challenge(region.officers[NACKA], issued.challenge)
        with refused(AuthCode.BAD_CHALLENGE):
            redeem(
                issued.challenge,
                signature,
                NACKA,
                region.directory,
                T2,
                region.broker,
                redeemed=RedeemedNonces(),
            )


def test_challenge_for_another_officer(region: DemoRegion) -> None:
    issued = issue_challenge(region.broker, NACKA, region.directory, T1)
    signature = sign_challenge(region.officers[REGIONAL], issued.challenge)
    with refused(AuthCode.BAD_CHALLENGE):
        redeem(
            issued.challenge,
            signature,
            REGIONAL,
            region.directory,
            T2,
            region.broker,
            redeemed=RedeemedNonces(),
        )


def test_a_token_is_not_a_challenge_and_a_challenge_not_a_token(region: DemoRegion) -> None:
    session = login(region)
    signature = sign_challenge(region.officers[NACKA], session.token)
    with refused(AuthCode.BAD_CHALLENGE):
        redeem(
            session.token,
            signature,
            NACKA,
            region.directory,
            T2,
            region.broker,
            redeemed=RedeemedNonces(),
        )
    issued = issue_challenge(region.broker, NACKA, region.directory, T1)
    with refused(AuthCode.BAD_TOKEN):
        verify_token(issued.challenge, region.directory, T2)


def test_a_challenge_with_a_lifetime_too_long_is_refused(region: DemoRegion) -> None:
    """Even a real broker key cannot mint a challenge that lives longer than 60 s."""
    body = officer_auth.ChallengeBody(
        broker="ssr-broker", officer=NACKA, nonce="ab" * 16, exp=T2 + CHALLENGE_TTL_MS + 1
    )
    challenge = officer_auth._seal(b"C", region.broker, body.to_bytes())
    signature = sign_challenge(region.officers[NACKA], challenge)
    with refused(AuthCode.BAD_CHALLENGE):
        redeem(
            challenge,
            signature,
            NACKA,
            region.directory,
            T2,
            region.broker,
            redeemed=RedeemedNonces(),
        )


# --- the officer's signature refused ------------------------------------------------------


def test_wrong_key(region: DemoRegion) -> None:
    issued = issue_challenge(region.broker, NACKA, region.directory, T1)
    stranger = SigningKeyPair.generate(seeded_random(b"stranger"))
    signature = sign_challenge(stranger, issued.challenge)
    with refused(AuthCode.BAD_SIGNATURE):
        redeem(
            issued.challenge,
            signature,
            NACKA,
            region.directory,
            T2,
            region.broker,
            redeemed=RedeemedNonces(),
        )


def test_another_officers_key(region: DemoRegion) -> None:
    issued = issue_challenge(region.broker, NACKA, region.directory, T1)
    signature = sign_challenge(region.officers[REGIONAL], issued.challenge)
    with refused(AuthCode.BAD_SIGNATURE):
        redeem(
            issued.challenge,
            signature,
            NACKA,
            region.directory,
            T2,
            region.broker,
            redeemed=RedeemedNonces(),
        )


def test_signature_over_the_bare_challenge_is_refused(region: DemoRegion) -> None:
    """The login prefix is part of what is signed (domain separation)."""
    issued = issue_challenge(region.broker, NACKA, region.directory, T1)
    signature = region.officers[NACKA].sign(issued.challenge.encode()).hex()
    with refused(AuthCode.BAD_SIGNATURE):
        redeem(
            issued.challenge,
            signature,
            NACKA,
            region.directory,
            T2,
            region.broker,
            redeemed=RedeemedNonces(),
        )


def test_revoked_officer_key_via_a_new_directory_version(region: DemoRegion) -> None:
    before = login(region)  # a token from before the revocation
    revoked = with_officer(region, NACKA, **officer_key_update(region, NACKA, revoked_at=T2 + 10))
    # Before the revocation time the key still works, under the new version too.
    assert verify_token(before.token, revoked, T2 + 9).officer == NACKA
    login(region, directory=revoked)
    # From the revocation on: no login, and the old token stops working at once.
    issued = issue_challenge(region.broker, NACKA, revoked, T2 + 10)
    signature = sign_challenge(region.officers[NACKA], issued.challenge)
    with refused(AuthCode.KEY_NOT_USABLE):
        redeem(
            issued.challenge,
            signature,
            NACKA,
            revoked,
            T2 + 20,
            region.broker,
            redeemed=RedeemedNonces(),
        )
    with refused(AuthCode.OFFICER_REVOKED):
        verify_token(before.token, revoked, T2 + 20)


def test_expired_officer_key(region: DemoRegion) -> None:
    expiring = with_officer(region, NACKA, **officer_key_update(region, NACKA, not_after=T2))
    issued = issue_challenge(region.broker, NACKA, expiring, T1)
    signature = sign_challenge(region.officers[NACKA], issued.challenge)
    with refused(AuthCode.KEY_NOT_USABLE):
        redeem(
            issued.challenge,
            signature,
            NACKA,
            expiring,
            T2,
            region.broker,
            redeemed=RedeemedNonces(),
        )


def test_rotated_officer_key(region: DemoRegion) -> None:
    """After a rotation the new key logs in; the old one is refused once revoked."""
    new_key = SigningKeyPair.generate(seeded_random(b"nacka-officer-2"))
    officer = region.directory.officer(NACKA)
    assert officer is not None
    (old,) = officer.signing_keys
    records = sorted(
        (
            old.model_copy(update={"revoked_at": T1}),
            KeyRecord.for_key(new_key.public, not_before=NOW, not_after=NOW + 10**10),
        ),
        key=lambda k: k.key_id,
    )
    rotated = with_officer(region, NACKA, signing_keys=tuple(records))
    issued = issue_challenge(region.broker, NACKA, rotated, T1)
    with refused(AuthCode.KEY_NOT_USABLE):
        redeem(
            issued.challenge,
            sign_challenge(region.officers[NACKA], issued.challenge),
            NACKA,
            rotated,
            T2,
            region.broker,
            redeemed=RedeemedNonces(),
        )
    session = redeem(
        issued.challenge,
        sign_challenge(new_key, issued.challenge),
        NACKA,
        rotated,
        T2,
        region.broker,
        redeemed=RedeemedNonces(),
    )
    assert verify_token(session.token, rotated, T2).officer == NACKA


def test_officer_removed_between_challenge_and_redemption(region: DemoRegion) -> None:
    issued = issue_challenge(region.broker, NACKA, region.directory, T1)
    without = next_version(
        region,
        officers=tuple(o for o in region.directory.document.officers if o.id != NACKA),
    )
    signature = sign_challenge(region.officers[NACKA], issued.challenge)
    with refused(AuthCode.UNKNOWN_OFFICER):
        redeem(
            issued.challenge,
            signature,
            NACKA,
            without,
            T2,
            region.broker,
            redeemed=RedeemedNonces(),
        )


# --- tokens refused -----------------------------------------------------------------------


def test_token_expiry(region: DemoRegion) -> None:
    session = login(region)
    verify_token(session.token, region.directory, session.expires - 1)
    with refused(AuthCode.TOKEN_EXPIRED):
        verify_token(session.token, region.directory, session.expires)


def test_token_tampering_flip_a_byte(region: DemoRegion) -> None:
    session = login(region)
    size = len(unpack(session.token)[1]) + 18 + 64
    for position in range(0, size, 7):
        with refused(AuthCode.BAD_TOKEN):
            verify_token(flip(session.token, position), region.directory, T2)


@pytest.mark.parametrize(
    ("field", "value"),
    [("scope", None), ("officer", REGIONAL), ("exp", T2 + 10 * SESSION_TTL_MS)],
)
def test_token_tampering_change_a_field(region: DemoRegion, field: str, value: Any) -> None:
    session = login(region)
    prefix, body, signature = unpack(session.token)
    edited = json.loads(body) | {field: value}
    forged = pack(prefix, canonical.dumps(edited), signature)
    with refused(AuthCode.BAD_TOKEN):
        verify_token(forged, region.directory, T2)


def test_token_from_a_broker_key_not_in_the_directory(region: DemoRegion) -> None:
    impostor = BrokerIdentity("ssr-broker", SigningKeyPair.generate(seeded_random(b"impostor")))
    body = officer_auth.TokenBody(
        broker="ssr-broker",
        officer=REGIONAL,
        scope=None,
        key=region.officers[REGIONAL].key_id,
        iat=T2,
        exp=T2 + SESSION_TTL_MS,
        sid="cd" * 16,
    )
    forged = officer_auth._seal(b"T", impostor, body.to_bytes())
    with refused(AuthCode.BAD_TOKEN):
        verify_token(forged, region.directory, T2)
    genuine = officer_auth._seal(b"T", region.broker, body.to_bytes())  # the same, signed right
    assert verify_token(genuine, region.directory, T2).scope is None


def test_token_from_a_broker_whose_key_was_revoked(region: DemoRegion) -> None:
    session = login(region)
    (broker,) = region.directory.document.brokers
    (record,) = broker.signing_keys
    revoked = broker.model_copy(
        update={"signing_keys": (record.model_copy(update={"revoked_at": T2 + 1}),)}
    )
    directory = next_version(region, brokers=(revoked,))
    verify_token(session.token, directory, T2)
    with refused(AuthCode.BAD_TOKEN):
        verify_token(session.token, directory, T2 + 1)


def test_token_with_a_lifetime_too_long_is_refused(region: DemoRegion) -> None:
    body = officer_auth.TokenBody(
        broker="ssr-broker",
        officer=NACKA,
        scope="nacka",
        key=region.officers[NACKA].key_id,
        iat=T2,
        exp=T2 + SESSION_TTL_MS + 1,
        sid="ef" * 16,
    )
    with refused(AuthCode.BAD_TOKEN):
        verify_token(officer_auth._seal(b"T", region.broker, body.to_bytes()), region.directory, T2)


def test_token_signed_right_over_a_malformed_body(region: DemoRegion) -> None:
    for body in (b"{}", b"not json", b'{"v":1}', b"\xff\xfe", b"[" * 100):
        with refused(AuthCode.BAD_TOKEN):
            verify_token(officer_auth._seal(b"T", region.broker, body), region.directory, T2)


def test_officer_removed_from_the_directory(region: DemoRegion) -> None:
    session = login(region)
    without = next_version(
        region, officers=tuple(o for o in region.directory.document.officers if o.id != NACKA)
    )
    with refused(AuthCode.OFFICER_REVOKED):
        verify_token(session.token, without, T2)


def test_officer_scope_changed(region: DemoRegion) -> None:
    session = login(region)
    moved = with_officer(region, NACKA, actor="solna")
    with refused(AuthCode.OFFICER_REVOKED):
        verify_token(session.token, moved, T2)


def test_a_token_does_not_carry_over_to_another_region(region: DemoRegion) -> None:
    other = demo_region(now=NOW, rand=seeded_random(b"another-region"))
    session = login(region)
    with refused(AuthCode.BAD_TOKEN):
        verify_token(session.token, other.directory, T2)


# --- hostile input ------------------------------------------------------------------------

HOSTILE_TEXT = [
    "",
    "A",
    "A" * 5,  # a length base64 cannot have
    "A" * (MAX_TOKEN_CHARS + 1),
    "A" * 1_000_000,
    "!!!!",
    "AAAA====",
    "AAAA\n",
    "AA AA",
    "AAAA+/AA",  # standard, not url-safe, base64
    "ÅÄÖåäö",
    "\udcff\udcfe",  # lone surrogates: what undecodable bytes become
    "\x00" * 8,
]


@pytest.mark.parametrize("text", HOSTILE_TEXT, ids=range(len(HOSTILE_TEXT)))
def test_hostile_challenge_and_token_text(region: DemoRegion, text: str) -> None:
    with refused(AuthCode.BAD_TOKEN):
        verify_token(text, region.directory, T2)
    with refused(AuthCode.BAD_CHALLENGE):
        redeem(
            text, "00" * 64, NACKA, region.directory, T2, region.broker, redeemed=RedeemedNonces()
        )
    assert peek_challenge(text) is None


@pytest.mark.parametrize("value", [None, 12, b"AAAA", ["AAAA"]])
def test_values_that_are_not_text(region: DemoRegion, value: Any) -> None:
    with refused(AuthCode.BAD_TOKEN):
        verify_token(value, region.directory, T2)
    with refused(AuthCode.BAD_CHALLENGE):
        redeem(
            value, "00" * 64, NACKA, region.directory, T2, region.broker, redeemed=RedeemedNonces()
        )


@pytest.mark.parametrize(
    "signature",
    ["", "00", "zz" * 64, "00" * 63, "00" * 65, "0" * 10_000, "00" * 63 + "0\n", "ää" * 64, None],
)
def test_hostile_signatures(region: DemoRegion, signature: Any) -> None:
    issued = issue_challenge(region.broker, NACKA, region.directory, T1)
    with refused(AuthCode.BAD_SIGNATURE):
        redeem(
            issued.challenge,
            signature,
            NACKA,
            region.directory,
            T2,
            region.broker,
            redeemed=RedeemedNonces(),
        )


@pytest.mark.parametrize("officer", ["", "Nacka", "a" * 10_000, "\udcff"])
def test_hostile_officer_ids(region: DemoRegion, officer: str) -> None:
    with refused(AuthCode.UNKNOWN_OFFICER):
        issue_challenge(region.broker, officer, region.directory, T1)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=400))
def test_any_text_is_refused_with_an_auth_error(region: DemoRegion, text: str) -> None:
    with refused(AuthCode.BAD_TOKEN):
        verify_token(text, region.directory, T2)


@settings(max_examples=200, deadline=None)
@given(rest=st.binary(max_size=400), kind=st.sampled_from([b"T", b"C"]))
def test_any_bytes_after_a_genuine_prefix_are_refused(
    region: DemoRegion, rest: bytes, kind: bytes
) -> None:
    """The right version, kind and broker key id, then anything: the signature fails."""
    forged = base64.urlsafe_b64encode(b"\x01" + kind + bytes.fromhex(region.broker.signing.key_id))
    text = (forged + base64.urlsafe_b64encode(rest)).rstrip(b"=").decode()
    with refused(AuthCode.BAD_TOKEN):
        verify_token(text, region.directory, T2)


def test_auth_error_codes_are_the_documented_ones() -> None:
    assert {c.value for c in AuthCode} == {
        "unknown_officer",
        "bad_challenge",
        "challenge_expired",
        "challenge_reused",
        "bad_signature",
        "key_not_usable",
        "bad_token",
        "token_expired",
        "officer_revoked",
    }
    error = AuthError(AuthCode.BAD_TOKEN)
    assert error.code == "bad_token"
    assert error.message


def test_officer_model_is_unchanged_by_login(region: DemoRegion) -> None:
    """Logging in reads the directory only (nothing is cached on the officer record)."""
    before = region.directory.officer(NACKA)
    login(region)
    assert region.directory.officer(NACKA) == before
    assert isinstance(before, Officer)


# --- ssr officer sign ---------------------------------------------------------------------


def key_file(tmp_path: Path, officer: str, signing: SigningKeyPair) -> Path:
    path = tmp_path / f"{officer}.key"
    save_identity(path, Identity(officer, signing, EncryptionKeyPair.generate()))
    return path


def test_cli_sign_prints_a_signature_the_broker_accepts(
    region: DemoRegion, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    issued = issue_challenge(region.broker, NACKA, region.directory, T1)
    key = key_file(tmp_path, NACKA, region.officers[NACKA])
    assert cli.main(["officer", "sign", "--key", str(key), issued.challenge]) == 0
    signature = capsys.readouterr().out.strip()
    session = redeem(
        issued.challenge,
        signature,
        NACKA,
        region.directory,
        T2,
        region.broker,
        redeemed=RedeemedNonces(),
    )
    assert session.officer == NACKA
    assert cli.main(["officer", "sign", "--key", str(key), f" {issued.challenge}\n", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == {
        "officer": NACKA,
        "key_id": region.officers[NACKA].key_id,
        "signature": signature,
    }
    assert cli.main(["--json", "officer", "sign", "--key", str(key), issued.challenge]) == 0
    assert json.loads(capsys.readouterr().out)["signature"] == signature


def test_cli_sign_refuses_what_it_should_not_sign(
    region: DemoRegion, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    issued = issue_challenge(region.broker, REGIONAL, region.directory, T1)
    key = key_file(tmp_path, NACKA, region.officers[NACKA])
    cases = [
        (["--key", str(key), issued.challenge], "is for officer sakerhetschef-lansstyrelsen"),
        (["--key", str(key), "hello"], "not an ssr login challenge"),
        (["--key", str(key), "A" * 5000], "CHALLENGE must be"),
        (["--key", str(tmp_path / "missing.key"), issued.challenge], "cannot read"),
    ]
    for argv, message in cases:
        assert cli.main(["officer", "sign", *argv]) == 2
        captured = capsys.readouterr()
        assert message in captured.err
        assert captured.out == ""
        assert "Traceback" not in captured.err
    key.chmod(0o644)
    assert cli.main(["officer", "sign", "--key", str(key), issued.challenge]) == 2
    assert "chmod 600" in capsys.readouterr().err
