"""Routing rules (matching, every validation error) and the mapping to ``Client.send``.

Rules are checked against the demo directory and the default policy; alerts are built
directly as :class:`SourceAlert`s.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import clients.adapters.rules as rules_module
from broker.core import Policy, Reference, ReferenceKind
from broker.demo import DemoRegion
from clients import Client
from clients._errors import ClientError
from clients.adapters.mapping import (
    effective_type,
    lifetime_s,
    nothing_to_cancel,
    send_arguments,
)
from clients.adapters.model import Area, Info, MsgType, Severity, SourceAlert
from clients.adapters.rules import Route, RulesError, RuleSet
from clients.adapters.state import Sent
from tests.conftest import NOW

ROUTE = {"groups": ["kommuner"], "label": "INTERN", "tlp": "GREEN", "priority": "routine"}


def toml(*rules: dict[str, Any]) -> str:
    """A rules file from dicts (JSON strings, lists and booleans are valid TOML)."""
    out = []
    for rule in rules:
        out.append("[[rule]]")
        out.extend(f"{key} = {json.dumps(value)}" for key, value in rule.items())
        out.append("")
    return "\n".join(out)


def rule(name: Any = "r", **fields: Any) -> dict[str, Any]:
    return {"name": name, **ROUTE, **fields}


def make_alert(**overrides: Any) -> SourceAlert:
    fields: dict[str, Any] = {
        "format": "cap-xml",
        "item_id": "urn:se:msb:vma:1",
        "version": "2026-09-21T14:00:00+02:00",
        "msg_type": MsgType.ALERT,
        "sent": NOW - 60_000,
        "event": "Fara",
        "severity": Severity.SEVERE,
        "categories": ("Safety",),
        "areas": (Area("Nacka", counties=("01",), municipalities=("0182",)),),
        "infos": (Info("sv-SE", event="Fara", headline="Viktigt meddelande"),),
        "sender": "SOS Alarm",
    }
    fields.update(overrides)
    return SourceAlert(**fields)


@pytest.fixture
def load(region: DemoRegion, policy: Policy) -> Any:
    def load(text: str) -> RuleSet:
        return RuleSet.load(text, directory=region.directory, policy=policy)

    return load


# --- matching ---------------------------------------------------------------


def test_first_matching_rule_wins(load: Any) -> None:
    rules = load(
        toml(
            rule("fire", event=["Brand"], to=["storstockholms-brandforsvar"], groups=[]),
            rule("danger", event=["Fara"], groups=["blaljus"]),
            rule("everything", groups=["tib"]),
        )
    )
    assert len(rules) == 3
    route = rules.route("vma", make_alert())
    assert route == Route(
        rule="danger",
        to=(),
        groups=("blaljus",),
        label="INTERN",
        tlp="GREEN",
        priority="routine",
    )
    assert rules.route("vma", make_alert(event="Brand")).rule == "fire"
    assert rules.route("vma", make_alert(event="Storm")).rule == "everything"


def test_no_rule_matches_is_none(load: Any) -> None:
    rules = load(toml(rule(event=["Brand"])))
    assert rules.route("vma", make_alert()) is None


@pytest.mark.parametrize(
    ("criteria", "overrides", "source", "matches"),
    [
        ({"source": ["vma", "krisinformation"]}, {}, "vma", True),
        ({"source": ["vma", "krisinformation"]}, {}, "trafikverket", False),
        ({"source": ["vma"]}, {}, "VMA", False),  # source names are exact
        ({"event": ["fara"]}, {"event": "FARA"}, "vma", True),
        ({"event": ["Fara"]}, {"event": " fara "}, "vma", True),
        ({"event": ["Fara"]}, {"event": "Fara för liv"}, "vma", False),  # exact, not substring
        ({"event": ["Ödesdiger"]}, {"event": "ÖDESDIGER"}, "vma", True),
        ({"category": ["fire", "met"]}, {"categories": ("Safety", "Met")}, "vma", True),
        ({"category": ["fire"]}, {"categories": ("Safety",)}, "vma", False),
        ({"category": ["fire"]}, {"categories": ()}, "vma", False),
        ({"msg_type": ["alert", "update"]}, {"msg_type": MsgType.UPDATE}, "vma", True),
        ({"msg_type": ["alert"]}, {"msg_type": MsgType.CANCEL}, "vma", False),
        ({"county": ["01"]}, {}, "vma", True),
        ({"county": ["03"]}, {}, "vma", False),
        ({"municipality": ["0180", "0182"]}, {}, "vma", True),
        ({"municipality": ["0180"]}, {}, "vma", False),
        ({"county": ["01"], "municipality": ["0180"]}, {}, "vma", False),  # all criteria hold
        ({"county": ["01"], "municipality": ["0182"]}, {}, "vma", True),
    ],
)
def test_each_criterion(
    load: Any, criteria: dict[str, Any], overrides: dict[str, Any], source: str, matches: bool
) -> None:
    rules = load(toml(rule(**criteria)))
    assert (rules.route(source, make_alert(**overrides)) is not None) is matches


@pytest.mark.parametrize("minimum", list(Severity))
@pytest.mark.parametrize("severity", list(Severity))
def test_min_severity_order(load: Any, minimum: Severity, severity: Severity) -> None:
    order = ["unknown", "minor", "moderate", "severe", "extreme"]
    rules = load(toml(rule(min_severity=minimum.value)))
    matched = rules.route("vma", make_alert(severity=severity)) is not None
    assert matched is (order.index(severity.value) >= order.index(minimum.value))


def test_unknown_severity_value_ranks_lowest(load: Any) -> None:
    rules = load(toml(rule(min_severity="minor")))
    assert rules.route("vma", make_alert(severity="catastrophic")) is None


@pytest.mark.parametrize(
    ("areas", "county", "municipality", "matches"),
    [
        # A municipality code names its county: "0182" is in county "01".
        ((Area(municipalities=("0182",)),), True, True, True),
        # A county alone is not a place in a given municipality.
        ((Area(counties=("01",)),), True, False, False),
        # Several areas: any one in the rule's places will do.
        ((Area(counties=("03",)), Area(municipalities=("0180",))), True, True, True),
        ((Area(counties=("03",), municipalities=("0380",)),), False, False, False),
    ],
)
def test_area_codes(
    load: Any, areas: tuple[Area, ...], county: bool, municipality: bool, matches: bool
) -> None:
    alert = make_alert(areas=areas)
    assert (load(toml(rule(county=["01"]))).route("vma", alert) is not None) is county
    by_municipality = load(toml(rule(municipality=["0180", "0182"])))
    assert (by_municipality.route("vma", alert) is not None) is municipality
    both = load(toml(rule(county=["01"], municipality=["0180", "0182"])))
    assert (both.route("vma", alert) is not None) is matches


@pytest.mark.parametrize("areas", [(), (Area("Hela länet"),), (Area(geometry="POINT (18 59)"),)])
def test_alert_without_area_codes_needs_match_without_area(
    load: Any, areas: tuple[Area, ...]
) -> None:
    alert = make_alert(areas=areas)
    assert load(toml(rule(county=["01"]))).route("vma", alert) is None
    assert load(toml(rule(municipality=["0182"]))).route("vma", alert) is None
    lenient = load(toml(rule(county=["01"], match_without_area=True)))
    assert lenient.route("vma", alert) is not None
    # Codes elsewhere still decide: match_without_area is only for no codes at all.
    assert lenient.route("vma", make_alert(areas=(Area(counties=("03",)),))) is None
    # Rules without geography ignore areas altogether.
    assert load(toml(rule())).route("vma", alert) is not None


def test_route_carries_every_field(load: Any) -> None:
    rules = load(
        toml(
            {
                "name": "vma-stockholm",
                "to": ["lansstyrelsen-stockholm", "samordnande", "nacka", "nacka"],
                "groups": ["kommuner", "blaljus"],
                "label": "OFFENTLIG",
                "tlp": "CLEAR",
                "priority": "immediate",
                "incident": "storm-2026",
                "status": "exercise",
            }
        )
    )
    route = rules.route("vma", make_alert())
    assert route == Route(
        rule="vma-stockholm",
        to=("lansstyrelsen-stockholm", "nacka"),
        groups=("blaljus", "kommuner", "samordnande"),  # a group named in "to" is a group
        label="OFFENTLIG",
        tlp="CLEAR",
        priority="immediate",
        incident="storm-2026",
        status="exercise",
    )


def test_docstring_example_loads(load: Any) -> None:
    doc = rules_module.__doc__ or ""
    example = doc.split("Example::", 1)[1].split("Geography:", 1)[0]
    text = "\n".join(line.removeprefix("    ") for line in example.splitlines())
    rules = load(text)
    assert [r.name for r in rules.rules] == ["vma-stockholm", "trafik"]
    # The first rule is OFFENTLIG to blaljus and kommuner, which every member is cleared for.
    assert rules.rules[0].route.tlp == "CLEAR"


def test_comments_and_other_toml_forms(load: Any) -> None:
    text = (
        "# routing for the VMA feed\n"
        "[[rule]]  # first\n"
        "name = 'single-quoted'\n"
        "groups = [\n  'kommuner',  # every municipality\n  'tib',\n]\n"
        'label = "INTERN"\ntlp = "AMBER+STRICT"\npriority = "flash"\n'
    )
    route = load(text).route("vma", make_alert())
    assert route.groups == ("kommuner", "tib")
    assert route.tlp == "AMBER+STRICT"


# --- validation -------------------------------------------------------------

GOOD = toml(rule("good"))  # lines 1-6
BAD_CASES: list[tuple[str, str, str | None, int | None, str]] = [
    # (id, text, field, line, fragment of the message)
    ("no-rules", "", None, None, "no [[rule]] tables"),
    ("only-comments", "# nothing yet\n", None, None, "no [[rule]] tables"),
    ("empty-array", "rule = []\n", None, None, "no [[rule]] tables"),
    ("malformed", GOOD + 'event = ["a",\n', None, 7, "not valid TOML (line 7)"),
    ("malformed-value", "[[rule]]\nname = \n", None, 2, "line 2"),
    ("duplicate-key", "[[rule]]\nname = 'a'\nname = 'b'\n", None, 3, "not valid TOML"),
    ("top-level-key", "format = 1\n" + GOOD, "format", 1, "unknown top-level key 'format'"),
    ("top-level-table", GOOD + "[defaults]\nlabel = 'INTERN'\n", "defaults", 7, "only [[rule]]"),
    ("rule-not-tables", 'rule = "everything"\n', "rule", 1, "array of tables"),
    ("typo", GOOD + 'evnt = ["Fara"]\n', "evnt", 7, "unknown key (known: category, county"),
    ("typo-second-rule", GOOD + toml(rule("b", groupz=["tib"])), "groupz", 13, "rule #2 'b'"),
    ("missing-name", toml({**ROUTE}), "name", 1, "missing"),
    ("name-type", toml(rule(3)), "name", 2, "must be a name"),
    ("name-chars", toml(rule("två ord")), "name", 2, "must be a name"),
    ("duplicate-name", GOOD + toml(rule("good")), "name", 8, "duplicate name"),
    (
        "missing-label",
        toml({"name": "x", "groups": ["tib"], "tlp": "GREEN"}),
        "label",
        1,
        "missing",
    ),
    ("missing-tlp", toml({"name": "x", "groups": ["tib"], "label": "INTERN"}), "tlp", 1, "missing"),
    (
        "missing-priority",
        toml({"name": "x", "groups": ["tib"], "label": "INTERN", "tlp": "GREEN"}),
        "priority",
        1,
        "missing",
    ),
    ("no-addressees", toml(rule(groups=[])), "to", 1, "no addressees"),
    ("no-addressees-both", toml(rule(groups=[], to=[])), "to", 7, "no addressees"),
    (
        "unknown-actor",
        toml(rule(to=["nacka-kommun"])),
        "to",
        7,
        "actors: botkyrka, brandkaren-attunda, danderyd",
    ),
    ("unknown-actor-groups", toml(rule(to=["brandforsvaret"])), "to", 7, "groups: blaljus, inri"),
    ("to-homoglyph", toml(rule(to=["nackа"])), "to", 7, "actor or group ids"),
    ("unknown-group", toml(rule(groups=["kommunerna"])), "groups", 3, "known: blaljus,"),
    ("actor-as-group", toml(rule(groups=["nacka"])), "groups", 3, "an actor: list it under to"),
    ("to-not-list", toml(rule(to="nacka")), "to", 7, "must be a list of strings, not 'nacka'"),
    ("to-not-slug", toml(rule(to=["Nacka"])), "to", 7, "actor or group ids"),
    ("label-unknown", toml(rule(label="SECRET")), "label", 4, "must be one of OFFENTLIG, INTERN"),
    ("label-lowercase", toml(rule(label="intern")), "label", 4, "not 'intern'"),
    ("label-above-ceiling", toml(rule(label="HEMLIG")), "label", 4, "above the policy's ceiling"),
    (
        "label-above-clearance",
        toml(rule(groups=["samordnande"], label="SEKRETESS")),
        "label",
        4,
        "clearance of stockholms-hamnar (INTERN, a member of samordnande)",
    ),
    ("public-not-clear", toml(rule(label="OFFENTLIG")), "tlp", 5, "must be CLEAR, not GREEN"),
    ("tlp-unknown", toml(rule(tlp="WHITE")), "tlp", 5, "CLEAR, GREEN, AMBER, AMBER+STRICT, RED"),
    ("tlp-lowercase", toml(rule(tlp="amber")), "tlp", 5, "not 'amber'"),
    ("priority", toml(rule(priority="urgent")), "priority", 6, "routine, priority, immediate"),
    ("severity", toml(rule(min_severity="high")), "min_severity", 7, "extreme, severe"),
    ("severity-type", toml(rule(min_severity=3)), "min_severity", 7, "not 3"),
    ("msg-type", toml(rule(msg_type=["new"])), "msg_type", 7, "alert, update, cancel"),
    ("msg-type-string", toml(rule(msg_type="alert")), "msg_type", 7, "list of strings"),
    ("county-one-digit", toml(rule(county=["1"])), "county", 7, "'1' is not a county code"),
    ("county-three", toml(rule(county=["001"])), "county", 7, "two digits"),
    ("county-letters", toml(rule(county=["AB"])), "county", 7, "two digits"),
    ("county-number", toml(rule(county=[1])), "county", 7, "non-empty strings"),
    ("county-wide-digits", toml(rule(county=["٠١"])), "county", 7, "two digits"),
    ("municipality", toml(rule(municipality=["182"])), "municipality", 7, "four digits"),
    ("municipality-name", toml(rule(municipality=["Nacka"])), "municipality", 7, "four digits"),
    ("status", toml(rule(status="draft")), "status", 7, "actual, exercise, test"),
    ("incident", toml(rule(incident="Storm 2026")), "incident", 7, "an incident id"),
    ("without-area-type", toml(rule(match_without_area="yes")), "match_without_area", 7, "true"),
    ("without-area-alone", toml(rule(match_without_area=True)), "match_without_area", 7, "county"),
    ("event-string", toml(rule(event="Fara")), "event", 7, "must be a list of strings"),
    ("event-empty", toml(rule(event=[])), "event", 7, "at least one value"),
    ("event-blank", toml(rule(event=["  "])), "event", 7, "non-empty strings"),
    ("event-long", toml(rule(event=["x" * 201])), "event", 7, "at most 200"),
    ("category-table", toml(rule()) + "category = {a = 1}\n", "category", 7, "list of strings"),
    ("source-nested", toml(rule(source=[["vma"]])), "source", 7, "non-empty strings"),
]


@pytest.mark.parametrize(
    ("text", "field", "line", "fragment"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_CASES],
)
def test_validation_errors(
    load: Any, text: str, field: str | None, line: int | None, fragment: str
) -> None:
    with pytest.raises(RulesError) as info:
        load(text)
    error = info.value
    assert isinstance(error, ClientError)
    assert error.code == "rules_invalid"
    assert fragment in error.message
    assert error.field == field
    assert error.line == line
    if field is not None and field != "rule" and "top-level" not in error.message:
        assert f"field {field}" in error.message
    if line is not None:
        assert f"line {line}" in error.message


def test_error_names_the_rule(load: Any) -> None:
    with pytest.raises(RulesError) as info:
        load(GOOD + toml(rule("second", tlp="BLUE")))
    assert info.value.rule == "second"
    assert info.value.message.startswith("rule #2 'second', field tlp (line 11):")
    with pytest.raises(RulesError) as info:
        load(toml({**ROUTE}))
    assert info.value.rule == "#1"


def test_too_many_rules(load: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rules_module, "MAX_RULES", 2)
    load(toml(rule("a"), rule("b")))
    with pytest.raises(RulesError, match="more than 2 rules"):
        load(toml(rule("a"), rule("b"), rule("c")))


def test_list_bound(load: Any) -> None:
    with pytest.raises(RulesError, match="more than 1000 values"):
        load(toml(rule(event=[f"e{i}" for i in range(1001)])))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("x = " + "[" * 2000 + "]" * 2000, "nests"),
        ("x = " + "9" * 5000, "number that cannot be read"),
        ("# " + "x" * (1024 * 1024), "larger than"),
    ],
    ids=["deep", "huge-number", "too-large"],
)
def test_hostile_text(load: Any, text: str, fragment: str) -> None:
    with pytest.raises(RulesError, match=fragment):
        load(text)


def test_text_must_be_str(load: Any) -> None:
    with pytest.raises(RulesError, match="must be a str"):
        load(GOOD.encode())


def test_load_file(tmp_path: Path, region: DemoRegion, policy: Policy) -> None:
    path = tmp_path / "rules.toml"

    def load() -> RuleSet:
        return RuleSet.load_file(path, directory=region.directory, policy=policy)

    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())  # a BOM is tolerated
    assert load().rules[0].name == "good"
    path.write_bytes(GOOD.encode() + b"# \xff\n")
    with pytest.raises(RulesError, match="not UTF-8"):
        load()
    path.write_bytes(b"#" * (1024 * 1024 + 1))
    with pytest.raises(RulesError, match="larger than"):
        load()
    path.unlink()
    with pytest.raises(RulesError, match="cannot read rules file"):
        load()


def test_custom_policy_ceiling_and_ladder(region: DemoRegion) -> None:
    strict = Policy(ceiling="INTERN")
    with pytest.raises(RulesError, match="above the policy's ceiling INTERN"):
        RuleSet.load(toml(rule(label="SEKRETESS")), directory=region.directory, policy=strict)
    RuleSet.load(toml(rule(label="INTERN")), directory=region.directory, policy=strict)


# --- mapping to Client.send -------------------------------------------------

M1, H1 = "a" * 32, "b" * 64
ROUTE_OBJ = Route(
    rule="r",
    to=("lansstyrelsen-stockholm",),
    groups=("kommuner",),
    label="OFFENTLIG",
    tlp="CLEAR",
    priority="immediate",
)


def sent(version: str = "v0", *, cancelled: bool = False, expires: int | None = None) -> Sent:
    return Sent("vma", "urn:se:msb:vma:1", version, M1, H1, cancelled, expires)


def args(alert: SourceAlert, previous: Sent | None = None, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("policy", Policy())
    kwargs.setdefault("now_ms", NOW)
    route = kwargs.pop("route", ROUTE_OBJ)
    return send_arguments("vma", alert, route, previous, **kwargs)


def test_send_arguments_are_client_send_keywords() -> None:
    result = args(make_alert(expires=NOW + 3_600_000))
    parameters = inspect.signature(Client.send).parameters
    assert set(result) <= set(parameters)
    assert set(result) == {
        "to",
        "groups",
        "incident",
        "payload",
        "label",
        "tlp",
        "priority",
        "type",
        "status",
        "expires",
        "references",
    }
    assert result["to"] == ["lansstyrelsen-stockholm"]
    assert result["groups"] == ["kommuner"]
    assert result["incident"] is None
    assert (result["label"], result["tlp"], result["priority"]) == (
        "OFFENTLIG",
        "CLEAR",
        "immediate",
    )
    assert result["type"] == "alert"
    assert result["status"] == "actual"
    assert result["expires"] == timedelta(hours=1)
    assert result["references"] == []


def test_payload_fields() -> None:
    alert = make_alert(
        expires=NOW + 3_600_000,
        urgency="immediate",
        certainty="observed",
        categories=("Safety", "Fire"),
        areas=(
            Area("Nacka", counties=("01",), municipalities=("0182",), geometry="POINT (18 59)"),
            Area("Hela länet"),
        ),
        infos=(
            Info("sv-SE", "Fara", "Viktigt meddelande", "Brand i Nacka", "Stäng fönster", "u"),
            Info("en-US", headline="Important public announcement"),
        ),
    )
    payload = args(alert)["payload"]
    assert json.loads(json.dumps(payload)) == payload  # JSON-able as it is
    assert payload == {
        "source": "vma",
        "format": "cap-xml",
        "item_id": "urn:se:msb:vma:1",
        "version": "2026-09-21T14:00:00+02:00",
        "msg_type": "alert",
        "event": "Fara",
        "severity": "severe",
        "urgency": "immediate",
        "certainty": "observed",
        "status": "actual",
        "sent": NOW - 60_000,
        "expires": NOW + 3_600_000,
        "categories": ["Safety", "Fire"],
        "sender": "SOS Alarm",
        "areas": [
            {
                "description": "Nacka",
                "counties": ["01"],
                "municipalities": ["0182"],
                "geometry": "POINT (18 59)",
            },
            {"description": "Hela länet", "counties": [], "municipalities": [], "geometry": None},
        ],
        "infos": [
            {
                "language": "sv-SE",
                "event": "Fara",
                "headline": "Viktigt meddelande",
                "description": "Brand i Nacka",
                "instruction": "Stäng fönster",
                "web": "u",
            },
            {
                "language": "en-US",
                "event": "",
                "headline": "Important public announcement",
                "description": "",
                "instruction": "",
                "web": "",
            },
        ],
    }


@pytest.mark.parametrize(
    ("msg_type", "previous", "effective", "reference"),
    [
        (MsgType.ALERT, None, MsgType.ALERT, None),
        (MsgType.ALERT, sent(), MsgType.UPDATE, ReferenceKind.UPDATE),  # changed version
        (MsgType.ALERT, sent(cancelled=True), MsgType.ALERT, None),  # starts afresh
        (MsgType.UPDATE, None, MsgType.UPDATE, None),
        (MsgType.UPDATE, sent(), MsgType.UPDATE, ReferenceKind.UPDATE),
        (MsgType.CANCEL, sent(), MsgType.CANCEL, ReferenceKind.CANCEL),
        (MsgType.CANCEL, None, MsgType.CANCEL, None),
        (MsgType.CANCEL, sent(cancelled=True), MsgType.CANCEL, None),
    ],
)
def test_references_and_effective_type(
    msg_type: MsgType,
    previous: Sent | None,
    effective: MsgType,
    reference: ReferenceKind | None,
) -> None:
    alert = make_alert(msg_type=msg_type, version="v1")
    assert effective_type(alert, previous) is effective
    result = args(alert, previous)
    assert result["payload"]["msg_type"] == effective.value
    assert result["type"] == "alert"
    if reference is None:
        assert result["references"] == []
    else:
        assert result["references"] == [Reference(kind=reference, message=M1, header_hash=H1)]
    skip = msg_type is MsgType.CANCEL and (previous is None or previous.cancelled)
    assert nothing_to_cancel(alert, previous) is skip


HOUR_S, DAY_S = 3600, 86_400


@pytest.mark.parametrize(
    ("expires", "kwargs", "seconds"),
    [
        (NOW + HOUR_S * 1000, {}, HOUR_S),
        (NOW + HOUR_S * 1000 + 1, {}, HOUR_S + 1),  # rounded up: never ends before the alert
        (None, {}, DAY_S),
        (NOW, {}, DAY_S),  # already expired: the default lifetime
        (NOW - 1, {"default_lifetime_s": 600}, 600),
        (None, {"default_lifetime_s": 600.5}, 601),  # the ingest config gives floats
        (NOW + 5_000, {}, 60),  # at least a minute
        (None, {"default_lifetime_s": 1}, 60),
        (NOW + 400 * DAY_S * 1000, {}, 30 * DAY_S),  # never beyond the policy's maximum
        (None, {"default_lifetime_s": 40 * DAY_S}, 30 * DAY_S),
        (
            NOW + DAY_S * 1000,
            {"policy": Policy.model_validate({"limits": {"max_lifetime_seconds": 30}})},
            30,  # the policy wins over the minimum
        ),
    ],
)
def test_expiry_clamping(expires: int | None, kwargs: dict[str, Any], seconds: int) -> None:
    alert = make_alert(expires=expires)
    result = args(alert, **kwargs)
    assert result["expires"] == timedelta(seconds=seconds)
    policy = kwargs.get("policy", Policy())
    assert policy.limits.max_lifetime_seconds == (30 if "policy" in kwargs else 30 * DAY_S)
    default = kwargs.get("default_lifetime_s", DAY_S)
    assert lifetime_s(alert, policy, NOW, default) == seconds


@pytest.mark.parametrize(
    ("route_status", "alert_status", "status"),
    [
        (None, "actual", "actual"),
        (None, "exercise", "exercise"),
        ("exercise", "actual", "exercise"),
        ("test", "exercise", "test"),
        ("actual", "exercise", "exercise"),  # a rule never promotes an exercise to actual
        ("actual", "test", "test"),
    ],
)
def test_status(route_status: str | None, alert_status: str, status: str) -> None:
    route = replace(ROUTE_OBJ, status=route_status, incident="storm-2026")
    result = args(make_alert(status=alert_status), route=route)
    assert result["status"] == status
    assert result["payload"]["status"] == alert_status
    assert result["incident"] == "storm-2026"


def test_a_restricted_alert_is_never_made_public(load: Any) -> None:
    rules = load(
        """
[[rule]]
name = "public"
groups = ["kommuner"]
label = "OFFENTLIG"
tlp = "CLEAR"
priority = "immediate"

[[rule]]
name = "internal"
groups = ["kommuner"]
label = "INTERN"
tlp = "AMBER"
priority = "immediate"
"""
    )
    assert rules.route("vma", make_alert()).rule == "public"
    assert rules.route("vma", make_alert(scope="restricted")).rule == "internal"
    assert rules.route("vma", make_alert(scope="private")).rule == "internal"
