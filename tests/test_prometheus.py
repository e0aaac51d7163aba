"""The monitoring kit of ``deploy/``: Prometheus config, alert rules and their unit tests,
the Grafana dashboard, checked against the metrics the broker and the adapter really serve.

Real parts: Debian's ``promtool`` lints a running broker's ``/metrics`` and runs the rule
tests, and a real ``prometheus`` server on a loopback port scrapes a running broker. A
renamed metric breaks :func:`test_every_metric_the_kit_uses_exists`. Every wait is bounded.

``/usr/bin/promtool`` and ``/usr/bin/prometheus`` come from Debian's ``prometheus``
package, which ``.ci/run`` installs; without them these tests fail rather than skip.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry, generate_latest

from broker.metrics import BrokerMetrics
from broker.service import Service
from clients.adapters.config import SourceConfig
from clients.adapters.service import IngestMetrics

from . import nats_fixtures, service_helpers
from .service_helpers import Actors, wait_until

nats_server = nats_fixtures.nats_server
live_region = service_helpers.live_region
broker_factory = service_helpers.broker_factory
running_broker = service_helpers.running_broker
actors = service_helpers.actors

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
PROMETHEUS_YML = PROMETHEUS_DIR / "prometheus.yml"
ALERTS_YML = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST_YML = PROMETHEUS_DIR / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "ssr-dashboard.json"

PROMTOOL = Path("/usr/bin/promtool")
PROMETHEUS = Path("/usr/bin/prometheus")

TOOL_TIMEOUT_S = 30.0  # one promtool run
SCRAPE_WAIT_S = 20.0  # Prometheus up and the broker's series queryable
QUERY_TIMEOUT_S = 5.0

RUNBOOK_ANCHORS = {
    "broker-down",
    "rejection-spike",
    "escalations",
    "consumer-lag",
    "audit-verification",
    "nats-disconnected",
    "adapter-source-failing",
    "outbox-growing",
}

_METRIC = re.compile(r"\bssr_[a-z_]+")
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def tool(path: Path) -> str:
    """``path`` if it is installed; otherwise fail (never skip) saying where it comes from."""
    if not path.is_file():
        pytest.fail(
            f"{path} is missing: install Debian's 'prometheus' package"
            " (.ci/run installs it: apt-get install --no-install-recommends prometheus)",
            pytrace=False,
        )
    return str(path)


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool(PROMTOOL), *args],
        input=None if stdin is None else stdin.decode("utf-8"),
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        check=False,
    )


def assert_clean_metrics(text: bytes, what: str) -> None:
    """``promtool check metrics``: no error and no lint problem (missing HELP, bad names...)."""
    result = promtool("check", "metrics", stdin=text)
    problems = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, f"promtool on {what}:\n{problems}"
    assert not problems, f"promtool on {what}:\n{problems}"


def exposed_names(registry: CollectorRegistry) -> set[str]:
    """The metric names a registry exposes, as PromQL sees them (counters with ``_total``)."""
    names = set()
    for family in registry.collect():
        names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return names


def used_names(text: str) -> set[str]:
    """Every ``ssr_*`` name in ``text``, histogram series suffixes stripped."""
    names = set()
    for name in _METRIC.findall(text):
        for suffix in _HISTOGRAM_SUFFIXES:
            if name.endswith(suffix):
                name = name.removesuffix(suffix)
                break
        names.add(name)
    return names


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def adapter_registry() -> CollectorRegistry:
    """An adapter's registry as its ``/metrics`` shows it after some work."""
    metrics = IngestMetrics(CollectorRegistry())
    metrics.start(
        [
            SourceConfig(name="vma", format="cap", mode="poll", url="http://127.0.0.1:1/vma"),
            SourceConfig(name="hook", format="cap", mode="webhook"),
        ]
    )
    metrics.outbox_depth.set_function(lambda: 3)
    metrics.documents.labels(source="vma").inc()
    metrics.accepted.labels(source="vma").inc(2)
    metrics.quarantined.labels(source="vma", reason=metrics.reason("malformed_xml")).inc()
    metrics.skipped.labels(source="vma", reason="expired").inc()
    metrics.cancels.labels(source="vma", cause="expired").inc()
    metrics.rejected.labels(source="vma", reason=metrics.reason("unknown_recipient")).inc()
    metrics.fetch_errors.labels(source="vma", kind="timeout").inc()
    metrics.lag.labels(source="vma").set(4.5)
    metrics.last_success.labels(source="vma").set(time.time())
    return metrics.registry


def family_total(service: Service, name: str) -> float:
    """The sum of every sample of ``name`` in the service's registry."""
    return sum(
        sample.value
        for family in service.metrics.registry.collect()
        for sample in family.samples
        if sample.name == name
    )


# --- promtool on the kit itself --------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("check", "config", str(PROMETHEUS_YML)),
        ("check", "rules", str(ALERTS_YML)),
        ("test", "rules", str(ALERTS_TEST_YML)),
    ],
    ids=["check-config", "check-rules", "test-rules"],
)
def test_promtool_accepts_the_config_rules_and_rule_tests(args: tuple[str, ...]) -> None:
    result = promtool(*args)
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"


def test_every_alert_has_a_severity_a_runbook_and_rule_tests() -> None:
    rules = ALERTS_YML.read_text(encoding="utf-8")
    alerts = re.findall(r"^\s*- alert: (\S+)$", rules, re.MULTILINE)
    assert len(alerts) == len(set(alerts)) >= 8, alerts
    blocks = re.split(r"^\s*- alert: ", rules, flags=re.MULTILINE)[1:]
    for name, block in zip(alerts, blocks, strict=True):
        assert re.search(r"severity: (critical|warning)$", block, re.MULTILINE), name
        for annotation in ("summary", "description"):
            assert re.search(rf"^\s+{annotation}: \S", block, re.MULTILINE), (name, annotation)
        [anchor] = re.findall(r'runbook: "docs/operations\.md#([a-z-]+)"', block)
        assert anchor in RUNBOOK_ANCHORS, (name, anchor)
    assert {a for b in blocks for a in re.findall(r"#([a-z-]+)\"", b)} == RUNBOOK_ANCHORS

    # Each alert is evaluated at least twice: once expecting it, once expecting silence.
    tests = ALERTS_TEST_YML.read_text(encoding="utf-8")
    evaluated = re.findall(r"alertname: (\S+)\n\s+exp_alerts:( \[\])?", tests)
    for name in alerts:
        outcomes = {silent == "" for alert, silent in evaluated if alert == name}
        assert outcomes == {True, False}, f"{name}: needs a firing and a silent rule test"


def test_every_metric_the_kit_uses_exists() -> None:
    known = exposed_names(BrokerMetrics(CollectorRegistry()).registry) | exposed_names(
        adapter_registry()
    )
    dashboard = "\n".join(dashboard_expressions())
    for what, text in [
        ("alerts.yml", ALERTS_YML.read_text(encoding="utf-8")),
        ("alerts_test.yml", ALERTS_TEST_YML.read_text(encoding="utf-8")),
        ("ssr-dashboard.json", dashboard),
    ]:
        used = used_names(text)
        assert used, what
        assert used <= known, f"{what} uses metrics nobody serves: {sorted(used - known)}"


def test_the_dashboard_covers_the_main_metrics_and_has_a_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    expressions = dashboard_expressions()
    used = used_names("\n".join(expressions))
    for wanted in [
        "ssr_broker_envelopes_received_total",
        "ssr_broker_envelopes_rejected_total",
        "ssr_broker_deliveries_total",
        "ssr_broker_receipts_total",
        "ssr_broker_escalations_total",
        "ssr_broker_consumer_pending_messages",
        "ssr_broker_nats_connected",
        "ssr_broker_directory_version",
        "ssr_broker_mode",
        "ssr_broker_open_incidents",
        "ssr_broker_audit_verified",
        "ssr_adapter_items_quarantined_total",
        "ssr_adapter_lag_seconds",
        "ssr_adapter_outbox_depth",
    ]:
        assert wanted in used, wanted
    quantiles = [e for e in expressions if e.startswith("histogram_quantile(")]
    for histogram in ("ssr_broker_decision_seconds", "ssr_broker_routing_seconds"):
        assert any(f"{histogram}_bucket" in e for e in quantiles), histogram


# --- the real /metrics pages --------------------------------------------------------------


def test_the_adapter_metrics_pass_promtool() -> None:
    assert_clean_metrics(generate_latest(adapter_registry()), "the adapter's registry")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrometheusServer:
    """A ``prometheus`` process on loopback, scraping ``target`` every second."""

    def __init__(self, folder: Path, target: str) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "prometheus.log"
        self.config = folder / "prometheus.yml"
        # The real alert rules too: the server itself must load them.
        self.config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  evaluation_interval: 1s\n"
            f"rule_files: ['{ALERTS_YML}']\n"
            "scrape_configs:\n"
            "  - job_name: ssr-broker\n"
            "    static_configs:\n"
            f"      - targets: ['{target}']\n",
            encoding="utf-8",
        )
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                tool(PROMETHEUS),
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.folder / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()  # by its own pid
            await asyncio.wait_for(self.process.wait(), 10.0)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-3000:]

    async def get(self, session: aiohttp.ClientSession, path: str, **params: str) -> Any:
        """The ``data`` of an API answer; ``None`` while the server is not answering."""
        try:
            async with session.get(
                f"{self.url}{path}",
                params=params,
                timeout=aiohttp.ClientTimeout(total=QUERY_TIMEOUT_S),
            ) as response:
                if response.status != 200:
                    return None
                body = await response.json()
        except (aiohttp.ClientError, TimeoutError):
            return None
        return body.get("data") if body.get("status") == "success" else None

    async def query_until(
        self,
        session: aiohttp.ClientSession,
        query: str,
        ok: Callable[[list[dict[str, Any]]], bool],
        deadline: float,
    ) -> list[dict[str, Any]]:
        """Ask ``query`` until ``ok(result)`` holds; fail with the last answer at ``deadline``."""
        result: list[dict[str, Any]] = []
        while True:
            assert self.process is not None
            if self.process.returncode is not None:
                pytest.fail(f"prometheus exited ({self.process.returncode}):\n{self.output()}")
            data = await self.get(session, "/api/v1/query", query=query)
            if data is not None:
                result = data["result"]
                if ok(result):
                    return result
            if time.monotonic() > deadline:
                pytest.fail(f"after {SCRAPE_WAIT_S} s, {query!r} gave {result!r}\n{self.output()}")
            await asyncio.sleep(0.25)


@pytest_asyncio.fixture
async def prometheus(tmp_path: Path, running_broker: Service) -> AsyncIterator[PrometheusServer]:
    assert running_broker.http is not None
    target = running_broker.http.url.removeprefix("http://").rstrip("/")
    server = PrometheusServer(tmp_path / "prometheus", target)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def traffic(net: Actors, service: Service) -> None:
    """Two accepted envelopes (delivered, with receipts) and one rejected submission."""
    for text in ("Lägesbild 1", "Lägesbild 2"):
        _, data = await net.send("nacka", ["stockholm", "solna"], text=text)
        await net.accepted_and_delivered("nacka", data)
    await net.submit("nacka", b"this is not an envelope")
    await wait_until(
        lambda: family_total(service, "ssr_broker_envelopes_rejected_total") > 0,
        "the broker to reject the malformed submission",
    )


async def test_a_broker_after_traffic_passes_promtool_and_a_real_prometheus_scrapes_it(
    running_broker: Service, actors: Actors, prometheus: PrometheusServer
) -> None:
    net = await actors.start()
    await traffic(net, running_broker)

    assert running_broker.http is not None
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{running_broker.http.url}/metrics") as response:
            assert response.status == 200
            page = await response.read()
        assert b"ssr_broker_envelopes_rejected_total{" in page
        assert b"ssr_broker_deliveries_total{" in page
        assert_clean_metrics(page, "the broker's /metrics")

        deadline = time.monotonic() + SCRAPE_WAIT_S
        [build] = await prometheus.query_until(
            session, "ssr_broker_build_info", lambda r: len(r) == 1, deadline
        )
        assert build["metric"]["job"] == "ssr-broker"
        assert build["value"][1] == "1"
        [up] = await prometheus.query_until(
            session, 'up{job="ssr-broker"}', lambda r: len(r) == 1, deadline
        )
        assert up["value"][1] == "1", up
        accepted = await prometheus.query_until(
            session,
            'sum(ssr_broker_envelopes_accepted_total{job="ssr-broker"})',
            lambda r: len(r) == 1 and float(r[0]["value"][1]) > 0,
            deadline,
        )
        assert float(accepted[0]["value"][1]) == 2.0

        # The server loaded the real alert rules, and a healthy broker fires none of them.
        rules = await prometheus.get(session, "/api/v1/rules")
        assert rules is not None
        loaded = {r["name"] for group in rules["groups"] for r in group["rules"]}
        assert len(loaded) == len(re.findall(r"^\s*- alert: ", ALERTS_YML.read_text(), re.M))
        firing = await prometheus.get(session, "/api/v1/alerts")
        assert firing is not None
        assert [a for a in firing["alerts"] if a["state"] == "firing"] == []
