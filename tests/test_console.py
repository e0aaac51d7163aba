"""The security officers' console in a real browser, against the real broker and officer API.

The page is driven by Playwright through Debian's ``/usr/bin/chromium`` (never a
downloaded browser: ``.ci/run`` installs the package). Behind it: a real broker
on a real nats-server carries real traffic; its audit stream is read into a real
:class:`AuditIndex` and served by ``add_officer_routes`` next to
``add_console_routes`` on one aiohttp application, as the broker serves them.

The officer signs in through the page the way a person would: the test reads
the command the page shows, signs the challenge with the demo officer's key
(what ``ssr officer sign`` does) and types the signature in.

Every wait is bounded (Playwright timeouts of at most 10 s).
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from playwright.async_api import BrowserContext, Page, async_playwright, expect

from broker import subjects
from broker.audit import AuditKind, audit_event
from broker.audit_index import AuditFollower, AuditIndex
from broker.auditlog import directory_versions
from broker.console import CONTENT_SECURITY_POLICY, add_console_routes
from broker.core import Label, Tlp
from broker.core.keys import SigningKeyPair
from broker.officer_api import OfficerContext, add_officer_routes
from broker.service import Service
from broker.web import HttpServer, make_app

from . import nats_fixtures, service_helpers
from .service_helpers import INTERN, SEKRETESS, Actors, now_ms, wait_until

# Fixtures bound to names here (pytest finds fixtures by module attribute).
nats_server = nats_fixtures.nats_server
live_region = service_helpers.live_region
broker_factory = service_helpers.broker_factory
running_broker = service_helpers.running_broker
actors = service_helpers.actors

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UI_TIMEOUT_MS = 10_000  # the bound on any one browser wait
ARTIFACTS = Path(__file__).parent / "artifacts"
SCREENSHOT = ARTIFACTS / "console-review.png"

OFFICER = "sakerhetschef-nacka"
LOGIN_PREFIX = "ssr-officer-login\n"  # what the officer's key signs, before the challenge
COMMAND = "ssr officer sign --key <your key file> "
XSS = "<img src=x onerror=alert(1)>"
SECRET_TEXT = "Lägesbild: evakuering av Fisksätra"  # message content: never on the page

STRICT_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def test_policy_is_the_strict_one() -> None:
    assert CONTENT_SECURITY_POLICY == (
        "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'"
    )


# --- the files and their headers (no browser, no broker) --------------------------------------


@pytest_asyncio.fixture
async def console_only() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application()
    add_console_routes(app)
    async with TestClient(TestServer(app)) as client:
        yield client


@pytest.mark.parametrize(
    ("path", "media_type"),
    [
        ("/console/", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/style.css", "text/css"),
    ],
)
async def test_files_are_served_with_strict_headers(
    console_only: TestClient[web.Request, web.Application], path: str, media_type: str
) -> None:
    for method in ("GET", "HEAD"):
        async with console_only.request(method, path) as response:
            assert response.status == 200
            assert response.content_type == media_type
            assert response.charset == "utf-8"
            for name, value in STRICT_HEADERS.items():
                assert response.headers[name] == value, name


async def test_bare_path_redirects_to_the_page(
    console_only: TestClient[web.Request, web.Application],
) -> None:
    async with console_only.get("/console", allow_redirects=False) as response:
        assert response.status == 302
        assert response.headers["Location"] == "/console/"
        for name, value in STRICT_HEADERS.items():
            assert response.headers[name] == value, name
    async with console_only.get("/console/missing.js") as response:
        assert response.status == 404


def test_the_page_loads_only_its_own_files_and_writes_no_markup() -> None:
    folder = Path(__file__).parents[1] / "broker" / "console"
    assert sorted(p.name for p in folder.iterdir()) == ["app.js", "index.html", "style.css"]
    page = (folder / "index.html").read_text(encoding="utf-8")
    assert re.findall(r'(?:src|href)="([^"#]+)"', page) == ["style.css", "app.js"]
    for inline in ("<style", " style=", "<script>"):  # no inline style or script
        assert inline not in page, inline
    assert not re.search(r"\son[a-z]+=", page)  # no inline event handlers
    script = (folder / "app.js").read_text(encoding="utf-8")
    code = re.sub(r"^\s*//.*$", "", script, flags=re.MULTILINE)  # the comments may name them
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in code, sink
    for storage in ("localStorage", "document.cookie"):  # the token stays in sessionStorage
        assert storage not in code, storage
    for text in (page, script, (folder / "style.css").read_text(encoding="utf-8")):
        assert not re.search(r"https?://", text)  # no CDN, no external fonts


# --- the real broker, its audit index and the officer API ----------------------------------------


@dataclass
class Site:
    """The broker's HTTP app with the officer API and the console, over real traffic."""

    url: str
    service: Service
    index: AuditIndex
    follower: AuditFollower
    officer_key: SigningKeyPair
    messages: dict[str, str] = field(default_factory=dict)  # name -> message id

    async def catch_up(self) -> None:
        await self.follower.catch_up()


async def real_traffic(net: Actors) -> dict[str, str]:
    """Nacka sends and receives, and has two submissions refused for different reasons."""
    sent: dict[str, str] = {}
    header, data = await net.send("nacka", ["stockholm", "sos-alarm"], label=INTERN)
    await net.accepted_and_delivered("nacka", data)
    sent["situation"] = header.id
    hostile = Label(policy="ssr", classification="SEKRETESS", tlp=Tlp.AMBER, legal=XSS)
    header, data = await net.send("nacka", ["stockholm"], label=hostile, text=SECRET_TEXT)
    await net.accepted_and_delivered("nacka", data)
    sent["hostile_label"] = header.id
    header, data = await net.send("stockholm", ["nacka"], label=INTERN)
    await net.accepted_and_delivered("stockholm", data)
    sent["to_nacka"] = header.id
    # Refused: a recipient not cleared for SEKRETESS, and a level above the ceiling.
    _, data = await net.send("nacka", ["stockholm", "stockholms-hamnar"], label=SEKRETESS)
    assert (await net.verdict("nacka", data)).reason == "recipient_not_cleared"
    hemlig = Label(policy="ssr", classification="HEMLIG", tlp=Tlp.RED)
    _, data = await net.send("nacka", ["stockholm"], label=hemlig)
    assert (await net.verdict("nacka", data)).reason == "above_ceiling"
    # Every delivered receipt is back at the sender before the trail is read.
    await wait_until(lambda: len(net["nacka"].receipts) == 3, "nacka's three receipts")
    await wait_until(lambda: len(net["stockholm"].receipts) == 1, "stockholm's receipt")
    return sent


@pytest_asyncio.fixture
async def site(running_broker: Service, actors: Actors, tmp_path: Path) -> AsyncIterator[Site]:
    service = running_broker
    assert service.bus is not None
    assert service.router is not None
    bus, state = service.bus, service.router.state
    region = actors.region
    messages = await real_traffic(await actors.start())

    index = AuditIndex(tmp_path / "audit-index.sqlite")
    follower = AuditFollower(bus, index)

    async def receipts_indexed() -> None:
        while index.kind_counts().get("receipt", 0) < 4:
            await follower.catch_up()
            await asyncio.sleep(0.05)

    await asyncio.wait_for(receipts_indexed(), service_helpers.WAIT)
    await service.seal_audit()
    await service.verify_audit()

    async def audit(
        kind: AuditKind,
        *,
        officer: str,
        actor: str | None = None,
        message: str | None = None,
        detail: str = "",
    ) -> None:
        event_id, body = audit_event(
            kind,
            at=now_ms(),
            broker=region.broker.broker,
            key=f"{officer}.{secrets.token_hex(16)}",
            actor=actor,
            message=message,
            officer=officer,
            detail=detail,
        )
        await bus.publish(subjects.audit_subject(kind.value), body, msg_id=f"a.{event_id}")

    async def versions() -> list[Any]:
        return await directory_versions(bus, state.pinned_authority)

    context = OfficerContext(
        index=index,
        identity=region.broker,
        policy=state.policy,
        directory=lambda: state.directory,
        directory_versions=versions,
        audit=audit,
        audit_status=service.audit_watch.status,
        clock=now_ms,
    )
    app = make_app(service.metrics, service)
    add_officer_routes(app, context)
    add_console_routes(app)
    try:
        async with HttpServer(app, host="127.0.0.1", port=0) as server:
            yield Site(server.url, service, index, follower, region.officers[OFFICER], messages)
    finally:
        index.close()


# --- the browser ---------------------------------------------------------------------------------


@dataclass
class Watch:
    """What the page did that it must not: dialogs (an injected alert) and CSP violations."""

    dialogs: list[str] = field(default_factory=list)
    csp_violations: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)


@pytest_asyncio.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    assert CHROMIUM.exists(), "Debian's chromium is needed: apt-get install chromium"
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            tmp_path / "chromium-profile",  # a fresh profile for every test
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            timeout=UI_TIMEOUT_MS,
            viewport={"width": 1280, "height": 900},
            locale="en-GB",
            timezone_id="Europe/Stockholm",
        )
        context.set_default_timeout(UI_TIMEOUT_MS)
        context.set_default_navigation_timeout(UI_TIMEOUT_MS)
        try:
            yield context
        finally:
            await context.close()


async def open_page(browser: BrowserContext) -> tuple[Page, Watch]:
    page = await browser.new_page()
    watch = Watch()

    async def dismiss(dialog: Any) -> None:
        watch.dialogs.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", dismiss)
    page.on("pageerror", lambda error: watch.page_errors.append(str(error)))
    page.on(
        "console",
        lambda message: (
            watch.csp_violations.append(message.text)
            if "Content Security Policy" in message.text
            else None
        ),
    )
    return page, watch


def alert_of(page: Page, view: str) -> Any:
    return page.locator(f"#view-{view} [role=alert]")


async def sign_in(page: Page, site: Site) -> None:
    await page.get_by_label("Officer id").fill(OFFICER)
    await page.get_by_role("button", name="Get challenge").click()
    command = page.locator("#login-command")
    await expect(command).to_contain_text(COMMAND)
    challenge = (await command.text_content() or "").removeprefix(COMMAND)
    assert re.fullmatch(r"[A-Za-z0-9_-]{40,}", challenge), challenge

    # A signature by another key is refused, and the page says so.
    stranger = SigningKeyPair.generate()
    wrong = stranger.sign((LOGIN_PREFIX + challenge).encode()).hex()
    await page.get_by_label("Signature (hex)").fill(wrong)
    await page.get_by_role("button", name="Sign in").click()
    await expect(alert_of(page, "login")).to_contain_text("Sign-in refused")
    await expect(alert_of(page, "login")).to_contain_text("does not verify")

    # What `ssr officer sign --key FILE CHALLENGE` prints: the hex Ed25519 signature.
    signature = site.officer_key.sign((LOGIN_PREFIX + challenge).encode("utf-8")).hex()
    await page.get_by_label("Signature (hex)").fill(signature)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#session-who")).to_contain_text(f"Signed in as {OFFICER}")
    await expect(page.locator("#session-who")).to_contain_text("scope: nacka")


def row(page: Page, caption: str, name: str) -> Any:
    """In the view on screen, the row of the table captioned ``caption`` (plus any count in
    parentheses) with a cell whose text starts with the word(s) ``name``."""
    titled = re.compile(rf"^{re.escape(caption)}( \(.*\))?$")
    table = page.locator(".view:not([hidden]) table").filter(
        has=page.locator("caption", has_text=titled)
    )
    starts = re.compile(rf"^{re.escape(name)}(\s|$)")
    return table.locator("tbody tr").filter(has=page.locator("th, td", has_text=starts))


async def test_officer_reviews_traces_and_is_refused_out_of_scope(
    site: Site, browser: BrowserContext
) -> None:
    page, watch = await open_page(browser)
    response = await page.goto(site.url + "/console")
    assert response is not None
    assert response.ok
    assert page.url == site.url + "/console/"
    headers = await response.all_headers()
    for name, value in STRICT_HEADERS.items():
        assert headers[name.lower()] == value, name

    # (a) Sign in; an unknown officer is told so first.
    await page.get_by_label("Officer id").fill("sakerhetschef-okand")
    await page.get_by_role("button", name="Get challenge").click()
    await expect(alert_of(page, "login")).to_contain_text("Unknown officer")
    await sign_in(page, site)
    storage = await page.evaluate("() => [sessionStorage.length, localStorage.length]")
    assert storage == [1, 0]  # the token is in this tab's sessionStorage only
    assert await browser.cookies() == []

    # (b) The access review of the officer's own actor for the last 30 days.
    await expect(page.get_by_label("Actor")).to_have_value("nacka")
    await page.get_by_role("button", name="Show review").click()
    await expect(page.locator("#review-title")).to_contain_text("Nacka")
    await expect(row(page, "Messages accepted", "Sent")).to_contain_text("SEKRETESS 1")
    await expect(row(page, "Messages accepted", "Sent").locator("td").nth(1)).to_have_text("2")
    await expect(row(page, "Messages accepted", "Received").locator("td").nth(1)).to_have_text("1")
    await expect(row(page, "Refusals by reason", "above_ceiling")).to_contain_text("1")
    await expect(row(page, "Refusals by reason", "recipient_not_cleared")).to_contain_text("1")
    await expect(page.locator("caption", has_text="Refusals by reason")).to_contain_text("total 2")
    await expect(row(page, "Clearance", "Held")).to_contain_text("SEKRETESS")
    await expect(row(page, "Clearance", "Highest received")).to_contain_text("INTERN")
    await expect(row(page, "Summary", "Activity")).to_contain_text("Active")
    await expect(row(page, "Keys", "signing")).to_have_count(1)
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(SCREENSHOT), full_page=True)

    # (c) A refused message opens its trace from the review: no recipients, the refusal.
    refused = row(page, "Latest refusals", "rejected").filter(has_text="above_ceiling")
    await refused.get_by_role("button", name=re.compile("^Trace message")).click()
    await expect(page.locator("#view-trace")).to_be_visible()
    await expect(row(page, "Refusals", "rejected")).to_contain_text("HEMLIG is above")
    await expect(row(page, "Message", "Accepted at")).to_contain_text("—")

    # A delivered message: recipients with receipt times, the label, never content. The
    # label's legal ground was chosen by the sender: it must show as text, not run.
    await page.get_by_label("Message id").fill(site.messages["hostile_label"])
    await page.get_by_role("button", name="Trace", exact=True).click()
    await expect(page.locator("#trace-title")).to_contain_text(site.messages["hostile_label"])
    delivered = row(page, "Recipients and receipts", "stockholm").locator("td").nth(1)
    await expect(delivered).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$"))
    await expect(row(page, "Label", "Classification")).to_contain_text("SEKRETESS")
    await expect(row(page, "Label", "Legal ground").locator("td")).to_have_text(XSS)
    assert await page.locator("main img").count() == 0
    assert SECRET_TEXT not in (await page.locator("body").inner_text())

    # An unknown message, like one outside the scope, is simply not found.
    await page.get_by_label("Message id").fill("0" * 32)
    await page.get_by_role("button", name="Trace", exact=True).click()
    await expect(alert_of(page, "trace")).to_contain_text("Not found")

    # Another actor's review is refused, and the page says why.
    await page.get_by_role("link", name="Access review").click()
    await page.get_by_label("Actor").fill("solna")
    await page.get_by_role("button", name="Show review").click()
    await expect(alert_of(page, "review")).to_contain_text(
        "Out of scope: your scope is nacka, not solna"
    )
    await expect(page.locator("#review-out")).to_be_empty()

    # (d) The audit trail's verification status.
    await page.get_by_role("link", name="Audit trail").click()
    await expect(page.locator("#audit-out .verdict")).to_contain_text("Verified.")
    await expect(page.locator("#audit-out")).to_contain_text("No findings.")

    # Log out: the token is gone and the sign-in form is back.
    await page.get_by_role("button", name="Log out").click()
    await expect(page.get_by_label("Officer id")).to_be_visible()
    assert await page.evaluate("() => sessionStorage.length") == 0

    assert watch.dialogs == []
    assert watch.csp_violations == []
    assert watch.page_errors == []

    # Every query the officer made through the page is in the audit trail.
    await site.catch_up()
    queries = site.index.events(kinds=[AuditKind.OFFICER_QUERY.value], limit=100)
    denied = site.index.events(kinds=[AuditKind.OFFICER_DENIED.value], limit=100)
    assert {e["officer"] for e in queries} == {OFFICER}
    assert any(e["message"] == site.messages["hostile_label"] for e in queries)
    assert any(e["actor"] == "solna" for e in denied)


async def test_keyboard_sign_in_then_a_forged_token_ends_the_session(
    site: Site, browser: BrowserContext
) -> None:
    """Labels, focus and Enter are enough to sign in and read a review; a token the broker
    did not issue sends the officer back to the sign-in form."""
    page, watch = await open_page(browser)
    await page.goto(site.url + "/console/")
    await expect(page.get_by_label("Officer id")).to_be_focused()
    await page.keyboard.type(OFFICER)
    await page.keyboard.press("Enter")
    await expect(page.get_by_label("Signature (hex)")).to_be_focused()
    command = await page.locator("#login-command").text_content() or ""
    challenge = command.removeprefix(COMMAND)
    await page.keyboard.type(site.officer_key.sign((LOGIN_PREFIX + challenge).encode()).hex())
    await page.keyboard.press("Tab")  # to the Sign in button
    await page.keyboard.press("Enter")
    await expect(page.get_by_label("Actor")).to_be_focused()
    await page.keyboard.press("Enter")  # submit the review form from its field
    await expect(page.locator("#review-title")).to_be_focused()

    async with (
        aiohttp.ClientSession() as http,
        http.get(site.url + "/api/v1/audit/status") as response,
    ):
        assert response.status == 401  # no cookie or other ambient credential

    await page.evaluate(
        """() => {
            const key = "ssr-console-session";
            const session = JSON.parse(sessionStorage.getItem(key));
            session.token = "forged";
            sessionStorage.setItem(key, JSON.stringify(session));
        }"""
    )
    await page.get_by_role("button", name="Show review").click()
    await expect(alert_of(page, "login")).to_contain_text("Your session has ended")
    await expect(page.get_by_label("Officer id")).to_be_visible()
    await expect(page.locator("#nav")).to_be_hidden()
    assert await page.evaluate("() => sessionStorage.length") == 0
    assert watch.page_errors == []
