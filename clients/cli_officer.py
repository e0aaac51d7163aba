"""The security officer's verbs of ``ssr``: sign a login challenge, or log in to a broker.

``ssr officer sign --key FILE CHALLENGE`` prints the hex signature the web console
asks for (the key never leaves the officer's machine). ``ssr officer login --key
FILE --url URL`` does the whole challenge-response against the broker's officer
API and prints the bearer token and when it expires.

Exit codes as the rest of ``ssr``: 0 success, 1 the broker refused or could not
be reached, 2 bad usage or an unreadable key file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any, Final

import aiohttp
from yarl import URL

from broker.core import Identity, load_identity
from broker.officer_auth import MAX_TOKEN_CHARS, peek_challenge, sign_challenge
from clients.cli import EXIT_CHECK_FAILED, EXIT_OK, CliError, _emit
from clients.cli_directory import _iso

__all__ = ["DEFAULT_URL", "add_officer_verbs", "cmd_officer_login", "cmd_officer_sign"]

DEFAULT_URL: Final = "http://127.0.0.1:8470"
DEFAULT_TIMEOUT_S: Final = 10.0
MAX_RESPONSE_BYTES: Final = 64 * 1024
_LOOPBACK: Final = {"127.0.0.1", "::1", "localhost"}


def _identity(path: str) -> Identity:
    return load_identity(Path(path))  # KeyFileError: one line and exit 2 (clients.cli.main)


def _check_challenge(identity: Identity, challenge: str) -> str:
    challenge = challenge.strip()
    if not challenge or len(challenge) > MAX_TOKEN_CHARS:
        raise CliError("CHALLENGE must be the challenge the broker or the console gave you")
    named = peek_challenge(challenge)
    if named is None:
        raise CliError("this is not an ssr login challenge (copy it whole, with no line breaks)")
    officer, _expires = named
    if officer != identity.principal:
        raise CliError(
            f"the challenge is for officer {officer}, but the key file is {identity.principal}'s"
        )
    return challenge


def cmd_officer_sign(args: argparse.Namespace) -> int:
    identity = _identity(args.key)
    challenge = _check_challenge(identity, args.challenge)
    signature = sign_challenge(identity.signing, challenge)
    data = {
        "officer": identity.principal,
        "key_id": identity.signing.key_id,
        "signature": signature,
    }
    _emit(args, data, signature)
    return EXIT_OK


# --- login ------------------------------------------------------------------------------------


def _base_url(value: str) -> URL:
    try:
        url = URL(value)
    except (ValueError, TypeError) as exc:
        raise CliError(f"--url {value!r} is not a URL") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise CliError(f"--url {value!r}: need http(s)://HOST[:PORT], e.g. {DEFAULT_URL}")
    if url.scheme == "http" and url.host not in _LOOPBACK:
        print(
            f"ssr: warning: {url.host} over plain http: the token can be read on the way; "
            "use https",
            file=sys.stderr,
        )
    return url.with_path("/").with_query(None).with_fragment(None)


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    data = b""
    while chunk := await response.content.read(MAX_RESPONSE_BYTES + 1 - len(data)):
        data += chunk
        if len(data) > MAX_RESPONSE_BYTES:
            raise CliError("the broker's answer is too large", EXIT_CHECK_FAILED)
    return data


async def _post(
    session: aiohttp.ClientSession, url: URL, body: dict[str, str], step: str
) -> dict[str, Any]:
    try:
        async with session.post(url, json=body, allow_redirects=False) as response:
            data = await _read_bounded(response)
            status = response.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        reason = str(exc) or type(exc).__name__
        raise CliError(f"cannot reach {url.origin()}: {reason}", EXIT_CHECK_FAILED) from exc
    try:
        answer = json.loads(data)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise CliError(
            f"{step}: HTTP {status} from {url.origin()} without a JSON answer "
            "(is --url the broker's HTTP port?)",
            EXIT_CHECK_FAILED,
        )
    if status != 200:
        code = answer.get("error", f"http_{status}")
        detail = answer.get("detail") or answer.get("message") or ""
        raise CliError(f"{step} refused ({code}): {detail}".rstrip(": "), EXIT_CHECK_FAILED)
    return answer


def _field(answer: dict[str, Any], name: str, kind: type) -> Any:
    value = answer.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise CliError(f"the broker's answer has no valid {name}", EXIT_CHECK_FAILED)
    return value


async def _login(identity: Identity, officer: str, base: URL, timeout: float) -> dict[str, Any]:
    api = base / "api" / "v1" / "auth"
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        issued = await _post(session, api / "challenge", {"officer": officer}, "challenge")
        challenge = _field(issued, "challenge", str)
        signature = sign_challenge(identity.signing, challenge)
        body = {"officer": officer, "challenge": challenge, "signature": signature}
        session_answer = await _post(session, api / "token", body, "login")
    token = _field(session_answer, "token", str)
    expires = _field(session_answer, "expires", int)
    scope = session_answer.get("scope")
    return {
        "officer": _field(session_answer, "officer", str),
        "scope": scope if isinstance(scope, str) else None,
        "token": token,
        "expires": expires,
        "expires_at": _iso(expires),
    }


def cmd_officer_login(args: argparse.Namespace) -> int:
    identity = _identity(args.key)
    officer = args.officer or identity.principal
    base = _base_url(args.url)
    if not 0 < args.timeout <= 300:
        raise CliError("--timeout: seconds, more than 0 and at most 300")
    try:
        result = asyncio.run(_login(identity, officer, base, args.timeout))
    except KeyboardInterrupt:
        raise CliError("interrupted", EXIT_CHECK_FAILED) from None
    scope = result["scope"] or "the whole region"
    text = (
        f"logged in as {result['officer']} (scope: {scope}); "
        f"token valid until {result['expires_at']}\n{result['token']}"
    )
    _emit(args, result, text)
    return EXIT_OK


def add_officer_verbs(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``ssr officer sign`` and ``ssr officer login`` to ``commands``."""
    verbs = commands.add_parser(
        "officer", help="security officers: sign a login challenge, log in to the officer API"
    ).add_subparsers(dest="verb", metavar="VERB", required=True)

    sign = verbs.add_parser(
        "sign",
        help="sign a login challenge with the officer's key (prints the signature hex)",
        description="Sign 'ssr-officer-login\\n' + CHALLENGE with the officer's signing key.",
    )
    sign.add_argument("--key", required=True, metavar="FILE", help="the officer's secret key file")
    sign.add_argument("challenge", metavar="CHALLENGE", help="the challenge, as given")
    sign.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,  # keeps a --json given before the verb
        help="machine-readable output",
    )
    sign.set_defaults(handler=cmd_officer_sign)

    login = verbs.add_parser(
        "login",
        help="log in to a broker's officer API and print the bearer token",
        description="Request a challenge, sign it, redeem it; print the token and its expiry.",
    )
    login.add_argument("--key", required=True, metavar="FILE", help="the officer's secret key file")
    login.add_argument(
        "--url", default=DEFAULT_URL, help=f"the broker's HTTP address (default {DEFAULT_URL})"
    )
    login.add_argument(
        "--officer", metavar="ID", help="the officer id (default: the key file's principal)"
    )
    login.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"the longest to wait in all (default {DEFAULT_TIMEOUT_S:g})",
    )
    login.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    login.set_defaults(handler=cmd_officer_login)
