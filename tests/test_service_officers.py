"""The broker service serves the officers' API and console itself, with its index kept
current from the audit stream: a security officer logs in and reviews live traffic."""

from __future__ import annotations

import asyncio

import aiohttp

from broker.demo import DemoRegion
from broker.officer_auth import sign_challenge
from broker.service import Service

from . import nats_fixtures, service_helpers
from .service_helpers import Actors, wait_until

nats_server = nats_fixtures.nats_server
live_region = service_helpers.live_region
broker_factory = service_helpers.broker_factory
running_broker = service_helpers.running_broker
actors = service_helpers.actors


async def test_an_officer_reviews_live_traffic_through_the_service(
    running_broker: Service, actors: Actors, live_region: DemoRegion
) -> None:
    net = await actors.start()
    _, data = await net.send("nacka", ["solna"], text="lägesbild")
    await net.accepted_and_delivered("nacka", data)
    assert running_broker.http is not None
    url = running_broker.http.url
    officer = "sakerhetschef-nacka"
    key = live_region.officers[officer]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/console/") as page:
            assert page.status == 200
            assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
        async with http.post(f"{url}/api/v1/auth/challenge", json={"officer": officer}) as r:
            challenge = (await r.json())["challenge"]
        signature = sign_challenge(key, challenge)
        body = {"officer": officer, "challenge": challenge, "signature": signature}
        async with http.post(f"{url}/api/v1/auth/token", json=body) as r:
            assert r.status == 200, await r.text()
            token = (await r.json())["token"]
        auth = {"Authorization": f"Bearer {token}"}

        async def sent() -> int:
            async with http.get(f"{url}/api/v1/actors/nacka/traffic", headers=auth) as r:
                assert r.status == 200, await r.text()
                return int((await r.json())["sent"]["total"])

        deadline = asyncio.get_running_loop().time() + 10
        while await sent() < 1:  # the index follows the stream
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.2)
        async with http.get(f"{url}/api/v1/actors/solna/traffic", headers=auth) as r:
            assert r.status == 403
        async with http.get(f"{url}/api/v1/audit/status", headers=auth) as r:
            assert r.status == 200
    assert running_broker.audit_index is not None
    index = running_broker.audit_index
    await wait_until(
        lambda: len(index.events(kinds=("officer_query", "officer_denied"), limit=10)) >= 3,
        "the officer's own queries in the audit trail",
    )
