"""Traffic feeds: Trafikverket situations (JSON) and DATEX II v3 (XML).

Every sample in ``tests/feeds/trafikverket`` and ``tests/feeds/datex`` is parsed to exact
fields; every broken item is quarantined with its code and a detail naming the field
while its siblings still parse; every hostile or unreadable document is one
:class:`FeedError` with a clear code, and nothing else ever escapes the parsers.
"""

from __future__ import annotations

import ast
import doctest
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import defusedxml.common
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clients.adapters import _common, datex, trafikverket
from clients.adapters.cap import parse_cap_xml
from clients.adapters.datex import parse_datex
from clients.adapters.model import (
    MAX_DOCUMENT_BYTES,
    MAX_ITEMS,
    Area,
    FeedError,
    Info,
    MsgType,
    ParseResult,
    Severity,
    SourceAlert,
)
from clients.adapters.trafikverket import parse_trafikverket

FEEDS = Path(__file__).parent / "feeds"
TRAFIKVERKET = FEEDS / "trafikverket"
DATEX = FEEDS / "datex"


def ms(text: str) -> int:
    """Epoch milliseconds, computed independently of the parsers."""
    return round(datetime.fromisoformat(text).timestamp() * 1000)


def tv(name: str) -> ParseResult:
    return parse_trafikverket((TRAFIKVERKET / name).read_bytes())


def dx(name: str) -> ParseResult:
    return parse_datex((DATEX / name).read_bytes())


# == Trafikverket ======================================================================

KISTA_V1 = SourceAlert(
    format="trafikverket",
    item_id="SE_STA_TRISSID_1_9100001",
    version="2024-11-12T07:41:05.000+01:00",
    msg_type=MsgType.ALERT,
    sent=ms("2024-11-12T07:41:05.000+01:00"),
    event="Olycka",
    severity=Severity.MODERATE,
    categories=("Olycka",),
    expires=ms("2024-11-12T09:30:00.000+01:00"),
    areas=(
        Area(
            description="E4 norrgående vid Trafikplats Kista",
            counties=("01",),
            geometry="LINESTRING (17.94412 59.40318, 17.93887 59.41011)",
        ),
    ),
    infos=(
        Info(
            language="sv-SE",
            event="Olycka",
            headline="Olycka på E4 norrgående vid Kista",
            description="Två personbilar har kolliderat. Vänster körfält är avstängt. "
            "Räddningstjänst och polis är på plats.",
            web="https://www.trafikverket.se/trafikinformation/vag/",
        ),
    ),
    sender="Trafikverket",
)
QUEUE = SourceAlert(
    format="trafikverket",
    item_id="SE_STA_TRISSID_2_9100002",
    version="2024-11-12T07:41:05.000+01:00",
    msg_type=MsgType.ALERT,
    sent=ms("2024-11-12T07:41:05.000+01:00"),
    event="Trafikmeddelande",
    severity=Severity.MINOR,  # "Ingen påverkan"
    categories=("Trafikmeddelande", "Köbildning"),
    areas=(
        Area(
            description="Trafikplats Järva krog (E4)",
            counties=("01",),
            geometry="POINT (17.99872 59.37092)",
        ),
    ),
    infos=(
        Info(
            language="sv-SE",
            event="Trafikmeddelande",
            headline="Trafikmeddelande, E4",  # no Header: MessageType and road
            description="Köbildning på E4 norrgående från Järva krog mot Kista.",
        ),
    ),
    sender="Trafikverket",
)
ROADWORKS = SourceAlert(
    format="trafikverket",
    item_id="SE_STA_TRISSID_1_9100017",
    version="2024-11-04T06:00:00.000+01:00",
    msg_type=MsgType.ALERT,
    sent=ms("2024-11-04T06:00:00.000+01:00"),
    event="Vägarbete",
    severity=Severity.MINOR,
    categories=("Vägarbete", "Beläggningsarbete"),
    expires=ms("2024-11-29T05:00:00.000+01:00"),
    areas=(
        Area(
            description="Värmdöleden vid Trafikplats Skurubron (Väg 222)",
            counties=("01",),
            geometry="POINT (18.2165 59.3148)",  # the older Geometry.WGS84 placement
        ),
    ),
    infos=(
        Info(
            language="sv-SE",
            event="Vägarbete",
            headline="Vägarbete på Värmdöleden",
            description="Beläggningsarbete. Ett körfält avstängt nattetid, "
            "hastighetsbegränsning 50 km/h.",
            web="https://www.trafikverket.se/vara-projekt/",
        ),
    ),
    sender="Trafikverket",
)
OBSTACLE = SourceAlert(
    format="trafikverket",
    item_id="SE_STA_TRISSID_1_9100040",
    version="2024-11-12T07:52:30.000+01:00",  # the situation's: the deviation has none
    msg_type=MsgType.ALERT,
    sent=ms("2024-11-12T07:52:30.000+01:00"),  # CreationTime
    event="Hinder",
    severity=Severity.SEVERE,  # no SeverityText: SeverityCode 5
    categories=("Hinder", "Föremål på vägen"),
    areas=(
        Area(
            description="E4 söder om Arlanda",
            counties=("01", "03"),
            geometry="POINT (17.9131 59.6043)",
        ),
    ),
    infos=(
        Info(
            language="sv-SE",
            event="Hinder",
            headline="Hinder, E4",
            description="Lastbil med tappad last blockerar höger körfält.",
        ),
    ),
    sender="Trafikverket",
)


def test_trafikverket_first_version_exact() -> None:
    assert tv("situations_v1.json") == ParseResult(alerts=(KISTA_V1, QUEUE, ROADWORKS, OBSTACLE))


def test_trafikverket_second_version_changes_one_and_cancels_a_deleted_situation() -> None:
    kista_v2 = SourceAlert(
        **{
            **KISTA_V1.__dict__,
            "version": "2024-11-12T08:05:12.000+01:00",
            "sent": ms("2024-11-12T08:05:12.000+01:00"),
            "severity": Severity.SEVERE,  # "Mycket stor påverkan"
            "expires": ms("2024-11-12T10:00:00.000+01:00"),
            "infos": (
                Info(
                    language="sv-SE",
                    event="Olycka",
                    headline="Olycka på E4 norrgående vid Kista",
                    description="Två personbilar har kolliderat. Båda körfälten är avstängda "
                    "under bärgning. Räddningstjänst och polis är på plats.",
                    web="https://www.trafikverket.se/trafikinformation/vag/",
                ),
            ),
        }
    )
    roadworks_cancel = SourceAlert(
        **{
            **ROADWORKS.__dict__,
            "msg_type": MsgType.CANCEL,
            "version": "2024-11-04T06:00:00.000+01:00+cancel",
            "sent": ms("2024-11-12T08:00:00.000+01:00"),  # the situation's ModifiedTime
            "references": ("SE_STA_TRISSID_1_9100017",),
        }
    )
    assert tv("situations_v2.json") == ParseResult(
        alerts=(kista_v2, QUEUE, roadworks_cancel, OBSTACLE)
    )


def test_trafikverket_keys_change_only_where_the_source_changed() -> None:
    first = {a.item_id: a.key for a in tv("situations_v1.json").alerts}
    second = {a.item_id: a.key for a in tv("situations_v2.json").alerts}
    assert first.keys() == second.keys()
    changed = {i for i in first if first[i] != second[i]}
    # The runtime deduplicates on the key: a cancel must never share the alert's key.
    assert changed == {"SE_STA_TRISSID_1_9100001", "SE_STA_TRISSID_1_9100017"}


def test_trafikverket_invalid_items_are_quarantined_and_the_valid_sibling_parsed() -> None:
    result = tv("invalid_items.json")
    assert result.alerts == (
        SourceAlert(
            format="trafikverket",
            item_id="SE_STA_TRISSID_1_9200001",
            version="2024-11-12T07:00:00.000+01:00",
            msg_type=MsgType.ALERT,
            sent=ms("2024-11-12T07:00:00.000+01:00"),
            event="Vägarbete",
            severity=Severity.MINOR,
            categories=("Vägarbete",),
            areas=(
                Area(
                    description="E4/E20 Essingeleden vid Stora Essingen",
                    counties=("01",),  # CountyNo 2, Stockholm's retired number
                    geometry="POINT (17.9866 59.3226)",  # POINT Z, written in 2D
                ),
            ),
            infos=(
                Info(
                    language="sv-SE",
                    event="Vägarbete",
                    headline="Vägarbete på Essingeleden",
                    description="Ett körfält avstängt.",
                ),
            ),
            sender="Trafikverket",
        ),
    )
    got = [(p.code, p.item_id, p.detail) for p in result.problems]
    expected = [
        ("missing_field", None, "Deviation.Id: missing"),
        ("invalid_timestamp", "SE_STA_TRISSID_1_9200002", "Deviation.StartTime: "),
        ("invalid_value", "SE_STA_TRISSID_1_9200003", "Deviation.Geometry.Point.WGS84: outside"),
        ("invalid_value", "SE_STA_TRISSID_1_9200004", "Deviation.Geometry.WGS84: "),
        ("invalid_value", "SE_STA_TRISSID_1_9200005", "Deviation.CountyNo: "),
        ("missing_field", "SE_STA_TRISSID_1_9200006", "Deviation.MessageType: missing"),
        ("invalid_timestamp", "SE_STA_TRISSID_1_9200007", "Deviation.VersionTime: "),
        ("invalid_value", None, "Situation[0].Deviation[8]: "),
        ("missing_field", "SE_STA_TRISSID_1_9200010", "Deviation.VersionTime: missing"),
        ("invalid_value", None, "Situation.Deleted: "),  # situation-level: no item id
        ("missing_field", None, "Situation.Deviation: missing"),
    ]
    assert [(c, i) for c, i, _ in got] == [(c, i) for c, i, _ in expected]
    for (_, _, detail), (_, _, start) in zip(got, expected, strict=True):
        assert detail.startswith(start), detail
    assert "'igår kl 10'" in got[1][2]  # the bad value is shown, bounded
    for problem in result.problems:
        assert 0 < len(problem.excerpt) <= 500
    assert "Olycka utan id" in result.problems[0].excerpt  # the quarantine can find it


def test_trafikverket_error_response_is_a_feed_error() -> None:
    with pytest.raises(FeedError) as caught:
        tv("error_response.json")
    assert caught.value.code == "source_error"
    assert caught.value.detail == "Security: Invalid authentication"


def _response(*deviations: dict[str, Any], **situation: Any) -> bytes:
    body = {"Id": "S", "VersionTime": "2024-11-12T07:00:00+01:00", **situation}
    body["Deviation"] = list(deviations)
    return json.dumps({"RESPONSE": {"RESULT": [{"Situation": [body]}]}}).encode()


def _deviation(**fields: Any) -> dict[str, Any]:
    return {"Id": "D", "MessageType": "Olycka", **fields}


def _one(doc: bytes) -> SourceAlert:
    result = parse_trafikverket(doc)
    assert result.problems == (), result.problems
    (alert,) = result.alerts
    return alert


def _problem_detail(doc: bytes, parse: Any = parse_trafikverket) -> str:
    result = parse(doc)
    assert result.alerts == ()
    (problem,) = result.problems
    return f"{problem.code} {problem.detail}"


@pytest.mark.parametrize(
    ("fields", "severity"),
    [
        ({"SeverityText": "Mycket stor påverkan", "SeverityCode": 2}, Severity.SEVERE),
        ({"SeverityText": "Stor påverkan", "SeverityCode": 5}, Severity.MODERATE),
        ({"SeverityText": "Liten påverkan"}, Severity.MINOR),
        ({"SeverityText": "Ingen påverkan", "SeverityCode": 1}, Severity.MINOR),
        ({"SeverityText": " stor PÅVERKAN "}, Severity.MODERATE),
        ({"SeverityText": "Okänd påverkan", "SeverityCode": 5}, Severity.SEVERE),
        ({"SeverityCode": 4}, Severity.MODERATE),
        ({"SeverityCode": 3}, Severity.MINOR),
        ({"SeverityCode": 2}, Severity.MINOR),
        ({"SeverityCode": 1}, Severity.UNKNOWN),
        ({"SeverityCode": "5"}, Severity.UNKNOWN),
        ({"SeverityCode": True}, Severity.UNKNOWN),
        ({}, Severity.UNKNOWN),
    ],
)
def test_trafikverket_severity_is_keyed_on_the_text(
    fields: dict[str, Any], severity: Severity
) -> None:
    assert _one(_response(_deviation(**fields))).severity == severity


@pytest.mark.parametrize(
    ("geometry", "wkt"),
    [
        (
            {"WGS84": "POINT (18.06 59.33)", "SWEREF99TM": "POINT (674032 6580822)"},
            "POINT (18.06 59.33)",
        ),
        ({"Point": {"WGS84": "POINT (18.06 59.33)"}}, "POINT (18.06 59.33)"),
        (
            {
                "Point": {"WGS84": "POINT (18.06 59.33)"},
                "Line": {"WGS84": "LINESTRING (18 59, 18.1 59.1)"},
            },
            "LINESTRING (18 59, 18.1 59.1)",
        ),
        ({"Point": {"WGS84": "point(18.06   59.33)"}}, "POINT (18.06 59.33)"),
        (
            {"Line": {"WGS84": "LINESTRING Z (18 59 1, 18.1 59.1 2)"}},
            "LINESTRING (18 59, 18.1 59.1)",
        ),
        (
            {"Line": {"WGS84": "MULTILINESTRING ((18 59, 18.1 59.1), (18.2 59.2, 18.3 59.3))"}},
            "MULTILINESTRING ((18 59, 18.1 59.1), (18.2 59.2, 18.3 59.3))",
        ),
        ({"SWEREF99TM": "POINT (674032 6580822)"}, None),
        ({"Point": {"SWEREF99TM": "POINT (674032 6580822)"}}, None),
        ({}, None),
    ],
)
def test_trafikverket_geometry_in_both_placements(
    geometry: dict[str, Any], wkt: str | None
) -> None:
    areas = _one(_response(_deviation(Geometry=geometry))).areas
    assert areas == ((Area(geometry=wkt),) if wkt else ())  # no place at all: no area


@pytest.mark.parametrize(
    ("geometry", "field"),
    [
        ({"WGS84": "POINT (18.06 91)"}, "Deviation.Geometry.WGS84: outside"),
        ({"WGS84": "POINT (-180.5 59)"}, "Deviation.Geometry.WGS84: outside"),
        ({"WGS84": "POINT (nan 59)"}, "Deviation.Geometry.WGS84: not a coordinate pair"),
        ({"WGS84": "POINT (18 59, 18 59)"}, "Deviation.Geometry.WGS84: wrong number"),
        ({"WGS84": "POINT EMPTY"}, "Deviation.Geometry.WGS84: not WKT"),
        ({"WGS84": "CIRCLE (18 59)"}, "Deviation.Geometry.WGS84: not WKT"),
        ({"WGS84": 18.06}, "Deviation.Geometry.WGS84: not a WKT string"),
        ({"Line": {"WGS84": "LINESTRING (18 59)"}}, "Deviation.Geometry.Line.WGS84: wrong number"),
        (
            {"Line": {"WGS84": "MULTILINESTRING ((18 59, 18 60) x)"}},
            "Deviation.Geometry.Line.WGS84: malformed",
        ),
        ({"Line": "LINESTRING (18 59, 18 60)"}, "Deviation.Geometry.Line: not an object"),
        ("POINT (18 59)", "Deviation.Geometry: not an object"),
    ],
)
def test_trafikverket_bad_geometry_is_an_item_problem(geometry: Any, field: str) -> None:
    detail = _problem_detail(_response(_deviation(Geometry=geometry)))
    assert detail.startswith("invalid_value " + field)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"VersionTime": "2024-11-12T06:00:00Z"}, "2024-11-12T06:00:00+00:00"),
        ({"VersionTime": "2024-11-12T07:00:00.123456789+01:00"}, "2024-11-12T07:00:00.123+01:00"),
        ({"VersionTime": "2024-11-12T07:00:00-05:00"}, "2024-11-12T07:00:00-05:00"),
    ],
)
def test_trafikverket_times_with_offsets(fields: dict[str, Any], expected: str) -> None:
    assert _one(_response(_deviation(**fields))).sent == ms(expected)


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        (
            {"VersionTime": "2024-13-01T07:00:00+01:00"},
            "invalid_timestamp Deviation.VersionTime: not a valid",
        ),
        (
            {"VersionTime": "2024-11-12 07:00:00+01:00"},
            "invalid_timestamp Deviation.VersionTime: not a time",
        ),
        ({"VersionTime": 1731391200000}, "invalid_value Deviation.VersionTime: not a string"),
        ({"EndTime": "snart"}, "invalid_timestamp Deviation.EndTime: "),
        ({"CreationTime": "2024-11-12"}, "invalid_timestamp Deviation.CreationTime: "),
        ({"Id": ""}, "missing_field Deviation.Id: missing"),
        ({"Id": ["D"]}, "invalid_value Deviation.Id: "),
        ({"MessageType": 7}, "invalid_value Deviation.MessageType: not a string"),
        ({"Message": "x" * 20_001}, "text_too_long Deviation.Message: longer than 20000"),
        ({"CountyNo": 1}, "invalid_value Deviation.CountyNo: not a list"),
        ({"CountyNo": [0]}, "invalid_value Deviation.CountyNo: not a county number"),
        ({"CountyNo": [True]}, "invalid_value Deviation.CountyNo: not a county number"),
    ],
)
def test_trafikverket_bad_fields_name_the_field(fields: dict[str, Any], detail: str) -> None:
    assert _problem_detail(_response(_deviation(**fields))).startswith(detail)


def test_trafikverket_bad_situation_modified_time_names_the_field() -> None:
    doc = _response(_deviation(), Deleted=True, ModifiedTime="nyss")
    assert _problem_detail(doc).startswith("invalid_timestamp Situation.ModifiedTime: ")


def test_trafikverket_small_rules() -> None:
    alert = _one(_response(_deviation(WebLink="javascript:alert(1)", Id=42, CountyNo=[1, 2, 1])))
    assert alert.item_id == "42"
    assert alert.headline == "Olycka"  # no Header, no road
    assert alert.infos[0].web == ""  # only http(s) links reach a console
    assert alert.areas == (Area(counties=("01",)),)
    assert _one(_response(_deviation(RoadNumber="Väg 73"))).areas == (Area(description="Väg 73"),)
    # A deleted situation without its own ModifiedTime is sent at the deviation's version.
    cancel = _one(_response(_deviation(VersionTime="2024-11-12T07:30:00+01:00"), Deleted=True))
    assert (cancel.msg_type, cancel.sent) == (MsgType.CANCEL, ms("2024-11-12T07:30:00+01:00"))


@pytest.mark.parametrize(
    ("situation", "problem"),
    [
        ("en situation", ("invalid_value", None, "Situation[0]: Situation is not an object")),
        ({"Id": 7, "Deviation": {}}, ("invalid_value", None, "Situation.Deviation: not a list")),
    ],
)
def test_trafikverket_bad_situations(situation: Any, problem: tuple[str, str | None, str]) -> None:
    doc = {"RESPONSE": {"RESULT": [{"Situation": [situation]}]}}
    (found,) = parse_trafikverket(json.dumps(doc).encode()).problems
    assert (found.code, found.item_id, found.detail.split(" (")[0]) == problem


def test_trafikverket_several_results_and_other_objects() -> None:
    doc = {
        "RESPONSE": {
            "RESULT": [
                {
                    "Situation": [
                        json.loads(_response(_deviation(Id="A")))["RESPONSE"]["RESULT"][0][
                            "Situation"
                        ][0]
                    ]
                },
                {"INFO": {"LASTCHANGEID": "1"}},
                {"TrainMessage": [{"Id": "ignored"}]},
                {"Situation": []},
            ]
        }
    }
    assert [a.item_id for a in parse_trafikverket(json.dumps(doc).encode()).alerts] == ["A"]


def _deep_json(depth: int) -> bytes:
    return b'{"RESPONSE":' * depth + b"{}" + b"}" * depth


@pytest.mark.parametrize(
    ("doc", "code"),
    [
        (b" " * (MAX_DOCUMENT_BYTES + 1), "too_large"),
        (b'{"RESPONSE": {"RESULT": []}}\xff', "encoding"),
        ('{"RESPONSE": {"RESULT": []}}'.encode("utf-16"), "encoding"),
        (b"", "malformed_json"),
        (b'{"RESPONSE": {"RESULT": [', "malformed_json"),
        (b'{"RESPONSE": {"RESULT": [{"Situation": [{"SeverityCode": NaN}]}]}}', "malformed_json"),
        (
            b'{"RESPONSE": {"RESULT": [{"Situation": [{"Id": 1' + b"0" * 5000 + b"}]}]}}",
            "malformed_json",
        ),
        (b"[" * 100_000 + b"]" * 100_000, "too_deep"),
        (_deep_json(50_000), "too_deep"),
        (b"[]", "unexpected_shape"),
        (b'{"RESPONSE": {}}', "unexpected_shape"),
        (b'{"RESPONSE": {"RESULT": {"Situation": []}}}', "unexpected_shape"),
        (b'{"RESPONSE": {"RESULT": ["Situation"]}}', "unexpected_shape"),
        (b'{"RESPONSE": {"RESULT": [{"Situation": {"Id": "S"}}]}}', "unexpected_shape"),
        (b'{"RESPONSE": {"RESULT": [{"Situation": []}, {"ERROR": "nope"}]}}', "source_error"),
    ],
)
def test_trafikverket_unreadable_documents(doc: bytes, code: str) -> None:
    with pytest.raises(FeedError) as caught:
        parse_trafikverket(doc)
    assert caught.value.code == code


def test_trafikverket_too_many_items() -> None:
    situation = {"Id": "S", "Deviation": [{"Id": "D"}]}
    doc = {"RESPONSE": {"RESULT": [{"Situation": [situation] * (MAX_ITEMS + 1)}]}}
    with pytest.raises(FeedError) as caught:
        parse_trafikverket(json.dumps(doc).encode())
    assert caught.value.code == "too_many_items"
    one_situation = {"Id": "S", "Deviation": [{"Id": "D"}] * (MAX_ITEMS + 1)}
    doc = {"RESPONSE": {"RESULT": [{"Situation": [one_situation]}]}}
    with pytest.raises(FeedError, match="too_many_items"):
        parse_trafikverket(json.dumps(doc).encode())


def test_trafikverket_a_full_but_allowed_document_parses() -> None:
    deviations = [_deviation(Id=f"D{i}", Message="x" * 1000) for i in range(MAX_ITEMS)]
    result = parse_trafikverket(_response(*deviations))
    assert len(result.alerts) == MAX_ITEMS
    assert result.problems == ()


# == DATEX II v3 =======================================================================

ACCIDENT = SourceAlert(
    format="datex2",
    item_id="SE_STA_TRISSID_1_9100001_R1",
    version="3",
    msg_type=MsgType.ALERT,
    sent=ms("2024-11-12T07:41:05.000+01:00"),
    event="Accident",
    severity=Severity.SEVERE,
    categories=("Accident", "rearCollision", "accidentInvolvingHeavyLorries"),
    certainty="observed",
    expires=ms("2024-11-12T09:30:00.000+01:00"),
    areas=(
        Area(
            description="E4 norrgående vid Trafikplats Kista",
            geometry="POINT (17.94412 59.40318)",
        ),
    ),
    infos=(
        Info(
            language="sv",
            event="Accident",
            headline="Accident: E4 norrgående vid Trafikplats Kista",
            description="Två personbilar har kolliderat. Vänster körfält är avstängt.",
        ),
        Info(
            language="en",
            event="Accident",
            headline="Accident: E4 northbound at Kista junction",
            description="Two cars have collided. The left lane is closed.",
        ),
    ),
    sender="SE/TRV",
)
MAINTENANCE = SourceAlert(
    format="datex2",
    item_id="SE_STA_TRISSID_1_9100017_R1",
    version="7",
    msg_type=MsgType.ALERT,
    sent=ms("2024-11-04T06:00:00.000+01:00"),
    event="MaintenanceWorks",
    severity=Severity.MINOR,
    categories=("MaintenanceWorks", "resurfacingWork"),
    certainty="likely",
    expires=ms("2024-11-29T05:00:00.000+01:00"),
    areas=(
        Area(
            description="222 Värmdöleden",  # no location comment: road number and name
            geometry="LINESTRING (18.2165 59.3148, 18.2241 59.3139, 18.2318 59.3127)",
        ),
    ),
    infos=(
        Info(
            language="sv",
            event="MaintenanceWorks",
            headline="MaintenanceWorks",
            description="Beläggningsarbete nattetid. Ett körfält avstängt, 50 km/h.",
        ),
    ),
    sender="SE/TRV",
)
SUSPENDED = SourceAlert(
    format="datex2",
    item_id="SE_STA_TRISSID_1_9100023_R1",
    version="2+cancel",
    msg_type=MsgType.CANCEL,
    sent=ms("2024-11-12T06:10:00.000+01:00"),
    event="RoadOrCarriagewayOrLaneManagement",
    severity=Severity.MODERATE,
    references=("SE_STA_TRISSID_1_9100023_R1",),
    categories=("RoadOrCarriagewayOrLaneManagement", "laneClosures"),
    certainty="observed",
    areas=(Area(geometry="POINT (18.0719 59.3142)"),),
    infos=(
        Info(
            language="sv",
            event="RoadOrCarriagewayOrLaneManagement",
            headline="RoadOrCarriagewayOrLaneManagement",
            description="Körfältsavstängning i Söderledstunneln är hävd.",
        ),
    ),
    sender="SE/TRV",
)
ENDED_QUEUE = SourceAlert(
    format="datex2",
    item_id="SE_STA_TRISSID_1_9100031_R1",
    version="4+cancel",
    msg_type=MsgType.CANCEL,  # overallEndTime 07:30 is before publicationTime 07:45
    sent=ms("2024-11-12T07:05:00.000+01:00"),
    event="AbnormalTraffic",
    severity=Severity.MODERATE,  # the situation's overallSeverity
    references=("SE_STA_TRISSID_1_9100031_R1",),
    categories=("AbnormalTraffic", "queuingTraffic"),
    certainty="possible",
    expires=ms("2024-11-12T07:30:00.000+01:00"),
    areas=(Area(geometry="LINESTRING (17.9864 59.3262, 18.0004 59.2921)"),),  # from, to
    sender="SE/TRV",
)


def test_datex_publication_exact() -> None:
    assert dx("situation_publication.xml") == ParseResult(
        alerts=(ACCIDENT, MAINTENANCE, SUSPENDED, ENDED_QUEUE)
    )


def test_datex_internal_notes_are_never_published() -> None:
    for alert in dx("situation_publication.xml").alerts:
        assert "Bärgare" not in repr(alert)


def test_datex_other_prefixes_and_the_situation_namespace_root() -> None:
    assert dx("situation_publication_other_prefixes.xml") == ParseResult(
        alerts=(
            SourceAlert(
                format="datex2",
                item_id="SE_STA_TRISSID_1_9300001_R1",
                version="1",
                msg_type=MsgType.ALERT,
                sent=ms("2024-12-03T04:45:30.250+00:00"),
                event="PoorEnvironmentConditions",
                severity=Severity.SEVERE,
                status="exercise",
                categories=("PoorEnvironmentConditions", "blackIceOnBridges"),
                certainty="likely",
                areas=(
                    Area(description="Essingeleden", geometry="POINT (17.9790 59.3150)"),
                    Area(
                        description="Essingeleden",
                        geometry="LINESTRING (17.9866 59.3226, 17.9921 59.3301)",
                    ),
                ),
                infos=(
                    Info(
                        language="en",  # no lang on the value: the payload's
                        event="PoorEnvironmentConditions",
                        headline="PoorEnvironmentConditions",
                        description="Black ice reported on the bridges.",
                    ),
                    Info(
                        language="sv",
                        event="PoorEnvironmentConditions",
                        headline="PoorEnvironmentConditions: Essingeleden",
                        description="Halka rapporterad på broarna.",
                    ),
                ),
                sender="SE/TRV",
            ),
        )
    )


def test_datex_message_container_reads_its_situation_payload() -> None:
    assert dx("message_container.xml") == ParseResult(
        alerts=(
            SourceAlert(
                format="datex2",
                item_id="SE_STA_TRISSID_1_9400001_R1",
                version="1",
                msg_type=MsgType.ALERT,
                sent=ms("2024-11-12T07:44:00+01:00"),
                event="GeneralObstruction",
                severity=Severity.UNKNOWN,  # "none"
                status="test",
                categories=("GeneralObstruction", "objectOnTheRoad"),
                areas=(Area(geometry="POINT (18.0686 59.3293)"),),  # tpegPointLocation
                infos=(
                    Info(
                        language="sv",
                        event="GeneralObstruction",
                        headline="GeneralObstruction",
                        description="Provmeddelande, ingen åtgärd.",
                    ),
                ),
                sender="SE/TRV",
            ),
        )
    )


def test_datex_invalid_records_are_quarantined_and_the_valid_sibling_parsed() -> None:
    result = dx("invalid_records.xml")
    assert result.alerts == (
        SourceAlert(
            format="datex2",
            item_id="R-valid",
            version="5",
            msg_type=MsgType.ALERT,
            sent=ms("2024-11-12T07:41:05+01:00"),
            event="Accident",
            severity=Severity.MINOR,  # lowest
            categories=("Accident",),
            areas=(Area(geometry="POINT (18.0686 59.3293)"),),
            sender="SE/TRV",
        ),
    )
    assert [(p.code, p.item_id, p.detail.split(":")[0]) for p in result.problems] == [
        ("missing_field", None, "situationRecord@id"),
        ("missing_field", "R-no-version", "situationRecord@version"),
        ("missing_field", "R-no-type", "situationRecord@xsi"),
        ("missing_field", "R-no-version-time", "situationRecordVersionTime"),
        ("invalid_timestamp", "R-bad-time", "situationRecordVersionTime"),
        ("invalid_timestamp", "R-bad-end", "overallEndTime"),
        ("invalid_value", "R-projected-coordinates", "latitude"),
        ("invalid_value", "R-odd-poslist", "posList"),
        ("invalid_value", "R-bad-severity", "severity"),
        ("invalid_value", "R-bad-validity", "validityStatus"),
        ("invalid_value", "R-end-before-start", "overallEndTime"),
    ]
    details = {p.item_id: p.detail for p in result.problems}
    assert details["R-projected-coordinates"] == "latitude: outside WGS 84: '6580822.0'"
    assert details["R-bad-time"].endswith("'12/11/2024 07:41'")
    for problem in result.problems:
        assert problem.excerpt.startswith("<")
        assert len(problem.excerpt) <= 500


DATEX_HEAD = (
    '<d2:payload xmlns:d2="http://datex2.eu/schema/3/d2Payload"'
    ' xmlns:com="http://datex2.eu/schema/3/common"'
    ' xmlns:sit="http://datex2.eu/schema/3/situation"'
    ' xmlns:loc="http://datex2.eu/schema/3/locationReferencing"'
    ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
    ' xsi:type="sit:SituationPublication" lang="sv">'
    "<com:publicationTime>2024-11-12T08:00:00+01:00</com:publicationTime>"
)


def _publication(*records: str, situation: str = "") -> bytes:
    body = "".join(records)
    return (
        f"{DATEX_HEAD}<sit:situation id='S'>{situation}{body}</sit:situation></d2:payload>".encode()
    )


def _record(inner: str = "", kind: str = "sit:Accident") -> str:
    return (
        f'<sit:situationRecord xsi:type="{kind}" id="R" version="1">'
        "<sit:situationRecordVersionTime>2024-11-12T07:00:00+01:00</sit:situationRecordVersionTime>"
        f"{inner}</sit:situationRecord>"
    )


def _dx_one(inner: str = "", **kwargs: Any) -> SourceAlert:
    result = parse_datex(_publication(_record(inner, **kwargs)))
    assert result.problems == (), result.problems
    (alert,) = result.alerts
    return alert


@pytest.mark.parametrize(
    ("severity", "expected"),
    [
        ("highest", Severity.EXTREME),
        ("high", Severity.SEVERE),
        ("medium", Severity.MODERATE),
        ("low", Severity.MINOR),
        ("lowest", Severity.MINOR),
        ("none", Severity.UNKNOWN),
        ("unknown", Severity.UNKNOWN),
        (None, Severity.UNKNOWN),
    ],
)
def test_datex_severity(severity: str | None, expected: Severity) -> None:
    inner = f"<sit:severity>{severity}</sit:severity>" if severity else ""
    assert _dx_one(inner).severity == expected


@pytest.mark.parametrize(
    ("probability", "certainty"),
    [("certain", "observed"), ("probable", "likely"), ("riskOf", "possible"), (None, "unknown")],
)
def test_datex_certainty(probability: str | None, certainty: str) -> None:
    inner = (
        f"<sit:probabilityOfOccurrence>{probability}</sit:probabilityOfOccurrence>"
        if probability
        else ""
    )
    assert _dx_one(inner).certainty == certainty


def _validity(status: str, end: str | None = None) -> str:
    spec = (
        f"<com:validityTimeSpecification><com:overallStartTime>2024-11-12T06:00:00+01:00"
        f"</com:overallStartTime><com:overallEndTime>{end}</com:overallEndTime>"
        "</com:validityTimeSpecification>"
        if end
        else ""
    )
    return f"<sit:validity><com:validityStatus>{status}</com:validityStatus>{spec}</sit:validity>"


@pytest.mark.parametrize(
    ("validity", "msg_type"),
    [
        (_validity("active"), MsgType.ALERT),
        (_validity("suspended"), MsgType.CANCEL),
        (_validity("definedByValidityTimeSpec", "2024-11-12T08:00:01+01:00"), MsgType.ALERT),
        (_validity("definedByValidityTimeSpec", "2024-11-12T08:00:00+01:00"), MsgType.CANCEL),
        (_validity("active", "2024-11-12T06:59:59Z"), MsgType.CANCEL),  # 07:59:59 in Sweden
        ("", MsgType.ALERT),
    ],
)
def test_datex_cancel_when_suspended_or_ended_at_publication(
    validity: str, msg_type: MsgType
) -> None:
    alert = _dx_one(validity)
    assert alert.msg_type == msg_type
    assert alert.version == ("1+cancel" if msg_type == MsgType.CANCEL else "1")
    assert alert.references == (("R",) if msg_type == MsgType.CANCEL else ())


@pytest.mark.parametrize(
    ("inner", "detail"),
    [
        (
            "<sit:probabilityOfOccurrence>maybe</sit:probabilityOfOccurrence>",
            "invalid_value probabilityOfOccurrence",
        ),
        ("<sit:accidentType>rear collision</sit:accidentType>", "invalid_value accidentType"),
        (
            "<sit:situationRecordCreationTime>igår</sit:situationRecordCreationTime>",
            "invalid_timestamp situationRecordCreationTime",
        ),
        (
            "<sit:generalPublicComment><com:comment><com:values><com:value lang='svenska!'>x"
            "</com:value></com:values></com:comment></sit:generalPublicComment>",
            "invalid_value comment value@lang",
        ),
        (
            "<sit:generalPublicComment><com:comment><com:values><com:value lang='sv'>"
            + "x" * 20_001
            + "</com:value></com:values></com:comment></sit:generalPublicComment>",
            "text_too_long comment: longer than 20000",
        ),
        (
            "<sit:locationReference><loc:pointByCoordinates><loc:pointCoordinates>"
            "<loc:latitude>59.3</loc:latitude></loc:pointCoordinates></loc:pointByCoordinates>"
            "</sit:locationReference>",
            "missing_field longitude",
        ),
        (
            "<sit:locationReference><loc:coordinatesForDisplay><loc:latitude>59.3</loc:latitude>"
            "<loc:longitude>NaN</loc:longitude></loc:coordinatesForDisplay></sit:locationReference>",
            "invalid_value longitude: not a number",
        ),
        (
            "<sit:locationReference><loc:gmlLineString><loc:posList>59.3 18.0</loc:posList>"
            "</loc:gmlLineString></sit:locationReference>",
            "invalid_value posList",
        ),
    ],
)
def test_datex_bad_fields_name_the_field(inner: str, detail: str) -> None:
    assert _problem_detail(_publication(_record(inner)), parse_datex).startswith(detail)


def test_datex_bad_record_attributes_name_the_attribute() -> None:
    doc = _publication(_record().replace('id="R"', f'id="{"R" * 201}"'))
    assert _problem_detail(doc, parse_datex).startswith("invalid_value situationRecord@id")


def test_datex_bad_record_type_and_status_name_the_field() -> None:
    doc = _publication(_record(kind="sit:Acc ident"))
    assert _problem_detail(doc, parse_datex).startswith("invalid_value situationRecord@xsi:type")
    doc = _publication(
        _record(),
        situation="<sit:headerInformation><com:informationStatus>rehearsal</com:informationStatus>"
        "</sit:headerInformation>",
    )
    assert _problem_detail(doc, parse_datex).startswith("invalid_value informationStatus")
    doc = _publication(_record(), situation="<sit:overallSeverity>dire</sit:overallSeverity>")
    assert _problem_detail(doc, parse_datex).startswith("invalid_value overallSeverity")


def test_datex_location_groups_give_one_area_each_and_are_bounded() -> None:
    member = (
        "<loc:locationContainedInGroup><loc:pointByCoordinates><loc:pointCoordinates>"
        "<loc:latitude>59.{i}</loc:latitude><loc:longitude>18.{i}</loc:longitude>"
        "</loc:pointCoordinates></loc:pointByCoordinates></loc:locationContainedInGroup>"
    )
    group = "".join(member.format(i=i) for i in range(3))
    alert = _dx_one(f"<sit:locationReference>{group}</sit:locationReference>")
    assert [a.geometry for a in alert.areas] == [
        "POINT (18.0 59.0)",
        "POINT (18.1 59.1)",
        "POINT (18.2 59.2)",
    ]
    group = "".join(member.format(i=i) for i in range(datex.MAX_GEOMETRIES + 1))
    doc = _publication(_record(f"<sit:locationReference>{group}</sit:locationReference>"))
    assert _problem_detail(doc, parse_datex).startswith("invalid_value locationReference")


def test_datex_a_location_without_coordinates_keeps_its_description() -> None:
    inner = (
        "<sit:locationReference><loc:supplementaryPositionalDescription><loc:roadInformation>"
        "<loc:roadNumber>E18</loc:roadNumber></loc:roadInformation>"
        "</loc:supplementaryPositionalDescription></sit:locationReference>"
    )
    assert _dx_one(inner).areas == (Area(description="E18"),)
    assert _dx_one("<sit:locationReference/>").areas == ()


def _nested(depth: int) -> bytes:
    return DATEX_HEAD.encode() + b"<x>" * depth + b"</x>" * depth + b"</d2:payload>"


@pytest.mark.parametrize(
    ("doc", "code"),
    [
        ((DATEX / "hostile_billion_laughs.xml").read_bytes(), "dtd_forbidden"),
        ((DATEX / "hostile_external_entity.xml").read_bytes(), "dtd_forbidden"),
        ((DATEX / "hostile_external_dtd.xml").read_bytes(), "dtd_forbidden"),
        ((DATEX / "datex2_v2.xml").read_bytes(), "unsupported_version"),
        (b"<d2LogicalModel/>", "unsupported_version"),
        (b"<!DOCTYPE payload><payload/>", "dtd_forbidden"),
        (b" " * (MAX_DOCUMENT_BYTES + 1), "too_large"),
        (_nested(200_000), "too_deep"),
        (b"", "malformed_xml"),
        (b"{}", "malformed_xml"),
        (DATEX_HEAD.encode(), "malformed_xml"),
        (DATEX_HEAD.encode() + b"&undeclared;</d2:payload>", "malformed_xml"),
        (b'<?xml version="1.0" encoding="UTF-7"?><payload/>', "encoding"),
        (b'<?xml version="1.0" encoding="no-such"?><payload/>', "encoding"),
        (b"<payload/>\xff", "encoding"),
        ("<payload/>".encode("utf-16-le"), "encoding"),  # no BOM: NUL bytes
        (b"\xef\xbb\xbf<?xml version='1.0' encoding='UTF-8'?><payload/>", "unexpected_shape"),
        (b"<payload/>", "unexpected_shape"),  # no namespace
        (b'<payload xmlns="http://datex2.eu/schema/3/situation"/>', "unexpected_shape"),
        (b'<html xmlns="http://www.w3.org/1999/xhtml"/>', "unexpected_shape"),
        (
            b'<payload xmlns="http://datex2.eu/schema/3/d2Payload" xmlns:x="http://www.w3.org/2001/'
            b'XMLSchema-instance" x:type="vms:VmsPublication"/>',
            "unsupported_publication",
        ),
        (
            b'<messageContainer xmlns="http://datex2.eu/schema/3/messageContainer"/>',
            "unsupported_publication",
        ),
        (b'<payload xmlns="http://datex2.eu/schema/3/d2Payload"/>', "missing_field"),
        (
            b'<payload xmlns="http://datex2.eu/schema/3/d2Payload"><publicationTime>nu'
            b"</publicationTime></payload>",
            "invalid_timestamp",
        ),
    ],
)
def test_datex_unreadable_and_hostile_documents(doc: bytes, code: str) -> None:
    with pytest.raises(FeedError) as caught:
        parse_datex(doc)
    assert caught.value.code == code


def test_datex_entities_never_expand_into_the_detail() -> None:
    with pytest.raises(FeedError) as caught:
        parse_datex((DATEX / "hostile_billion_laughs.xml").read_bytes())
    assert "lol" not in caught.value.detail
    assert len(caught.value.detail) < 100


def test_datex_reads_utf8_only() -> None:
    text = (DATEX / "situation_publication.xml").read_text(encoding="utf-8")
    with pytest.raises(FeedError, match="encoding"):
        parse_datex(text.replace('encoding="UTF-8"', 'encoding="UTF-16"').encode("utf-16"))
    with pytest.raises(FeedError, match="encoding"):
        parse_datex(text.encode("utf-16"))
    assert parse_datex(b"\xef\xbb\xbf" + text.encode()) == dx("situation_publication.xml")


def test_datex_too_many_records() -> None:
    doc = _publication(*[_record()] * (MAX_ITEMS + 1))
    with pytest.raises(FeedError) as caught:
        parse_datex(doc)
    assert caught.value.code == "too_many_items"


def test_datex_too_many_elements(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datex, "MAX_XML_ELEMENTS", 1000)
    with pytest.raises(FeedError) as caught:
        parse_datex(DATEX_HEAD.encode() + b"<x/>" * 1000 + b"</d2:payload>")
    assert caught.value.code == "too_many_elements"


def _defused_subclasses() -> list[type[defusedxml.common.DefusedXmlException]]:
    found, todo = [], [defusedxml.common.DefusedXmlException]
    while todo:
        kind = todo.pop()
        found.append(kind)
        todo.extend(kind.__subclasses__())
    return found


@pytest.mark.parametrize("kind", _defused_subclasses(), ids=lambda k: k.__name__)
@pytest.mark.parametrize("parse", [parse_datex, parse_cap_xml], ids=["datex", "cap"])
def test_every_defusedxml_refusal_is_a_feed_error(
    kind: type[Exception], parse: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like httpx's mapping test: each third-party refusal becomes one FeedError, in the
    XML reader both XML parsers share."""
    error = kind.__new__(kind)

    class Refusing:
        def __init__(self, **_: Any) -> None:
            pass

        def feed(self, _: str) -> None:
            raise error

    monkeypatch.setattr(_common, "XMLParser", Refusing)
    with pytest.raises(FeedError) as caught:
        parse(b"<payload/>")
    assert caught.value.code.endswith("_forbidden")
    expected = dict(_common.HOSTILE_XML)
    if kind in expected:
        assert caught.value.code == expected[kind]


# == nothing but FeedError escapes =====================================================

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=10,
)
field_values = json_values | st.sampled_from(
    [
        "2024-11-12T07:00:00+01:00",
        "2024-11-12T07:00:00",
        "POINT (18 59)",
        "LINESTRING (18 59, 18 60)",
        "MULTILINESTRING ((1 2, 3 4))",
        "Stor påverkan",
        [1, 2],
        {"WGS84": "POINT (18 59)"},
        {"Point": {"WGS84": "POINT (1 2)"}, "Line": {"WGS84": 3}},
    ]
)
DEVIATION_KEYS = [
    "Id", "Header", "Message", "MessageType", "MessageCode", "SeverityCode", "SeverityText",
    "RoadNumber", "LocationDescriptor", "CountyNo", "StartTime", "EndTime", "VersionTime",
    "CreationTime", "WebLink", "Geometry",
]  # fmt: skip
deviations = st.dictionaries(st.sampled_from(DEVIATION_KEYS), field_values, max_size=10)
situations = st.fixed_dictionaries(
    {"Deviation": st.lists(deviations | json_values, max_size=3)},
    optional={
        "Id": field_values,
        "Deleted": st.booleans() | json_values,
        "VersionTime": field_values,
        "ModifiedTime": field_values,
    },
)
responses = st.builds(
    lambda s: {"RESPONSE": {"RESULT": [{"Situation": s}]}}, st.lists(situations, max_size=3)
)

FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _only_feed_errors(parse: Any, doc: bytes) -> None:
    try:
        outcome: object = parse(doc)
    except FeedError as e:
        outcome = e
    assert isinstance(outcome, ParseResult | FeedError)
    if isinstance(outcome, FeedError):
        assert outcome.code


@FAST
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_feed_errors(doc: bytes) -> None:
    _only_feed_errors(parse_trafikverket, doc)
    _only_feed_errors(parse_datex, doc)


@FAST
@given(json_values | responses)
def test_arbitrary_json_raises_only_feed_errors(value: Any) -> None:
    _only_feed_errors(parse_trafikverket, json.dumps(value).encode())


SAMPLES = sorted(TRAFIKVERKET.glob("*.json")) + sorted(DATEX.glob("*.xml"))


@FAST
@given(
    st.sampled_from(SAMPLES),
    st.lists(st.tuples(st.floats(0, 1), st.integers(0, 40), st.binary(max_size=8)), max_size=4),
)
def test_mutated_samples_raise_only_feed_errors(
    path: Path, edits: list[tuple[float, int, bytes]]
) -> None:
    doc = path.read_bytes()
    for where, cut, insert in edits:
        at = int(where * len(doc))
        doc = doc[:at] + insert + doc[at + cut :]
    parse = parse_trafikverket if path.suffix == ".json" else parse_datex
    _only_feed_errors(parse, doc)


# == the modules themselves ============================================================


@pytest.mark.parametrize("module", [datex, trafikverket], ids=lambda m: m.__name__)
def test_module_examples_run_and_the_parsers_do_no_io(module: Any) -> None:
    assert doctest.testmod(module).failed == 0
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    imported = {
        name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for name in (
            [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        )
    }
    pure = {"__future__", "clients", "dataclasses", "datetime", "defusedxml", "json", "re"}
    assert imported <= pure | {"typing", "xml"}
