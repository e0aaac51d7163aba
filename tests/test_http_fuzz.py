"""The officers' HTTP API fuzzed from its own OpenAPI document with schemathesis (issue 9).

A real broker (``Service`` on a real nats-server, the demo region, one message of real
traffic in its audit trail) serves its HTTP API on 127.0.0.1. The OpenAPI document is
fetched from the running server, and schemathesis generates requests for every
operation in it, valid (positive) and invalid (negative) ones, as three callers:

- nobody: no credentials (schemathesis makes up its own bearer tokens);
- the regional officer, and nacka's officer (scoped to one actor), each logged in
  with their directory key as ``tests/test_officer_api.py`` does.

The logged-in callers get a second pass with the path naming real data (the actor
``nacka``, the message sent above), so the generated query parameters reach the
audit index and the answers carry real traces, traffic and reviews.

Every answer must be no server error and conform to the document: a documented
status, the documented content type, documented headers and a body valid against
the documented schema. Failures are collected, not raised at the first, so a run
reports every finding at once.

Schemathesis calls with ``requests`` (blocking), so the cases run in a worker thread
while the broker serves on the test's event loop. Generation is derandomized (the
same cases every run) and bounded per operation, so CI sees a fixed, short run.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import hypothesis
import pytest
import requests
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup, ServerError
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from broker.demo import DemoRegion
from broker.officer_auth import sign_challenge
from broker.openapi import openapi_document
from broker.service import Service

from . import nats_fixtures, service_helpers
from .acceptance import record
from .service_helpers import WAIT, Actors

nats_server = nats_fixtures.nats_server
live_region = service_helpers.live_region
broker_factory = service_helpers.broker_factory
running_broker = service_helpers.running_broker
actors = service_helpers.actors

pytestmark = pytest.mark.slow

OPENAPI_PATH = "/api/v1/openapi.json"
OFFICERS = ("sakerhetschef-lansstyrelsen", "sakerhetschef-nacka")
KNOWN_ACTOR = "nacka"
MAX_EXAMPLES = 25
"""Cases per operation, generation mode, caller and pass: the bound on the run's length."""
REQUEST_TIMEOUT = 10.0
"""Seconds for one request; the broker answers in milliseconds."""

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
_PATH_PARAMETER = re.compile(r"\{([^}]+)\}")


@dataclass
class Tally:
    """What the fuzzing did and found."""

    operations: set[str] = field(default_factory=set)
    cases: int = 0
    statuses: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    server_errors: int = 0
    violations: list[str] = field(default_factory=list)


@dataclass
class Caller:
    """Who the requests come from: a name and the headers sent on every request."""

    name: str
    headers: dict[str, str]


def fuzz(
    schema: schemathesis.BaseSchema,
    base_url: str,
    caller: Caller,
    tally: Tally,
    known: dict[str, str] | None = None,
) -> None:
    """Every operation of ``schema`` in every mode; with ``known``, only those whose path
    takes one of its parameters, fixed to the known value."""
    with requests.Session() as session:
        for result in schema.get_all_operations():
            assert isinstance(result, Ok), result
            operation = result.ok()
            fixed = None
            if known is not None:
                names = _PATH_PARAMETER.findall(operation.path)
                fixed = {name: known[name] for name in names if name in known}
                if not fixed:
                    continue
            for mode in MODES:
                try:
                    _run(operation, mode, base_url, caller, session, tally, fixed)
                except hypothesis.errors.Unsatisfiable:
                    # Nothing to make invalid (no parameters, no body: the document itself).
                    assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label


def _run(
    operation: schemathesis.APIOperation[Any, Any, Any, Any],
    mode: schemathesis.GenerationMode,
    base_url: str,
    caller: Caller,
    session: requests.Session,
    tally: Tally,
    path_parameters: dict[str, str] | None,
) -> None:
    strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)

    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=strategy)
    def run(case: schemathesis.Case[Any]) -> None:
        tally.operations.add(operation.label)
        tally.cases += 1
        try:
            response = case.call_and_validate(
                base_url=base_url,
                session=session,
                headers=caller.headers,
                checks=CHECKS,
                timeout=REQUEST_TIMEOUT,
            )
        except FailureGroup as failures:
            tally.server_errors += any(isinstance(f, ServerError) for f in failures.exceptions)
            tally.violations.append(f"{caller.name}, {mode.value}: {failures}")
            return
        tally.statuses[(caller.name, operation.label, response.status_code)] += 1

    run()


async def login(url: str, officer: str, region: DemoRegion) -> str:
    """A bearer token for ``officer``, through the API, as tests/test_officer_api.py does."""
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/api/v1/auth/challenge", json={"officer": officer}) as r:
            assert r.status == 200, await r.text()
            challenge = (await r.json())["challenge"]
        signature = sign_challenge(region.officers[officer], challenge)
        body = {"officer": officer, "challenge": challenge, "signature": signature}
        async with http.post(f"{url}/api/v1/auth/token", json=body) as r:
            assert r.status == 200, await r.text()
            token: str = (await r.json())["token"]
            return token


async def wait_indexed(url: str, token: str, message_id: str) -> None:
    """Until the broker's audit index (which follows the stream) has the message."""
    auth = {"Authorization": f"Bearer {token}"}
    deadline = asyncio.get_running_loop().time() + WAIT
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(f"{url}/api/v1/messages/{message_id}", headers=auth) as r:
                if r.status == 200:
                    return
                assert r.status == 404, await r.text()
            assert asyncio.get_running_loop().time() < deadline, "the message was never indexed"
            await asyncio.sleep(0.1)


async def test_the_officer_api_survives_fuzzing_from_its_openapi_document(
    running_broker: Service, actors: Actors, live_region: DemoRegion
) -> None:
    net = await actors.start()
    header, data = await net.send(KNOWN_ACTOR, ["solna", "stockholm"], text="lägesbild")
    await net.accepted_and_delivered(KNOWN_ACTOR, data)
    assert running_broker.http is not None
    url = running_broker.http.url
    tokens = {officer: await login(url, officer, live_region) for officer in OFFICERS}
    await wait_indexed(url, tokens[OFFICERS[0]], header.id)
    known = {"actor": KNOWN_ACTOR, "message_id": header.id}

    def run_all() -> tuple[Tally, int]:
        served = requests.get(url + OPENAPI_PATH, timeout=REQUEST_TIMEOUT)
        assert served.status_code == 200
        document = served.json()
        assert document == openapi_document()
        # from_url would leave out the operation serving the document; from_dict keeps it.
        schema = schemathesis.openapi.from_dict(document)
        tally = Tally()
        fuzz(schema, url, Caller("nobody", {}), tally)
        for officer, token in tokens.items():
            caller = Caller(officer, {"Authorization": f"Bearer {token}"})
            fuzz(schema, url, caller, tally)
            fuzz(schema, url, caller, tally, known)
        return tally, len(list(schema.get_all_operations()))

    tally, documented = await asyncio.to_thread(run_all)
    record(
        "http_fuzz",
        operations=len(tally.operations),
        cases=tally.cases,
        server_errors=tally.server_errors,
        violations=len(tally.violations),
    )
    assert tally.violations == [], "\n".join(tally.violations[:10])
    assert tally.server_errors == 0
    assert len(tally.operations) == documented
    # The logged-in callers got past the login wall to real answers from the audit data.
    answered: Counter[tuple[str, str]] = Counter()
    for (caller, operation, status), count in tally.statuses.items():
        if status == 200:
            answered[(caller, operation)] += count
    for officer in OFFICERS:
        for operation in ("messages/{message_id}", "actors/{actor}/traffic", "events"):
            assert answered[(officer, f"GET /api/v1/{operation}")] > 0, tally.statuses
