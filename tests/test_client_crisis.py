"""The client's crisis workflows: archive, key grants, situation picture, requests, press
lines, offline bundles and exercise traffic.

The first half tests the pure parts over real SQLite and real envelopes of the demo
region (``clients._archive``, ``clients._crisis``) and the refusals a client makes
before anything reaches NATS. The second half runs real nats-server and broker
processes with real ``Client`` objects (the fixtures of ``test_client_e2e``), under a
policy with a catalogue of incident types. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from broker import subjects
from broker.core import (
    Control,
    Header,
    Incident,
    Label,
    MessageType,
    Mode,
    NoticeKind,
    Policy,
    PressStage,
    RecipientKey,
    Reference,
    ReferenceKind,
    Status,
    Tlp,
    decrypt_own,
    frame,
    load_policy,
    make_bundle,
    make_grant,
    make_notice,
    read_envelope,
    seal_envelope,
)
from broker.core.grants import GrantBody
from broker.demo import DemoRegion
from broker.embedded import EmbeddedNats
from broker.service import Service
from clients import (
    AddressError,
    BundleFileError,
    BundleRefused,
    Client,
    ImportResult,
    Message,
    Rejected,
    SendError,
)
from clients import _archive as archive_module
from clients._archive import Archive, ArchivedMessage, Direction
from clients._crisis import (
    incident_from_archive,
    missing_entries,
    press_lines,
    press_recipients,
    request_status,
    situation_picture,
)
from clients._errors import StoreError

from . import nats_fixtures, service_helpers
from .conftest import HOUR, NOW
from .service_helpers import WAIT, BrokerFactory, now_ms, wait_until
from .test_client_e2e import Network, nothing_waiting, quiet

nats_server = nats_fixtures.nats_server
live_region = service_helpers.live_region
broker_factory = service_helpers.broker_factory

LN = "lansstyrelsen-stockholm"  # an authority and activator: opens incidents
INTERN_AMBER = Label(policy="ssr", classification="INTERN", tlp=Tlp.AMBER)
CATALOGUE = """
[incident_types.storm]
name = "Storm"
groups = ["kommunikatorer"]
classification = "INTERN"
tlp = "AMBER"
priority = "priority"
communicators = "kommunikatorer"
checklist = ["Activate the TiB", "First lägesbild within 60 minutes"]

[incident_types.flooding]
name = "Översvämning"
classification = "INTERN"
tlp = "GREEN"
"""
# The region's policy with this module's own catalogue in place of any it ships with.
POLICY_TOML = (Path(__file__).parents[1] / "deploy" / "policy.toml").read_text(
    encoding="utf-8"
).split("\n[incident_types.")[0] + CATALOGUE


# --- real envelopes for the pure parts ----------------------------------------------------------


@dataclass
class Traffic:
    """Envelopes of the demo region, built for real and archived as one actor holds them."""

    region: DemoRegion
    me: str
    keys: dict[str, bytes] = field(default_factory=dict)
    at: int = NOW  # the default "now": created, and the keys' validity

    def message(
        self,
        sender: str,
        to: tuple[str, ...],
        *,
        type: MessageType = MessageType.SITUATION_REPORT,
        incident: str | None = "storm-1",
        created: int | None = None,
        expires: int | None = None,
        references: tuple[Reference, ...] = (),
        control: Control | None = None,
        payload: bytes = b"Trees down on road 222",
        status: Status = Status.ACTUAL,
        label: Label = INTERN_AMBER,
    ) -> ArchivedMessage:
        directory = self.region.directory
        created = self.at if created is None else created
        sealed = seal_envelope(
            sender=self.region.identities[sender],
            recipients=[RecipientKey.of(directory.actor(a), self.at) for a in to],  # type: ignore[arg-type]
            label=label,
            message_type=type,
            payload=payload,
            created=created,
            expires=self.at + HOUR if expires is None else expires,
            incident=incident,
            references=references,
            control=control,
            status=status,
            content_type="text/plain",
        )
        signed = read_envelope(sealed.raw, directory)
        self.keys[signed.header.id] = sealed.content_key
        direction = Direction.SENT if sender == self.me else Direction.RECEIVED
        key = sealed.content_key if direction is Direction.SENT else None
        return ArchivedMessage(direction, signed.header, signed.header_hash, sealed.raw, key)

    def payload(self, row: ArchivedMessage) -> bytes | None:
        """Decrypts for real, with the content key the sender kept."""
        signed = read_envelope(row.data, self.region.directory)
        return decrypt_own(signed, self.keys[row.message_id]).payload


def ref(kind: ReferenceKind, row: ArchivedMessage) -> Reference:
    return Reference(kind=kind, message=row.message_id, header_hash=row.header_hash)


# --- the archive --------------------------------------------------------------------------------


def test_archive_keeps_each_message_once_finds_references_and_purges_after_leeway(
    region: DemoRegion, tmp_path: Path
) -> None:
    t = Traffic(region, "nacka")
    report = t.message("nacka", ("solna",))
    reply = t.message("solna", ("nacka",), type=MessageType.COORDINATION, created=NOW + 1,
                      references=(ref(ReferenceKind.REPLY, report),))  # fmt: skip
    other = t.message("solna", ("nacka",), incident="flood-9", expires=NOW + 2 * HOUR)
    path = tmp_path / "archive.sqlite"
    with Archive(path, leeway_ms=1000) as archive:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert archive.add(Direction.SENT, report.header, report.header_hash, report.data,
                           content_key=report.content_key)  # fmt: skip
        assert archive.add(Direction.RECEIVED, reply.header, reply.header_hash, reply.data)
        assert archive.add(Direction.RECEIVED, other.header, other.header_hash, other.data)
        assert not archive.add(Direction.RECEIVED, reply.header, reply.header_hash, b"again")
        assert len(archive) == 3
        got = archive.get(report.message_id)
        assert got is not None
        assert (got.direction, got.header, got.data) == (Direction.SENT, report.header, report.data)
        assert got.content_key == report.content_key
        assert [m.message_id for m in archive.of_incident("storm-1")] == [
            report.message_id,
            reply.message_id,
        ]
        assert [
            m.message_id for m in archive.of_incident("storm-1", (MessageType.SITUATION_REPORT,))
        ] == [report.message_id]
        assert [m.message_id for m in archive.referencing(report.message_id)] == [reply.message_id]
        assert archive.referencing(report.message_id, ReferenceKind.CANCEL) == []
        assert archive.frames(incident="flood-9", now=NOW) == [other.data]
        assert len(archive.frames(incident=None, now=NOW)) == 3
        assert archive.frames(incident=None, now=NOW + HOUR) == [other.data]
        # Kept until expires + leeway, then forgotten with its references.
        assert archive.purge(NOW + HOUR + 999) == 0
        assert archive.purge(NOW + HOUR + 1000) == 2
        assert archive.referencing(report.message_id) == []
        assert report.message_id not in archive
        assert other.message_id in archive
    with Archive(path) as reopened:  # on disk, not in memory
        assert len(reopened) == 1


def test_archive_refuses_bad_rows_and_stops_at_its_bound(
    region: DemoRegion, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = Traffic(region, "nacka")
    sent, received = t.message("nacka", ("solna",)), t.message("solna", ("nacka",))
    with Archive(tmp_path / "archive.sqlite") as archive:
        for kwargs in (
            {"direction": Direction.RECEIVED, "content_key": b"k" * 32},  # only sent keeps keys
            {"direction": Direction.SENT, "content_key": b"short"},
            {"direction": Direction.SENT, "data": b""},
            {"direction": Direction.SENT,
             "data": b"x" * (archive_module.MAX_ARCHIVE_ITEM_BYTES + 1)},
        ):  # fmt: skip
            args: dict[str, Any] = {"data": sent.data, "content_key": None} | kwargs
            with pytest.raises(StoreError) as err:
                archive.add(args.pop("direction"), sent.header, sent.header_hash, **args)
            assert err.value.code == "invalid_argument"
        monkeypatch.setattr(archive_module, "MAX_ARCHIVED", 1)
        assert archive.add(Direction.SENT, sent.header, sent.header_hash, sent.data)
        with pytest.raises(StoreError) as err:
            archive.add(Direction.RECEIVED, received.header, received.header_hash, received.data)
        assert err.value.code == "full"


# --- the situation picture, requests and press lines, from archived envelopes ------------------


def test_situation_picture_keeps_the_latest_report_per_actor_and_marks_the_rest(
    region: DemoRegion,
) -> None:
    t = Traffic(region, "nacka")
    to = ("nacka", "solna", "stockholm", LN)
    first = t.message("solna", to, created=NOW, payload=b"solna 1")
    second = t.message("solna", to, created=NOW + 10, payload=b"solna 2")
    mine = t.message("nacka", ("solna", LN), created=NOW + 5, payload=b"nacka 1")
    cancelled = t.message("stockholm", to, created=NOW + 1, payload=b"stockholm 1")
    cancel = t.message("stockholm", to, created=NOW + 2, type=MessageType.COORDINATION,
                       references=(ref(ReferenceKind.CANCEL, cancelled),))  # fmt: skip
    short = t.message(LN, to, created=NOW + 3, expires=NOW + 1000, payload=b"ln 1")
    updated = t.message("nacka", ("solna", LN), created=NOW + 6, payload=b"nacka 2")
    # Someone else's update or cancel changes nothing: only the sender withdraws its report.
    foreign = t.message("solna", to, created=NOW + 11, type=MessageType.COORDINATION,
                        references=(ref(ReferenceKind.CANCEL, updated),
                                    ref(ReferenceKind.UPDATE, updated)))  # fmt: skip
    rows = sorted(
        [first, second, mine, cancelled, cancel, short, updated, foreign],
        key=lambda r: r.header.created,
    )
    picture = situation_picture("storm-1", rows, now=NOW + 2000, payload=t.payload, missing=None)
    assert {a: e.text for a, e in picture.current.items()} == {
        "solna": "solna 2",
        "nacka": "nacka 2",
    }
    states = {e.message_id: e.state for e in picture.history}
    assert states == {
        first.message_id: "superseded",
        second.message_id: "current",
        mine.message_id: "superseded",
        updated.message_id: "current",
        cancelled.message_id: "cancelled",
        short.message_id: "expired",
    }
    expired = next(e for e in picture.history if e.state == "expired")
    assert expired.payload is None
    assert expired.actor == LN
    assert picture.missing is None
    assert not picture.online
    assert [e.created for e in picture.history] == sorted(e.created for e in picture.history)
    # An UPDATE by the same sender supersedes even without a later report.
    fix = t.message("solna", to, created=NOW + 12, type=MessageType.COORDINATION,
                    references=(ref(ReferenceKind.UPDATE, second),))  # fmt: skip
    again = situation_picture("storm-1", [*rows, fix], now=NOW + 2000, payload=t.payload,
                              missing=())  # fmt: skip
    assert "solna" not in again.current
    assert again.online
    assert again.missing == ()


def test_missing_entries_are_unexpired_index_entries_of_mine_not_held(region: DemoRegion) -> None:
    from broker.core import IncidentEntry

    t = Traffic(region, "nacka")
    held = t.message("solna", ("nacka",))
    lacking = t.message("solna", ("nacka",), created=NOW + 1)
    others = t.message("solna", ("stockholm",))
    expired = t.message("solna", ("nacka",), expires=NOW + 10)
    entries = [IncidentEntry.of(r.header, r.header_hash) for r in (held, lacking, others, expired)]
    found = missing_entries(entries, incident="storm-1", me="nacka", now=NOW + 100,
                            held={held.message_id}.__contains__)  # fmt: skip
    assert [e.id for e in found] == [lacking.message_id]
    assert (
        missing_entries(entries, incident="flood-9", me="nacka", now=NOW, held=set().__contains__)
        == []
    )


def test_request_status_counts_replies_from_recipients_and_overdue_after_the_deadline(
    region: DemoRegion,
) -> None:
    t = Traffic(region, LN)
    request = t.message(LN, ("nacka", "solna", "stockholm"), type=MessageType.REQUEST,
                        control=Control(deadline=NOW + 1000))  # fmt: skip
    answer = t.message("nacka", (LN,), type=MessageType.COORDINATION, created=NOW + 5,
                       references=(ref(ReferenceKind.REPLY, request),))  # fmt: skip
    second = t.message("nacka", (LN,), type=MessageType.COORDINATION, created=NOW + 6,
                       references=(ref(ReferenceKind.REPLY, request),))  # fmt: skip
    outsider = t.message("sos-alarm", (LN,), type=MessageType.COORDINATION, created=NOW + 7,
                         references=(ref(ReferenceKind.REPLY, request),))  # fmt: skip
    update = t.message("solna", (LN,), type=MessageType.COORDINATION, created=NOW + 8,
                       references=(ref(ReferenceKind.UPDATE, request),))  # fmt: skip
    replies = [second, answer, outsider, update]
    before = request_status(request, replies, now=NOW + 999)
    assert before.answers == {"nacka": answer.message_id}
    assert before.unanswered == ("solna", "stockholm")
    assert before.overdue == ()
    assert before.deadline == NOW + 1000
    after = request_status(request, replies, now=NOW + 1000)
    assert after.overdue == ("solna", "stockholm")
    plain = t.message(LN, ("nacka",), type=MessageType.REQUEST)
    assert request_status(plain, [], now=NOW + HOUR).overdue == ()


def test_press_lines_join_drafts_comments_and_approvals(region: DemoRegion) -> None:
    t = Traffic(region, "nacka")
    activation = t.message(LN, ("nacka", "stockholm"), type=MessageType.ACTIVATION,
                           control=Control(incident_type="storm"))  # fmt: skip
    view = incident_from_archive("storm-1", [activation], directory=region.directory)
    assert view is not None
    assert view.lead == LN
    draft = t.message("nacka", ("stockholm", LN), type=MessageType.COMMUNICATION,
                      control=Control(press=PressStage.DRAFT), payload=b"Stay indoors")  # fmt: skip
    comment = t.message("stockholm", ("nacka",), type=MessageType.COMMUNICATION,
                        created=NOW + 1, references=(ref(ReferenceKind.REPLY, draft),),
                        payload=b"Add 112")  # fmt: skip
    approval = t.message(LN, ("nacka", "stockholm"), type=MessageType.COMMUNICATION,
                         created=NOW + 2, control=Control(press=PressStage.APPROVED),
                         references=(ref(ReferenceKind.UPDATE, draft),),
                         payload=b"Stay indoors, call 112")  # fmt: skip
    open_draft = t.message("nacka", ("stockholm", LN), type=MessageType.COMMUNICATION,
                           created=NOW + 3, control=Control(press=PressStage.DRAFT),
                           payload=b"Schools closed")  # fmt: skip
    lines = press_lines(
        "storm-1", [draft, comment, approval, open_draft], payload=t.payload, view=view
    )
    assert [(p.draft_id, p.state, p.author, p.text) for p in lines] == [
        (draft.message_id, "approved", "nacka", "Stay indoors"),
        (open_draft.message_id, "draft", "nacka", "Schools closed"),
    ]
    assert [(c.actor, c.text) for c in lines[0].comments] == [("stockholm", "Add 112")]
    assert (lines[0].approved_by, lines[0].approval_id, lines[0].approved_text) == (
        LN,
        approval.message_id,
        "Stay indoors, call 112",
    )
    # A participant that holds only the approval still sees the line as approved.
    [seen] = press_lines("storm-1", [approval], payload=t.payload, view=view)
    assert (seen.state, seen.author, seen.text, seen.draft_id) == (
        "approved", None, None, draft.message_id
    )  # fmt: skip
    # Without a verified incident there is no lead, so no approval counts.
    [unknown] = press_lines("storm-1", [draft, approval], payload=t.payload, view=None)
    assert (unknown.state, unknown.approved_by) == ("draft", None)


def test_press_lines_count_only_the_leads_latest_approval_of_the_drafts_status(
    region: DemoRegion,
) -> None:
    t = Traffic(region, "solna")
    activation = t.message(LN, ("nacka", "stockholm", "solna"), type=MessageType.ACTIVATION,
                           control=Control(incident_type="storm"))  # fmt: skip
    view = incident_from_archive("storm-1", [activation], directory=region.directory)
    draft = t.message("nacka", ("stockholm", LN, "solna"), type=MessageType.COMMUNICATION,
                      created=NOW + 10, control=Control(press=PressStage.DRAFT),
                      payload=b"Stay indoors")  # fmt: skip

    def approval(sender: str, created: int, text: bytes, **kw: Any) -> ArchivedMessage:
        return t.message(sender, ("solna",), type=MessageType.COMMUNICATION, created=created,
                         control=Control(press=PressStage.APPROVED), payload=text,
                         references=(ref(ReferenceKind.UPDATE, draft),), **kw)  # fmt: skip

    forged = approval("stockholm", NOW + 11, b"All clear, go outside")  # backdated, first
    lead = approval(LN, NOW + 20, b"Stay indoors")
    exercise = approval(LN, NOW + 25, b"drill", status=Status.EXERCISE)
    latest = approval(LN, NOW + 30, b"Stay indoors, call 112")
    [line] = press_lines("storm-1", [draft, forged, lead], payload=t.payload, view=view)
    assert (line.state, line.approved_by, line.approval_id, line.approved_text) == (
        "approved", LN, lead.message_id, "Stay indoors"
    )  # fmt: skip
    rows = [draft, forged, latest, lead, exercise]
    [line] = press_lines("storm-1", rows, payload=t.payload, view=view)
    assert (line.approved_by, line.approval_id) == (LN, latest.message_id)
    [line] = press_lines("storm-1", [draft, forged], payload=t.payload, view=view)
    assert (line.state, line.approved_by) == ("draft", None)


def test_incident_view_and_press_recipients_come_from_verified_activations(
    region: DemoRegion,
) -> None:
    t = Traffic(region, "nacka")
    first = t.message(LN, ("nacka", "solna"), type=MessageType.ACTIVATION,
                      control=Control(incident_type="storm"))  # fmt: skip
    second = t.message(LN, ("nacka", "solna", "stockholm"), type=MessageType.ACTIVATION,
                       created=NOW + 1, control=Control(incident_type="storm",
                                                        communication_lead="solna"))  # fmt: skip
    assert incident_from_archive("storm-1", [], directory=region.directory) is None
    view = incident_from_archive("storm-1", [first, second], directory=region.directory)
    assert view is not None
    assert (view.owner, view.lead, view.type) == (LN, "solna", "storm")
    assert view.participants == tuple(sorted((LN, "nacka", "solna", "stockholm")))
    policy = load_policy(POLICY_TOML)
    # kommunikatorer: lansstyrelsen, nacka, stockholm; plus the lead; never the drafter.
    assert press_recipients(view, policy, region.directory, "nacka") == (LN, "solna", "stockholm")
    # No catalogue entry: just the lead.
    bare = Incident.model_validate(view.model_dump() | {"type": "unknown"})
    assert press_recipients(bare, Policy(), region.directory, "nacka") == ("solna",)
    # The lead drafting with no communicators: every other participant.
    alone = Incident.model_validate(
        view.model_dump() | {"type": "unknown", "communication_lead": None, "owner": "nacka"}
    )
    assert press_recipients(alone, Policy(), region.directory, "nacka") == (
        LN, "solna", "stockholm"
    )  # fmt: skip


def test_incident_view_ignores_activations_and_closes_by_others_and_what_follows_a_close(
    region: DemoRegion,
) -> None:
    t = Traffic(region, "nacka")
    directory = region.directory

    def activation(sender: str, to: tuple[str, ...], created: int, **kw: Any) -> ArchivedMessage:
        return t.message(sender, to, type=MessageType.ACTIVATION, created=created,
                         control=Control(incident_type="storm", **kw))  # fmt: skip

    # stockholm (an activator, not an authority) opens; nacka and solna take part.
    first = activation("stockholm", ("nacka", "solna"), NOW)
    # Forged "joins": by a participant, by another activator, and the owner's own of
    # another status - each would make its recipients participants and the lead.
    forged = activation("solna", ("nacka", "sos-alarm"), NOW + 1, communication_lead="sos-alarm")
    other = activation("polisen-stockholm", ("nacka", "trafikverket"), NOW + 2)
    drill = t.message("stockholm", ("nacka", "trafikverket"), type=MessageType.ACTIVATION,
                      created=NOW + 3, status=Status.EXERCISE,
                      control=Control(incident_type="storm"))  # fmt: skip
    rows = [first, forged, other, drill]
    view = incident_from_archive("storm-1", rows, directory=directory)
    assert view is not None
    assert (view.owner, view.lead, view.is_open) == ("stockholm", "stockholm", True)
    assert view.participants == ("nacka", "solna", "stockholm")
    # An authority (länsstyrelsen) may steer another's incident: its join counts.
    join = activation(LN, ("nacka", "solna", "stockholm"), NOW + 4, communication_lead=LN)
    view = incident_from_archive("storm-1", [*rows, join], directory=directory)
    assert view is not None
    assert (view.owner, view.lead) == ("stockholm", LN)
    assert view.participants == tuple(sorted((LN, "nacka", "solna", "stockholm")))
    # A close by a participant is ignored; the owner's closes it, and nothing after counts.
    fake_close = t.message("solna", ("nacka",), type=MessageType.INCIDENT_CLOSE, created=NOW + 5)
    close = t.message("stockholm", ("nacka",), type=MessageType.INCIDENT_CLOSE, created=NOW + 6)
    reopen = activation("stockholm", ("nacka", "sos-alarm"), NOW + 7)
    still = incident_from_archive("storm-1", [*rows, join, fake_close], directory=directory)
    assert still is not None
    assert still.is_open
    closed = incident_from_archive(
        "storm-1", [*rows, join, fake_close, close, reopen], directory=directory
    )
    assert closed is not None
    assert closed.closed == NOW + 6
    assert "sos-alarm" not in closed.participants


# --- refusals before anything is sent (an offline client) ----------------------------------------


@pytest.fixture
def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"nats://127.0.0.1:{port}"


def offline_options(
    region: DemoRegion, actor: str, url: str, state: Path, **kw: Any
) -> dict[str, Any]:
    return {
        "servers": [url],
        "actor": actor,
        "keys": region.identities[actor],
        "authority_key": region.authority.public,
        "state_dir": state,
        "directory": [region.directory.raw],
        "connect_timeout": 0.3,
        "policy": load_policy(POLICY_TOML),
    } | kw


async def test_offline_refusals_of_activate_answer_by_and_export(
    live_region: DemoRegion, dead_url: str, tmp_path: Path
) -> None:
    async with Client.connect(**offline_options(live_region, LN, dead_url, tmp_path / "ln")) as ln:
        with pytest.raises(SendError) as err:
            await ln.activate("storm-1", "earthquake", to=["nacka"])
        assert err.value.code == "incident_type_unknown"
        with pytest.raises(AddressError) as addr:
            await ln.activate("flood-1", "flooding")  # the template names no groups
        assert addr.value.code == "no_recipients"
        handle = await ln.activate("storm-1", "storm")  # kommunikatorer but itself
        assert handle.recipients == ("nacka", "stockholm")
        assert handle.header.control == Control(incident_type="storm")
        assert handle.header.label == INTERN_AMBER
        assert handle.header.priority.value == "priority"
        for kwargs in (
            {"type": "coordination", "answer_by": timedelta(minutes=5)},
            {"type": "request", "answer_by": timedelta(hours=2), "expires": timedelta(hours=1)},
            {"type": "request", "answer_by": timedelta(seconds=-1)},
        ):
            with pytest.raises(SendError) as err:
                await ln.send(to=["nacka"], payload="?", **kwargs)
            assert err.value.code == "invalid_argument"
        request = await ln.send(to=["nacka"], payload="?", type="request",
                                answer_by=timedelta(minutes=30))  # fmt: skip
        control = request.header.control
        assert control is not None
        assert control.deadline is not None
        assert 0 < control.deadline - request.header.created <= 30 * 60_000
        [status] = await ln.requests()
        assert (status.message_id, status.unanswered, status.overdue) == (
            request.message_id, ("nacka",), ()
        )  # fmt: skip
        bundle = tmp_path / "out.ssrb"
        assert await ln.export_bundle(bundle) == 2  # the activation and the request
        assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
        before = bundle.read_bytes()
        with pytest.raises(BundleFileError) as exists:
            await ln.export_bundle(bundle, incident="storm-1")
        assert exists.value.code == "exists"
        assert bundle.read_bytes() == before
        # Its own situation picture offline: nothing reported, nothing known missing.
        picture = await ln.situation("storm-1")
        assert (picture.current, picture.missing, picture.online) == ({}, None, False)
        # A draft press line is never public, whichever marking says so.
        depth = ln.outbox_depth
        for marking in ({"label": "OFFENTLIG"}, {"tlp": "CLEAR"}):
            with pytest.raises(SendError) as err:
                await ln.draft_press_line("storm-1", "Storm update", **marking)
            assert err.value.code == "press_line_unapproved"
        assert ln.outbox_depth == depth


# --- end to end: real nats-server, broker and clients ------------------------------------------


@pytest_asyncio.fixture
async def crisis(
    tmp_path: Path,
    nats_server: EmbeddedNats,
    broker_factory: BrokerFactory,
    live_region: DemoRegion,
) -> AsyncIterator[Network]:
    broker: Service = await broker_factory(policy_toml=POLICY_TOML)
    network = Network(
        nats_server,
        broker_factory,
        broker,
        live_region,
        tmp_path / "clients",
        broker.config.policy_file,
    )
    try:
        yield network
    finally:
        await network.close()


async def until_message(client: Client, predicate: Any, what: str) -> Message:
    """The first message handed over that ``predicate`` accepts (others are passed by)."""
    async with asyncio.timeout(WAIT):
        async for message in client.messages():
            if predicate(message):
                return message
    raise AssertionError(f"no {what}")  # pragma: no cover - messages() follows until timeout


async def opened(net: Network, incident: str, to: list[str], **kw: Any) -> Client:
    """Länsstyrelsen's client, having opened ``incident`` with ``to``."""
    ln = await net.client(LN)
    handle = await ln.activate(incident, "storm", to=to, groups=[], **kw)
    await handle.accepted(WAIT)
    return ln


async def test_a_late_joiner_is_granted_an_earlier_report_by_an_originator_back_online(
    crisis: Network,
) -> None:
    net = crisis
    solna = await net.client("solna")
    nacka = await net.client("nacka")
    ln = await opened(net, "storm-1", ["nacka"])
    await until_message(nacka, lambda m: m.type is MessageType.ACTIVATION, "activation")
    report = await nacka.send(incident="storm-1", type="situation_report",
                              payload={"text": "Trees down on road 222"},
                              label="INTERN", tlp="AMBER")  # fmt: skip
    await report.delivered(WAIT)
    await nacka.close()  # the originator is offline when solna joins

    join = await ln.activate("storm-1", "storm", to=["nacka", "solna"], groups=[])
    await join.accepted(WAIT)
    seen: dict[str, Message] = {}
    async with asyncio.timeout(WAIT):
        async for message in solna.messages():
            seen[message.id] = message
            if join.message_id in seen and len(seen) == 2:
                break
    # Länsstyrelsen, online, granted its first activation; nacka's report waits for nacka.
    assert seen[join.message_id].granted is False
    [first] = [m for m in seen.values() if m.id != join.message_id]
    assert first.granted
    assert first.type is MessageType.ACTIVATION
    assert first.sender == LN
    assert report.message_id not in seen

    nacka = await net.client("nacka")  # same state folder: its archive kept the content key
    got = await until_message(solna, lambda m: m.id == report.message_id, "the granted report")
    assert got.granted
    assert got.sender == "nacka"
    assert got.json() == {"text": "Trees down on road 222"}
    await got.acknowledge()  # no receipt for a granted message: nothing queued
    assert nacka.grants_made == 1
    assert nacka.grants_refused == 0
    picture = await solna.situation("storm-1")
    entry = picture.current["nacka"]
    assert (entry.message_id, entry.granted, entry.json()) == (
        report.message_id, True, {"text": "Trees down on road 222"}
    )  # fmt: skip
    assert picture.online
    assert picture.missing == ()
    js = await net.js()
    await quiet(js, "solna")
    await solna.flush(WAIT)
    assert await nothing_waiting(solna) == []


async def test_an_expired_report_drops_out_of_the_picture(crisis: Network) -> None:
    net = crisis
    nacka = await net.client("nacka")
    ln = await opened(net, "storm-2", ["nacka", "solna"])
    solna = await net.client("solna")
    lasting = await solna.send(incident="storm-2", type="situation_report", payload="Solna calm",
                               label="INTERN", tlp="AMBER")  # fmt: skip
    short = await nacka.send(incident="storm-2", type="situation_report", payload="Nacka flooded",
                             label="INTERN", tlp="AMBER", expires=timedelta(seconds=3))  # fmt: skip
    await short.delivered(WAIT)
    await lasting.delivered(WAIT)
    await until_message(ln, lambda m: m.id == short.message_id, "nacka's report")
    picture = await ln.situation("storm-2")
    assert {a: e.text for a, e in picture.current.items()} == {
        "nacka": "Nacka flooded",
        "solna": "Solna calm",
    }
    await until_message(nacka, lambda m: m.id == lasting.message_id, "solna's report")
    own = await nacka.situation("storm-2")  # its own report, opened with the kept key
    assert own.current["nacka"].text == "Nacka flooded"
    assert own.missing == ()  # the broker's index holds nothing to or from nacka it lacks
    expires_in = short.header.expires - now_ms()
    await asyncio.sleep(max(0.0, expires_in / 1000) + 0.2)
    later = await ln.situation("storm-2")
    assert list(later.current) == ["solna"]
    [gone] = [e for e in later.history if e.actor == "nacka"]
    assert (gone.state, gone.payload) == ("expired", None)
    assert list((await nacka.situation("storm-2")).current) == ["solna"]


async def test_a_tampered_bundle_is_refused_and_a_good_one_imported_offline_then_deduplicated(
    crisis: Network, dead_url: str, tmp_path: Path
) -> None:
    net = crisis
    solna = await net.client("solna")  # creates its durable consumer and caches the directory
    await solna.close()
    nacka = await net.client("nacka")
    ln = await opened(net, "flood-1", ["nacka", "solna"])
    report = await nacka.send(incident="flood-1", type="situation_report", payload="Water rising",
                              label="INTERN", tlp="AMBER")  # fmt: skip
    aside = await ln.send(to=["nacka"], incident="flood-1", payload="Only for nacka",
                          label="INTERN", tlp="AMBER")  # fmt: skip
    await report.accepted(WAIT)
    await aside.accepted(WAIT)
    await until_message(ln, lambda m: m.id == report.message_id, "nacka's report")
    good = tmp_path / "flood-1.ssrb"
    assert await ln.export_bundle(good, incident="flood-1") == 3
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered = tmp_path / "tampered.ssrb"
    tampered.write_bytes(bytes(data))

    options = offline_options(net.region, "solna", dead_url, net.state_dir("solna"),
                              policy=net.policy_file, directory=[])  # fmt: skip
    async with Client.connect(**options) as offline:
        assert not offline.connected
        with pytest.raises(BundleRefused) as err:
            await offline.import_bundle(tampered)
        assert err.value.code in {"bundle_bad_signature", "bundle_malformed"}
        assert await nothing_waiting(offline) == []
        assert (await offline.situation("flood-1")).history == ()
        result = await offline.import_bundle(good)
        assert result == ImportResult(admitted=2, duplicates=0, not_for_me=1, refused=0)
        got = await nothing_waiting(offline)
        assert sorted(m.type.value for m in got) == ["activation", "situation_report"]
        assert not any(m.granted for m in got)
        assert (await offline.situation("flood-1")).current["nacka"].text == "Water rising"
        assert await offline.import_bundle(good) == ImportResult(0, 2, 1, 0)
        assert offline.outbox_depth == 2  # the delivered receipts wait for NATS

    solna = await net.client("solna")
    js = await net.js()
    await quiet(js, "solna")
    assert await nothing_waiting(solna) == [], "NATS deliveries of imported messages deduplicated"
    await report.delivered(WAIT)  # the receipt signed offline reached nacka


async def test_requests_are_answered_or_reported_overdue(crisis: Network) -> None:
    net = crisis
    nacka = await net.client("nacka")
    solna = await net.client("solna")
    ln = await opened(net, "storm-3", ["nacka", "solna"])
    request = await ln.send(incident="storm-3", type="request", payload="Shelters open?",
                            label="INTERN", tlp="AMBER",
                            answer_by=timedelta(seconds=3))  # fmt: skip
    await request.delivered(WAIT)
    asked = await until_message(nacka, lambda m: m.id == request.message_id, "the request")
    answer = await asked.reply("Four shelters open")
    await answer.accepted(WAIT)
    await until_message(solna, lambda m: m.id == request.message_id, "the request")
    await until_message(ln, lambda m: m.id == answer.message_id, "nacka's answer")
    [status] = await ln.requests("storm-3")
    assert status.answers == {"nacka": answer.message_id}
    assert status.unanswered == ("solna",)
    await wait_until(lambda: request.overdue == ("solna",), "the overdue notice", timeout=WAIT)
    [status] = await ln.requests("storm-3")
    assert status.overdue == ("solna",)
    assert await ln.requests("another-incident") == []


async def test_a_press_line_is_drafted_commented_approved_and_seen_approved(
    crisis: Network,
) -> None:
    net = crisis
    nacka = await net.client("nacka")
    stockholm = await net.client("stockholm")
    solna = await net.client("solna")
    ln = await opened(net, "storm-4", ["nacka", "stockholm", "solna"])
    public = Label(policy="ssr", classification="OFFENTLIG", tlp=Tlp.CLEAR)
    early = await nacka.send(incident="storm-4", type="communication", payload="Stay indoors",
                             label=public)  # fmt: skip
    with pytest.raises(Rejected) as err:
        await early.accepted(WAIT)
    assert err.value.code == "press_line_unapproved"

    draft = await nacka.draft_press_line("storm-4", "Stay indoors")
    assert draft.recipients == (LN, "stockholm")  # communicators and the lead, not solna
    await draft.accepted(WAIT)
    got = await until_message(stockholm, lambda m: m.id == draft.message_id, "the draft")
    comment = await got.reply("Add: call 112 only in emergencies", type="communication")
    await comment.accepted(WAIT)
    await until_message(nacka, lambda m: m.id == comment.message_id, "the comment")
    mine = await nacka.approve_press_line(draft.message_id)  # nacka is not the lead
    with pytest.raises(Rejected) as err:
        await mine.accepted(WAIT)
    assert err.value.code == "press_approval_not_lead"

    await until_message(ln, lambda m: m.id == draft.message_id, "the draft")
    approval = await ln.approve_press_line(
        draft.message_id, "Stay indoors; call 112 only in emergencies"
    )
    await approval.accepted(WAIT)
    for client in (stockholm, solna, nacka):
        await until_message(client, lambda m: m.id == approval.message_id, "the approval")
    [line] = await stockholm.press_lines("storm-4")
    assert (line.state, line.author, line.text, line.approved_by) == (
        "approved", "nacka", "Stay indoors", LN
    )  # fmt: skip
    assert line.approved_text == "Stay indoors; call 112 only in emergencies"
    [line] = await nacka.press_lines("storm-4")
    assert line.approved_by == LN, "nacka's refused approval left its archive"
    assert [(c.actor, c.text) for c in line.comments] == [
        ("stockholm", "Add: call 112 only in emergencies")
    ]
    [line] = await solna.press_lines("storm-4")  # never saw the draft
    assert (line.state, line.author, line.approval_id) == ("approved", None, approval.message_id)


async def test_exercise_and_actual_pictures_stay_apart(crisis: Network) -> None:
    net = crisis
    nacka = await net.client("nacka")
    ln = await opened(net, "ovning-1", ["nacka"], status="exercise")
    actual = await ln.activate("storm-5", "storm", to=["nacka"], groups=[])
    await actual.accepted(WAIT)
    drill = await nacka.send(incident="ovning-1", type="situation_report", status="exercise",
                             payload="ÖVNING: bridge closed", label="INTERN",
                             tlp="AMBER")  # fmt: skip
    real = await nacka.send(incident="storm-5", type="situation_report", payload="Bridge open",
                            label="INTERN", tlp="AMBER")  # fmt: skip
    wrong = await nacka.send(incident="storm-5", type="situation_report", status="exercise",
                             payload="mixed up", label="INTERN", tlp="AMBER")  # fmt: skip
    await drill.delivered(WAIT)
    await real.delivered(WAIT)
    with pytest.raises(Rejected) as err:
        await wrong.accepted(WAIT)
    assert err.value.code == "incident_status_mismatch"
    await until_message(ln, lambda m: m.id == real.message_id, "the actual report")
    exercise, storm = await ln.situation("ovning-1"), await ln.situation("storm-5")
    assert [(e.status.value, e.text) for e in exercise.history] == [
        ("exercise", "ÖVNING: bridge closed")
    ]
    assert [(e.status.value, e.text) for e in storm.history] == [("actual", "Bridge open")]


async def test_hostile_grants_and_grant_requests_grant_nothing(crisis: Network) -> None:
    net = crisis
    nacka = await net.client("nacka")
    solna = await net.client("solna")
    ln = await opened(net, "storm-6", ["nacka"])
    report = await nacka.send(incident="storm-6", type="situation_report", payload="Secret-ish",
                              label="INTERN", tlp="AMBER")  # fmt: skip
    await report.accepted(WAIT)
    first = await until_message(nacka, lambda m: m.type is MessageType.ACTIVATION, "activation")
    js = await net.js()
    region = net.region

    def grant_request(message: str, header_hash: str) -> bytes:
        return make_notice(region.broker, NoticeKind.GRANT_REQUEST, to="nacka",
                           submission=message.encode(), at=now_ms(), message=message,
                           header_hash=header_hash, recipients=("solna",))  # fmt: skip

    for data in (
        grant_request(first.id, first.header_hash),  # not nacka's message
        grant_request(report.message_id, "00" * 32),  # another version of it
    ):
        await js.publish(subjects.deliver_subject("nacka"), data)
    await wait_until(lambda: nacka.grants_refused == 2, "two refused grant requests")
    # Its own message, right hash, but solna never activated into storm-6: it waits.
    await js.publish(
        subjects.deliver_subject("nacka"), grant_request(report.message_id, report.header_hash)
    )
    await quiet(js, "nacka")
    assert (nacka.grants_made, nacka.grants_refused) == (0, 2)
    assert list(nacka._pending_grants) == [(report.message_id, "solna")]
    assert ln.grants_made == 0

    # Grants straight onto solna's delivery subject: a genuine one, and two forgeries.
    now = now_ms()
    directory = region.directory
    sealed = seal_envelope(
        sender=region.identities["nacka"],
        recipients=[RecipientKey.of(directory.actor(LN), now)],  # type: ignore[arg-type]
        label=INTERN_AMBER, message_type=MessageType.SITUATION_REPORT, payload=b"Granted text",
        created=now, expires=now + HOUR, incident="storm-6", content_type="text/plain",
    )  # fmt: skip
    genuine = make_grant(region.identities["nacka"], sealed.raw, sealed.content_key,
                         newcomer=directory.actor("solna"),  # type: ignore[arg-type]
                         directory=directory, policy=Policy(), at=now)  # fmt: skip
    tampered = bytearray(genuine)
    tampered[-1] ^= 0x01
    body_bytes, envelope_bytes = frame.decode(
        genuine, frame.Kind.GRANT, max_bytes=len(genuine), max_section=(4096, len(genuine))
    ).sections
    solna_id = region.identities["solna"]
    forged_body = GrantBody.parse(body_bytes, max_bytes=4096).model_copy(
        update={"sender": "solna", "signer_key": solna_id.signing.key_id}
    )
    resigned = frame.encode(frame.Kind.GRANT, solna_id.signing,
                            (forged_body.to_bytes(), envelope_bytes))  # fmt: skip
    for data in (bytes(tampered), resigned, genuine):
        await js.publish(subjects.deliver_subject("solna"), data)
    await quiet(js, "solna")
    assert solna.refused == 2
    [got] = await nothing_waiting(solna)
    assert got.granted
    assert got.text == "Granted text"
    header: Header = got.header
    assert "solna" not in header.recipients
    assert solna.outbox_depth == 0, "no delivered receipt for a granted message"
    assert os.path.exists(net.state_dir("solna") / "archive.sqlite")


# --- attacks: forged activations, bundled policy violations, forged approvals -------------------


async def test_a_forged_activation_delivered_to_an_originator_gets_nothing_granted(
    crisis: Network,
) -> None:
    net = crisis
    nacka = await net.client("nacka")
    solna = await net.client("solna")
    ln = await opened(net, "storm-7", ["nacka"])
    await until_message(nacka, lambda m: m.type is MessageType.ACTIVATION, "activation")
    report = await nacka.send(incident="storm-7", type="situation_report", payload="Confidential",
                              label="INTERN", tlp="AMBER")  # fmt: skip
    await report.accepted(WAIT)
    # Stockholm (an activator, not the owner nor an authority) signs a "join" of solna;
    # the broker would refuse it, a compromised one delivers it straight to nacka.
    t = Traffic(net.region, "nacka", at=now_ms())
    forged = t.message("stockholm", ("nacka", "solna"), type=MessageType.ACTIVATION,
                       incident="storm-7", control=Control(incident_type="storm"))  # fmt: skip
    js = await net.js()
    await js.publish(subjects.deliver_subject("nacka"), forged.data)
    await quiet(js, "nacka")
    archive = nacka._archive
    assert archive is not None
    assert forged.message_id in archive, "it verified and opened: only the view ignores it"
    notice = make_notice(net.region.broker, NoticeKind.GRANT_REQUEST, to="nacka",
                         submission=report.message_id.encode(), at=now_ms(),
                         message=report.message_id, header_hash=report.header_hash,
                         recipients=("solna",))  # fmt: skip
    await js.publish(subjects.deliver_subject("nacka"), notice)
    await quiet(js, "nacka")
    assert nacka.grants_made == 0, "no content key for the forged activation's recipient"
    assert (report.message_id, "solna") in nacka._pending_grants
    view = await nacka._verified_incident("storm-7")
    assert view is not None
    assert view.participants == tuple(sorted((LN, "nacka")))
    # The owner's genuine join does get solna the report.
    join = await ln.activate("storm-7", "storm", to=["nacka", "solna"], groups=[])
    await join.accepted(WAIT)
    got = await until_message(solna, lambda m: m.id == report.message_id, "the granted report")
    assert (got.granted, got.text) == (True, "Confidential")


async def test_an_imported_bundle_is_held_to_the_brokers_policy(
    live_region: DemoRegion, dead_url: str, tmp_path: Path
) -> None:
    now = now_ms()
    t = Traffic(live_region, "solna", at=now)
    public = Label(policy="ssr", classification="OFFENTLIG", tlp=Tlp.CLEAR)
    activation = t.message(LN, ("nacka", "solna"), type=MessageType.ACTIVATION, incident="flood-2",
                           control=Control(incident_type="flooding"))  # fmt: skip
    report = t.message("nacka", ("solna",), incident="flood-2", created=now + 1)
    # Never submitted, and the broker would refuse each: nacka holds no authority role,
    # and a public line needs the lead's approval of a draft.
    mode = t.message("nacka", ("solna",), type=MessageType.MODE_CHANGE, incident=None,
                     created=now + 2, control=Control(mode=Mode.ACTIVATED))  # fmt: skip
    press = t.message("nacka", ("solna",), type=MessageType.COMMUNICATION, incident="flood-2",
                      created=now + 3, label=public, payload=b"All clear")  # fmt: skip
    # Into the incident, but to an actor who takes no part in it.
    outside = t.message("nacka", ("solna", "sos-alarm"), incident="flood-2", created=now + 4)
    # Activations by a non-owner: the second would make sos-alarm a participant.
    hijack = t.message("stockholm", ("nacka", "solna", "sos-alarm"), type=MessageType.ACTIVATION,
                       incident="flood-2", created=now + 5,
                       control=Control(incident_type="flooding"))  # fmt: skip
    after = t.message("nacka", ("solna", "sos-alarm"), incident="flood-2", created=now + 6)
    rows = [after, press, mode, outside, hijack, report, activation]  # out of order
    bundle = tmp_path / "nacka.ssrb"
    bundle.write_bytes(make_bundle(live_region.identities["nacka"], [r.data for r in rows],
                                   created=now))  # fmt: skip
    options = offline_options(live_region, "solna", dead_url, tmp_path / "solna")
    async with Client.connect(**options) as solna:
        result = await solna.import_bundle(bundle)
        assert result == ImportResult(admitted=2, duplicates=0, not_for_me=0, refused=5)
        got = await nothing_waiting(solna)
        assert [m.id for m in got] == [activation.message_id, report.message_id]
        archive = solna._archive
        assert archive is not None
        for row in (mode, press, outside, hijack, after):
            assert row.message_id not in archive
        assert solna.outbox_depth == 2, "delivered receipts only for the admitted two"
        view = await solna._verified_incident("flood-2")
        assert view is not None
        assert view.participants == tuple(sorted((LN, "nacka", "solna")))


async def test_a_backdated_approval_by_a_non_lead_does_not_take_precedence(
    live_region: DemoRegion, dead_url: str, tmp_path: Path
) -> None:
    now = now_ms()
    t = Traffic(live_region, "solna", at=now)
    everyone = ("nacka", "stockholm", "solna")
    activation = t.message(LN, everyone, type=MessageType.ACTIVATION, incident="storm-9",
                           control=Control(incident_type="storm"))  # fmt: skip
    draft = t.message("nacka", (LN, "stockholm", "solna"), type=MessageType.COMMUNICATION,
                      incident="storm-9", created=now + 10,
                      control=Control(press=PressStage.DRAFT), payload=b"Stay indoors")  # fmt: skip
    public = Label(policy="ssr", classification="OFFENTLIG", tlp=Tlp.CLEAR)

    def approval(sender: str, created: int, text: bytes) -> ArchivedMessage:
        return t.message(sender, ("solna",), type=MessageType.COMMUNICATION, incident="storm-9",
                         created=created, control=Control(press=PressStage.APPROVED),
                         label=public, payload=text,
                         references=(ref(ReferenceKind.UPDATE, draft),))  # fmt: skip

    forged = approval("stockholm", now + 11, b"All clear, go outside")
    lead = approval(LN, now + 20, b"Stay indoors, call 112")
    options = offline_options(live_region, "solna", dead_url, tmp_path / "solna")
    async with Client.connect(**options) as solna:
        archive = solna._archive
        assert archive is not None
        for row in (activation, draft, forged, lead):  # as a compromised broker delivers
            archive.add(Direction.RECEIVED, row.header, row.header_hash, row.data)
        [line] = await solna.press_lines("storm-9")
        assert (line.state, line.approved_by, line.approval_id, line.approved_text) == (
            "approved", LN, lead.message_id, "Stay indoors, call 112"
        )  # fmt: skip


async def test_a_refused_grant_leaves_the_originators_own_message_archived(
    crisis: Network,
) -> None:
    # The broker refuses a grant with a notice naming the granted message; that refuses
    # the grant only, not the message the originator sent (and may grant to others).
    net = crisis
    nacka = await net.client("nacka")
    await opened(net, "storm-8", ["nacka"])
    report = await nacka.send(incident="storm-8", type="situation_report", payload="Kept",
                              label="INTERN", tlp="AMBER")  # fmt: skip
    await report.accepted(WAIT)
    refusal = make_notice(net.region.broker, NoticeKind.REJECTED, to="nacka",
                          submission=b"a key grant, not the envelope", at=now_ms(),
                          message=report.message_id, reason="grant_not_participant",
                          recipients=("solna",))  # fmt: skip
    js = await net.js()
    await js.publish(subjects.deliver_subject("nacka"), refusal)
    await quiet(js, "nacka")
    picture = await nacka.situation("storm-8")
    assert [e.text for e in picture.history] == ["Kept"]
