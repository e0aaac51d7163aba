"""Hostile documents against the parsers' shared reader (``clients.adapters._common``).

The three parsers read their documents through one module: the same fault gets the same
:class:`FeedError` code in every format, CAP XML is bounded in element count as DATEX II
is, and no parser keeps a reader of its own beside it.
"""

from __future__ import annotations

import ast
import codecs
import doctest
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clients.adapters import _common, cap, datex, trafikverket
from clients.adapters.cap import FEED_ERROR_CODES, parse_cap_json, parse_cap_xml
from clients.adapters.datex import parse_datex
from clients.adapters.model import MAX_DOCUMENT_BYTES, FeedError
from clients.adapters.trafikverket import parse_trafikverket

ADAPTERS = Path(__file__).parents[1] / "clients" / "adapters"
CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"
DATEX_ROOT = b'<payload xmlns="http://datex2.eu/schema/3/d2Payload">'
XML_PARSERS = {"cap-xml": parse_cap_xml, "datex2": parse_datex}
JSON_PARSERS = {"cap-json": parse_cap_json, "trafikverket": parse_trafikverket}
ALL_PARSERS = {**XML_PARSERS, **JSON_PARSERS}


def _feed_error(parse: Any, data: bytes) -> FeedError:
    with pytest.raises(FeedError) as caught:
        parse(data)
    return caught.value


# -- the element bound, CAP as DATEX --------------------------------------------------


def test_cap_xml_with_more_elements_than_the_bound_is_refused_like_datex() -> None:
    over = _common.MAX_XML_ELEMENTS  # with the root, one more than the bound
    children = b"<x/>" * over
    started = time.monotonic()
    refused = _feed_error(parse_cap_xml, b"<alerts>" + children + b"</alerts>")
    assert (refused.code, refused.detail) == (
        "too_many_elements",
        f"more than {_common.MAX_XML_ELEMENTS} elements",
    )
    assert refused.code in FEED_ERROR_CODES
    assert _feed_error(parse_datex, DATEX_ROOT + children + b"</payload>").code == (
        "too_many_elements"
    )
    assert time.monotonic() - started < 10


def test_cap_xml_element_bound_stops_the_parser_early() -> None:
    """A document just under 8 MiB of empty elements (about two million) is refused at
    the bound, not built into a tree first."""
    doc = b"<alerts>" + b"<x/>" * ((MAX_DOCUMENT_BYTES - 32) // 4) + b"</alerts>"
    started = time.monotonic()
    assert _feed_error(parse_cap_xml, doc).code == "too_many_elements"
    assert time.monotonic() - started < 5


def test_cap_reads_its_element_bound_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cap, "MAX_XML_ELEMENTS", 10)
    minimal = (
        f'<alert xmlns="{CAP_NS}"><identifier>A</identifier><sender>s</sender>'
        "<sent>2026-03-14T09:12:00+01:00</sent><status>Actual</status>"
        "<msgType>Alert</msgType><scope>Public</scope>"
    )
    at_the_bound = minimal + "<source>x</source><note>y</note><code>z</code></alert>"  # 10
    assert [a.item_id for a in parse_cap_xml(at_the_bound.encode()).alerts] == ["A"]
    over = minimal + "<note>x</note>" * 4 + "</alert>"
    assert _feed_error(parse_cap_xml, over.encode()).detail == "more than 10 elements"


# -- one fault, one code, in every format ---------------------------------------------

FAULTS = {
    "too_large": (b" " * (MAX_DOCUMENT_BYTES + 1), "too_large"),
    "utf16_bom": (codecs.BOM_UTF16_LE + "{}".encode("utf-16-le"), "encoding"),
    "utf32_bom": (codecs.BOM_UTF32_BE + "{}".encode("utf-32-be"), "encoding"),
    "nul_bytes": (b"{\x00}", "encoding"),
    "latin1": (b"{\xe5}", "encoding"),
}


@pytest.mark.parametrize("fault", FAULTS, ids=list(FAULTS))
@pytest.mark.parametrize("fmt", ALL_PARSERS, ids=list(ALL_PARSERS))
def test_the_same_fault_has_the_same_code_in_every_format(fmt: str, fault: str) -> None:
    data, code = FAULTS[fault]
    error = _feed_error(ALL_PARSERS[fmt], data)
    assert error.code == code
    assert len(error.detail) <= 200


@pytest.mark.parametrize("fmt", XML_PARSERS, ids=list(XML_PARSERS))
def test_xml_faults_have_the_same_code_and_detail_in_both_xml_formats(fmt: str) -> None:
    parse = XML_PARSERS[fmt]
    dtd = _feed_error(parse, b'<!DOCTYPE a [<!ENTITY e "lol">]><a>&e;</a>')
    assert (dtd.code, dtd.detail) == (
        "dtd_forbidden",
        "the document has a DTD (<!DOCTYPE>); DTDs are refused unread",
    )
    declared = _feed_error(parse, b"<?xml version='1.0' encoding='ISO-8859-1'?><a/>")
    assert (declared.code, declared.detail) == (
        "encoding",
        "declared encoding 'ISO-8859-1'; only UTF-8 is read",
    )
    assert _feed_error(parse, b"<a>" * 100_000).code == "too_deep"
    assert _feed_error(parse, b"<a><b></a>").code == "malformed_xml"


@pytest.mark.parametrize("fmt", JSON_PARSERS, ids=list(JSON_PARSERS))
def test_json_faults_have_the_same_code_in_both_json_formats(fmt: str) -> None:
    parse = JSON_PARSERS[fmt]
    assert _feed_error(parse, b'{"alerts": [NaN]}').code == "malformed_json"
    assert _feed_error(parse, b'{"alerts": [Infinity]}').code == "malformed_json"
    assert _feed_error(parse, b"[" * 100_000 + b"]" * 100_000).code == "too_deep"


# -- times: one reading for every format ----------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
    ),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
    st.integers(min_value=0, max_value=999_999),
)
def test_epoch_millis_is_the_instant_python_reads(
    moment: datetime, offset_minutes: int, micros: int
) -> None:
    local = moment.astimezone(timezone(timedelta(minutes=offset_minutes)))
    text = local.replace(microsecond=micros).isoformat(timespec="microseconds")
    expected = (datetime.fromisoformat(text) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
        milliseconds=1
    )
    assert _common.epoch_millis(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2024-11-12T07:00:00",  # no offset: ambiguous
        "2024-11-12 07:00:00+01:00",
        "2024-13-12T07:00:00+01:00",
        "2024-02-30T07:00:00+01:00",
        "2024-11-12T24:00:00+01:00",
        "2024-11-12T07:00:60+01:00",
        "2024-11-12T07:00:00+15:00",  # no such offset
        "2024-11-12T07:00:00+01:60",
        "２０２４-11-12T07:00:00+01:00",
    ],
)
def test_times_that_no_parser_takes(text: str) -> None:
    assert _common.epoch_millis(text) is None
    field = "<sit:situationRecordVersionTime>"
    record = (
        '<sit:situationRecord xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        f'xsi:type="sit:Accident" id="R" version="1">{field}{text}'
        "</sit:situationRecordVersionTime></sit:situationRecord>"
    )
    doc = (
        '<d2:payload xmlns:d2="http://datex2.eu/schema/3/d2Payload" '
        'xmlns:com="http://datex2.eu/schema/3/common" '
        'xmlns:sit="http://datex2.eu/schema/3/situation">'
        "<com:publicationTime>2024-11-12T08:00:00+01:00</com:publicationTime>"
        f"<sit:situation id='S'>{record}</sit:situation></d2:payload>"
    )
    (problem,) = parse_datex(doc.encode()).problems
    assert problem.code == "invalid_timestamp"
    deviation = f'{{"Id": "D", "MessageType": "Olycka", "VersionTime": "{text}"}}'
    response = f'{{"RESPONSE": {{"RESULT": [{{"Situation": [{{"Deviation": [{deviation}]}}]}}]}}}}'
    (problem,) = parse_trafikverket(response.encode()).problems
    assert problem.code == "invalid_timestamp"


def test_a_shown_value_is_bounded_whatever_its_type() -> None:
    assert _common.show("x" * 61) == repr("x" * 60 + "…")
    assert _common.show("kort") == "'kort'"
    assert _common.show([1, 2]) == "'[1, 2]'"
    assert len(_common.show({"k": "v" * 1000})) < 70


# -- one reader, no copies --------------------------------------------------------------


def _imports(module: Any) -> set[str]:
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.add(node.module or "")
    return found


@pytest.mark.parametrize("module", [cap, datex, trafikverket], ids=lambda m: m.__name__)
def test_no_parser_reads_documents_on_its_own(module: Any) -> None:
    imported = _imports(module)
    assert "clients.adapters._common" in imported
    assert not imported & {"defusedxml", "defusedxml.ElementTree", "json", "codecs", "datetime"}


def test_the_shared_module_is_pure_and_its_examples_run() -> None:
    assert doctest.testmod(_common).failed == 0
    roots = {name.split(".")[0] for name in _imports(_common)}
    assert roots <= {"__future__", "clients", "codecs", "datetime", "defusedxml", "json", "re"} | {
        "typing",
        "xml",
    }
