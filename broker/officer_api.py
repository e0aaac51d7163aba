"""The security officers' HTTP API (``/api/v1``): login, then scoped reads of the audit trail.

``add_officer_routes(app, ctx)`` adds the routes below to an aiohttp application
(the broker's ``broker.web.make_app``). Everything the handlers need comes in one
:class:`OfficerContext`, so the same code runs in the service and in tests.

    POST /api/v1/auth/challenge              {"officer"} -> a challenge to sign   (public)
    POST /api/v1/auth/token                  {"officer", "challenge", "signature"} -> token
    GET  /api/v1/messages/{message_id}       one message's trace
    GET  /api/v1/actors/{actor}/traffic      an actor's traffic in a period
    GET  /api/v1/actors/{actor}/review       an access review of an actor
    GET  /api/v1/events                      audit events, filtered, paged by ``after``
    GET  /api/v1/directory/history           the directory versions and what changed
    GET  /api/v1/audit/status                the latest verification of the audit trail
    GET  /api/v1/openapi.json                the OpenAPI 3.1 document          (public)

Rules every handler keeps:

- Every answer is JSON; every error is ``{"error": code, "detail": text}`` with a
  4xx status for anything the client sent (never a 500 for bad input) and no
  echo of raw input beyond a parameter's name.
- Scope: a regional officer (scope ``None``) sees everything; an actor's officer
  sees only what concerns that actor. Asking for another actor is 403
  ``out_of_scope`` and an ``officer_denied`` audit event; a message outside the
  scope is 404 ``not_found``, exactly as an unknown one, so its existence is not
  revealed (the denial is still audited).
- Officer events name the officer and, as ``actor``, the actor asked about: the
  path's or ``actor`` parameter's, else the officer's own scope (``None`` for a
  regional officer), so an actor's officer sees the queries about their actor.
- Every query that reaches the audit data is itself audited (``officer_query``)
  *before* the answer is sent; if the audit event cannot be written the answer
  is withheld (503 ``audit_unavailable``): no unlogged reading of the trail.
- The index is queried synchronously (SQLite, bounded by ``limit`` and the
  366-day span): a query holds the event loop for its duration.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from aiohttp import web
from multidict import MultiMapping

from broker.core import canonical
from broker.core.directory import VerifiedDirectory
from broker.core.errors import CanonicalJsonError
from broker.core.limits import MAX_SAFE_INTEGER
from broker.core.notices import BrokerIdentity
from broker.core.policy import Policy
from broker.core.wire import SLUG_PATTERN

from .audit import AuditKind
from .audit_index import AuditIndex, concerns
from .errors import BrokerError
from .officer_auth import AuthError, Session, issue_challenge, redeem, verify_token
from .openapi import openapi_document
from .review import access_review, directory_history, scoped_history

__all__ = [
    "API_PREFIX",
    "DEFAULT_LIMIT",
    "DEFAULT_WINDOW_MS",
    "MAX_AUTH_BODY",
    "MAX_LIMIT",
    "MAX_QUERY_CHARS",
    "MAX_SPAN_MS",
    "OfficerContext",
    "add_officer_routes",
]

log = logging.getLogger("ssr.officer_api")

API_PREFIX: Final = "/api/v1"
DAY_MS: Final = 24 * 3600 * 1000
MAX_AUTH_BODY: Final = 8 * 1024
"""Largest body the login endpoints read; more is 413."""
MAX_QUERY_CHARS: Final = 2048
"""Longest query string accepted (below aiohttp's own request-line bound, so it is JSON)."""
MAX_VALUE_CHARS: Final = 64
"""Longest single parameter value (ids, times and numbers are all shorter)."""
DEFAULT_WINDOW_MS: Final = 30 * DAY_MS
MAX_SPAN_MS: Final = 366 * DAY_MS
DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 500
MAX_AUDIT_DETAIL: Final = 300
"""The request line kept in an officer_query event (method, path, query), cut to this."""

_SLUG = re.compile(SLUG_PATTERN)
_MESSAGE_ID = re.compile(r"[0-9a-f]{32}")
_EPOCH_MS = re.compile(r"[0-9]{1,16}")
_KINDS: Final = {kind.value: kind for kind in AuditKind}
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_PERIOD: Final = {"from": False, "to": False}  # parameter -> may repeat
_EVENT_PARAMETERS: Final = {**_PERIOD, "kind": True, "actor": False, "after": False, "limit": False}


@dataclass
class OfficerContext:
    """What the officer API reads and writes; the service builds one, tests another."""

    index: AuditIndex
    identity: BrokerIdentity
    policy: Policy
    directory: Callable[[], VerifiedDirectory]
    directory_versions: Callable[[], Awaitable[list[VerifiedDirectory]]]
    audit: Callable[..., Awaitable[None]]
    """``await audit(AuditKind, officer=..., actor=..., message=..., detail=...)``."""
    audit_status: Callable[[], dict[str, Any]]
    clock: Callable[[], int]
    """Epoch milliseconds."""


class _Refusal(Exception):
    """An answer other than 200, raised anywhere in a handler."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


def _bad(parameter: str, detail: str) -> _Refusal:
    return _Refusal(400, "bad_parameter", f"{parameter}: {detail}")


def _error(status: int, code: str, detail: str) -> web.Response:
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = (
            'Bearer realm="ssr"'
            if code == "unauthenticated"
            else f'Bearer realm="ssr", error="invalid_token", error_description="{code}"'
        )
    return web.json_response({"error": code, "detail": detail}, status=status, headers=headers)


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _answers(handler: _Handler) -> _Handler:
    """Turn refusals into JSON error answers; anything else is a bug for the app's middleware."""

    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except _Refusal as refusal:
            return _error(refusal.status, refusal.code, refusal.detail)

    return answer


# --- parsing requests ---------------------------------------------------------------------------


async def _read_json(request: web.Request, fields: tuple[str, ...]) -> dict[str, str]:
    """A small JSON object with exactly ``fields``, each a string; 413 past MAX_AUTH_BODY."""
    too_large = _Refusal(413, "body_too_large", f"the body must be at most {MAX_AUTH_BODY} bytes")
    if request.content_length is not None and request.content_length > MAX_AUTH_BODY:
        raise too_large
    data = b""
    while True:  # bounded however the body is framed (chunked bodies have no length)
        chunk = await request.content.read(MAX_AUTH_BODY + 1 - len(data))
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_AUTH_BODY:
            raise too_large
    try:
        body = canonical.loads(data, max_bytes=MAX_AUTH_BODY, require_canonical=False)
    except CanonicalJsonError as exc:
        raise _Refusal(400, "bad_request", f"the body is not a JSON object: {exc.message}") from exc
    if not isinstance(body, dict) or set(body) != set(fields):
        raise _Refusal(400, "bad_request", f"the body must be an object with {', '.join(fields)}")
    for name in fields:
        if not isinstance(body[name], str):
            raise _Refusal(400, "bad_request", f"{name} must be a string")
    return body


class _Query:
    """The query string of one request, checked against the parameters an endpoint takes."""

    def __init__(self, request: web.Request, allowed: Mapping[str, bool]) -> None:
        """``allowed`` maps each parameter name to whether it may repeat."""
        if len(request.query_string) > MAX_QUERY_CHARS:
            raise _bad("query", f"the query string is longer than {MAX_QUERY_CHARS} characters")
        self.values: MultiMapping[str] = request.query
        for name in self.values:
            if name not in allowed:
                shown = name if _SLUG.fullmatch(name) else "(unprintable)"
                raise _bad(shown, "unknown parameter")
        for name, repeatable in allowed.items():
            values = self.values.getall(name, [])
            if len(values) > 1 and not repeatable:
                raise _bad(name, "given more than once")
            for value in values:
                if len(value) > MAX_VALUE_CHARS:
                    raise _bad(name, f"longer than {MAX_VALUE_CHARS} characters")

    def get(self, name: str) -> str | None:
        value = self.values.get(name)
        return value if isinstance(value, str) else None

    def all(self, name: str) -> list[str]:
        return list(self.values.getall(name, []))

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.get(name)
        if value is None:
            return default
        if not _EPOCH_MS.fullmatch(value) or not low <= int(value) <= high:
            raise _bad(name, f"must be a whole number from {low} to {high}")
        return int(value)

    def time(self, name: str) -> int | None:
        value = self.get(name)
        if value is None:
            return None
        if _EPOCH_MS.fullmatch(value):
            ms = int(value)
        else:
            try:
                moment = datetime.fromisoformat(value)
            except ValueError:
                raise _bad(name, "must be epoch milliseconds or ISO 8601 with a timezone") from None
            if moment.tzinfo is None:
                raise _bad(name, "an ISO 8601 time needs a timezone (e.g. Z or +01:00)")
            try:
                ms = (moment - _EPOCH) // timedelta(milliseconds=1)
            except OverflowError:
                raise _bad(name, "out of range") from None
        if not 0 <= ms <= MAX_SAFE_INTEGER:
            raise _bad(name, "out of range")
        return ms

    def period(self, now: int) -> tuple[int, int]:
        """``from``/``to``: default the last 30 days (to now), at most 366 days long."""
        end = self.time("to")
        start = self.time("from")
        if end is None:
            end = now
        if start is None:
            start = max(0, end - DEFAULT_WINDOW_MS)
        if end < start:
            raise _bad("to", "is before from")
        if end - start > MAX_SPAN_MS:
            raise _bad("from", "the period is longer than 366 days")
        return start, end


def _actor(value: str | None, directory: VerifiedDirectory, parameter: str = "actor") -> str:
    if value is None or len(value) > MAX_VALUE_CHARS or not _SLUG.fullmatch(value):
        raise _bad(parameter, "must be an actor id (a slug such as nacka or sos-alarm)")
    if directory.actor(value) is None:
        raise _Refusal(404, "unknown_actor", f"{value} is not an actor in the directory")
    return value


def _concerns_trace(trace: Mapping[str, Any], actor: str) -> bool:
    """Whether a message's trace is in an actor officer's scope.

    The actor sent it or was addressed (``recipients``), or a refusal of it names the
    actor as a recipient concerned (e.g. ``recipient_not_cleared``): the same events
    ``broker.audit_index.concerns`` lets that officer list.
    """
    if trace.get("sender") == actor or actor in (trace.get("recipients") or ()):
        return True
    return any(actor in (refusal.get("recipients") or ()) for refusal in trace.get("refusals", ()))


def _scoped_trace(trace: dict[str, Any], actor: str) -> dict[str, Any]:
    """What an actor's officer sees of a message their actor did not send: the header
    fields every recipient sees, and only their own actor's receipts, escalation,
    refusals and events (not the other recipients')."""
    if trace.get("sender") == actor:
        return trace
    receipts = trace.get("receipts") or {}
    mine = [r for r in trace.get("refusals", ()) if actor in (r.get("recipients") or ())]
    return trace | {
        "receipts": {r: v for r, v in receipts.items() if r == actor},
        "escalated": [r for r in trace.get("escalated", ()) if r == actor],
        "refusals": mine,
        "refusals_total": len(mine),
        "events": [_scoped_event(e, actor) for e in trace.get("events", ()) if concerns(e, actor)],
    }


def _scoped_event(event: dict[str, Any], actor: str) -> dict[str, Any]:
    """An event as an actor's officer sees it: of the other actors it names as recipients
    (an escalation's missing recipients, a refusal's), only their own. An acceptance keeps
    its recipients: they are in the signed header every recipient holds."""
    if (
        event.get("actor") == actor
        or event.get("kind") == "accepted"
        or not event.get("recipients")
    ):
        return event
    return event | {"recipients": [r for r in event["recipients"] if r == actor]}


def _request_line(request: web.Request) -> str:
    """Method, path and query as received, bounded, safe for canonical JSON."""
    line = f"{request.method} {request.raw_path}"
    # A raw path may carry undecodable bytes as surrogates, which canonical JSON refuses.
    line = line.encode("utf-8", "backslashreplace").decode("utf-8")
    return line[:MAX_AUDIT_DETAIL]


# --- the handlers -------------------------------------------------------------------------------


class _OfficerApi:
    def __init__(self, ctx: OfficerContext) -> None:
        self.ctx = ctx
        self._openapi = openapi_document()

    # --- authentication ---

    def _session(self, request: web.Request, directory: VerifiedDirectory) -> Session:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _Refusal(
                401, "unauthenticated", "send Authorization: Bearer <token> from POST /auth/token"
            )
        try:
            return verify_token(token, directory, self.ctx.clock())
        except AuthError as exc:
            raise _Refusal(401, exc.code, exc.message) from exc

    async def challenge(self, request: web.Request) -> web.Response:
        body = await _read_json(request, ("officer",))
        officer = body["officer"]
        if len(officer) > MAX_VALUE_CHARS or not _SLUG.fullmatch(officer):
            raise _Refusal(400, "bad_request", "officer must be an officer id (a slug)")
        try:
            issued = issue_challenge(
                self.ctx.identity, officer, self.ctx.directory(), self.ctx.clock()
            )
        except AuthError as exc:
            raise _Refusal(404, exc.code, exc.message) from exc
        return web.json_response(
            {"officer": officer, "challenge": issued.challenge, "expires": issued.expires}
        )

    async def token(self, request: web.Request) -> web.Response:
        body = await _read_json(request, ("challenge", "officer", "signature"))
        try:
            session = redeem(
                body["challenge"],
                body["signature"],
                body["officer"],
                self.ctx.directory(),
                self.ctx.clock(),
                self.ctx.identity,
            )
        except AuthError as exc:
            raise _Refusal(401, exc.code, exc.message) from exc
        return web.json_response(
            {
                "token": session.token,
                "officer": session.officer,
                "scope": session.scope,
                "expires": session.expires,
            }
        )

    # --- auditing the officers themselves ---

    async def _record(
        self,
        kind: AuditKind,
        request: web.Request,
        session: Session,
        actor: str | None,
        message: str | None,
    ) -> None:
        await self.ctx.audit(
            kind,
            officer=session.officer,
            actor=actor,
            message=message,
            detail=_request_line(request),
        )

    async def _audited(
        self,
        request: web.Request,
        session: Session,
        *,
        actor: str | None,
        message: str | None = None,
    ) -> None:
        """Record a query before answering it; no answer when it cannot be recorded."""
        try:
            await self._record(AuditKind.OFFICER_QUERY, request, session, actor, message)
        except BrokerError as exc:
            log.error("officer query not answered: audit event failed: %s", exc.message)
            raise _Refusal(
                503, "audit_unavailable", "the query cannot be recorded now; try again shortly"
            ) from exc

    async def _denied(
        self,
        request: web.Request,
        session: Session,
        *,
        actor: str | None,
        message: str | None = None,
    ) -> None:
        """Record a refusal for scope; the refusal is answered even if this fails."""
        try:
            await self._record(AuditKind.OFFICER_DENIED, request, session, actor, message)
        except BrokerError as exc:
            log.error("officer %s denied, and the audit event failed: %s", session.officer, exc)

    async def _out_of_scope(self, request: web.Request, session: Session, actor: str) -> _Refusal:
        await self._denied(request, session, actor=actor)
        return _Refusal(403, "out_of_scope", f"your scope is {session.scope}, not {actor}")

    # --- queries ---

    async def message(self, request: web.Request) -> web.Response:
        directory = self.ctx.directory()
        session = self._session(request, directory)
        _Query(request, {})
        message_id = request.match_info["message_id"]
        if not _MESSAGE_ID.fullmatch(message_id):
            raise _bad("message_id", "must be 32 lowercase hex digits")
        trace = self.ctx.index.message_trace(message_id)
        not_found = _Refusal(404, "not_found", "no such message in your scope")
        if session.scope is not None and (
            trace is None or not _concerns_trace(trace, session.scope)
        ):
            # Unknown and out of scope look alike, to the officer and in their audit events.
            await self._denied(request, session, actor=session.scope, message=message_id)
            raise not_found
        await self._audited(request, session, actor=session.scope, message=message_id)
        if trace is None:
            raise not_found
        if session.scope is not None:
            trace = _scoped_trace(trace, session.scope)
        return web.json_response(trace)

    async def _scoped_actor(
        self, request: web.Request, session: Session, directory: VerifiedDirectory
    ) -> str:
        actor = _actor(request.match_info["actor"], directory)
        if session.scope is not None and actor != session.scope:
            raise await self._out_of_scope(request, session, actor)
        return actor

    async def traffic(self, request: web.Request) -> web.Response:
        directory = self.ctx.directory()
        session = self._session(request, directory)
        query = _Query(request, _PERIOD)
        start, end = query.period(self.ctx.clock())
        actor = await self._scoped_actor(request, session, directory)
        result = self.ctx.index.actor_traffic(actor, start, end)
        await self._audited(request, session, actor=actor)
        return web.json_response(result)

    async def review(self, request: web.Request) -> web.Response:
        directory = self.ctx.directory()
        session = self._session(request, directory)
        query = _Query(request, _PERIOD)
        now = self.ctx.clock()
        start, end = query.period(now)
        actor = await self._scoped_actor(request, session, directory)
        result = access_review(self.ctx.index, directory, self.ctx.policy, actor, start, end, now)
        await self._audited(request, session, actor=actor)
        return web.json_response(result)

    async def events(self, request: web.Request) -> web.Response:
        directory = self.ctx.directory()
        session = self._session(request, directory)
        query = _Query(request, _EVENT_PARAMETERS)
        kinds: list[str] = []
        for value in query.all("kind"):
            if value not in _KINDS:
                raise _bad("kind", f"must be one of {', '.join(sorted(_KINDS))}")
            if value not in kinds:
                kinds.append(value)
        start, end = query.period(self.ctx.clock())
        after = query.integer("after", 0, 0, MAX_SAFE_INTEGER)
        limit = query.integer("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        asked = query.get("actor")
        actor = None if asked is None else _actor(asked, directory)
        if session.scope is not None:
            if actor is not None and actor != session.scope:
                raise await self._out_of_scope(request, session, actor)
            actor = session.scope
        found = self.ctx.index.events(
            kinds=tuple(kinds), actor=actor, start=start, end=end, after_seq=after, limit=limit
        )
        await self._audited(request, session, actor=actor)
        cursor = found[-1]["seq"] if len(found) >= limit else None
        if session.scope is not None:
            found = [_scoped_event(e, session.scope) for e in found]
        return web.json_response({"events": found, "next": cursor})

    async def directory_history(self, request: web.Request) -> web.Response:
        directory = self.ctx.directory()
        session = self._session(request, directory)
        _Query(request, {})
        history = directory_history(await self.ctx.directory_versions())
        if session.scope is not None:
            history = scoped_history(history, session.scope)
        await self._audited(request, session, actor=session.scope)
        return web.json_response({"versions": history})

    async def audit_status(self, request: web.Request) -> web.Response:
        directory = self.ctx.directory()
        session = self._session(request, directory)
        _Query(request, {})
        status = self.ctx.audit_status()
        await self._audited(request, session, actor=session.scope)
        return web.json_response(status)

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(self._openapi)


def add_officer_routes(app: web.Application, ctx: OfficerContext) -> None:
    """Add the officer API under ``/api/v1`` to ``app`` (before it starts)."""
    api = _OfficerApi(ctx)
    routes = app.router
    routes.add_post(f"{API_PREFIX}/auth/challenge", _answers(api.challenge))
    routes.add_post(f"{API_PREFIX}/auth/token", _answers(api.token))
    routes.add_get(f"{API_PREFIX}/messages/{{message_id}}", _answers(api.message))
    routes.add_get(f"{API_PREFIX}/actors/{{actor}}/traffic", _answers(api.traffic))
    routes.add_get(f"{API_PREFIX}/actors/{{actor}}/review", _answers(api.review))
    routes.add_get(f"{API_PREFIX}/events", _answers(api.events))
    routes.add_get(f"{API_PREFIX}/directory/history", _answers(api.directory_history))
    routes.add_get(f"{API_PREFIX}/audit/status", _answers(api.audit_status))
    routes.add_get(f"{API_PREFIX}/openapi.json", _answers(api.openapi))
