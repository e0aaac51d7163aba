"""Incidents: what an activation opens, how participants change, who may close, and what
the decision requires of every message that names an incident.

The unit tests cover ``opened_by`` and ``closed_by``. The flow tests run envelopes through
``decide`` with a tiny stand-in for the broker's incident store (``Store``), which applies
an accepted activation or close exactly as the service must: real keys, real envelopes.
"""

from __future__ import annotations

from typing import Any

import pytest

from broker.core import (
    Accept,
    Control,
    Decision,
    Incident,
    Label,
    MalformedInput,
    MessageType,
    Mode,
    Reason,
    Reject,
    Status,
    Tlp,
)
from broker.core.incidents import closed_by, opened_by
from broker.demo import DemoRegion

from .conftest import HOUR, NOW
from .envelope_helpers import DEFAULT_LABEL, decide_at, header_of

MINUTE = 60_000
STORM = "storm-2026"
OWNER = "polisen-stockholm"
INVITED = ("nacka", "sos-alarm", "stockholm")
PARTICIPANTS = ("nacka", "polisen-stockholm", "sos-alarm", "stockholm")


def activation(make_envelope, *, sender: str = OWNER, to=INVITED, **overrides: Any) -> bytes:
    fields: dict[str, Any] = {
        "message_type": MessageType.ACTIVATION,
        "incident": STORM,
        "control": Control(incident_type="storm"),
    }
    return make_envelope(sender=sender, to=to, **(fields | overrides))


class Store:
    """The broker's incident state: decide, then record what an accepted envelope changed."""

    def __init__(self, region: DemoRegion) -> None:
        self.region = region
        self.incidents: dict[str, Incident] = {}

    def submit(self, raw: bytes, *, now: int = NOW) -> Decision:
        decision = decide_at(raw, self.region, now=now, incidents=self.incidents)
        if isinstance(decision, Accept):
            header = decision.envelope.header
            if header.type is MessageType.ACTIVATION:
                assert header.incident is not None
                previous = self.incidents.get(header.incident)
                self.incidents[header.incident] = opened_by(header, previous)
            elif header.type is MessageType.INCIDENT_CLOSE:
                assert header.incident is not None
                self.incidents[header.incident] = closed_by(self.incidents[header.incident], now)
        return decision

    def refused(self, raw: bytes, reason: Reason, recipients: tuple[str, ...] = ()) -> Reject:
        decision = self.submit(raw)
        assert isinstance(decision, Reject), decision
        assert (decision.reason, decision.recipients) == (reason, recipients), decision.detail
        header = header_of(raw)
        assert (decision.message_id, decision.sender) == (header.id, header.sender)
        return decision


@pytest.fixture
def store(region) -> Store:
    return Store(region)


@pytest.fixture
def opened(store, make_envelope) -> Store:
    """polisen-stockholm has opened STORM (actual traffic) with nacka, sos-alarm, stockholm."""
    assert isinstance(store.submit(activation(make_envelope)), Accept)
    return store


# --- opened_by and closed_by ---------------------------------------------------------


def test_an_activation_opens_a_new_incident(make_envelope):
    label = Label(policy="ssr", classification="INTERN", tlp=Tlp.GREEN)
    raw = activation(
        make_envelope,
        to=("stockholm", "nacka", "sos-alarm"),  # any order: the header sorts them
        label=label,
        status=Status.EXERCISE,
        control=Control(incident_type="power-outage"),
        created=NOW - MINUTE,
    )
    incident = opened_by(header_of(raw), None)
    assert incident == Incident(
        id=STORM,
        type="power-outage",
        owner=OWNER,
        label=label,
        status=Status.EXERCISE,
        participants=PARTICIPANTS,
        opened=NOW - MINUTE,
        closed=None,
    )
    assert incident.is_open


def test_a_sender_among_its_own_recipients_is_one_participant(make_envelope):
    raw = activation(make_envelope, to=("nacka", OWNER))
    assert opened_by(header_of(raw), None).participants == ("nacka", OWNER)


def test_a_later_activation_replaces_only_the_participants(make_envelope):
    first = opened_by(header_of(activation(make_envelope)), None)
    again = activation(
        make_envelope,
        to=("huddinge", "sos-alarm"),
        label=Label(policy="ssr", classification="OFFENTLIG", tlp=Tlp.CLEAR),
        control=Control(),
        created=NOW + HOUR,
        expires=NOW + 2 * HOUR,
    )
    replaced = opened_by(header_of(again), first)
    assert replaced.participants == ("huddinge", OWNER, "sos-alarm")
    assert replaced == first.model_copy(update={"participants": replaced.participants})
    assert first.participants == PARTICIPANTS  # the record is immutable


def test_an_authority_replacing_participants_becomes_one(make_envelope):
    first = opened_by(header_of(activation(make_envelope)), None)
    by_authority = activation(make_envelope, sender="lansstyrelsen-stockholm", to=("huddinge",))
    replaced = opened_by(header_of(by_authority), first)
    assert replaced.participants == ("huddinge", "lansstyrelsen-stockholm")
    assert replaced.owner == OWNER


def test_closed_by_sets_the_close_time_only(make_envelope):
    incident = opened_by(header_of(activation(make_envelope)), None)
    closed = closed_by(incident, NOW + HOUR)
    assert closed.closed == NOW + HOUR
    assert not closed.is_open
    assert closed.model_copy(update={"closed": None}) == incident
    assert incident.is_open


@pytest.mark.parametrize(
    "fields",
    [
        {"message_type": MessageType.SITUATION_REPORT, "incident": STORM},
        {"message_type": MessageType.INCIDENT_CLOSE, "incident": STORM},
        {"message_type": MessageType.ACTIVATION, "control": Control(incident_type="storm")},
    ],
    ids=["situation-report", "incident-close", "activation-without-incident"],
)
def test_only_an_activation_naming_an_incident_opens_one(fields, make_envelope):
    header = header_of(make_envelope(**fields))
    with pytest.raises(ValueError, match="only an activation naming an incident"):
        opened_by(header, None)


def test_a_new_incident_needs_its_type(make_envelope):
    header = header_of(activation(make_envelope, control=Control()))
    with pytest.raises(ValueError, match="incident_type"):
        opened_by(header, None)
    # For an incident that exists the type is already known.
    existing = opened_by(header_of(activation(make_envelope)), None)
    assert opened_by(header, existing).type == "storm"


def test_an_incident_record_round_trips_as_canonical_json(make_envelope):
    incident = closed_by(opened_by(header_of(activation(make_envelope)), None), NOW + HOUR)
    assert Incident.parse(incident.to_bytes(), max_bytes=4096) == incident
    with pytest.raises(MalformedInput):
        Incident.parse(incident.to_bytes().replace(b'"owner"', b'"Owner"'), max_bytes=4096)


# --- decisions: opening and taking part ------------------------------------------------


def test_activation_opens_and_participants_exchange_messages(opened, make_envelope):
    assert opened.incidents[STORM].participants == PARTICIPANTS
    assert opened.incidents[STORM].owner == OWNER
    report = make_envelope(sender="nacka", to=(OWNER, "sos-alarm"), incident=STORM)
    decision = opened.submit(report)
    assert isinstance(decision, Accept)
    assert decision.recipients == (OWNER, "sos-alarm")
    from_owner = make_envelope(sender=OWNER, to=INVITED, incident=STORM)
    assert isinstance(opened.submit(from_owner), Accept)


@pytest.mark.parametrize(
    "message_type",
    [
        MessageType.ALERT,
        MessageType.SITUATION_REPORT,
        MessageType.COORDINATION,
        MessageType.DIRECTION,
        MessageType.COMMUNICATION,
        MessageType.REQUEST,
    ],
)
def test_every_ordinary_type_may_name_the_incident(message_type, opened, make_envelope):
    raw = make_envelope(to=(OWNER,), message_type=message_type, incident=STORM)
    assert isinstance(opened.submit(raw), Accept)


def test_a_message_to_outsiders_names_them(opened, make_envelope):
    raw = make_envelope(to=("huddinge", OWNER, "sos-alarm", "trafikverket"), incident=STORM)
    opened.refused(raw, Reason.NOT_INCIDENT_PARTICIPANT, ("huddinge", "trafikverket"))
    # The same message without the incident goes anywhere the other rules allow.
    plain = make_envelope(to=("huddinge", OWNER, "sos-alarm", "trafikverket"))
    assert isinstance(opened.submit(plain), Accept)


def test_a_message_from_a_non_participant_is_refused(opened, make_envelope):
    raw = make_envelope(sender="huddinge", to=(OWNER,), incident=STORM)
    opened.refused(raw, Reason.NOT_INCIDENT_PARTICIPANT)


def test_an_authority_outside_the_incident_takes_no_part_in_its_traffic(opened, make_envelope):
    """The authority may steer any incident (activate, close), but its ordinary messages
    follow the participant rule like anyone's."""
    raw = make_envelope(sender="lansstyrelsen-stockholm", to=(OWNER,), incident=STORM)
    opened.refused(raw, Reason.NOT_INCIDENT_PARTICIPANT)


def test_a_message_naming_an_unknown_incident_is_refused(opened, make_envelope):
    opened.refused(make_envelope(incident="annan-handelse"), Reason.INCIDENT_UNKNOWN)
    for message_type in (MessageType.INCIDENT_CLOSE, MessageType.MODE_CHANGE):
        control = Control(mode=Mode.ACTIVATED) if message_type is MessageType.MODE_CHANGE else None
        raw = make_envelope(
            sender="lansstyrelsen-stockholm",
            to=(OWNER,),
            message_type=message_type,
            incident="annan-handelse",
            control=control,
        )
        opened.refused(raw, Reason.INCIDENT_UNKNOWN)


def test_joining_and_leaving_by_a_new_activation(opened, make_envelope):
    """The owner activates again: huddinge joins, nacka and stockholm leave."""
    again = activation(make_envelope, to=("huddinge", "sos-alarm"), control=Control())
    assert isinstance(opened.submit(again), Accept)
    assert opened.incidents[STORM].participants == ("huddinge", OWNER, "sos-alarm")
    joined = make_envelope(sender="huddinge", to=(OWNER, "sos-alarm"), incident=STORM)
    assert isinstance(opened.submit(joined), Accept)
    left = make_envelope(sender="nacka", to=(OWNER,), incident=STORM)
    opened.refused(left, Reason.NOT_INCIDENT_PARTICIPANT)
    to_left = make_envelope(sender="sos-alarm", to=("nacka", OWNER), incident=STORM)
    opened.refused(to_left, Reason.NOT_INCIDENT_PARTICIPANT, ("nacka",))


def test_only_the_owner_or_an_authority_activates_an_open_incident_again(opened, make_envelope):
    # stockholm is an activator and takes part, but does not own the incident.
    takeover = activation(make_envelope, sender="stockholm", to=("huddinge",))
    opened.refused(takeover, Reason.INCIDENT_OWNER_ONLY)
    assert opened.incidents[STORM].participants == PARTICIPANTS
    by_authority = activation(
        make_envelope, sender="lansstyrelsen-stockholm", to=(OWNER, "huddinge")
    )
    assert isinstance(opened.submit(by_authority), Accept)
    assert opened.incidents[STORM].participants == ("huddinge", "lansstyrelsen-stockholm", OWNER)
    assert opened.incidents[STORM].owner == OWNER


# --- decisions: exercise and actual never mix -------------------------------------------


@pytest.mark.parametrize("incident_status", list(Status))
@pytest.mark.parametrize("message_status", list(Status))
def test_messages_carry_the_incidents_status(incident_status, message_status, store, make_envelope):
    assert isinstance(store.submit(activation(make_envelope, status=incident_status)), Accept)
    assert store.incidents[STORM].status is incident_status
    raw = make_envelope(to=(OWNER,), incident=STORM, status=message_status)
    if message_status is incident_status:
        assert isinstance(store.submit(raw), Accept)
    else:
        decision = store.refused(raw, Reason.INCIDENT_STATUS_MISMATCH)
        assert incident_status.value in decision.detail


def test_an_exercise_message_in_an_actual_incident_is_refused(opened, make_envelope):
    raw = make_envelope(to=(OWNER,), incident=STORM, status=Status.EXERCISE)
    decision = opened.refused(raw, Reason.INCIDENT_STATUS_MISMATCH)
    assert "actual" in decision.detail
    assert "exercise" in decision.detail


def test_status_applies_to_steering_too(opened, make_envelope):
    """Neither a new activation nor a close of an actual incident may be exercise traffic."""
    again = activation(make_envelope, control=Control(), status=Status.EXERCISE)
    opened.refused(again, Reason.INCIDENT_STATUS_MISMATCH)
    close = make_envelope(
        sender=OWNER,
        to=INVITED,
        message_type=MessageType.INCIDENT_CLOSE,
        incident=STORM,
        status=Status.EXERCISE,
    )
    opened.refused(close, Reason.INCIDENT_STATUS_MISMATCH)
    assert opened.incidents[STORM].is_open


def test_an_exercise_incident_beside_an_actual_one(opened, make_envelope):
    exercise = activation(
        make_envelope, incident="ovning-2026", status=Status.EXERCISE, to=("huddinge",)
    )
    assert isinstance(opened.submit(exercise), Accept)
    assert opened.incidents["ovning-2026"].status is Status.EXERCISE
    assert opened.incidents[STORM].status is Status.ACTUAL
    drill = make_envelope(
        sender="huddinge", to=(OWNER,), incident="ovning-2026", status=Status.EXERCISE
    )
    assert isinstance(opened.submit(drill), Accept)
    leak = make_envelope(sender="huddinge", to=(OWNER,), incident="ovning-2026")
    opened.refused(leak, Reason.INCIDENT_STATUS_MISMATCH)


# --- decisions: closing ------------------------------------------------------------------


def _close(make_envelope, sender: str, to=INVITED, **overrides: Any) -> bytes:
    return make_envelope(
        sender=sender,
        to=to,
        message_type=MessageType.INCIDENT_CLOSE,
        incident=STORM,
        **overrides,
    )


@pytest.mark.parametrize(
    "sender",
    ["stockholm", "brandkaren-attunda"],
    ids=["participating-activator", "outside-activator"],
)
def test_only_the_owner_or_an_authority_closes(sender, opened, make_envelope):
    opened.refused(_close(make_envelope, sender, to=(OWNER,)), Reason.INCIDENT_OWNER_ONLY)
    assert opened.incidents[STORM].is_open


def test_a_member_without_closing_rights_is_refused_by_the_type_rights(opened, make_envelope):
    opened.refused(_close(make_envelope, "nacka", to=(OWNER,)), Reason.TYPE_NOT_ALLOWED)


def test_the_owner_closes_and_later_messages_are_refused(opened, make_envelope):
    assert isinstance(opened.submit(_close(make_envelope, OWNER)), Accept)
    assert opened.incidents[STORM].closed == NOW
    assert not opened.incidents[STORM].is_open
    report = make_envelope(to=(OWNER,), incident=STORM)
    opened.refused(report, Reason.INCIDENT_CLOSED)
    # Closed for good: no second close, no re-activation of the same id, not even by
    # the owner or an authority.
    opened.refused(_close(make_envelope, OWNER), Reason.INCIDENT_CLOSED)
    opened.refused(activation(make_envelope), Reason.INCIDENT_CLOSED)
    reopen = activation(make_envelope, sender="lansstyrelsen-stockholm", control=Control())
    opened.refused(reopen, Reason.INCIDENT_CLOSED)
    # Closed is checked before the participant rule: an outsider hears that it is closed.
    outsider = make_envelope(sender="huddinge", to=("solna",), incident=STORM)
    opened.refused(outsider, Reason.INCIDENT_CLOSED)


def test_an_authority_may_close_someone_elses_incident(opened, make_envelope):
    """Länsstyrelsen takes no part in the incident and does not own it, but is an
    authority."""
    assert "lansstyrelsen-stockholm" not in opened.incidents[STORM].participants
    close = _close(make_envelope, "lansstyrelsen-stockholm", to=(OWNER,))
    assert isinstance(opened.submit(close), Accept)
    assert not opened.incidents[STORM].is_open


def test_decisions_without_incidents_are_unchanged(region, make_envelope):
    """A message naming no incident is decided the same with or without incident state."""
    raw = make_envelope()
    incidents = {STORM: opened_by(header_of(activation(make_envelope)), None)}
    assert isinstance(decide_at(raw, region, incidents=incidents), Accept)
    assert isinstance(decide_at(raw, region, incidents=None), Accept)
    assert isinstance(decide_at(raw, region), Accept)


def test_the_incident_keeps_its_default_label(opened, make_envelope):
    assert opened.incidents[STORM].label == DEFAULT_LABEL
