"""The metrics registry and the operational HTTP surface, over a real socket on port 0."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import prometheus_client
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import broker
from broker.metrics import (
    ERROR_STAGES,
    MODES,
    STATUS_LABELS,
    BrokerMetrics,
    status_label,
)
from broker.web import MAX_FIELD_SIZE, MAX_LINE_SIZE, HttpServer, make_app

EXPECTED_NAMES = {
    "ssr_broker_envelopes_received_total",
    "ssr_broker_envelopes_accepted_total",
    "ssr_broker_envelopes_rejected_total",
    "ssr_broker_deliveries_total",
    "ssr_broker_receipts_total",
    "ssr_broker_receipts_rejected_total",
    "ssr_broker_escalations_total",
    "ssr_broker_notices_sent_total",
    "ssr_broker_requests_overdue_total",
    "ssr_broker_grant_requests_total",
    "ssr_broker_grants_refused_total",
    "ssr_broker_grants_total",
    "ssr_broker_grants_rejected_total",
    "ssr_broker_decision_seconds",
    "ssr_broker_routing_seconds",
    "ssr_broker_audit_events_total",
    "ssr_broker_audit_checkpoints_total",
    "ssr_broker_audit_verified",
    "ssr_broker_audit_sealed_through",
    "ssr_broker_nats_connected",
    "ssr_broker_nats_reconnects_total",
    "ssr_broker_nats_disconnects_total",
    "ssr_broker_consumer_pending_messages",
    "ssr_broker_consumer_redelivered_total",
    "ssr_broker_directory_version",
    "ssr_broker_mode",
    "ssr_broker_open_incidents",
    "ssr_broker_build_info",
    "ssr_broker_errors_total",
}

# Labels that would make cardinality unbounded (message ids) or per-actor (avoided).
FORBIDDEN_LABELS = {
    "message",
    "message_id",
    "msg_id",
    "id",
    "dedupe_id",
    "actor",
    "sender",
    "recipient",
    "incident",
    "subject",
    "path",
}

SECRET = "sekretess-detalj-som-inte-får-läcka"


class FakeHealth:
    """A HealthSource whose answers the test sets, and which can be made to fail."""

    def __init__(self) -> None:
        self.is_live = True
        self.checks = {"nats_connected": True, "streams_ready": True, "directory_loaded": True}
        self.fail = False

    def live(self) -> bool:
        if self.fail:
            raise RuntimeError(f"health probe exploded: {SECRET}")
        return self.is_live

    def ready(self) -> dict[str, bool]:
        if self.fail:
            raise KeyError(SECRET)
        return dict(self.checks)


@pytest.fixture
def metrics() -> BrokerMetrics:
    return BrokerMetrics(CollectorRegistry())


@pytest.fixture
def health() -> FakeHealth:
    return FakeHealth()


@pytest.fixture
async def server(metrics: BrokerMetrics, health: FakeHealth) -> AsyncIterator[HttpServer]:
    async with HttpServer(make_app(metrics, health), host="127.0.0.1", port=0) as srv:
        yield srv


@pytest.fixture
async def http(server: HttpServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=server.url) as session:
        yield session


def sample(metrics: BrokerMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def raw_request(server: HttpServer, data: bytes) -> tuple[int, bytes]:
    """Send raw bytes, return the status code and the whole response (read to EOF, so a
    well-formed request must say ``Connection: close``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(data)
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()
        await writer.wait_closed()
    status_line = response.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1."), response[:200]
    return int(status_line.split()[1]), response


# --- the endpoints ---------------------------------------------------------------


async def test_healthz_ok_while_live(http: aiohttp.ClientSession):
    async with http.get("/healthz") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert await resp.json() == {"status": "ok"}
        assert resp.headers["Cache-Control"] == "no-store"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def test_healthz_503_when_not_live(http: aiohttp.ClientSession, health: FakeHealth):
    health.is_live = False
    async with http.get("/healthz") as resp:
        assert resp.status == 503
        assert (await resp.json())["status"] == "unavailable"


async def test_head_healthz_is_allowed(http: aiohttp.ClientSession):
    async with http.head("/healthz") as resp:
        assert resp.status == 200


async def test_readyz_200_with_the_checks(http: aiohttp.ClientSession, health: FakeHealth):
    async with http.get("/readyz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ready", "checks": health.checks}


async def test_readyz_503_names_the_failing_check(http: aiohttp.ClientSession, health: FakeHealth):
    health.checks["streams_ready"] = False
    async with http.get("/readyz") as resp:
        assert resp.status == 503
        body = await resp.json()
        assert body["status"] == "not_ready"
        assert body["checks"] == {
            "nats_connected": True,
            "streams_ready": False,
            "directory_loaded": True,
        }


async def test_readyz_without_any_check_is_not_ready(
    http: aiohttp.ClientSession, health: FakeHealth
):
    health.checks = {}
    async with http.get("/readyz") as resp:
        assert resp.status == 503


async def test_metrics_endpoint_serves_parseable_text_with_counts(
    http: aiohttp.ClientSession, metrics: BrokerMetrics
):
    metrics.received.labels(status="exercise").inc(3)
    metrics.rejected.labels(reason="above_ceiling", status="actual").inc()
    metrics.deliveries.labels(classification="SEKRETESS", priority="flash", status="actual").inc(2)
    metrics.decision_seconds.observe(0.0002)
    metrics.routing_seconds.observe(0.3)
    metrics.nats_connected.set(1)
    metrics.set_mode("activated")

    async with http.get("/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == prometheus_client.CONTENT_TYPE_LATEST
        text = await resp.text()

    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples["ssr_broker_envelopes_received_total", (("status", "exercise"),)] == 3
    assert (
        samples[
            "ssr_broker_envelopes_rejected_total",
            (("reason", "above_ceiling"), ("status", "actual")),
        ]
        == 1
    )
    key = (("classification", "SEKRETESS"), ("priority", "flash"), ("status", "actual"))
    assert samples["ssr_broker_deliveries_total", key] == 2
    assert samples["ssr_broker_decision_seconds_bucket", (("le", "0.00025"),)] == 1
    assert samples["ssr_broker_routing_seconds_count", ()] == 1
    assert samples["ssr_broker_nats_connected", ()] == 1
    assert samples["ssr_broker_mode", (("mode", "activated"),)] == 1
    assert samples["ssr_broker_mode", (("mode", "ordinary"),)] == 0
    for name in EXPECTED_NAMES:
        assert f"# TYPE {name.removesuffix('_total')}" in text, name


# --- errors are JSON, never a traceback ------------------------------------------


async def test_unknown_path_is_a_json_404_that_does_not_echo_the_path(
    http: aiohttp.ClientSession,
):
    async with http.get("/no/such/<script>thing") as resp:
        assert resp.status == 404
        assert resp.content_type == "application/json"
        body = await resp.json()
        assert body["error"] == "not_found"
        assert body["status"] == 404
        assert "script" not in json.dumps(body)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND"])
async def test_wrong_method_is_a_json_405_with_allow(http: aiohttp.ClientSession, method: str):
    async with http.request(method, "/metrics") as resp:
        assert resp.status == 405
        assert resp.content_type == "application/json"
        body = await resp.json()
        assert body["error"] == "method_not_allowed"
        assert "GET" in body["allowed"]
        assert "GET" in resp.headers["Allow"]


async def test_exception_in_health_source_is_a_json_500_without_traceback(
    http: aiohttp.ClientSession, health: FakeHealth, metrics: BrokerMetrics
):
    health.fail = True
    for path in ("/healthz", "/readyz"):
        async with http.get(path) as resp:
            assert resp.status == 500
            assert resp.content_type == "application/json"
            raw = await resp.text()
            assert json.loads(raw) == {
                "error": "internal_error",
                "status": 500,
                "message": "internal server error",
            }
            for leak in ("Traceback", "RuntimeError", "KeyError", "exploded", SECRET, ".py"):
                assert leak not in raw
    assert sample(metrics, "ssr_broker_errors_total", stage="http") == 2

    # The server keeps working afterwards.
    health.fail = False
    async with http.get("/healthz") as resp:
        assert resp.status == 200


# --- hostile requests: 4xx, never 500 --------------------------------------------


async def test_very_long_path_is_refused_with_4xx(server: HttpServer):
    path = "/" + "a" * (MAX_LINE_SIZE + 100)
    status, response = await raw_request(server, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert 400 <= status < 500
    assert b"Traceback" not in response


async def test_long_path_within_the_line_limit_is_a_404(http: aiohttp.ClientSession):
    async with http.get("/" + "a" * (MAX_LINE_SIZE - 200)) as resp:
        assert resp.status == 404


async def test_oversized_header_is_refused_with_4xx(server: HttpServer):
    big = "x" * (MAX_FIELD_SIZE + 100)
    status, response = await raw_request(
        server, f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n".encode()
    )
    assert 400 <= status < 500
    assert b"Traceback" not in response


async def test_too_many_headers_are_refused_with_4xx(server: HttpServer):
    headers = "".join(f"X-H{i}: v\r\n" for i in range(500))
    status, _ = await raw_request(
        server, f"GET /healthz HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode()
    )
    assert 400 <= status < 500


@pytest.mark.parametrize(
    "request_line",
    [
        b"G@T /healthz HTTP/1.1",  # not a token
        b"FOO /healthz HTTP/1.1",  # a token, just not a method we serve
        b"TRACE /healthz HTTP/1.1",
        b"CONNECT 127.0.0.1:80 HTTP/1.1",
        b"GET /healthz HTTP/9.9",
        b"GET healthz HTTP/1.1",
        b"GET /%00%ff/../../etc/passwd HTTP/1.1",
        b"GET /metrics/../../healthz HTTP/1.1",
        b"\x16\x03\x01\x02\x00\x01\x00",  # a TLS ClientHello on the plain port
    ],
)
async def test_malformed_or_odd_request_lines_get_4xx(server: HttpServer, request_line: bytes):
    status, response = await raw_request(
        server, request_line + b"\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert 400 <= status < 500
    assert b"Traceback" not in response


async def test_body_on_a_get_endpoint_is_refused(server: HttpServer):
    body = b"x" * 200_000
    head = (
        "POST /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    status, _ = await raw_request(server, head.encode() + body)
    assert status == 405


async def test_query_strings_are_ignored(http: aiohttp.ClientSession):
    query = "&".join(f"k{i}=%00%ff<>'\"" for i in range(200))
    async with http.get(f"/healthz?{query}") as resp:
        assert resp.status == 200
    async with http.get("/metrics", params={"name[]": "ssr_broker_mode", "x": "y" * 2000}) as resp:
        assert resp.status == 200


# --- the metrics object ----------------------------------------------------------


def test_every_metric_is_registered_with_conventional_names(metrics: BrokerMetrics):
    families = list(metrics.registry.collect())
    names = set()
    for family in families:
        assert family.name.startswith("ssr_broker_"), family.name
        if family.type == "counter":
            names.add(family.name + "_total")
            assert {s.name for s in family.samples} <= {
                family.name + "_total",
                family.name + "_created",
            }
        else:
            names.add(family.name)
        if family.type == "histogram":
            assert family.name.endswith("_seconds")
    assert names == EXPECTED_NAMES


def test_no_metric_has_an_unbounded_or_per_actor_label(metrics: BrokerMetrics):
    # Use every label so that labelled families expose their label names.
    metrics.rejected.labels(reason="replay", status="test").inc()
    metrics.receipts_rejected.labels(reason="bad_signature").inc()
    metrics.deliveries.labels(classification="INTERN", priority="routine", status="test").inc()
    metrics.audit_events.labels(kind="accepted").inc()
    label_names = {
        name for family in metrics.registry.collect() for s in family.samples for name in s.labels
    }
    assert label_names == {"status", "reason", "classification", "priority", "kind"} | {
        "mode",
        "version",
        "stage",
        "le",
    }
    assert not label_names & FORBIDDEN_LABELS


def test_status_label_is_bounded():
    assert status_label("actual") == "actual"
    assert status_label(broker.core.Status.TEST) == "test"
    for hostile in (None, "", "ACTUAL", "x" * 10_000, 42, "actual\n", b"actual"):
        assert status_label(hostile) == "unknown"
    assert set(STATUS_LABELS) == {"actual", "exercise", "test", "unknown"}


def test_two_metrics_on_two_registries_do_not_collide():
    a = BrokerMetrics(CollectorRegistry())
    b = BrokerMetrics(CollectorRegistry())
    a.received.labels(status="actual").inc(5)
    b.received.labels(status="actual").inc()
    a.nats_connected.set(1)
    assert sample(a, "ssr_broker_envelopes_received_total", status="actual") == 5
    assert sample(b, "ssr_broker_envelopes_received_total", status="actual") == 1
    assert sample(b, "ssr_broker_nats_connected") == 0


def test_the_global_default_registry_is_never_touched():
    BrokerMetrics(CollectorRegistry())
    default_names = {f.name for f in prometheus_client.REGISTRY.collect()}
    assert not any(name.startswith("ssr_broker") for name in default_names)


def test_registering_twice_on_one_registry_fails_loudly():
    registry = CollectorRegistry()
    BrokerMetrics(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        BrokerMetrics(registry)


def test_cheap_label_sets_are_pre_initialised(metrics: BrokerMetrics):
    for status in STATUS_LABELS:
        assert sample(metrics, "ssr_broker_envelopes_received_total", status=status) == 0
        assert sample(metrics, "ssr_broker_receipts_total", kind="acknowledged", status=status) == 0
        assert sample(metrics, "ssr_broker_escalations_total", priority="flash", status=status) == 0
    for stage in ERROR_STAGES:
        assert sample(metrics, "ssr_broker_errors_total", stage=stage) == 0
    for kind in ("accepted", "rejected", "escalation", "receipt"):
        assert sample(metrics, "ssr_broker_notices_sent_total", kind=kind) == 0
    assert "http" in ERROR_STAGES


def test_build_info_carries_the_version(metrics: BrokerMetrics):
    assert sample(metrics, "ssr_broker_build_info", version=broker.__version__) == 1
    other = BrokerMetrics(CollectorRegistry(), version="9.9.9")
    assert sample(other, "ssr_broker_build_info", version="9.9.9") == 1


def test_set_mode_marks_exactly_one_mode(metrics: BrokerMetrics):
    assert all(sample(metrics, "ssr_broker_mode", mode=m) == 0 for m in MODES)
    for current in MODES:
        metrics.set_mode(current)
        values = {m: sample(metrics, "ssr_broker_mode", mode=m) for m in MODES}
        assert values == {m: (1 if m == current else 0) for m in MODES}
    metrics.set_mode(broker.core.Mode.ORDINARY)
    assert sample(metrics, "ssr_broker_mode", mode="ordinary") == 1


def test_unknown_mode_and_stage_are_refused(metrics: BrokerMetrics):
    with pytest.raises(ValueError, match="unknown mode"):
        metrics.set_mode("panic")
    with pytest.raises(ValueError, match="unknown error stage"):
        metrics.count_error("everywhere")  # type: ignore[arg-type]
    assert sample(metrics, "ssr_broker_mode", mode="panic") is None


def test_render_returns_text_and_content_type(metrics: BrokerMetrics):
    body, content_type = metrics.render()
    assert content_type == prometheus_client.CONTENT_TYPE_LATEST
    assert body.startswith(b"# HELP ssr_broker_")


# --- the server's lifecycle ------------------------------------------------------


async def test_server_binds_a_free_port_and_releases_it(metrics: BrokerMetrics, health: FakeHealth):
    srv = HttpServer(make_app(metrics, health), port=0)
    with pytest.raises(RuntimeError):
        _ = srv.port
    async with srv:
        assert srv.port > 0
        assert srv.url == f"http://127.0.0.1:{srv.port}"
        with pytest.raises(RuntimeError, match="already started"):
            await srv.start()
        port = srv.port
        async with aiohttp.ClientSession() as session, session.get(srv.url + "/healthz") as r:
            assert r.status == 200
    with pytest.raises(RuntimeError):
        _ = srv.port
    await srv.stop()  # idempotent
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_two_servers_side_by_side(health: FakeHealth):
    a, b = BrokerMetrics(CollectorRegistry()), BrokerMetrics(CollectorRegistry())
    async with (
        HttpServer(make_app(a, health)) as sa,
        HttpServer(make_app(b, health)) as sb,
        aiohttp.ClientSession() as session,
    ):
        assert sa.port != sb.port
        a.set_open_incidents(["actual"] * 4 + ["exercise"])
        async with session.get(sa.url + "/metrics") as r:
            text = await r.text()
            assert 'ssr_broker_open_incidents{status="actual"} 4.0' in text
            assert 'ssr_broker_open_incidents{status="exercise"} 1.0' in text
        async with session.get(sb.url + "/metrics") as r:
            assert 'ssr_broker_open_incidents{status="actual"} 0.0' in await r.text()
