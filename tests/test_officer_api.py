"""The security officers' HTTP API over a real socket, against a real audit index.

The app is the broker's own (``broker.web.make_app``) with ``add_officer_routes``,
served by ``broker.web.HttpServer`` on 127.0.0.1, port 0. The index is a real
``AuditIndex`` filled with events built by ``broker.audit.audit_event`` exactly
as the router builds them (and, in one test, with the events of real traffic
through a real broker and nats-server). Officers log in through the API with their
real directory keys.

Every answer goes through :class:`Api`, which checks that the path, method and
status are documented in the OpenAPI document and that the body validates
against the schema documented for them (the contract tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry

from broker.audit import AuditKind, audit_event
from broker.audit_index import AuditFollower, AuditIndex, concerns
from broker.auditlog import AuditWatch
from broker.core import (
    EncryptionKeyPair,
    Identity,
    Policy,
    VerifiedDirectory,
    save_identity,
    sign_directory,
    successor,
    verify_directory,
)
from broker.core.auditchain import Finding, TrailReport
from broker.demo import DemoRegion
from broker.errors import NatsUnavailable
from broker.metrics import BrokerMetrics
from broker.officer_api import MAX_AUTH_BODY, OfficerContext, add_officer_routes
from broker.officer_auth import sign_challenge
from broker.openapi import openapi_document
from broker.service import Service
from broker.web import HttpServer, make_app
from clients import cli

from . import nats_fixtures, service_helpers
from .conftest import NOW
from .service_helpers import INTERN, SEKRETESS, Actors, now_ms, wait_for_audit

nats_server = nats_fixtures.nats_server
live_region = service_helpers.live_region
broker_factory = service_helpers.broker_factory
running_broker = service_helpers.running_broker
actors = service_helpers.actors

DAY = 24 * 3600 * 1000
NACKA = "sakerhetschef-nacka"
REGIONAL = "sakerhetschef-lansstyrelsen"
API = "/api/v1"

M_NACKA = "a1" * 16  # nacka -> polisen-stockholm, solna
M_TO_NACKA = "b2" * 16  # stockholm -> nacka, sodertalje
M_SOLNA = "c3" * 16  # solna -> stockholm: nothing to do with nacka
M_NACKA_REFUSED = "d4" * 16  # nacka's submission refused (stockholms-hamnar not cleared)
M_SOLNA_REFUSED = "e5" * 16  # solna's submission refused (revoked key)
M_OLD = "f6" * 16  # nacka, 40 days ago: outside the default window
M_NAMES_NACKA = "17" * 16  # solna's submission refused because nacka is not cleared
UNKNOWN = "00" * 16
LABEL = {
    "policy": "ssr",
    "classification": "SEKRETESS",
    "tlp": "AMBER",
    "categories": ["taktik"],
    "legal": "OSL 18:13",
}


# --- the contract -------------------------------------------------------------------------------

DOCUMENT = openapi_document()
_TEMPLATES: list[tuple[re.Pattern[str], str]] = [
    (re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)) + "$"), path)
    for path in DOCUMENT["paths"]
]


def resolve(node: Any, document: dict[str, Any] = DOCUMENT) -> Any:
    """``node`` with every local ``$ref`` replaced by what it points to (no cycles here)."""
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = document
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return resolve({**target, **rest}, document)
        return {key: resolve(value, document) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(item, document) for item in node]
    return node


def template_of(path: str) -> str:
    bare = path.split("?", 1)[0]
    matches = [template for pattern, template in _TEMPLATES if pattern.match(bare)]
    assert matches, f"{bare} is not a documented path"
    return matches[0]


def response_schema(method: str, path: str, status: int) -> dict[str, Any]:
    operation = DOCUMENT["paths"][template_of(path)].get(method.lower())
    assert operation is not None, f"{method} {path} is not documented"
    responses = operation["responses"]
    assert str(status) in responses, f"{method} {template_of(path)} -> {status} is not documented"
    schema: dict[str, Any] = resolve(responses[str(status)]["content"]["application/json"])[
        "schema"
    ]
    return schema


EXERCISED: set[tuple[str, str, int]] = set()


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]


class Api:
    """A client of the officer API that checks every answer against the OpenAPI document."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        **kw: Any,
    ) -> Reply:
        headers = dict(headers or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with self.session.request(
            method, self.url + path, headers=headers, allow_redirects=False, **kw
        ) as response:
            assert response.content_type == "application/json", await response.text()
            body = await response.json()
            reply = Reply(response.status, body, dict(response.headers))
        Draft202012Validator(response_schema(method, path, reply.status)).validate(body)
        EXERCISED.add((method, template_of(path), reply.status))
        return reply

    async def get(self, path: str, token: str | None = None, **kw: Any) -> Reply:
        return await self.call("GET", path, token=token, **kw)

    async def post(self, path: str, **kw: Any) -> Reply:
        return await self.call("POST", path, **kw)

    async def login(self, officer: str, key: Any) -> str:
        issued = await self.post(f"{API}/auth/challenge", json={"officer": officer})
        assert issued.status == 200, issued.body
        signature = sign_challenge(key, issued.body["challenge"])
        session = await self.post(
            f"{API}/auth/token",
            json={
                "officer": officer,
                "challenge": issued.body["challenge"],
                "signature": signature,
            },
        )
        assert session.status == 200, session.body
        token: str = session.body["token"]
        return token


# --- the world the API reads ----------------------------------------------------------------------


def event(kind: AuditKind, at: int, key: str, actor: str | None, **fields: Any) -> bytes:
    return audit_event(kind, at=at, broker="ssr-broker", key=key, actor=actor, **fields)[1]


def accepted(message: str, sender: str, to: Iterable[str], at: int) -> bytes:
    return event(
        AuditKind.ACCEPTED,
        at,
        message,
        sender,
        message=message,
        recipients=tuple(sorted(to)),
        status="actual",
        label=LABEL,
        priority="routine",
    )


def receipt(message: str, recipient: str, at: int) -> bytes:
    return event(
        AuditKind.RECEIPT,
        at,
        f"{message}.{recipient}",
        recipient,
        message=message,
        recipients=(recipient,),
        status="actual",
        detail="delivered",
    )


def rejected(message: str, sender: str, reason: str, at: int, to: tuple[str, ...] = ()) -> bytes:
    return event(
        AuditKind.REJECTED,
        at,
        f"{message}.r",
        sender,
        message=message,
        reason=reason,
        recipients=to,
        status="actual",
        detail=f"refused: {reason}",
    )


def story() -> list[bytes]:
    return [
        accepted(M_OLD, "nacka", ["solna"], NOW - 40 * DAY),
        accepted(M_TO_NACKA, "stockholm", ["nacka", "sodertalje"], NOW - 3 * DAY),
        receipt(M_TO_NACKA, "nacka", NOW - 3 * DAY + 1000),
        accepted(M_NACKA, "nacka", ["polisen-stockholm", "solna"], NOW - 2 * DAY),
        receipt(M_NACKA, "solna", NOW - 2 * DAY + 1000),
        receipt(M_NACKA, "polisen-stockholm", NOW - 2 * DAY + 2000),
        accepted(M_SOLNA, "solna", ["stockholm"], NOW - DAY),
        rejected(
            M_NACKA_REFUSED,
            "nacka",
            "recipient_not_cleared",
            NOW - DAY + 10,
            ("stockholms-hamnar",),
        ),
        rejected(M_SOLNA_REFUSED, "solna", "sender_key_revoked", NOW - DAY + 20),
        rejected(M_NAMES_NACKA, "solna", "recipient_not_cleared", NOW - DAY + 25, ("nacka",)),
        event(
            AuditKind.DIRECTORY_CHANGE,
            NOW - DAY + 30,
            "dir2",
            "lansstyrelsen-stockholm",
            detail="version 2",
        ),
    ]


def version_two(region: DemoRegion) -> VerifiedDirectory:
    """Nacka's and solna's clearances lowered: one change each in the history."""
    actors = tuple(
        a.model_copy(update={"clearance": "INTERN"}) if a.id in ("nacka", "solna") else a
        for a in region.directory.document.actors
    )
    document = successor(region.directory, issued=NOW, actors=actors)
    return verify_directory(
        sign_directory(document, region.authority),
        pinned=region.authority.public,
        previous=region.directory,
    )


@dataclass
class AuditRecorder:
    """``ctx.audit``: writes each officer event into the index, as the broker's stream would."""

    index: AuditIndex
    clock: Any
    events: list[dict[str, Any]] = field(default_factory=list)
    failing: bool = False

    async def __call__(
        self,
        kind: AuditKind,
        *,
        officer: str,
        actor: str | None,
        message: str | None = None,
        detail: str = "",
    ) -> None:
        if self.failing:
            raise NatsUnavailable("audit stream unavailable")
        _, body = audit_event(
            kind,
            at=self.clock(),
            broker="ssr-broker",
            key=f"officer.{len(self.events)}",
            actor=actor,
            officer=officer,
            message=message,
            detail=detail,
        )
        self.index.add([(self.index.last_seq() + 1, body)])
        self.events.append(json.loads(body))

    def new(self, since: int) -> list[dict[str, Any]]:
        return self.events[since:]


class Health:
    def live(self) -> bool:
        return True

    def ready(self) -> dict[str, bool]:
        return {"ok": True}


@dataclass
class World:
    api: Api
    ctx: OfficerContext
    index: AuditIndex
    audit: AuditRecorder
    region: DemoRegion
    now: list[int]
    directories: list[VerifiedDirectory]
    status: dict[str, Any]

    async def token(self, officer: str) -> str:
        return await self.api.login(officer, self.region.officers[officer])

    def expect_query(self, since: int, officer: str, actor: str | None, path: str) -> None:
        """Exactly one new audit event: this officer's query, naming the request."""
        [query] = self.audit.new(since)
        assert query["kind"] == AuditKind.OFFICER_QUERY.value
        assert (query["officer"], query["actor"]) == (officer, actor)
        assert query["detail"] == f"GET {path}"[:300]


@contextlib.asynccontextmanager
async def serve(
    region: DemoRegion,
    index: AuditIndex,
    *,
    clock: list[int],
    directories: list[VerifiedDirectory],
    status: dict[str, Any],
) -> AsyncIterator[World]:
    recorder = AuditRecorder(index, lambda: clock[0])

    async def versions() -> list[VerifiedDirectory]:
        return list(directories)

    ctx = OfficerContext(
        index=index,
        identity=region.broker,
        policy=Policy(),
        directory=lambda: directories[-1],
        directory_versions=versions,
        audit=recorder,
        audit_status=lambda: dict(status),
        clock=lambda: clock[0],
    )
    app = make_app(BrokerMetrics(CollectorRegistry()), Health())
    add_officer_routes(app, ctx)
    async with (
        HttpServer(app, host="127.0.0.1", port=0) as server,
        aiohttp.ClientSession() as session,
    ):
        yield World(
            Api(session, server.url), ctx, index, recorder, region, clock, directories, status
        )


@pytest.fixture
def index(tmp_path: Path) -> Iterator[AuditIndex]:
    index = AuditIndex(tmp_path / "audit-index.sqlite")
    index.add(enumerate(story(), start=1))
    yield index
    index.close()


@pytest_asyncio.fixture
async def world(region: DemoRegion, index: AuditIndex) -> AsyncIterator[World]:
    async with serve(
        region,
        index,
        clock=[NOW + 1000],
        directories=[region.directory, version_two(region)],
        status=AuditWatch().status(),
    ) as running:
        yield running


# --- login ---------------------------------------------------------------------------------------


async def test_login_through_the_api(world: World) -> None:
    issued = await world.api.post(f"{API}/auth/challenge", json={"officer": NACKA})
    assert issued.status == 200
    assert issued.body["officer"] == NACKA
    assert issued.body["expires"] == world.now[0] + 60_000
    signature = sign_challenge(world.region.officers[NACKA], issued.body["challenge"])
    body = {"officer": NACKA, "challenge": issued.body["challenge"], "signature": signature}
    session = await world.api.post(f"{API}/auth/token", json=body)
    assert session.status == 200
    assert (session.body["officer"], session.body["scope"]) == (NACKA, "nacka")
    assert session.body["expires"] == world.now[0] + 15 * 60_000
    again = await world.api.post(f"{API}/auth/token", json=body)
    assert (again.status, again.body["error"]) == (401, "challenge_reused")
    regional = await world.api.login(REGIONAL, world.region.officers[REGIONAL])
    status = await world.api.get(f"{API}/audit/status", regional)
    assert status.status == 200


LOGIN_REFUSALS: list[tuple[str, str, Any, int, str]] = [
    # (endpoint, what, body (bytes: raw), status, code)
    ("challenge", "unknown officer", {"officer": "sakerhetschef-solna"}, 404, "unknown_officer"),
    ("challenge", "not a slug", {"officer": "Nacka Officer"}, 400, "bad_request"),
    ("challenge", "not JSON", b"officer=nacka", 400, "bad_request"),
    ("challenge", "not UTF-8", b'{"officer":"\xff"}', 400, "bad_request"),
    ("challenge", "an array", [NACKA], 400, "bad_request"),
    ("challenge", "a number", {"officer": 5}, 400, "bad_request"),
    ("challenge", "an extra field", {"officer": NACKA, "admin": True}, 400, "bad_request"),
    ("challenge", "no fields", {}, 400, "bad_request"),
    ("challenge", "nested too deep", b"[" * 5000 + b"]" * 5000, 413, "body_too_large"),
    ("challenge", "deep but small", b"[" * 1000 + b"]" * 1000, 400, "bad_request"),
    ("challenge", "empty body", b"", 400, "bad_request"),
    ("challenge", "too large", {"officer": "x" * MAX_AUTH_BODY}, 413, "body_too_large"),
    (
        "token",
        "too large",
        {"officer": NACKA, "challenge": "A" * MAX_AUTH_BODY, "signature": "00"},
        413,
        "body_too_large",
    ),
    ("token", "a missing field", {"officer": NACKA, "challenge": "AAAA"}, 400, "bad_request"),
    (
        "token",
        "garbage",
        {"officer": NACKA, "challenge": "AAAA", "signature": "00"},
        401,
        "bad_challenge",
    ),
    (
        "token",
        "a huge challenge",
        {"officer": NACKA, "challenge": "A" * 8000, "signature": "00"},
        401,
        "bad_challenge",
    ),
]


@pytest.mark.parametrize(
    ("endpoint", "what", "body", "status", "code"),
    LOGIN_REFUSALS,
    ids=[r[1] for r in LOGIN_REFUSALS],
)
async def test_login_refusals(
    world: World, endpoint: str, what: str, body: Any, status: int, code: str
) -> None:
    kw = {"data": body} if isinstance(body, bytes) else {"json": body}
    reply = await world.api.post(f"{API}/auth/{endpoint}", **kw)
    assert (reply.status, reply.body["error"]) == (status, code), reply.body
    assert world.audit.events == []


async def test_a_chunked_body_is_bounded_too(world: World) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b" " * 4096

    reply = await world.api.post(f"{API}/auth/challenge", data=chunks())
    assert (reply.status, reply.body["error"]) == (413, "body_too_large")


async def test_token_signature_failures_are_401_with_the_code(world: World) -> None:
    issued = await world.api.post(f"{API}/auth/challenge", json={"officer": NACKA})
    challenge = issued.body["challenge"]
    cases = [
        (NACKA, sign_challenge(world.region.officers[REGIONAL], challenge), "bad_signature"),
        (NACKA, "zz" * 64, "bad_signature"),
        (REGIONAL, sign_challenge(world.region.officers[REGIONAL], challenge), "bad_challenge"),
    ]
    for officer, signature, code in cases:
        body = {"officer": officer, "challenge": challenge, "signature": signature}
        reply = await world.api.post(f"{API}/auth/token", json=body)
        assert (reply.status, reply.body["error"]) == (401, code)
    world.now[0] += 60_000
    body = {
        "officer": NACKA,
        "challenge": challenge,
        "signature": sign_challenge(world.region.officers[NACKA], challenge),
    }
    reply = await world.api.post(f"{API}/auth/token", json=body)
    assert (reply.status, reply.body["error"]) == (401, "challenge_expired")


async def test_bearer_token_required(world: World) -> None:
    token = await world.token(NACKA)
    cases: list[tuple[dict[str, str], str]] = [
        ({}, "unauthenticated"),
        ({"Authorization": "Basic bmFja2E6c2VjcmV0"}, "unauthenticated"),
        ({"Authorization": "Bearer"}, "unauthenticated"),
        ({"Authorization": "Bearer not-a-token"}, "bad_token"),
        (
            {"Authorization": "Bearer " + token[:-2] + ("AA" if token[-2:] != "AA" else "BA")},
            "bad_token",
        ),
        ({"Authorization": "Bearer " + "A" * 4000}, "bad_token"),
    ]
    for headers, code in cases:
        reply = await world.api.get(f"{API}/events", headers=headers)
        assert (reply.status, reply.body["error"]) == (401, code), headers
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    assert world.audit.events == []  # nothing was read, nothing to audit
    assert (
        await world.api.get(f"{API}/events", headers={"Authorization": f"bearer {token}"})
    ).status == 200


async def test_token_expiry_and_revocation_take_effect_at_once(world: World) -> None:
    token = await world.token(NACKA)
    world.now[0] += 15 * 60_000
    reply = await world.api.get(f"{API}/audit/status", token)
    assert (reply.status, reply.body["error"]) == (401, "token_expired")
    token = await world.token(NACKA)
    current = world.directories[-1]
    officers = tuple(o for o in current.document.officers if o.id != NACKA)
    document = successor(current, issued=NOW, officers=officers)
    world.directories.append(
        verify_directory(
            sign_directory(document, world.region.authority),
            pinned=world.region.authority.public,
            previous=current,
        )
    )
    reply = await world.api.get(f"{API}/audit/status", token)
    assert (reply.status, reply.body["error"]) == (401, "officer_revoked")


# --- scope ---------------------------------------------------------------------------------------


async def test_nacka_sees_its_traffic_and_refusals(world: World) -> None:
    token = await world.token(NACKA)
    for message in (M_NACKA, M_TO_NACKA, M_NACKA_REFUSED, M_NAMES_NACKA):
        since = len(world.audit.events)
        path = f"{API}/messages/{message}"
        reply = await world.api.get(path, token)
        assert reply.status == 200, reply.body
        assert reply.body["message"] == message
        world.expect_query(since, NACKA, "nacka", path)
    trace = (await world.api.get(f"{API}/messages/{M_NACKA}", token)).body
    assert (trace["sender"], trace["recipients"]) == ("nacka", ["polisen-stockholm", "solna"])
    assert trace["receipts"]["solna"]["delivered"] == NOW - 2 * DAY + 1000
    refused = (await world.api.get(f"{API}/messages/{M_NACKA_REFUSED}", token)).body
    assert refused["refusals"][0]["reason"] == "recipient_not_cleared"

    since = len(world.audit.events)
    path = f"{API}/actors/nacka/traffic"
    traffic = await world.api.get(path, token)
    assert traffic.status == 200
    assert traffic.body["sent"]["total"] == 1  # M_OLD is outside the default 30 days
    assert traffic.body["received"]["total"] == 1
    assert traffic.body["refused"]["by_reason"] == {"recipient_not_cleared": 1}
    assert traffic.body["named_in_refusals"]["by_reason"] == {"recipient_not_cleared": 1}
    assert (traffic.body["from"], traffic.body["to"]) == (world.now[0] - 30 * DAY, world.now[0])
    world.expect_query(since, NACKA, "nacka", path)

    since = len(world.audit.events)
    path = f"{API}/actors/nacka/review?from={NOW - 50 * DAY}"
    review = await world.api.get(path, token)
    assert review.status == 200
    assert review.body["traffic"]["sent"]["total"] == 2  # now M_OLD is in the period
    assert review.body["clearance"]["held"] == "INTERN"  # the current directory version
    world.expect_query(since, NACKA, "nacka", path)


async def test_a_recipients_officer_sees_only_its_own_part_of_a_trace(world: World) -> None:
    """Nacka was one of two recipients: its officer sees the header, not Södertälje's
    receipt or escalation; the regional officer sees both."""
    last = world.index.last_seq()
    world.index.add([
        (last + 1, receipt(M_TO_NACKA, "sodertalje", NOW - 3 * DAY + 2000)),
        (last + 2, event(AuditKind.ESCALATION, NOW - 2 * DAY, f"{M_TO_NACKA}.e", "stockholm",
                         message=M_TO_NACKA, recipients=("sodertalje",))),
    ])  # fmt: skip
    path = f"{API}/messages/{M_TO_NACKA}"
    mine = (await world.api.get(path, await world.token(NACKA))).body
    assert mine["recipients"] == ["nacka", "sodertalje"]
    assert set(mine["receipts"]) == {"nacka"}
    assert mine["escalated"] == []
    assert all("sodertalje" not in e["recipients"] or "nacka" in e["recipients"]
               for e in mine["events"] if e["actor"] != "nacka")  # fmt: skip
    everything = (await world.api.get(path, await world.token(REGIONAL))).body
    assert set(everything["receipts"]) == {"nacka", "sodertalje"}
    assert everything["escalated"] == ["sodertalje"]


async def test_nacka_is_refused_solna_with_403_and_an_audited_denial(world: World) -> None:
    token = await world.token(NACKA)
    for path in (
        f"{API}/actors/solna/traffic",
        f"{API}/actors/solna/review",
        f"{API}/events?actor=solna",
    ):
        since = len(world.audit.events)
        reply = await world.api.get(path, token)
        assert (reply.status, reply.body["error"]) == (403, "out_of_scope"), path
        [denied] = world.audit.new(since)
        assert denied["kind"] == AuditKind.OFFICER_DENIED.value
        assert (denied["officer"], denied["actor"], denied["detail"]) == (
            NACKA,
            "solna",
            f"GET {path}",
        )


async def test_a_message_out_of_scope_looks_unknown_but_is_audited(world: World) -> None:
    token = await world.token(NACKA)
    replies = []
    for message in (M_SOLNA, M_SOLNA_REFUSED, UNKNOWN):
        since = len(world.audit.events)
        reply = await world.api.get(f"{API}/messages/{message}", token)
        assert (reply.status, reply.body["error"]) == (404, "not_found")
        replies.append(reply.body)
        [denied] = world.audit.new(since)
        assert denied["kind"] == AuditKind.OFFICER_DENIED.value
        assert (denied["officer"], denied["actor"], denied["message"]) == (NACKA, "nacka", message)
    assert replies[0] == replies[1] == replies[2]  # existence is not revealed


async def test_the_regional_officer_sees_everything(world: World) -> None:
    token = await world.token(REGIONAL)
    for message in (M_NACKA, M_SOLNA, M_SOLNA_REFUSED):
        since = len(world.audit.events)
        path = f"{API}/messages/{message}"
        assert (await world.api.get(path, token)).status == 200
        world.expect_query(since, REGIONAL, None, path)
    since = len(world.audit.events)
    assert (await world.api.get(f"{API}/messages/{UNKNOWN}", token)).status == 404
    world.expect_query(since, REGIONAL, None, f"{API}/messages/{UNKNOWN}")
    for actor in ("solna", "nacka", "stockholms-hamnar"):
        since = len(world.audit.events)
        path = f"{API}/actors/{actor}/traffic"
        assert (await world.api.get(path, token)).status == 200
        world.expect_query(since, REGIONAL, actor, path)
    solna = (await world.api.get(f"{API}/actors/solna/review", token)).body
    assert solna["refused"]["by_reason"] == {"sender_key_revoked": 1, "recipient_not_cleared": 1}
    assert len(solna["revoked_key_attempts"]) == 1


async def test_events_are_forced_to_the_officers_actor(world: World) -> None:
    token = await world.token(NACKA)
    since = len(world.audit.events)
    page = await world.api.get(f"{API}/events", token)
    assert page.status == 200
    world.expect_query(since, NACKA, "nacka", f"{API}/events")
    events = page.body["events"]
    assert events
    assert all(concerns(e, "nacka") for e in events)
    assert M_SOLNA not in {e["message"] for e in events}
    assert page.body["next"] is None
    same = await world.api.get(f"{API}/events?actor=nacka&kind=rejected", token)
    assert [e["message"] for e in same.body["events"]] == [M_NACKA_REFUSED, M_NAMES_NACKA]


async def test_regional_events_page_with_the_cursor(world: World) -> None:
    token = await world.token(REGIONAL)
    everything = (await world.api.get(f"{API}/events?limit=500", token)).body
    seen: list[int] = []
    after = 0
    for _ in range(20):
        page = (await world.api.get(f"{API}/events?limit=3&after={after}", token)).body
        seen += [e["seq"] for e in page["events"]]
        if page["next"] is None:
            break
        assert page["next"] == page["events"][-1]["seq"]
        after = page["next"]
    # The officer's own queries are events too: each page's query is appended as it is answered.
    assert seen[: len(everything["events"])] == [e["seq"] for e in everything["events"]]
    assert seen == sorted(set(seen))
    kinds = (await world.api.get(f"{API}/events?kind=accepted&kind=receipt", token)).body
    assert {e["kind"] for e in kinds["events"]} == {"accepted", "receipt"}
    solna = (await world.api.get(f"{API}/events?actor=solna", token)).body
    assert solna["events"]
    assert all(concerns(e, "solna") for e in solna["events"])


async def test_directory_history_is_scoped(world: World) -> None:
    regional = (await world.api.get(f"{API}/directory/history", await world.token(REGIONAL))).body
    [_, second] = regional["versions"]
    assert {(c.get("actor"), c["change"]) for c in second["changes"]} == {
        ("nacka", "clearance"),
        ("solna", "clearance"),
    }
    since = len(world.audit.events)
    nacka = await world.api.get(f"{API}/directory/history", await world.token(NACKA))
    world.expect_query(since, NACKA, "nacka", f"{API}/directory/history")
    [first, second] = nacka.body["versions"]
    assert [(c["actor"], c["change"]) for c in second["changes"]] == [("nacka", "clearance")]
    assert all(c.get("actor") in (None, "nacka") for c in first["changes"])
    assert any(c.get("officer") == NACKA for c in first["changes"])


async def test_audit_status_is_passed_through(world: World) -> None:
    token = await world.token(NACKA)
    reply = await world.api.get(f"{API}/audit/status", token)
    assert reply.body == {
        "verified": None,
        "checked_at": None,
        "events": 0,
        "sealed_through": 0,
        "latest_checkpoint": None,
        "findings": [],
    }
    watch = AuditWatch(
        report=TrailReport(
            events=12,
            checkpoints=1,
            sealed_through=10,
            unsealed=2,
            findings=(Finding(7, "altered", "leaf differs"), Finding(None, "truncated", "gone")),
            latest=None,
        ),
        checked_at=NOW,
    )
    world.status.clear()
    world.status.update(watch.status())
    since = len(world.audit.events)
    reply = await world.api.get(f"{API}/audit/status", token)
    assert reply.body["verified"] is False
    assert [f["problem"] for f in reply.body["findings"]] == ["altered", "truncated"]
    world.expect_query(since, NACKA, "nacka", f"{API}/audit/status")


async def test_no_answer_when_the_query_cannot_be_audited(world: World) -> None:
    token = await world.token(REGIONAL)
    world.audit.failing = True
    reply = await world.api.get(f"{API}/messages/{M_SOLNA}", token)
    assert (reply.status, reply.body["error"]) == (503, "audit_unavailable")
    assert "sender" not in reply.body


async def test_times_as_iso_8601(world: World) -> None:
    token = await world.token(REGIONAL)
    reply = await world.api.get(
        f"{API}/actors/nacka/traffic?from=2026-08-01T00:00:00%2B02:00&to=2026-09-21T12:00:00Z",
        token,
    )
    assert reply.status == 200, reply.body
    assert reply.body["from"] == 1_785_535_200_000
    assert reply.body["to"] == 1_789_992_000_000


READS = [
    f"{API}/messages/{M_NACKA}",
    f"{API}/actors/nacka/traffic",
    f"{API}/actors/nacka/review",
    f"{API}/events",
    f"{API}/directory/history",
    f"{API}/audit/status",
]


@pytest.mark.parametrize("path", READS)
async def test_every_read_needs_a_token_and_an_audit_event(world: World, path: str) -> None:
    reply = await world.api.get(path)
    assert (reply.status, reply.body["error"]) == (401, "unauthenticated")
    token = await world.token(NACKA)
    world.audit.failing = True
    reply = await world.api.get(path, token)
    assert (reply.status, reply.body["error"]) == (503, "audit_unavailable")
    world.audit.failing = False
    since = len(world.audit.events)
    assert (await world.api.get(path, token)).status == 200
    world.expect_query(since, NACKA, "nacka", path)


# --- bad parameters ------------------------------------------------------------------------------

BAD: list[tuple[str, int, str, str | None]] = [
    # (path after /api/v1, status, code, the parameter the detail names)
    ("/events?from=yesterday", 400, "bad_parameter", "from"),
    ("/events?from=2026-09-01T00:00:00", 400, "bad_parameter", "from"),  # no timezone
    ("/events?from=2026-13-01T00:00:00Z", 400, "bad_parameter", "from"),
    ("/events?to=-5", 400, "bad_parameter", "to"),
    ("/events?to=99999999999999999", 400, "bad_parameter", "to"),
    ("/events?from=%ff%fe", 400, "bad_parameter", "from"),
    ("/events?from=1790000000000&to=1780000000000", 400, "bad_parameter", "to"),  # reversed
    ("/events?from=1700000000000&to=1790000000000", 400, "bad_parameter", "from"),  # > 366 days
    ("/actors/nacka/traffic?from=1", 400, "bad_parameter", "from"),  # to defaults to now
    ("/actors/nacka/review?from=2000000000000", 400, "bad_parameter", "to"),  # to: now
    ("/events?from=1&from=2", 400, "bad_parameter", "from"),
    ("/events?limit=0", 400, "bad_parameter", "limit"),
    ("/events?limit=501", 400, "bad_parameter", "limit"),
    ("/events?limit=10000", 400, "bad_parameter", "limit"),
    ("/events?limit=abc", 400, "bad_parameter", "limit"),
    ("/events?limit=-1", 400, "bad_parameter", "limit"),
    ("/events?limit=1.5", 400, "bad_parameter", "limit"),
    ("/events?limit=", 400, "bad_parameter", "limit"),
    ("/events?after=-1", 400, "bad_parameter", "after"),
    ("/events?after=x", 400, "bad_parameter", "after"),
    ("/events?kind=bogus", 400, "bad_parameter", "kind"),
    ("/events?kind=accepted&kind=ACCEPTED", 400, "bad_parameter", "kind"),
    ("/events?actor=Nacka", 400, "bad_parameter", "actor"),
    ("/events?actor=nacka%00", 400, "bad_parameter", "actor"),
    ("/events?actor=" + "a" * 65, 400, "bad_parameter", "actor"),
    ("/events?actor=gotland", 404, "unknown_actor", None),
    ("/events?colour=red", 400, "bad_parameter", "colour"),
    ("/events?" + "x" * 3000, 400, "bad_parameter", "query"),
    ("/events?from=" + "9" * 3000, 400, "bad_parameter", "query"),
    ("/actors/Bad_Slug/traffic", 400, "bad_parameter", "actor"),
    ("/actors/%C3%A5land/review", 400, "bad_parameter", "actor"),
    ("/actors/gotland/traffic", 404, "unknown_actor", None),
    ("/actors/gotland/review", 404, "unknown_actor", None),
    ("/messages/xyz", 400, "bad_parameter", "message_id"),
    ("/messages/" + "A1" * 16, 400, "bad_parameter", "message_id"),
    ("/messages/" + "a" * 33, 400, "bad_parameter", "message_id"),
    ("/messages/" + M_NACKA + "?verbose=1", 400, "bad_parameter", "verbose"),
    ("/audit/status?x=1", 400, "bad_parameter", "x"),
    ("/directory/history?actor=nacka", 400, "bad_parameter", "actor"),
]


@pytest.mark.parametrize(("path", "status", "code", "parameter"), BAD, ids=[b[0][:60] for b in BAD])
async def test_bad_parameters(
    world: World, path: str, status: int, code: str, parameter: str | None
) -> None:
    token = await world.token(REGIONAL)
    reply = await world.api.get(API + path, token)
    assert (reply.status, reply.body["error"]) == (status, code), reply.body
    if parameter is not None:
        assert reply.body["detail"].startswith(f"{parameter}:"), reply.body
    assert world.audit.events == []  # refused before anything was read
    assert len(json.dumps(reply.body)) < 1000  # nothing large is echoed back


# --- the OpenAPI document ------------------------------------------------------------------------


async def test_openapi_document_is_served_without_login(world: World) -> None:
    reply = await world.api.get(f"{API}/openapi.json")
    assert reply.status == 200
    assert reply.body == json.loads(json.dumps(openapi_document()))


def test_openapi_document_is_well_formed() -> None:
    document = json.loads(json.dumps(openapi_document()))  # plain JSON, nothing else
    assert document["openapi"] == "3.1.0"
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for _name, schema in document["components"]["schemas"].items():
        Draft202012Validator.check_schema(resolve(schema, document))
    for path, item in document["paths"].items():
        assert path.startswith("/api/v1/")
        placeholders = set(re.findall(r"\{([^}]+)\}", path))
        for method, operation in item.items():
            assert method in {"get", "post"}
            params = [resolve(p, document) for p in operation.get("parameters", [])]
            assert {p["name"] for p in params if p["in"] == "path"} == placeholders
            for param in params:
                Draft202012Validator.check_schema(param["schema"])
            public = operation.get("security") == []
            assert public == (path.endswith(("/auth/challenge", "/auth/token", "/openapi.json")))
            for status, response in operation["responses"].items():
                assert re.fullmatch(r"[1-5][0-9][0-9]", status)
                schema = resolve(response, document)["content"]["application/json"]["schema"]
                Draft202012Validator.check_schema(schema)
                if not public:
                    assert "401" in operation["responses"]


def test_every_error_code_documented_is_a_string_code() -> None:
    codes = set()
    for item in DOCUMENT["paths"].values():
        for operation in item.values():
            for status, response in operation["responses"].items():
                schema = resolve(response)["content"]["application/json"]["schema"]
                for part in schema.get("allOf", []):
                    codes |= set(part.get("properties", {}).get("error", {}).get("enum", []))
                if status.startswith(("4", "5")) and status != "500":
                    assert "allOf" in schema, (status, schema)
    assert {
        "bad_parameter",
        "out_of_scope",
        "not_found",
        "unknown_actor",
        "unauthenticated",
        "bad_token",
        "token_expired",
        "officer_revoked",
        "bad_request",
        "body_too_large",
        "unknown_officer",
        "bad_challenge",
        "challenge_expired",
        "challenge_reused",
        "bad_signature",
        "key_not_usable",
        "audit_unavailable",
    } == codes


def test_every_documented_status_was_exercised() -> None:
    """Runs last in this file: the contract tests above reached every documented answer."""
    if len(EXERCISED) < 10:
        pytest.skip("run with the whole file")
    documented = {
        (method.upper(), path, int(status))
        for path, item in DOCUMENT["paths"].items()
        for method, operation in item.items()
        for status in operation["responses"]
        if status != "500"  # an unexpected failure, by definition not reachable from outside
    }
    missing = documented - EXERCISED
    assert not missing, sorted(missing)


# --- ssr officer login ---------------------------------------------------------------------------


async def test_cli_login(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "officer.key"
    save_identity(key, Identity(NACKA, world.region.officers[NACKA], EncryptionKeyPair.generate()))
    argv = ["--json", "officer", "login", "--key", str(key), "--url", world.api.url]
    assert await asyncio.to_thread(cli.main, argv) == 0
    answer = json.loads(capsys.readouterr().out)
    assert (answer["officer"], answer["scope"]) == (NACKA, "nacka")
    assert answer["expires"] == world.now[0] + 15 * 60_000
    assert (await world.api.get(f"{API}/audit/status", answer["token"])).status == 200

    text = ["officer", "login", "--key", str(key), "--url", world.api.url + "/"]
    assert await asyncio.to_thread(cli.main, text) == 0
    out = capsys.readouterr().out
    assert "logged in as sakerhetschef-nacka (scope: nacka)" in out
    assert out.strip().splitlines()[-1].startswith("A")  # the token, alone on its line

    stranger = tmp_path / "stranger.key"
    save_identity(stranger, Identity.generate("sakerhetschef-solna"))
    cases = [
        (["--key", str(stranger), "--url", world.api.url], 1, "unknown_officer"),
        (["--key", str(key), "--officer", REGIONAL, "--url", world.api.url], 1, "bad_signature"),
        (["--key", str(key), "--url", "http://127.0.0.1:1"], 1, "cannot reach"),
        (["--key", str(key), "--url", "ftp://example.org"], 2, "need http(s)"),
        (["--key", str(key), "--url", world.api.url, "--timeout", "0"], 2, "--timeout"),
    ]
    for extra, code, message in cases:
        assert await asyncio.to_thread(cli.main, ["officer", "login", *extra]) == code
        captured = capsys.readouterr()
        assert message in captured.err, captured.err
        assert "Traceback" not in captured.err


# --- real traffic --------------------------------------------------------------------------------


async def test_real_traffic_through_a_real_broker(
    running_broker: Service, actors: Actors, live_region: DemoRegion, tmp_path: Path
) -> None:
    net = await actors.start()
    to_solna, to_solna_data = await net.send("nacka", ["solna", "stockholm"], text="Lägesbild")
    solna_only, solna_data = await net.send("solna", ["stockholm"], label=SEKRETESS)
    refused = net.envelope("nacka", ["stockholms-hamnar"], label=SEKRETESS)
    await net.submit("nacka", refused)
    await net.accepted_and_delivered("nacka", to_solna_data)
    await net.accepted_and_delivered("solna", solna_data)
    await net.verdict("nacka", refused)
    assert running_broker.bus is not None
    js = running_broker.bus.js
    await wait_for_audit(js, "accepted", lambda e: True, count=2)
    await wait_for_audit(js, "rejected", lambda e: e["actor"] == "nacka")

    index = AuditIndex(tmp_path / "index.sqlite")
    try:
        assert await AuditFollower(running_broker.bus, index).catch_up() >= 3
        clock = [now_ms()]
        async with serve(
            live_region,
            index,
            clock=clock,
            directories=[live_region.directory],
            status=AuditWatch().status(),
        ) as world:
            nacka = await world.token(NACKA)
            regional = await world.token(REGIONAL)
            trace = await world.api.get(f"{API}/messages/{to_solna.id}", nacka)
            assert trace.status == 200
            assert trace.body["label"]["classification"] == INTERN.classification
            assert set(trace.body["receipts"]) == {"solna", "stockholm"}
            hidden = await world.api.get(f"{API}/messages/{solna_only.id}", nacka)
            assert (hidden.status, hidden.body["error"]) == (404, "not_found")
            assert (await world.api.get(f"{API}/messages/{solna_only.id}", regional)).status == 200
            traffic = (await world.api.get(f"{API}/actors/nacka/traffic", nacka)).body
            assert traffic["sent"]["total"] == 1
            assert traffic["refused"]["by_reason"] == {"recipient_not_cleared": 1}
            since = len(world.audit.events)
            denied = await world.api.get(f"{API}/actors/solna/traffic", nacka)
            assert (denied.status, denied.body["error"]) == (403, "out_of_scope")
            assert world.audit.new(since)[0]["kind"] == "officer_denied"
            solna = (await world.api.get(f"{API}/actors/solna/traffic", regional)).body
            assert solna["sent"]["by_classification"] == {"SEKRETESS": 1}
            events = (await world.api.get(f"{API}/events?kind=rejected", nacka)).body["events"]
            assert [e["reason"] for e in events] == ["recipient_not_cleared"]
            kinds = {e["kind"] for e in world.audit.events}
            assert kinds == {"officer_query", "officer_denied"}
    finally:
        index.close()
