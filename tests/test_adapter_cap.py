"""CAP 1.2 parsers: the samples in ``tests/feeds/cap`` parse to exactly the expected alerts;
an invalid alert becomes one ItemProblem naming the element; a hostile document raises
FeedError unread; and no input at all raises anything but FeedError."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clients.adapters import cap
from clients.adapters.cap import (
    CAP_NAMESPACE,
    FEED_ERROR_CODES,
    MAX_DEPTH,
    PROBLEM_CODES,
    parse_cap_json,
    parse_cap_xml,
)
from clients.adapters.model import (
    MAX_DOCUMENT_BYTES,
    MAX_ITEMS,
    MAX_TEXT_CHARS,
    Area,
    FeedError,
    Info,
    ItemProblem,
    MsgType,
    ParseResult,
    Severity,
    SourceAlert,
)

FEEDS = Path(__file__).parent / "feeds" / "cap"
VMA = "Viktigt meddelande till allmänheten (VMA)"
SR_V3 = "https://vmaapi.sr.se/api/v3"
SR_V2 = "https://vmaapi.sr.se/api/v2"
SR_WEB = "https://sverigesradio.se/artikel/vma-vad-ar-det"


def sample(name: str) -> bytes:
    return (FEEDS / name).read_bytes()


def ms(iso: str) -> int:
    """Epoch milliseconds, computed independently of the parser."""
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


def parse(name: str) -> ParseResult:
    return (parse_cap_json if name.endswith(".json") else parse_cap_xml)(sample(name))


def only_problem(result: ParseResult) -> ItemProblem:
    assert result.alerts == ()
    assert len(result.problems) == 1
    return result.problems[0]


def minimal_alert(**changes: str) -> str:
    """A valid CAP 1.2 XML alert, with some elements' text replaced."""
    fields = {
        "identifier": "TEST-1",
        "sender": "test@example.se",
        "sent": "2026-03-14T09:12:00+01:00",
        "status": "Actual",
        "msgType": "Alert",
        "scope": "Public",
    } | changes
    head = "".join(f"<{name}>{escape(value)}</{name}>" for name, value in fields.items())
    info = (
        "<info><category>Safety</category><event>Brand</event><urgency>Immediate</urgency>"
        "<severity>Severe</severity><certainty>Observed</certainty></info>"
    )
    return f'<alert xmlns="{CAP_NAMESPACE}">{head}{info}</alert>'


# -- the samples, parsed exactly ------------------------------------------------------

NACKA = Area("Nacka kommun (Stockholms län)", municipalities=("0182",))
VARMDO = Area("Värmdö kommun (Stockholms län)", municipalities=("0120",))
STOCKHOLMS_LAN = Area("Stockholms län", counties=("01",))


def test_vma_alert_in_swedish_and_english():
    assert parse("vma-nacka-alert.xml") == ParseResult(
        alerts=(
            SourceAlert(
                format="cap-xml",
                item_id="SRCAP20260314091200I",
                version="2026-03-14T09:12:00+01:00",
                msg_type=MsgType.ALERT,
                sent=ms("2026-03-14T09:12:00+01:00"),
                event=VMA,
                severity=Severity.SEVERE,
                status="actual",
                references=(),
                categories=("Safety", "Fire"),  # the union of both infos'
                urgency="immediate",
                certainty="observed",
                expires=ms("2026-03-14T20:30:00+01:00"),  # the English info's, the earlier
                areas=(NACKA, VARMDO),  # the English info's repeat the same codes: dropped
                infos=(
                    Info(
                        language="sv-SE",
                        event=VMA,
                        headline="VMA: Brand med kraftig rökutveckling i Nacka",
                        description=(
                            "Viktigt meddelande till allmänheten i Nacka kommun och Värmdö"
                            " kommun, Stockholms län.\n\nDet brinner i en industribyggnad i"
                            " Kvarnholmen med kraftig rökutveckling."
                        ),
                        instruction=(
                            "Gå inomhus och stäng dörrar, fönster och ventilation. Lyssna på"
                            " Sveriges Radio P4 Stockholm."
                        ),
                        web=SR_WEB,
                    ),
                    Info(
                        language="en-US",
                        event="Important Public Announcement (VMA)",
                        headline="VMA: Fire with heavy smoke in Nacka",
                        description=(
                            "Important public announcement for Nacka and Värmdö municipalities,"
                            " Stockholm County.\n\nAn industrial building in Kvarnholmen is on"
                            " fire with heavy smoke."
                        ),
                        instruction=(
                            "Go indoors and close doors, windows and ventilation. Listen to"
                            " Sveriges Radio P4 Stockholm."
                        ),
                        web=SR_WEB,
                    ),
                ),
                sender=SR_V3,
            ),
        )
    )


def test_vma_update_references_the_alert():
    assert parse("vma-nacka-update.xml") == ParseResult(
        alerts=(
            SourceAlert(
                format="cap-xml",
                item_id="SRCAP20260314103000I",
                version="2026-03-14T10:30:00+01:00",
                msg_type=MsgType.UPDATE,
                sent=ms("2026-03-14T10:30:00+01:00"),
                event=VMA,
                severity=Severity.SEVERE,
                status="actual",
                references=("SRCAP20260314091200I",),
                categories=("Safety", "Fire"),
                urgency="immediate",
                certainty="observed",
                expires=ms("2026-03-14T23:00:00+01:00"),
                areas=(STOCKHOLMS_LAN,),
                infos=(
                    Info(
                        language="sv-SE",
                        event=VMA,
                        headline="VMA uppdaterat: Röken sprider sig i Stockholms län",
                        description=(
                            "Röken från branden i Kvarnholmen driver nu över stora delar av"
                            " Stockholms län."
                        ),
                        instruction="Gå inomhus och stäng dörrar, fönster och ventilation.",
                    ),
                ),
                sender=SR_V3,
            ),
        )
    )


def test_vma_cancel_references_the_alert_and_the_update():
    assert parse("vma-nacka-cancel.xml") == ParseResult(
        alerts=(
            SourceAlert(
                format="cap-xml",
                item_id="SRCAP20260314143000I",
                version="2026-03-14T14:30:00+01:00",
                msg_type=MsgType.CANCEL,
                sent=ms("2026-03-14T14:30:00+01:00"),
                event=VMA,
                severity=Severity.MINOR,
                status="actual",
                references=("SRCAP20260314091200I", "SRCAP20260314103000I"),
                categories=("Safety",),
                urgency="past",
                certainty="observed",
                expires=None,
                areas=(STOCKHOLMS_LAN,),
                infos=(
                    Info(
                        language="sv-SE",
                        event=VMA,
                        headline="Faran över: Branden i Nacka",
                        description=(
                            "Faran är över. Branden i Kvarnholmen är släckt och röken har"
                            " skingrats."
                        ),
                    ),
                ),
                sender=SR_V3,
            ),
        )
    )


def test_sos_alarm_exercise_with_polygon_prefixes_and_a_signature():
    assert parse("sos-alarm-solna.xml") == ParseResult(
        alerts=(
            SourceAlert(
                format="cap-xml",
                item_id="SE-SOSALARM-20260402-0042",
                version="2026-04-02T13:05:30+02:00",
                msg_type=MsgType.ALERT,
                sent=ms("2026-04-02T13:05:30+02:00"),
                event="Gasutsläpp",
                severity=Severity.EXTREME,
                status="exercise",
                references=(),
                categories=("CBRNE", "Safety"),
                urgency="expected",
                certainty="likely",
                expires=ms("2026-04-02T17:00:00+02:00"),
                areas=(
                    Area(
                        description="Frösunda, Solna",
                        counties=("01",),
                        municipalities=("0184",),  # NUTS3 SE110 is not read; the circle neither
                        geometry=(
                            "POLYGON ((18.0000 59.3600, 18.0200 59.3600, 18.0200 59.3700,"
                            " 18.0000 59.3700, 18.0000 59.3600))"
                        ),
                    ),
                ),
                infos=(
                    Info(
                        language="sv-SE",
                        event="Gasutsläpp",
                        headline="ÖVNING: Gasutsläpp i Frösunda, Solna",
                        description=(
                            "ÖVNING. Ammoniak läcker från en kylanläggning vid Frösunda. Vinden"
                            " är nordlig."
                        ),
                        instruction="ÖVNING. Håll dig inomhus och stäng av ventilationen.",
                        web="https://www.sosalarm.se/",
                    ),
                ),
                sender="cap@sosalarm.se",
            ),
        )
    )


def test_atom_feed_of_alerts_parses_each_and_refuses_the_system_message():
    result = parse("atom-feed.xml")
    assert result.alerts == (
        SourceAlert(
            format="cap-xml",
            item_id="SE-MSB-TEST-20260506-1",
            version="2026-05-06T10:00:00+02:00",
            msg_type=MsgType.ALERT,
            sent=ms("2026-05-06T10:00:00+02:00"),
            event="Test av utomhusvarning",
            severity=Severity.UNKNOWN,
            status="test",
            categories=("Safety",),
            urgency="unknown",
            certainty="unknown",
            areas=(STOCKHOLMS_LAN,),  # valueName "lanskod"
            # No <language>: CAP's default.
            infos=(Info("en-US", "Test av utomhusvarning", headline="Test av Hesa Fredrik"),),
            sender="vma@msb.se",
        ),
    )
    (problem,) = result.problems
    assert problem.code == "unsupported_status"
    assert problem.item_id == "SE-MSB-SYSTEM-20260506-1"
    assert problem.detail == "alert[2]/status: System is not forwarded"
    assert "SE-MSB-SYSTEM-20260506-1" in problem.excerpt


def test_sr_json_with_an_alert_an_update_and_a_cancel():
    solna_stockholm = Area(
        "Solna och Stockholm (Stockholms län)",
        counties=("01",),
        municipalities=("0184", "0180"),
    )
    assert parse("sr-vma-alerts.json") == ParseResult(
        alerts=(
            SourceAlert(  # SR's cancels carry "info": null
                format="cap-json",
                item_id="SRCAP20260620180000I",
                version="2026-06-20T18:00:00+02:00",
                msg_type=MsgType.CANCEL,
                sent=ms("2026-06-20T18:00:00+02:00"),
                event="",
                severity=Severity.UNKNOWN,
                status="actual",
                references=("SRCAP20260620143000I", "SRCAP20260620153000I"),
                sender=SR_V2,
            ),
            SourceAlert(  # info, area as single objects; category as a list
                format="cap-json",
                item_id="SRCAP20260620153000I",
                version="2026-06-20T15:30:00+02:00",
                msg_type=MsgType.UPDATE,
                sent=ms("2026-06-20T15:30:00+02:00"),
                event=VMA,
                severity=Severity.EXTREME,
                status="actual",
                references=("SRCAP20260620143000I",),
                categories=("Safety", "Health"),
                urgency="immediate",
                certainty="observed",
                expires=ms("2026-06-21T06:00:00+02:00"),
                areas=(solna_stockholm,),
                infos=(
                    Info(
                        language="sv-SE",
                        event=VMA,
                        headline="VMA uppdaterat: Stäng av vattnet i Solna och Stockholm",
                        description=(
                            "Dricksvattnet i Solna och Stockholms kommun kan vara förorenat."
                            "\r\n\r\nKoka vattnet."
                        ),
                        instruction="Drick inte kranvatten utan att först koka det.",
                        web=SR_WEB,
                    ),
                ),
                sender=SR_V2,
            ),
            SourceAlert(  # category as a string, "references": null
                format="cap-json",
                item_id="SRCAP20260620143000I",
                version="2026-06-20T14:30:00+02:00",
                msg_type=MsgType.ALERT,
                sent=ms("2026-06-20T14:30:00+02:00"),
                event=VMA,
                severity=Severity.SEVERE,
                status="actual",
                categories=("Health",),
                urgency="immediate",
                certainty="likely",
                expires=ms("2026-06-21T02:30:00+02:00"),
                areas=(STOCKHOLMS_LAN,),
                infos=(
                    Info(
                        language="sv-SE",
                        event=VMA,
                        description=(
                            "Viktigt meddelande till allmänheten i Stockholms län.\r\n\r\n"
                            "Dricksvattnet kan vara förorenat."
                        ),
                        web=SR_WEB,
                    ),
                ),
                sender=SR_V2,
            ),
        )
    )


def test_the_alert_update_and_cancel_samples_chain_by_identifier():
    alert, update, cancel = (
        parse(f"vma-nacka-{name}.xml").alerts[0] for name in ("alert", "update", "cancel")
    )
    assert update.references == (alert.item_id,)
    assert cancel.references == (alert.item_id, update.item_id)
    assert len({alert.key, update.key, cancel.key}) == 3


# -- invalid alerts: one problem each, naming the element -----------------------------


@pytest.mark.parametrize(
    ("name", "code", "detail", "item_id"),
    [
        ("invalid-missing-identifier.xml", "missing_field", "alert/identifier: required", None),
        (
            "invalid-bad-msgtype.xml",
            "invalid_value",
            "alert/msgType: 'Warning' is not one of Alert, Update, Cancel, Ack, Error",
            "SRCAP20260314091200I",
        ),
        (
            "invalid-bad-sent.xml",
            "invalid_timestamp",
            "alert/sent: '14/03/2026 09:12' is not a date-time",
            "SRCAP20260314091200I",
        ),
        (
            "invalid-wrong-namespace.xml",
            "wrong_namespace",
            "alert: namespace 'urn:oasis:names:tc:emergency:cap:1.1'",
            "SRCAP20260314091200I",
        ),
    ],
)
def test_invalid_xml_sample_names_the_element(name, code, detail, item_id):
    problem = only_problem(parse(name))
    assert problem.code == code
    assert problem.detail.startswith(detail)
    assert problem.item_id == item_id
    assert problem.excerpt.startswith("<")
    assert code in PROBLEM_CODES


INVALID_JSON = [
    # index, code, the detail's start (first finding); the sample's alert 0 is valid
    (1, "missing_field", "alerts[1].info[0].urgency: required, missing"),
    (2, "unsupported_status", "alerts[2].status: Draft"),
    (3, "unsupported_msg_type", "alerts[3].msgType: Ack"),
    (4, "invalid_value", "alerts[4].info[0].area[0].geocode[0].value: '180' is not a four-digit"),
    (5, "invalid_timestamp", "alerts[5].sent: '2026-06-20T14:30:00' is not a date-time"),
    (6, "invalid_value", "alerts[6]: an alert must be an object, found a string"),
    (7, "missing_field", "alerts[7].references: required for msgType Update"),
    (8, "invalid_value", "alerts[8].info[0].area[0].polygon: the polygon is not closed"),
    (9, "invalid_value", "alerts[9].references: 'SRCAP-INVALID-00' is not sender,identifier,sent"),
    (10, "invalid_value", "alerts[10].info[0].category: expected text, found a number"),
    (11, "missing_field", "alerts[11].info[0].category: required, missing"),
    (12, "missing_field", "alerts[12].addresses: required when scope is Private"),
    (13, "invalid_value", "alerts[13].identifier: 'SRCAP INVALID 13' has a space"),
    (14, "invalid_timestamp", "alerts[14].info[0].expires: '2026-02-30T10:00:00+01:00' is not"),
]


@pytest.fixture(scope="module")
def invalid_json() -> ParseResult:
    return parse("invalid-alerts.json")


def test_invalid_json_sample_keeps_the_valid_alert(invalid_json):
    assert [a.item_id for a in invalid_json.alerts] == ["SRCAP-INVALID-00"]
    assert invalid_json.alerts[0].status == "test"
    assert len(invalid_json.problems) == len(INVALID_JSON)


@pytest.mark.parametrize(
    ("index", "code", "detail"), INVALID_JSON, ids=[str(c[0]) for c in INVALID_JSON]
)
def test_invalid_json_alert_names_the_field(invalid_json, index, code, detail):
    problem = invalid_json.problems[index - 1]
    assert problem.code == code
    assert problem.detail.startswith(detail)
    expected_id = {6: None, 13: "SRCAP INVALID 13"}.get(index, f"SRCAP-INVALID-{index:02d}")
    assert problem.item_id == expected_id


def test_every_finding_is_listed_in_the_detail(invalid_json):
    problem = invalid_json.problems[0]
    assert problem.detail == (
        "alerts[1].info[0].urgency: required, missing; alerts[1].info[0].severity: "
        "'Catastrophic' is not one of Extreme, Severe, Moderate, Minor, Unknown"
    )


def in_info(fragment: str) -> str:
    """The minimal alert with ``fragment`` at the start of its info."""
    return minimal_alert().replace("<category>", fragment + "<category>")


UNQUALIFIED = (
    minimal_alert()
    .replace(f'<alert xmlns="{CAP_NAMESPACE}">', f'<cap:alert xmlns:cap="{CAP_NAMESPACE}">')
    .replace("</alert>", "</cap:alert>")
)
LONG_TEXT = "x" * (MAX_TEXT_CHARS + 1)
INVALID_XML = {
    # id: (document, code, the detail's start)
    "unqualified-children": (UNQUALIFIED, "wrong_namespace", "alert/identifier: in namespace ''"),
    "duplicate": (
        minimal_alert().replace("<scope>", "<identifier>TEST-2</identifier><scope>"),
        "invalid_value",
        "alert/identifier[2]: identifier given 2 times, CAP allows one",
    ),
    "text-too-long": (
        in_info(f"<description>{LONG_TEXT}</description>"),
        "text_too_long",
        f"alert/info[1]/description: {MAX_TEXT_CHARS + 1} characters, the limit is",
    ),
    "category": (
        minimal_alert().replace("<category>Safety", "<category>Weather"),
        "invalid_value",
        "alert/info[1]/category: 'Weather' is not one of Geo, Met",
    ),
    "missing-urgency": (
        minimal_alert().replace("<urgency>Immediate</urgency>", ""),
        "missing_field",
        "alert/info[1]/urgency: required, missing",
    ),
    "certainty": (
        minimal_alert().replace("<certainty>Observed", "<certainty>Very Likely"),
        "invalid_value",
        "alert/info[1]/certainty: 'Very Likely' is not one of",
    ),
    "sender-space": (
        minimal_alert(sender="sos alarm"),
        "invalid_value",
        "alert/sender: 'sos alarm' has a space",
    ),
    "empty-status": (minimal_alert(status=""), "missing_field", "alert/status: required, empty"),
    "scope": (
        minimal_alert(scope="Secret"),
        "invalid_value",
        "alert/scope: 'Secret' is not one of Public, Restricted, Private",
    ),
    "polygon-range": (
        in_info(
            "<area><areaDesc>X</areaDesc>"
            "<polygon>59.3,18.0 59.3,18.1 91.0,18.1 59.3,18.0</polygon></area>"
        ),
        "invalid_value",
        "alert/info[1]/area[1]/polygon: '91.0,18.1' is not a 'lat,lon' point",
    ),
    "polygon-short": (
        in_info("<area><areaDesc>X</areaDesc><polygon>59.3,18.0 59.3,18.0</polygon></area>"),
        "invalid_value",
        "alert/info[1]/area[1]/polygon: a polygon needs 4 or more points, found 2",
    ),
    "county-code": (
        in_info(
            "<area><areaDesc>X</areaDesc>"
            "<geocode><valueName>Län</valueName><value>1</value></geocode></area>"
        ),
        "invalid_value",
        "alert/info[1]/area[1]/geocode[1]/value: '1' is not a two-digit county code",
    ),
    "area-without-desc": (
        in_info("<area><circle>59.3,18.0 x</circle></area>"),
        "missing_field",
        "alert/info[1]/area[1]/areaDesc: required, missing; "
        "alert/info[1]/area[1]/circle: '59.3,18.0 x' is not 'lat,lon radius'",
    ),
    "structure-for-text": (
        minimal_alert().replace("<event>Brand</event>", "<event><b>Brand</b></event>"),
        "invalid_value",
        "alert/info[1]/event: expected text, found child elements",
    ),
    "offset-out-of-range": (
        minimal_alert(sent="2026-03-14T09:12:00+25:00"),
        "invalid_timestamp",
        "alert/sent: '2026-03-14T09:12:00+25:00' is not a date-time",
    ),
    "resource-without-mime-type": (
        in_info("<resource><resourceDesc>Karta</resourceDesc></resource>"),
        "missing_field",
        "alert/info[1]/resource[1]/mimeType: required, missing",
    ),
}


@pytest.mark.parametrize(
    ("xml", "code", "detail"), list(INVALID_XML.values()), ids=list(INVALID_XML)
)
def test_invalid_alert_names_the_element(xml, code, detail):
    problem = only_problem(parse_cap_xml(xml.encode()))
    assert problem.code == code
    assert problem.detail.startswith(detail)


def test_lists_are_bounded():
    geocodes = "<geocode><valueName>Kommun</valueName><value>0180</value></geocode>"
    xml = in_info(f"<area><areaDesc>X</areaDesc>{geocodes * (MAX_ITEMS + 2)}</area>")
    problem = only_problem(parse_cap_xml(xml.encode()))
    assert problem.code == "too_many"
    assert problem.detail == (
        f"alert/info[1]/area[1]/geocode[{MAX_ITEMS + 1}]: more than {MAX_ITEMS} geocode elements"
    )
    doc = json.loads(sample("sr-vma-alerts.json"))
    doc["alerts"][2]["info"][0]["category"] = ["Safety"] * (MAX_ITEMS + 1)
    problem = only_problem(parse_cap_json(json.dumps({"alerts": [doc["alerts"][2]]}).encode()))
    assert problem.code == "too_many"
    assert problem.detail.startswith("alerts[0].info[0].category: 5001 entries, the limit is 5000")


def test_problem_detail_and_excerpt_are_bounded():
    areas = "".join(
        f"<area><areaDesc>A{i}</areaDesc><polygon>bad{i}</polygon></area>" for i in range(300)
    )
    xml = minimal_alert().replace("<event>", areas + "<event>")
    problem = only_problem(parse_cap_xml(xml.encode()))
    assert problem.detail.endswith("(300 findings in all)")
    assert len(problem.detail) < cap.DETAIL_CHARS + 40
    assert len(problem.excerpt) == cap.EXCERPT_CHARS


# -- leniencies and shapes that parse -------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        ("2026-03-14T09:12:00+01:00", ms("2026-03-14T08:12:00+00:00")),
        ("2026-03-14T08:12:00-00:00", ms("2026-03-14T08:12:00+00:00")),  # CAP's UTC
        ("2026-03-14T08:12:00Z", ms("2026-03-14T08:12:00+00:00")),  # not CAP, unambiguous
        ("2026-03-14T08:12:00.250+00:00", ms("2026-03-14T08:12:00+00:00") + 250),
        ("1969-12-31T23:59:59.5-00:00", -500),
    ],
)
def test_sent_is_epoch_milliseconds(sent, expected):
    (alert,) = parse_cap_xml(minimal_alert(sent=sent).encode()).alerts
    assert alert.sent == expected
    assert alert.version == sent


@pytest.mark.parametrize(
    "sent",
    ["2026-03-14T09:12:00", "2026-03-14 09:12:00+01:00", "2026-13-01T00:00:00+01:00",
     "2026-03-14T24:00:00+01:00", "2026-03-14T09:12+01:00", "２０２６-03-14T09:12:00+01:00"],
)  # fmt: skip
def test_sent_without_an_offset_or_out_of_range_is_refused(sent):
    assert only_problem(parse_cap_xml(minimal_alert(sent=sent).encode())).code == (
        "invalid_timestamp"
    )


def test_plain_alerts_container_and_rss():
    one, two = minimal_alert(identifier="A-1"), minimal_alert(identifier="A-2")
    for doc in (
        f"<alerts>{one}{two}</alerts>",
        f"<rss version='2.0'><channel><item>{one}</item><item>{two}</item></channel></rss>",
    ):
        result = parse_cap_xml(doc.encode())
        assert [a.item_id for a in result.alerts] == ["A-1", "A-2"]
        assert result.problems == ()


def test_container_alert_in_no_namespace_is_wrong_namespace():
    doc = minimal_alert().replace(f' xmlns="{CAP_NAMESPACE}"', "")
    problem = only_problem(parse_cap_xml(f"<alerts>{doc}</alerts>".encode()))
    assert (problem.code, problem.item_id) == ("wrong_namespace", "TEST-1")
    assert problem.detail.startswith("alert[1]: namespace ''")


def test_empty_feeds_parse_to_nothing():
    assert parse_cap_xml(b"<alerts/>") == ParseResult()
    assert parse_cap_xml(b'<feed xmlns="http://www.w3.org/2005/Atom"/>') == ParseResult()
    assert parse_cap_json(b'{"alerts": []}') == ParseResult()
    assert parse_cap_json(b'{"timestamp": "x", "alerts": null}') == ParseResult()


def test_json_single_alert_object_and_bare_list():
    (entry,) = json.loads(sample("sr-vma-alerts.json"))["alerts"][2:]
    expected = parse("sr-vma-alerts.json").alerts[2]
    for doc in ({"alerts": entry}, entry, [entry]):
        assert parse_cap_json(json.dumps(doc).encode()).alerts == (expected,)
    problem = only_problem(parse_cap_json(json.dumps({"alerts": {"sent": "x"}}).encode()))
    assert problem.detail.startswith("alerts.identifier: required, missing")


def test_translations_one_info_per_language_first_wins():
    info = (
        "<info><language>sv-SE</language><category>Safety</category><event>{}</event>"
        "<urgency>Immediate</urgency><severity>Severe</severity><certainty>Observed</certainty>"
        "</info>"
    )
    xml = minimal_alert().replace("<info>", info.format("Brand") + info.format("Rök") + "<info>", 1)
    (alert,) = parse_cap_xml(xml.encode()).alerts
    assert [(i.language, i.event) for i in alert.infos] == [("sv-SE", "Brand"), ("en-US", "Brand")]


def test_several_polygons_make_a_multipolygon():
    ring = "59.3,18.0 59.3,18.1 59.4,18.1 59.3,18.0"
    area = f"<area><areaDesc>X</areaDesc><polygon>{ring}</polygon><polygon>{ring}</polygon></area>"
    (alert,) = parse_cap_xml(minimal_alert().replace("<event>", area + "<event>").encode()).alerts
    one = "(18.0 59.3, 18.1 59.3, 18.1 59.4, 18.0 59.3)"
    assert alert.areas == (Area("X", geometry=f"MULTIPOLYGON (({one}), ({one}))"),)


def test_utf8_byte_order_mark_is_skipped():
    data = b"\xef\xbb\xbf" + sample("vma-nacka-update.xml")
    assert parse_cap_xml(data) == parse("vma-nacka-update.xml")
    assert parse_cap_json(b"\xef\xbb\xbf" + sample("sr-vma-alerts.json")).alerts


# -- hostile and unreadable documents -------------------------------------------------


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("hostile-billion-laughs.xml", "dtd_forbidden"),
        ("hostile-external-entity.xml", "dtd_forbidden"),
        ("hostile-dtd.xml", "dtd_forbidden"),
        ("hostile-utf16.xml", "encoding"),
        ("hostile-latin1.xml", "encoding"),
        ("hostile-latin1-undeclared.xml", "encoding"),
    ],
)
def test_hostile_sample_is_refused(name, code):
    started = time.monotonic()
    with pytest.raises(FeedError) as raised:
        parse_cap_xml(sample(name))
    assert raised.value.code == code
    assert code in FEED_ERROR_CODES
    assert time.monotonic() - started < 10  # no entity was expanded (that takes far longer)
    assert "root:" not in raised.value.detail  # and /etc/passwd was not read


def test_encoding_errors_say_why():
    details = {
        name: _feed_error(parse_cap_xml, sample(name)).detail
        for name in ("hostile-utf16.xml", "hostile-latin1.xml", "hostile-latin1-undeclared.xml")
    }
    assert details == {
        "hostile-utf16.xml": "a UTF-16 byte order mark; only UTF-8 is read",
        "hostile-latin1.xml": "declared encoding 'ISO-8859-1'; only UTF-8 is read",
        "hostile-latin1-undeclared.xml": "not UTF-8 at byte 676",
    }


def _feed_error(parser: Any, data: bytes) -> FeedError:
    with pytest.raises(FeedError) as raised:
        parser(data)
    return raised.value


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"not xml", "malformed_xml"),
        (b"", "malformed_xml"),
        (b"<alert xmlns='urn:oasis:names:tc:emergency:cap:1.2'>", "malformed_xml"),
        (b"<alert>&undefined;</alert>", "malformed_xml"),
        (b"<html><body/></html>", "unexpected_shape"),
        (b"<a>" * (MAX_DEPTH + 1) + b"</a>" * (MAX_DEPTH + 1), "too_deep"),
        (b"<a>" * 1_000_000, "too_deep"),  # stopped at the bound, not parsed to the end
        (b"<alerts>" + b"<alert/>" * (MAX_ITEMS + 1) + b"</alerts>", "too_many_items"),
        (b"\xff\xfe<\x00a\x00/\x00>\x00", "encoding"),
        (b"\x00\x00\xfe\xff", "encoding"),
        (b"<\x00a\x00/\x00>\x00", "encoding"),
        (b"<a>\xe5</a>", "encoding"),
        (b"<?xml version='1.0' encoding='windows-1252'?><a/>", "encoding"),
        (b" " * (MAX_DOCUMENT_BYTES + 1), "too_large"),
    ],
    ids=lambda v: v[:24] if isinstance(v, bytes) else v,
)
def test_unreadable_xml_document(data, code):
    assert _feed_error(parse_cap_xml, data).code == code


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"{", "malformed_json"),
        (b"", "malformed_json"),
        (b'{"alerts": [NaN]}', "malformed_json"),
        (b"1" * 5000, "malformed_json"),  # too many digits to convert
        (b'"alerts"', "unexpected_shape"),
        (b'{"RESPONSE": {}}', "unexpected_shape"),
        (b'{"alerts": "SRCAP1"}', "unexpected_shape"),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "too_deep"),
        (b"[" * 200_000, "too_deep"),
        (json.dumps({"alerts": [{}] * (MAX_ITEMS + 1)}).encode(), "too_many_items"),
        ('{"alerts": []}'.encode("utf-16"), "encoding"),
        ('{"alerts": []}'.encode("utf-16-le"), "encoding"),
        (b'{"alerts": [{"identifier": "\xe5"}]}', "encoding"),
        (b" " * (MAX_DOCUMENT_BYTES + 1), "too_large"),
    ],
    ids=lambda v: v[:24] if isinstance(v, bytes) else v,
)
def test_unreadable_json_document(data, code):
    assert _feed_error(parse_cap_json, data).code == code


def test_a_too_large_document_is_refused_unread():
    huge = b"<alerts>" + b"<alert/>" * (MAX_DOCUMENT_BYTES // 8) + b"</alerts>"
    started = time.monotonic()
    assert _feed_error(parse_cap_xml, huge).detail.startswith(f"{len(huge)} bytes")
    assert time.monotonic() - started < 5  # refused on its size, before parsing


def test_json_unpaired_surrogate_is_an_invalid_value():
    doc = json.loads(sample("sr-vma-alerts.json"))
    doc["alerts"][2]["info"][0]["description"] = "\ud800"
    data = json.dumps(doc).encode()  # ensure_ascii keeps it as the escape \ud800
    problem = parse_cap_json(data).problems[0]
    assert problem.code == "invalid_value"
    assert problem.detail == (
        "alerts[2].info[0].description: expected text, found a string with an unpaired surrogate"
    )


# -- the public surface ---------------------------------------------------------------


def test_public_surface_is_deliberate():
    assert set(cap.__all__) == {
        "CAP_NAMESPACE", "COUNTY_CODE_NAMES", "FEED_ERROR_CODES", "MAX_DEPTH",
        "MUNICIPALITY_CODE_NAMES", "PROBLEM_CODES", "parse_cap_json", "parse_cap_xml",
    }  # fmt: skip
    assert {"kommun", "län", "municipalitycode", "countycode"} <= (
        cap.MUNICIPALITY_CODE_NAMES | cap.COUNTY_CODE_NAMES
    )


# -- properties: nothing but FeedError, whatever comes in -----------------------------

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CAP_NAMES = [
    "alert", "alerts", "identifier", "sender", "sent", "status", "msgType", "scope",
    "references", "addresses", "info", "language", "category", "event", "responseType",
    "urgency", "severity", "certainty", "expires", "onset", "headline", "description",
    "area", "areaDesc", "polygon", "circle", "geocode", "valueName", "value", "parameter",
    "resource", "altitude",
]  # fmt: skip
CAP_VALUES = st.sampled_from(
    [
        "Actual", "Draft", "Alert", "Update", "Cancel", "Ack", "Public", "Private", "Safety",
        "Immediate", "Severe", "Observed", "Kommun", "Län", "MunicipalityCode", "0180", "01",
        "2026-03-14T09:12:00+01:00", "1970-01-01T00:00:00Z", "s,id,2026-03-14T09:12:00+01:00",
        "59,18 59,19 60,19 59,18", "59,18 1.5", "", " ", "a b", "1e400",
    ]
)  # fmt: skip
XML_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Cn")), max_size=12
)
JSON_SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12) | CAP_VALUES
)  # fmt: skip
CAP_JSON = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(CAP_NAMES), children, max_size=7)
    ),
    max_leaves=25,
)
ANY_JSON = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)
XML_TREES = st.recursive(
    st.tuples(st.sampled_from(CAP_NAMES), CAP_VALUES | XML_TEXT),
    lambda children: st.tuples(st.sampled_from(CAP_NAMES), st.lists(children, max_size=5)),
    max_leaves=25,
)


def render(tree: tuple[str, Any]) -> str:
    name, content = tree
    if isinstance(content, str):
        return f"<{name}>{escape(content)}</{name}>"
    return f"<{name}>{''.join(render(child) for child in content)}</{name}>"


def assert_well_formed(result: ParseResult) -> None:
    assert all(isinstance(a, SourceAlert) for a in result.alerts)
    for problem in result.problems:
        assert problem.code in PROBLEM_CODES
        assert len(problem.excerpt) <= cap.EXCERPT_CHARS
        assert len(problem.detail) <= cap.DETAIL_CHARS + 40


def only_feed_errors(parser: Any, data: bytes) -> None:
    try:
        result = parser(data)
    except FeedError as e:
        code = e.code
    else:
        assert_well_formed(result)
        return
    assert code in FEED_ERROR_CODES


@FAST
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_raise_only_feed_error(data):
    only_feed_errors(parse_cap_xml, data)
    only_feed_errors(parse_cap_json, data)


@FAST
@given(ANY_JSON)
def test_arbitrary_json_raises_only_feed_error(doc):
    only_feed_errors(parse_cap_json, json.dumps(doc).encode())
    only_feed_errors(parse_cap_json, json.dumps({"alerts": doc}).encode())


@FAST
@given(st.lists(CAP_JSON, max_size=4))
def test_cap_shaped_json_raises_only_feed_error(alerts):
    only_feed_errors(parse_cap_json, json.dumps({"alerts": alerts}).encode())


@FAST
@given(st.lists(XML_TREES, max_size=8), st.booleans())
def test_cap_shaped_xml_raises_only_feed_error(children, in_feed):
    body = "".join(render(child) for child in children)
    doc = f'<alert xmlns="{CAP_NAMESPACE}">{body}</alert>'
    only_feed_errors(parse_cap_xml, (f"<alerts>{doc}{doc}</alerts>" if in_feed else doc).encode())


@FAST
@given(
    st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
    ),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
)
def test_any_offset_time_is_the_same_instant(moment, offset_minutes):
    local = moment.astimezone(timezone(timedelta(minutes=offset_minutes))).replace(microsecond=0)
    sent = local.isoformat()
    if offset_minutes == 0:
        sent = sent.replace("+00:00", "-00:00")
    (alert,) = parse_cap_xml(minimal_alert(sent=sent).encode()).alerts
    assert alert.sent == (local - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
