"""Security officers' login: challenge-response over their directory key, then a bearer token.

Sans-I/O: the clock (``now``, epoch ms) and randomness are passed in; nothing here
touches the network, the event loop or the disk.

The flow::

    broker                                             officer
    issue_challenge(officer) ──── challenge ─────────▶ sign("ssr-officer-login\\n" + challenge)
    redeem(challenge, signature) ◀── signature (hex) ─
        └── Session(token, officer, scope, expires) ──▶ Authorization: Bearer <token>
    verify_token(token) on every request

Both the challenge and the token are *stateless* and signed by the broker, so any
broker process whose key is in the directory can verify what another one issued
(several processes share the load and no memory). Each is one base64url string
(RFC 4648 §5, no padding) of::

    offset  size  field
    0       1     format version, 0x01
    1       1     kind: "C" challenge, "T" session token
    2       16    broker signing key id (raw; its hex is the directory's key_id)
    18      ...   body: canonical JSON (see ChallengeBody, TokenBody)
    end-64  64    Ed25519 signature by that broker key over DOMAIN[kind] + every byte before it

The key id sits outside the body so the signature is checked over the exact
received bytes before any JSON is parsed. The domain strings keep these
signatures apart from each other and from the broker's ``N`` frames (which
begin with ``SSR``); the officer signs ``"ssr-officer-login\\n" + challenge``, a
string no other part of the protocol asks an officer's key to sign.

Checks on every token (``verify_token``): layout, a broker key of the directory
usable now, the signature, expiry, and that the officer and the key they logged
in with are still in the *current* directory, usable, with the same scope — so a
directory version revoking the key or removing the officer takes effect on the
next request, not when the token expires.

Replay: a challenge can be redeemed once per broker process within its 60 s
(:class:`RedeemedNonces`, bounded). Another broker process does not know which
nonces this one saw, so whoever captured a challenge *and* the officer's
signature of it could redeem it once more at each other process within those
60 s. Capturing both means reading the officer's login over TLS; the short
lifetime bounds the window. A shared nonce store (a JetStream KV create-if-absent)
would close it at the price of a NATS round trip per login.

Errors: one exception, :class:`AuthError`, whose ``code`` is one of
:class:`AuthCode` and whose message is a short English detail safe to show the
caller (never key material, never which of several checks inside a signature
verification failed).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import Field

from broker.core import crypto
from broker.core.crypto import SYSTEM_RANDOM, Random
from broker.core.directory import KeyRecord, Officer, PrincipalKind, VerifiedDirectory
from broker.core.errors import MalformedInput
from broker.core.keys import SigningKeyPair
from broker.core.notices import BrokerIdentity
from broker.core.wire import HexId, Millis, Slug, WireModel
from broker.errors import BrokerError

__all__ = [
    "CHALLENGE_TTL_MS",
    "LOGIN_PREFIX",
    "MAX_TOKEN_CHARS",
    "SESSION_TTL_MS",
    "AuthCode",
    "AuthError",
    "Challenge",
    "RedeemedNonces",
    "Session",
    "issue_challenge",
    "login_message",
    "peek_challenge",
    "redeem",
    "sign_challenge",
    "verify_token",
]

CHALLENGE_TTL_MS: Final = 60_000
"""A challenge must be signed and redeemed within a minute."""

SESSION_TTL_MS: Final = 15 * 60_000
"""A bearer token lasts 15 minutes; then the officer logs in again."""

LOGIN_PREFIX: Final = "ssr-officer-login\n"
"""What the officer signs: this prefix, then the challenge (UTF-8)."""

FORMAT_VERSION: Final = 1
MAX_TOKEN_CHARS: Final = 1024
"""Longest challenge or token accepted (real ones are about 300 characters)."""
MAX_BODY_BYTES: Final = 512
MAX_SIGNATURE_HEX: Final = 2 * crypto.SIGNATURE_BYTES
MAX_REDEEMED: Final = 10_000
"""Most unexpired redeemed challenges one process remembers (see RedeemedNonces)."""
NONCE_BYTES: Final = 16

_KIND_CHALLENGE: Final = b"C"
_KIND_TOKEN: Final = b"T"
_DOMAIN: Final = {
    _KIND_CHALLENGE: b"ssr-officer-challenge-v1\n",
    _KIND_TOKEN: b"ssr-officer-token-v1\n",
}
_PREFIX_BYTES: Final = 2 + crypto.KEY_ID_BYTES
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_HEX_SIGNATURE = re.compile(r"[0-9a-fA-F]{128}")


class AuthCode(StrEnum):
    UNKNOWN_OFFICER = "unknown_officer"
    BAD_CHALLENGE = "bad_challenge"
    CHALLENGE_EXPIRED = "challenge_expired"
    CHALLENGE_REUSED = "challenge_reused"
    BAD_SIGNATURE = "bad_signature"
    KEY_NOT_USABLE = "key_not_usable"
    BAD_TOKEN = "bad_token"  # noqa: S105 - an error code, not a secret
    TOKEN_EXPIRED = "token_expired"  # noqa: S105
    OFFICER_REVOKED = "officer_revoked"


_DETAIL: Final = {
    AuthCode.UNKNOWN_OFFICER: "no such security officer in the directory",
    AuthCode.BAD_CHALLENGE: "the challenge is malformed or not issued by a broker of this region",
    AuthCode.CHALLENGE_EXPIRED: "the challenge has expired; request a new one",
    AuthCode.CHALLENGE_REUSED: "the challenge was already redeemed; request a new one",
    AuthCode.BAD_SIGNATURE: "the signature does not verify with the officer's key",
    AuthCode.KEY_NOT_USABLE: "the officer has no signing key usable now (expired or revoked)",
    AuthCode.BAD_TOKEN: "the token is malformed or not issued by a broker of this region",
    AuthCode.TOKEN_EXPIRED: "the token has expired; log in again",
    AuthCode.OFFICER_REVOKED: "the officer or their key is no longer valid in the directory",
}


class AuthError(BrokerError):
    """A login or token refused; ``code`` is an :class:`AuthCode`, the message a safe detail."""

    code: str = AuthCode.BAD_TOKEN.value

    def __init__(self, code: AuthCode, detail: str | None = None) -> None:
        super().__init__(detail or _DETAIL[code], code=code.value)


@dataclass(frozen=True)
class Challenge:
    """A challenge to sign, and when it expires (epoch ms)."""

    challenge: str
    expires: int


@dataclass(frozen=True)
class Session:
    """An authenticated officer: the bearer token, who, their scope (None: the region)."""

    token: str
    officer: str
    scope: str | None
    expires: int


class ChallengeBody(WireModel):
    v: Literal[1] = 1
    broker: Slug
    officer: Slug
    nonce: HexId
    exp: Millis


class TokenBody(WireModel):
    v: Literal[1] = 1
    broker: Slug
    officer: Slug
    scope: Slug | None
    key: HexId  # the officer's key id used to log in
    iat: Millis
    exp: Millis
    sid: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]  # the redeemed challenge's nonce


@dataclass
class RedeemedNonces:
    """The challenges this process has redeemed and that have not yet expired.

    Bounded: entries are dropped once their challenge has expired (it could no
    longer be redeemed anyway). If ``capacity`` unexpired entries are held —
    more than ``capacity`` logins within a minute — new redemptions are refused
    (fail closed) until some expire, rather than forgetting a nonce early.
    """

    capacity: int = MAX_REDEEMED
    _expiry: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._expiry)

    def _prune(self, now: int) -> None:
        # Insertion order is nearly expiry order (a fixed TTL from issue time); scanning
        # all keeps it simple and is bounded by ``capacity``.
        for nonce in [n for n, exp in self._expiry.items() if exp <= now]:
            del self._expiry[nonce]

    def claim(self, nonce: str, expires: int, now: int) -> None:
        """Record ``nonce`` as redeemed; raise ``challenge_reused`` if it already was."""
        if nonce in self._expiry:
            raise AuthError(AuthCode.CHALLENGE_REUSED)
        if len(self._expiry) >= self.capacity:
            self._prune(now)
            if len(self._expiry) >= self.capacity:
                raise AuthError(
                    AuthCode.CHALLENGE_REUSED,
                    "too many logins at this broker in the last minute; try again shortly",
                )
        self._expiry[nonce] = expires


_PROCESS_NONCES = RedeemedNonces()
"""This process's redeemed challenges (the default for :func:`redeem`)."""


# --- encoding ---------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes | None:
    """Strict base64url without padding; ``None`` unless ``text`` is its canonical form."""
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return data if _b64url(data) == text else None


def _seal(kind: bytes, identity: BrokerIdentity, body: bytes) -> str:
    signed = bytes([FORMAT_VERSION]) + kind + crypto.key_id(identity.signing.public) + body
    return _b64url(signed + identity.signing.sign(_DOMAIN[kind] + signed))


def _open(
    text: object, kind: bytes, directory: VerifiedDirectory, now: int, code: AuthCode
) -> tuple[bytes, str]:
    """Check layout, broker key and signature; return the (still unparsed) body and broker id."""
    if not isinstance(text, str) or not 0 < len(text) <= MAX_TOKEN_CHARS:
        raise AuthError(code)
    data = _unb64url(text)
    minimum = _PREFIX_BYTES + 2 + crypto.SIGNATURE_BYTES  # "{}" is the shortest body
    if data is None or len(data) < minimum:
        raise AuthError(code)
    if data[0] != FORMAT_VERSION or data[1:2] != kind:
        raise AuthError(code)
    signed, signature = data[: -crypto.SIGNATURE_BYTES], data[-crypto.SIGNATURE_BYTES :]
    signer = directory.signer(signed[2:_PREFIX_BYTES].hex())
    if signer is None or signer.kind is not PrincipalKind.BROKER:
        raise AuthError(code)
    if not signer.record.usable_at(now):
        raise AuthError(code, "issued by a broker key that is no longer valid")
    try:
        crypto.verify(signer.record.raw, _DOMAIN[kind] + signed, signature)
    except crypto.CryptoFailure as exc:
        raise AuthError(code) from exc
    return signed[_PREFIX_BYTES:], signer.principal


def login_message(challenge: str) -> bytes:
    """The bytes an officer signs to redeem ``challenge``."""
    return (LOGIN_PREFIX + challenge).encode("utf-8")


def peek_challenge(challenge: str) -> tuple[str, int] | None:
    """The officer and expiry a challenge names, *unverified*: for display only.

    ``None`` when ``challenge`` does not even look like one. The broker checks its
    signature when the signed challenge is redeemed; nothing here is trusted.
    """
    data = _unb64url(challenge) if 0 < len(challenge) <= MAX_TOKEN_CHARS else None
    if data is None or len(data) < _PREFIX_BYTES + 2 + crypto.SIGNATURE_BYTES:
        return None
    if data[0] != FORMAT_VERSION or data[1:2] != _KIND_CHALLENGE:
        return None
    try:
        body = ChallengeBody.parse(
            data[_PREFIX_BYTES : -crypto.SIGNATURE_BYTES], max_bytes=MAX_BODY_BYTES
        )
    except MalformedInput:
        return None
    return body.officer, body.exp


def sign_challenge(signing: SigningKeyPair, challenge: str) -> str:
    """The officer's side: the hex signature over :func:`login_message`.

    >>> # signature = sign_challenge(load_identity(path).signing, challenge)
    """
    return signing.sign(login_message(challenge)).hex()


# --- the three steps ----------------------------------------------------------------------------


def issue_challenge(
    identity: BrokerIdentity,
    officer_id: str,
    directory: VerifiedDirectory,
    now: int,
    *,
    rand: Random = SYSTEM_RANDOM,
) -> Challenge:
    """A fresh challenge for ``officer_id``, valid for :data:`CHALLENGE_TTL_MS`.

    Raises ``unknown_officer`` when the directory has no such officer.
    """
    if not isinstance(officer_id, str) or directory.officer(officer_id) is None:
        raise AuthError(AuthCode.UNKNOWN_OFFICER)
    expires = now + CHALLENGE_TTL_MS
    body = ChallengeBody(
        broker=identity.broker, officer=officer_id, nonce=rand(NONCE_BYTES).hex(), exp=expires
    )
    return Challenge(_seal(_KIND_CHALLENGE, identity, body.to_bytes()), expires)


def _officer_key(officer: Officer, message: bytes, signature_hex: object, now: int) -> KeyRecord:
    """The officer's key, usable now, whose signature ``signature_hex`` is."""
    usable = [k for k in officer.signing_keys if k.usable_at(now)]
    if not isinstance(signature_hex, str) or not _HEX_SIGNATURE.fullmatch(signature_hex):
        raise AuthError(
            AuthCode.BAD_SIGNATURE if usable else AuthCode.KEY_NOT_USABLE,
            "the signature must be 128 hex digits (an Ed25519 signature)" if usable else None,
        )
    signature = bytes.fromhex(signature_hex)
    for record in officer.signing_keys:
        try:
            crypto.verify(record.raw, message, signature)
        except crypto.CryptoFailure:
            continue
        if record.usable_at(now):
            return record
        raise AuthError(AuthCode.KEY_NOT_USABLE, "signed with a key that is expired or revoked")
    raise AuthError(AuthCode.BAD_SIGNATURE if usable else AuthCode.KEY_NOT_USABLE)


def redeem(
    challenge: str,
    signature_hex: str,
    officer_id: str,
    directory: VerifiedDirectory,
    now: int,
    identity: BrokerIdentity,
    *,
    redeemed: RedeemedNonces | None = None,
) -> Session:
    """Exchange a signed challenge for a session token (see the module docstring).

    ``redeemed`` defaults to this process's set; tests pass their own.
    """
    body_bytes, broker = _open(challenge, _KIND_CHALLENGE, directory, now, AuthCode.BAD_CHALLENGE)
    try:
        body = ChallengeBody.parse(body_bytes, max_bytes=MAX_BODY_BYTES)
    except MalformedInput as exc:
        raise AuthError(AuthCode.BAD_CHALLENGE) from exc
    if body.broker != broker or body.exp > now + CHALLENGE_TTL_MS:
        raise AuthError(AuthCode.BAD_CHALLENGE)
    if body.exp <= now:
        raise AuthError(AuthCode.CHALLENGE_EXPIRED)
    if body.officer != officer_id:
        raise AuthError(AuthCode.BAD_CHALLENGE, "the challenge was issued to another officer")
    officer = directory.officer(officer_id)
    if officer is None:
        raise AuthError(AuthCode.UNKNOWN_OFFICER)
    key = _officer_key(officer, login_message(challenge), signature_hex, now)
    # Claimed only after everything verified: a forged attempt must not burn a real nonce.
    (_PROCESS_NONCES if redeemed is None else redeemed).claim(body.nonce, body.exp, now)
    expires = now + SESSION_TTL_MS
    token = TokenBody(
        broker=identity.broker,
        officer=officer.id,
        scope=officer.actor,
        key=key.key_id,
        iat=now,
        exp=expires,
        sid=body.nonce,
    )
    return Session(
        _seal(_KIND_TOKEN, identity, token.to_bytes()), officer.id, officer.actor, expires
    )


def verify_token(token: str, directory: VerifiedDirectory, now: int) -> Session:
    """The session a bearer token stands for, checked against the current directory."""
    body_bytes, broker = _open(token, _KIND_TOKEN, directory, now, AuthCode.BAD_TOKEN)
    try:
        body = TokenBody.parse(body_bytes, max_bytes=MAX_BODY_BYTES)
    except MalformedInput as exc:
        raise AuthError(AuthCode.BAD_TOKEN) from exc
    if body.broker != broker or body.exp > now + SESSION_TTL_MS or body.iat >= body.exp:
        raise AuthError(AuthCode.BAD_TOKEN)
    if body.exp <= now:
        raise AuthError(AuthCode.TOKEN_EXPIRED)
    officer = directory.officer(body.officer)
    if officer is None:
        raise AuthError(AuthCode.OFFICER_REVOKED, "the officer is no longer in the directory")
    if officer.actor != body.scope:
        raise AuthError(AuthCode.OFFICER_REVOKED, "the officer's scope has changed; log in again")
    key = next((k for k in officer.signing_keys if k.key_id == body.key), None)
    if key is None or not key.usable_at(now):
        raise AuthError(AuthCode.OFFICER_REVOKED, "the key used to log in is no longer valid")
    return Session(token, officer.id, officer.actor, body.exp)
