"""The policy file: defaults, loading, every refusal, and the mode overlays."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core import policy as policy_module
from broker.core.errors import CoreError, PolicyError
from broker.core.labels import STANDARD_LADDER, Ladder
from broker.core.limits import (
    DEFAULT_CLOCK_SKEW_MS,
    DEFAULT_MAX_ENVELOPE_BYTES,
    DEFAULT_MAX_LIFETIME_MS,
    DEFAULT_MAX_RECIPIENTS,
    MAX_ENVELOPE_BYTES,
    MAX_RECIPIENTS,
)
from broker.core.policy import MAX_POLICY_BYTES, Limits, Policy, RegionWide, load_policy
from broker.core.ratelimit import (
    DEFAULT_SENDER_BURST_DELIVERIES,
    DEFAULT_SENDER_DELIVERIES_PER_MINUTE,
    MAX_SENDER_BURST_DELIVERIES,
    MAX_SENDER_DELIVERIES_PER_MINUTE,
    Budget,
)
from broker.core.vocabulary import MessageType, Mode, Priority, Role


def refused(text: str) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        load_policy(text)
    assert info.value.code == "policy_invalid"
    return info.value


def docstring_example() -> str:
    doc = policy_module.__doc__
    assert doc is not None
    return textwrap.dedent(doc.split("::\n", 1)[1])


# --- defaults ----------------------------------------------------------------------------


def test_default_policy_values() -> None:
    p = Policy()
    assert p.format == 1
    assert p.id == "ssr"
    assert p.version == 1
    assert p.ladder == STANDARD_LADDER
    assert p.ceiling == "SEKRETESS"
    assert p.limits == Limits(
        max_envelope_bytes=DEFAULT_MAX_ENVELOPE_BYTES,
        max_recipients=DEFAULT_MAX_RECIPIENTS,
        clock_skew_seconds=DEFAULT_CLOCK_SKEW_MS // 1000,
        max_lifetime_seconds=DEFAULT_MAX_LIFETIME_MS // 1000,
    )
    assert p.limits.max_envelope_bytes == 1024 * 1024
    assert p.limits.max_recipients == 64
    assert p.limits.clock_skew_seconds == 120
    assert p.limits.max_lifetime_seconds == 30 * 24 * 3600
    assert p.receipt_deadlines == {
        Priority.ROUTINE: 3600,
        Priority.PRIORITY: 900,
        Priority.IMMEDIATE: 300,
        Priority.FLASH: 60,
    }
    assert p.rights == {
        MessageType.MODE_CHANGE: (Role.AUTHORITY,),
        MessageType.RELABEL: (Role.AUTHORITY,),
        MessageType.ACTIVATION: (Role.AUTHORITY, Role.ACTIVATOR),
        MessageType.INCIDENT_CLOSE: (Role.AUTHORITY, Role.ACTIVATOR),
        MessageType.RECEIPT: (),
    }
    assert p.region_wide_activation == RegionWide(min_recipients=10, roles=(Role.AUTHORITY,))
    assert p.modes == {}
    assert p.ladder_order == Ladder(STANDARD_LADDER)


def test_policy_is_frozen() -> None:
    with pytest.raises(ValueError, match="frozen"):
        Policy().ceiling = "HEMLIG"  # type: ignore[misc]


def test_empty_file_is_the_default_policy() -> None:
    assert load_policy("") == Policy()
    assert load_policy("# only a comment\n\n") == Policy()


def test_load_policy_docstring_example() -> None:
    assert load_policy('ceiling = "INTERN"').ceiling == "INTERN"


def test_module_docstring_example_loads() -> None:
    p = load_policy(docstring_example())
    # Apart from its mode overlay and its one incident type, the example spells out the
    # defaults (the built-in catalogue is empty: any incident type is accepted).
    assert p.model_copy(update={"modes": {}, "incident_types": {}}) == Policy()
    storm = p.incident_type("storm")
    assert storm is not None
    assert storm.communicators == "kommunikatorer"
    assert p.knows_incident_type("storm")
    assert not p.knows_incident_type("volcano")
    assert Policy().knows_incident_type("volcano")
    assert p.required_recipients(MessageType.SITUATION_REPORT, Mode.HEIGHTENED_ALERT) == (
        "lansstyrelsen-stockholm",
    )
    assert p.required_recipients(MessageType.SITUATION_REPORT, Mode.ACTIVATED) == ()


FULL = """\
format = 1
id = "region-x"
version = 7
ladder = ["ÖPPEN", "INTERN", "SKYDDAD"]
ceiling = "SKYDDAD"

[limits]
max_envelope_bytes = 4194304
max_recipients = 200
clock_skew_seconds = 0
max_lifetime_seconds = 3600

[receipt_deadlines]
routine = 7200
priority = 600
immediate = 120
flash = 30

[rights]
alert = ["adapter", "authority"]
mode_change = ["authority"]

[region_wide_activation]
min_recipients = 2
roles = ["authority", "activator"]

[modes.activated.receipt_deadlines]
flash = 10

[modes.activated.rights]
alert = ["member"]

[modes.heightened_alert.required_recipients]
situation_report = ["lansstyrelsen-stockholm", "region-stockholm"]
"""


def test_a_full_policy_loads_every_field() -> None:
    p = load_policy(FULL)
    assert p.id == "region-x"
    assert p.version == 7
    assert p.ladder == ("ÖPPEN", "INTERN", "SKYDDAD")
    assert p.ladder_order.rank("SKYDDAD") == 2
    assert p.ceiling == "SKYDDAD"
    assert p.limits == Limits(
        max_envelope_bytes=MAX_ENVELOPE_BYTES,
        max_recipients=MAX_RECIPIENTS,
        clock_skew_seconds=0,
        max_lifetime_seconds=3600,
    )
    assert p.receipt_deadlines[Priority.FLASH] == 30
    assert p.rights == {
        MessageType.ALERT: (Role.ADAPTER, Role.AUTHORITY),
        MessageType.MODE_CHANGE: (Role.AUTHORITY,),
        MessageType.RELABEL: (Role.AUTHORITY,),  # not in the file: kept from the defaults
        MessageType.ACTIVATION: (Role.AUTHORITY, Role.ACTIVATOR),
        MessageType.INCIDENT_CLOSE: (Role.AUTHORITY, Role.ACTIVATOR),
        MessageType.RECEIPT: (),
    }
    assert p.region_wide_activation.min_recipients == 2
    assert p.region_wide_activation.roles == (Role.AUTHORITY, Role.ACTIVATOR)
    assert set(p.modes) == {Mode.ACTIVATED, Mode.HEIGHTENED_ALERT}


# --- overlays ----------------------------------------------------------------------------


def test_receipt_deadline_without_overlays() -> None:
    p = Policy()
    for mode in Mode:
        assert p.receipt_deadline_ms(Priority.ROUTINE, mode) == 3_600_000
        assert p.receipt_deadline_ms(Priority.FLASH, mode) == 60_000


def test_receipt_deadline_with_an_overlay() -> None:
    p = load_policy(FULL)
    assert p.receipt_deadline_ms(Priority.FLASH, Mode.ACTIVATED) == 10_000  # overlay
    assert p.receipt_deadline_ms(Priority.ROUTINE, Mode.ACTIVATED) == 7_200_000  # falls back
    assert p.receipt_deadline_ms(Priority.FLASH, Mode.ORDINARY) == 30_000  # no overlay
    assert p.receipt_deadline_ms(Priority.FLASH, Mode.HEIGHTENED_ALERT) == 30_000  # not in it


def test_allowed_roles_without_overlays() -> None:
    p = Policy()
    assert p.allowed_roles(MessageType.MODE_CHANGE, Mode.ORDINARY) == (Role.AUTHORITY,)
    assert p.allowed_roles(MessageType.ACTIVATION, Mode.ACTIVATED) == (
        Role.AUTHORITY,
        Role.ACTIVATOR,
    )
    assert p.allowed_roles(MessageType.SITUATION_REPORT, Mode.ORDINARY) is None  # everyone


def test_allowed_roles_with_an_overlay() -> None:
    p = load_policy(FULL)
    assert p.allowed_roles(MessageType.ALERT, Mode.ACTIVATED) == (Role.MEMBER,)
    assert p.allowed_roles(MessageType.ALERT, Mode.ORDINARY) == (Role.ADAPTER, Role.AUTHORITY)
    assert p.allowed_roles(MessageType.MODE_CHANGE, Mode.ACTIVATED) == (Role.AUTHORITY,)
    assert p.allowed_roles(MessageType.ALERT, Mode.HEIGHTENED_ALERT) == (
        Role.ADAPTER,
        Role.AUTHORITY,
    )
    assert p.allowed_roles(MessageType.RELABEL, Mode.ACTIVATED) == (Role.AUTHORITY,)  # default
    assert p.allowed_roles(MessageType.DIRECTION, Mode.ACTIVATED) is None  # never restricted


def test_a_rights_table_amends_the_defaults_and_never_opens_them() -> None:
    # Leaving mode_change out of [rights] must not open it to every actor (fail closed).
    p = load_policy('[rights]\nalert = ["adapter"]\n')
    assert p.allowed_roles(MessageType.ALERT, Mode.ORDINARY) == (Role.ADAPTER,)
    for message_type in (MessageType.MODE_CHANGE, MessageType.RELABEL):
        assert p.allowed_roles(message_type, Mode.ORDINARY) == (Role.AUTHORITY,)
    assert load_policy("[rights]\n").rights == Policy().rights
    # A default can be changed, and opened to every actor only explicitly.
    opened = load_policy('[rights]\nincident_close = ["member"]\n')
    assert opened.allowed_roles(MessageType.INCIDENT_CLOSE, Mode.ORDINARY) == (Role.MEMBER,)


def test_overlay_can_restrict_a_type_that_is_open_in_ordinary_mode() -> None:
    p = load_policy('[modes.heightened_alert.rights]\ncommunication = ["authority"]\n')
    assert p.allowed_roles(MessageType.COMMUNICATION, Mode.ORDINARY) is None
    assert p.allowed_roles(MessageType.COMMUNICATION, Mode.HEIGHTENED_ALERT) == (Role.AUTHORITY,)


def test_required_recipients() -> None:
    p = load_policy(FULL)
    assert p.required_recipients(MessageType.SITUATION_REPORT, Mode.HEIGHTENED_ALERT) == (
        "lansstyrelsen-stockholm",
        "region-stockholm",
    )
    assert p.required_recipients(MessageType.ALERT, Mode.HEIGHTENED_ALERT) == ()  # not listed
    assert p.required_recipients(MessageType.SITUATION_REPORT, Mode.ACTIVATED) == ()  # overlay
    assert p.required_recipients(MessageType.SITUATION_REPORT, Mode.ORDINARY) == ()  # none
    assert Policy().required_recipients(MessageType.SITUATION_REPORT, Mode.ORDINARY) == ()


# --- refusals ----------------------------------------------------------------------------

DEADLINES = "routine = 1\npriority = 1\nimmediate = 1\n"


@pytest.mark.parametrize(
    ("text", "field", "line", "words"),
    [
        # unknown keys
        ('colour = "red"', "colour", 1, "Extra inputs"),
        ("[limits]\nmax_bytes = 5", "limits.max_bytes", 2, "Extra inputs"),
        ("[modes.activated]\ncolour = 1", "modes.activated.colour", 2, "Extra inputs"),
        # bad types
        ("ceiling = 5", "ceiling", 1, "valid string"),
        ('version = "3"', "version", 1, "valid integer"),
        ("version = true", "version", 1, "valid integer"),
        ("version = 2.0", "version", 1, "valid integer"),
        ("format = true", "format", 1, "valid integer"),
        ('ladder = "AB"', "ladder", 1, "valid tuple"),
        ("rights = 5", "rights", 1, "valid dictionary"),
        ("[[limits]]\nmax_recipients = 1", "limits", 1, "valid dictionary"),
        ('[limits]\nmax_recipients = "5"', "limits.max_recipients", 2, "valid integer"),
        ("[limits]\nclock_skew_seconds = false", "limits.clock_skew_seconds", 2, "integer"),
        (f"[receipt_deadlines]\n{DEADLINES}flash = true", "receipt_deadlines.flash", 5, "integer"),
        (
            "[region_wide_activation]\nmin_recipients = 2.5",
            "region_wide_activation.min_recipients",
            2,
            "integer",
        ),
        # values out of range or pattern
        ('id = "Not A Slug"', "id", 1, "pattern"),
        ("version = 0", "version", 1, "greater than or equal to 1"),
        ("ladder = ['AB']", "ladder", 1, "at least 2"),
        ("ladder = ['AB', 'cd']", "ladder.1", 1, "pattern"),
        (
            "[region_wide_activation]\nmin_recipients = 1",
            "region_wide_activation.min_recipients",
            2,
            "greater than or equal to 2",
        ),
        (
            '[region_wide_activation]\nroles = ["king"]',
            "region_wide_activation.roles.0",
            2,
            "'authority'",
        ),
        # the ceiling must be on the ladder
        ('id = "ssr"\nceiling = "TOPP"', "ceiling", 2, "not on the ladder"),
        ('ceiling = "SEKRETESS"\nladder = ["LÅG", "HÖG"]', "ceiling", 1, "not on the ladder"),
        # a ladder level listed twice
        ('ladder = ["AB", "CD", "AB"]\nceiling = "AB"', "ladder", 1, "ladder lists a level twice"),
        # every priority needs a deadline
        (
            "[receipt_deadlines]\nroutine = 60\n",
            "receipt_deadlines",
            1,
            "lacks flash, immediate, priority",
        ),
        (
            f"[receipt_deadlines]\n{DEADLINES}flash = 0",
            "receipt_deadlines.flash",
            5,
            "greater than 0",
        ),
        (
            f"[receipt_deadlines]\n{DEADLINES}flash = 31708801",
            "receipt_deadlines.flash",
            5,
            "less than or equal",
        ),
        (
            f"[receipt_deadlines]\n{DEADLINES}flash = 1\nurgent = 5",
            "receipt_deadlines.urgent.[key]",
            6,
            "'routine'",
        ),
        # limits above the hard ceilings (or below their floors)
        (
            f"[limits]\nmax_envelope_bytes = {MAX_ENVELOPE_BYTES + 1}",
            "limits.max_envelope_bytes",
            2,
            "less than or equal to 4194304",
        ),
        (
            "[limits]\nmax_envelope_bytes = 1023",
            "limits.max_envelope_bytes",
            2,
            "greater than or equal to 1024",
        ),
        (
            f"[limits]\nmax_recipients = {MAX_RECIPIENTS + 1}",
            "limits.max_recipients",
            2,
            "less than or equal to 200",
        ),
        ("[limits]\nmax_recipients = 0", "limits.max_recipients", 2, "greater than or equal to 1"),
        (
            "[limits]\nclock_skew_seconds = 3601",
            "limits.clock_skew_seconds",
            2,
            "less than or equal to 3600",
        ),
        (
            "[limits]\nclock_skew_seconds = -1",
            "limits.clock_skew_seconds",
            2,
            "greater than or equal to 0",
        ),
        (
            "[limits]\nmax_lifetime_seconds = 31622401",
            "limits.max_lifetime_seconds",
            2,
            "less than or equal",
        ),
        (
            "limits = { max_recipients = 500 }",
            "limits.max_recipients",
            1,
            "less than or equal to 200",
        ),
        # wrong format
        ("format = 2", "format", 1, "format must be 1"),
        ("format = 0", "format", 1, "format must be 1"),
        # rights
        ('[rights]\ngossip = ["authority"]', "rights.gossip.[key]", 2, "'alert'"),
        ('[rights]\nalert = ["king"]', "rights.alert.0", 2, "'authority'"),
        ('[rights]\nalert = "authority"', "rights.alert", 2, "valid tuple"),
        # mode overlays
        ("[modes.panic]", "modes.panic.[key]", 1, "'ordinary'"),
        (
            '[modes.activated.rights]\nalert = ["god"]',
            "modes.activated.rights.alert.0",
            2,
            "'authority'",
        ),
        (
            "[modes.activated.receipt_deadlines]\nflash = 0",
            "modes.activated.receipt_deadlines.flash",
            2,
            "greater than 0",
        ),
        (
            "[modes.activated.receipt_deadlines]\nsoon = 5",
            "modes.activated.receipt_deadlines.soon.[key]",
            2,
            "'routine'",
        ),
        (
            '[modes.activated.required_recipients]\nalert = ["Nacka"]',
            "modes.activated.required_recipients.alert.0",
            2,
            "pattern",
        ),
        (
            '[modes.activated.required_recipients]\nalert = "nacka"',
            "modes.activated.required_recipients.alert",
            2,
            "valid tuple",
        ),
        ("modes = 1", "modes", 1, "valid dictionary"),
        # the incident type catalogue
        ("[incident_types.storm]\ngroups = []", "incident_types.storm.name", 1, "required"),
        ('[incident_types.storm]\nname = "S"\nsize = 1', "incident_types.storm.size", 3, "Extra"),
        ('[incident_types.Storm]\nname = "S"', "incident_types.Storm.[key]", 1, "pattern"),
        ('[incident_types.storm]\nname = ""', "incident_types.storm.name", 2, "at least 1"),
        (
            '[incident_types.storm]\nname = "S"\ntlp = "BLUE"',
            "incident_types.storm.tlp",
            3,
            "CLEAR",
        ),
        (
            '[incident_types.storm]\nname = "S"\npriority = "urgent"',
            "incident_types.storm.priority",
            3,
            "routine",
        ),
        (
            '[incident_types.storm]\nname = "S"\nclassification = "HEMLIG"',
            "incident_types",
            1,
            "above the ceiling",
        ),
        (
            '[incident_types.storm]\nname = "S"\nclassification = "TOPP"',
            "incident_types",
            1,
            "not on the ladder",
        ),
        (
            '[incident_types.storm]\nname = "S"\ngroups = ["Kommuner"]',
            "incident_types.storm.groups.0",
            3,
            "pattern",
        ),
        (
            '[incident_types.storm]\nname = "S"\nchecklist = ["x", 5]',
            "incident_types.storm.checklist.1",
            3,
            "valid string",
        ),
    ],
)
def test_load_policy_refuses(text: str, field: str, line: int, words: str) -> None:
    error = refused(text)
    assert error.field == field
    assert error.line == line
    assert words in error.message
    assert f"policy field {field} (line {line})" in error.message


def test_line_is_found_under_comments_blank_lines_and_quoted_keys() -> None:
    text = '# policy\n\n[limits] # bounds\n\n# note\n"max_recipients" = 999\n'
    error = refused(text)
    assert (error.field, error.line) == ("limits.max_recipients", 6)


def test_line_prefers_the_deepest_match() -> None:
    text = 'id = "ssr"\n[limits]\nclock_skew_seconds = 5\nmax_recipients = 999\n'
    assert refused(text).line == 4


def test_line_is_not_moved_by_a_later_shallower_match() -> None:
    # [modes.activated] may be written after its sub-table; the key line stays the best.
    text = '[modes.activated.rights]\nalert = ["god"]\n[modes.activated]\nreceipt_deadlines = {}\n'
    error = refused(text)
    assert (error.field, error.line) == ("modes.activated.rights.alert.0", 2)


def test_a_new_ladder_must_hold_the_default_ceiling_too() -> None:
    error = refused('ladder = ["AB", "CD"]')
    assert error.field == "ceiling"
    assert error.line is None  # the ceiling is not written in the file
    assert "ceiling 'SEKRETESS' is not on the ladder" in error.message
    with pytest.raises(ValueError, match="not on the ladder"):
        Policy(ladder=("AB", "CD"))


def test_line_is_none_when_the_field_is_not_written_as_a_key() -> None:
    error = refused("limits.max_recipients = 500")  # a dotted key
    assert error.field == "limits.max_recipients"
    assert error.line is None
    assert "(line" not in error.message


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('id = "ssr"\nceiling = \n', 2),
        ('id = "ssr"\n\nversion = 1 1\n', 3),
        ("[limits\n", 1),
        ('a = "unterminated\n', 1),
    ],
)
def test_toml_syntax_errors_name_the_line(text: str, line: int) -> None:
    error = refused(text)
    assert error.line == line
    assert error.field is None
    assert "not valid TOML" in error.message


def test_toml_error_at_end_of_document_has_no_line() -> None:
    error = refused("x = [1,")
    assert error.line is None
    assert "not valid TOML" in error.message


@pytest.mark.parametrize(
    "text",
    [
        "a = " + "[" * 100_000,
        "a = " + "[" * 2_000 + "]" * 2_000,
        "a = " + "{b = " * 20_000,
    ],
    ids=["unclosed arrays", "closed arrays", "inline tables"],
)
def test_deep_nesting_gives_policy_error_not_recursion_error(text: str) -> None:
    error = refused(text)
    assert "too deeply" in error.message
    assert error.field is None
    assert error.line is None


def test_oversized_file() -> None:
    assert load_policy("#" * MAX_POLICY_BYTES) == Policy()
    assert "larger than 262144 bytes" in refused("#" * (MAX_POLICY_BYTES + 1)).message
    # The bound is in bytes, not characters.
    text = "#" + "å" * (MAX_POLICY_BYTES // 2)
    assert len(text) < MAX_POLICY_BYTES
    assert "larger than" in refused(text).message


def test_policy_error_is_a_core_error() -> None:
    assert isinstance(refused("format = 2"), CoreError)


def test_policy_built_in_code_checks_the_same_rules() -> None:
    with pytest.raises(ValueError, match="not on the ladder"):
        Policy(ceiling="HEMLIGARE")
    with pytest.raises(ValueError, match="lists a level twice"):
        Policy(ladder=("AB", "AB"), ceiling="AB")
    with pytest.raises(ValueError, match="lacks"):
        Policy(receipt_deadlines={Priority.ROUTINE: 60})
    assert Policy(ladder=("AB", "CD"), ceiling="CD").ceiling == "CD"


# --- properties --------------------------------------------------------------------------


def outcome(text: str) -> Policy | PolicyError:
    """The policy, or the PolicyError; any other exception propagates and fails the test."""
    try:
        return load_policy(text)
    except PolicyError as error:
        return error


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_gives_a_policy_or_policy_error(text: str) -> None:
    result = outcome(text)
    if isinstance(result, PolicyError):
        assert result.line is None or result.line >= 1
    else:
        assert isinstance(result, Policy)


LINES = [
    "format = 1", "format = 2", 'id = "x"', "version = 3", "version = -1", 'ceiling = "INTERN"',
    'ceiling = "NOPE"', 'ladder = ["AB", "CD"]', 'ladder = ["AB", "AB"]', "[limits]",
    "max_recipients = 10", "max_recipients = 1000", "clock_skew_seconds = 0", "[receipt_deadlines]",
    "routine = 60", "flash = 1", "priority = 2", "immediate = 3", "[rights]",
    'alert = ["adapter"]', 'mode_change = ["king"]', "[modes.activated]",
    "[modes.activated.rights]", "[modes.heightened_alert.required_recipients]",
    'situation_report = ["nacka"]', "[modes.bogus]", "x = 1", "[region_wide_activation]",
    "min_recipients = 5", "# comment", "", "[", "= 1", 'a = """', "a = [[[",
]  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(LINES), max_size=12).map("\n".join))
def test_policy_like_text_gives_a_policy_or_policy_error(text: str) -> None:
    result = outcome(text)
    if isinstance(result, PolicyError):
        if result.field is not None:
            assert result.message.startswith(f"policy field {result.field}")
    else:
        assert result.ceiling in result.ladder
        assert set(result.receipt_deadlines) == set(Priority)


# --- the sender's delivery budget (issue 9 item 11) --------------------------------------


def test_sender_budget_defaults_and_a_file_that_sets_it() -> None:
    assert Policy().limits.sender_budget == Budget(
        DEFAULT_SENDER_DELIVERIES_PER_MINUTE, DEFAULT_SENDER_BURST_DELIVERIES
    )
    p = load_policy(
        "[limits]\nmax_recipients = 10\n"
        "sender_deliveries_per_minute = 60\nsender_burst_deliveries = 10\n"
    )
    assert p.limits.sender_budget == Budget(per_minute=60, burst=10)
    top = load_policy(
        f"[limits]\nmax_recipients = {MAX_RECIPIENTS}\n"
        f"sender_deliveries_per_minute = {MAX_SENDER_DELIVERIES_PER_MINUTE}\n"
        f"sender_burst_deliveries = {MAX_SENDER_BURST_DELIVERIES}\n"
    )
    assert top.limits.sender_budget == Budget(
        MAX_SENDER_DELIVERIES_PER_MINUTE, MAX_SENDER_BURST_DELIVERIES
    )


@pytest.mark.parametrize(
    ("text", "field", "line", "words"),
    [
        (
            '[limits]\nsender_deliveries_per_minute = "6000"',
            "limits.sender_deliveries_per_minute",
            2,
            "valid integer",
        ),
        (
            "[limits]\nsender_deliveries_per_minute = 6000.0",
            "limits.sender_deliveries_per_minute",
            2,
            "valid integer",
        ),
        (
            "[limits]\nsender_burst_deliveries = true",
            "limits.sender_burst_deliveries",
            2,
            "valid integer",
        ),
        (
            "[limits]\nsender_deliveries_per_minute = 0",
            "limits.sender_deliveries_per_minute",
            2,
            "greater than or equal to 1",
        ),
        (
            f"[limits]\nsender_deliveries_per_minute = {MAX_SENDER_DELIVERIES_PER_MINUTE + 1}",
            "limits.sender_deliveries_per_minute",
            2,
            "less than or equal to",
        ),
        (
            "[limits]\nmax_recipients = 1\n"
            f"sender_burst_deliveries = {MAX_SENDER_BURST_DELIVERIES + 1}",
            "limits.sender_burst_deliveries",
            3,
            "less than or equal to",
        ),
        (
            "# budgets\n[limits]\nmax_recipients = 1\nsender_burst_deliveries = -5",
            "limits.sender_burst_deliveries",
            4,
            "greater than or equal to 1",
        ),
        # a burst below max_recipients would refuse the largest message for ever
        (
            "[limits]\nsender_burst_deliveries = 63",
            "limits.sender_burst_deliveries",
            2,
            "at least max_recipients (64)",
        ),
        (
            "[limits]\nmax_recipients = 200\n\nsender_burst_deliveries = 100",
            "limits.sender_burst_deliveries",
            4,
            "at least max_recipients (200)",
        ),
        (
            "[limits]\nsender_budget = 5",
            "limits.sender_budget",
            2,
            "Extra inputs",
        ),
    ],
)
def test_sender_budget_refusals(text: str, field: str, line: int, words: str) -> None:
    error = refused(text)
    assert error.field == field
    assert error.line == line
    assert words in error.message
    assert f"policy field {field} (line {line})" in error.message


def test_an_invalid_max_recipients_is_reported_not_the_burst() -> None:
    error = refused("[limits]\nmax_recipients = 0\nsender_burst_deliveries = 600")
    assert error.field == "limits.max_recipients"


def test_deploy_policy_states_the_default_budget() -> None:
    deployed = Path(__file__).resolve().parent.parent / "deploy" / "policy.toml"
    limits = load_policy(deployed.read_text(encoding="utf-8")).limits
    assert limits.sender_budget == Policy().limits.sender_budget
