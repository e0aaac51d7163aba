"""Trafikverket's open API situations (``objecttype="Situation"``, JSON) as :class:`SourceAlert`.

One pure function, :func:`parse_trafikverket`: response bytes in, a :class:`ParseResult` out.
One alert per ``Deviation``; a deviation that cannot be used becomes an :class:`ItemProblem`
and its siblings go on; a response that cannot be read at all raises :class:`FeedError`.

Codes. :class:`FeedError`: ``too_large``, ``encoding``, ``malformed_json``, ``too_deep``,
``unexpected_shape``, ``source_error``, ``too_many_items``. :class:`ItemProblem`:
``missing_field``, ``invalid_value``, ``invalid_timestamp``, ``text_too_long``; the detail
starts with the field it names (``Deviation.StartTime: not a time ...``).

The response, as the API returns it for ``data.json``::

    {"RESPONSE": {"RESULT": [{"Situation": [{"Id": ..., "Deleted": false,
        "VersionTime": ..., "ModifiedTime": ..., "Deviation": [{...}, ...]}, ...],
        "INFO": {"LASTCHANGEID": ...}}, ...]}}

Assumptions (field names from the API's data model and public clients of it):

- ``RESULT`` has one entry per query; each may carry ``Situation`` (a list), other object
  types and ``INFO`` (ignored). An ``ERROR`` object (``{"SOURCE": ..., "MESSAGE": ...}``)
  in any entry makes the whole response a :class:`FeedError` (``source_error``).
- Geometry moved between schema versions. Older: ``Deviation.Geometry.WGS84`` (and
  ``.SWEREF99TM``) holding WKT. Newer (1.5): ``Deviation.Geometry.Point.WGS84`` and
  ``Deviation.Geometry.Line.WGS84``. Both are read; the newer wins, and a line wins over a
  point because it covers the whole affected stretch. SWEREF 99 TM is never used. WKT
  ``POINT``, ``LINESTRING`` and ``MULTILINESTRING`` (optionally ``Z``) are accepted, and
  re-emitted in 2D with the source's own number tokens: ``POINT (18.06 59.33)``.
- Severity is read from ``SeverityText`` because public clients disagree on what the
  numbers mean (1-4 in some, 1/2/4/5 in others). Only an unknown text falls back on
  ``SeverityCode`` (5 severe, 4 moderate, 2-3 minor, anything else unknown).
- ``CountyNo`` holds county numbers; 2 is the retired number for Stockholms län and is
  read as ``"01"``.
- Times are ISO 8601 with a UTC offset (``2024-03-01T08:15:00.000+01:00``); a time
  without an offset is refused as ambiguous.
- ``Deleted: true`` on a situation cancels every deviation in it. A cancel's version is
  the deviation's version plus ``+cancel`` so that it never shares a deduplication key
  with the alert it withdraws; it is sent at the situation's ``ModifiedTime`` when given.
- ``WebLink`` is kept only when it is an ``http(s)`` URL (it ends up as a link in
  consoles). A deviation with no place, county or geometry has no area.

Example::

    >>> doc = b'{"RESPONSE": {"RESULT": [{"Situation": []}]}}'
    >>> parse_trafikverket(doc)
    ParseResult(alerts=(), problems=())
"""

from __future__ import annotations

import re
from typing import Any

from clients.adapters._common import (
    MAX_ERROR_CHARS,
    epoch_millis,
    is_time_shaped,
    json_excerpt,
    read_json,
    show,
)
from clients.adapters.model import (
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

__all__ = ["FORMAT", "SENDER", "parse_trafikverket"]

FORMAT = "trafikverket"
SENDER = "Trafikverket"
LANGUAGE = "sv-SE"  # Trafikverket publishes situations in Swedish only
CANCEL_VERSION_SUFFIX = "+cancel"
EXCERPT_CHARS = 500  # of one deviation, for the quarantine file
MAX_WKT_CHARS = 200_000  # one geometry; a long road line is far larger than a text field
MAX_WKT_POSITIONS = 10_000

SEVERITY_BY_TEXT: dict[str, Severity] = {
    "mycket stor påverkan": Severity.SEVERE,
    "stor påverkan": Severity.MODERATE,
    "liten påverkan": Severity.MINOR,
    "ingen påverkan": Severity.MINOR,
}
SEVERITY_BY_CODE: dict[int, Severity] = {
    5: Severity.SEVERE,
    4: Severity.MODERATE,
    3: Severity.MINOR,
    2: Severity.MINOR,
}
RETIRED_COUNTY_NUMBERS = {2: 1}  # 2 was Stockholms län before it became 1


class _Invalid(Exception):
    """One deviation (or situation) is unusable; becomes an ItemProblem."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def parse_trafikverket(data: bytes) -> ParseResult:
    """Parse a Trafikverket ``Situation`` response into alerts and item problems.

    Raises :class:`FeedError` when the response as a whole is unusable: too large, not
    UTF-8, not JSON, nested too deeply, not shaped like a response, an ``ERROR`` from
    the API, or more than ``MAX_ITEMS`` situations or deviations.
    """
    situations = _situations(read_json(data, max_depth=None))
    alerts: list[SourceAlert] = []
    problems: list[ItemProblem] = []
    for s_index, situation in enumerate(situations):
        where = f"Situation[{s_index}]"
        try:
            deviations, deleted = _situation_parts(situation, where)
        except _Invalid as e:
            # No item id: state holds deviation ids, and a situation's id named here
            # would let the runtime take its deviations for "disappeared" and cancel them.
            problems.append(_problem(e, situation, None))
            continue
        for d_index, deviation in enumerate(deviations):
            try:
                alerts.append(
                    _alert(situation, deviation, deleted, f"{where}.Deviation[{d_index}]")
                )
            except _Invalid as e:
                problems.append(_problem(e, deviation, _id_or_none(deviation)))
    return ParseResult(alerts=tuple(alerts), problems=tuple(problems))


# -- the document ---------------------------------------------------------------------


def _situations(doc: Any) -> list[Any]:
    response = doc.get("RESPONSE") if isinstance(doc, dict) else None
    results = response.get("RESULT") if isinstance(response, dict) else None
    if not isinstance(results, list):
        raise FeedError("unexpected_shape", "no RESPONSE.RESULT list")
    situations: list[Any] = []
    deviations = 0
    for index, result in enumerate(results):
        if not isinstance(result, dict):
            raise FeedError("unexpected_shape", f"RESPONSE.RESULT[{index}] is not an object")
        if "ERROR" in result:
            raise FeedError("source_error", _source_error(result["ERROR"]))
        found = result.get("Situation", [])
        if not isinstance(found, list):
            raise FeedError("unexpected_shape", f"RESPONSE.RESULT[{index}].Situation is not a list")
        situations.extend(found)
        deviations += sum(
            len(s["Deviation"])
            for s in found
            if isinstance(s, dict) and isinstance(s.get("Deviation"), list)
        )
    if len(situations) > MAX_ITEMS or deviations > MAX_ITEMS:
        raise FeedError(
            "too_many_items",
            f"{len(situations)} situations, {deviations} deviations; the limit is {MAX_ITEMS}",
        )
    return situations


def _source_error(error: Any) -> str:
    if isinstance(error, dict):
        source = str(error.get("SOURCE", ""))[:MAX_ERROR_CHARS]
        message = str(error.get("MESSAGE", ""))[:MAX_ERROR_CHARS]
        return f"{source}: {message}" if source else message or "ERROR without a message"
    return str(error)[:MAX_ERROR_CHARS]


# -- one situation, one deviation -----------------------------------------------------


def _situation_parts(situation: Any, where: str) -> tuple[list[Any], bool]:
    if not isinstance(situation, dict):
        raise _Invalid("invalid_value", f"{where}: Situation is not an object")
    deleted = situation.get("Deleted", False)
    if not isinstance(deleted, bool):
        raise _Invalid("invalid_value", f"Situation.Deleted: not a boolean: {show(deleted)}")
    if "Deviation" not in situation:
        # A cancel is keyed on deviation ids, so a deleted situation without its
        # deviations cannot name what it withdraws.
        raise _Invalid("missing_field", f"Situation.Deviation: missing ({where})")
    deviations = situation["Deviation"]
    if not isinstance(deviations, list):
        raise _Invalid("invalid_value", f"Situation.Deviation: not a list ({where})")
    return deviations, deleted


def _alert(situation: dict[str, Any], deviation: Any, deleted: bool, where: str) -> SourceAlert:
    if not isinstance(deviation, dict):
        raise _Invalid("invalid_value", f"{where}: Deviation is not an object")
    item_id = _identifier(deviation)
    message_type = _text(deviation, "MessageType", required=True)

    version_field = "Deviation.VersionTime"
    version = _text(deviation, "VersionTime")
    if not version:
        version_field, version = (
            "Situation.VersionTime",
            _text(situation, "VersionTime", "Situation"),
        )
    if not version:
        raise _Invalid(
            "missing_field", "Deviation.VersionTime: missing (and no Situation.VersionTime)"
        )
    version_time = _time(version, version_field)
    creation_time = _optional_time(deviation, "CreationTime", "Deviation")
    _optional_time(deviation, "StartTime", "Deviation")
    end_time = _optional_time(deviation, "EndTime", "Deviation")
    modified_time = _optional_time(situation, "ModifiedTime", "Situation")
    sent = version_time
    if version_field != "Deviation.VersionTime" and creation_time is not None:
        sent = creation_time

    msg_type = MsgType.ALERT
    references: tuple[str, ...] = ()
    if deleted:
        msg_type, references = MsgType.CANCEL, (item_id,)
        version += CANCEL_VERSION_SUFFIX
        sent = modified_time if modified_time is not None else sent

    road = _text(deviation, "RoadNumber")
    header = _text(deviation, "Header")
    return SourceAlert(
        format=FORMAT,
        item_id=item_id,
        version=version,
        msg_type=msg_type,
        sent=sent,
        event=message_type,
        severity=_severity(deviation),
        references=references,
        categories=_unique(message_type, _text(deviation, "MessageCode")),
        expires=end_time,
        areas=_areas(
            Area(
                description=_place(_text(deviation, "LocationDescriptor"), road),
                counties=_counties(deviation.get("CountyNo")),
                geometry=_geometry(deviation.get("Geometry")),
            )
        ),
        infos=(
            Info(
                language=LANGUAGE,
                event=message_type,
                headline=header or (f"{message_type}, {road}" if road else message_type),
                description=_text(deviation, "Message"),
                web=_web_link(_text(deviation, "WebLink")),
            ),
        ),
        sender=SENDER,
    )


def _identifier(deviation: dict[str, Any]) -> str:
    value = deviation.get("Id")
    if value is None or value == "":
        raise _Invalid("missing_field", "Deviation.Id: missing")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise _Invalid("invalid_value", f"Deviation.Id: not an identifier: {show(value)}")
    return value.strip()


def _text(
    obj: dict[str, Any], key: str, owner: str = "Deviation", *, required: bool = False
) -> str:
    value = obj.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise _Invalid("missing_field", f"{owner}.{key}: missing")
        return ""
    if not isinstance(value, str):
        raise _Invalid("invalid_value", f"{owner}.{key}: not a string: {show(value)}")
    if len(value) > MAX_TEXT_CHARS:
        raise _Invalid("text_too_long", f"{owner}.{key}: longer than {MAX_TEXT_CHARS} characters")
    return value.strip()


def _time(value: str, field: str) -> int:
    """An ISO 8601 time with a UTC offset, as epoch milliseconds."""
    if not is_time_shaped(value):
        raise _Invalid("invalid_timestamp", f"{field}: not a time with an offset: {show(value)}")
    millis = epoch_millis(value)
    if millis is None:  # month 13, 25 o'clock, ...
        raise _Invalid("invalid_timestamp", f"{field}: not a valid time: {show(value)}")
    return millis


def _optional_time(obj: dict[str, Any], key: str, owner: str) -> int | None:
    value = _text(obj, key, owner)
    return _time(value, f"{owner}.{key}") if value else None


def _severity(deviation: dict[str, Any]) -> Severity:
    text = _text(deviation, "SeverityText").casefold()
    if text in SEVERITY_BY_TEXT:
        return SEVERITY_BY_TEXT[text]
    code = deviation.get("SeverityCode")
    if isinstance(code, int) and not isinstance(code, bool):
        return SEVERITY_BY_CODE.get(code, Severity.UNKNOWN)
    return Severity.UNKNOWN


def _counties(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _Invalid("invalid_value", f"Deviation.CountyNo: not a list: {show(value)}")
    counties: list[str] = []
    for number in value:
        if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 99:
            raise _Invalid(
                "invalid_value", f"Deviation.CountyNo: not a county number: {show(number)}"
            )
        counties.append(f"{RETIRED_COUNTY_NUMBERS.get(number, number):02d}")
    return _unique(*counties)


def _areas(area: Area) -> tuple[Area, ...]:
    return () if area == Area() else (area,)


def _place(descriptor: str, road: str) -> str:
    if road and road.casefold() not in descriptor.casefold():
        return f"{descriptor} ({road})" if descriptor else road
    return descriptor


def _web_link(link: str) -> str:
    return link if link.startswith(("https://", "http://")) else ""


def _unique(*values: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v for v in values if v))


# -- geometry -------------------------------------------------------------------------


def _geometry(geometry: Any) -> str | None:
    """The deviation's WGS 84 WKT, from either placement (see the module docstring)."""
    if geometry is None:
        return None
    if not isinstance(geometry, dict):
        raise _Invalid("invalid_value", f"Deviation.Geometry: not an object: {show(geometry)}")
    for part in ("Line", "Point"):  # newer placement
        holder = geometry.get(part)
        if holder is None:
            continue
        if not isinstance(holder, dict):
            raise _Invalid("invalid_value", f"Deviation.Geometry.{part}: not an object")
        if holder.get("WGS84") is not None:
            return _wkt(holder["WGS84"], f"Deviation.Geometry.{part}.WGS84")
    if geometry.get("WGS84") is not None:  # older placement
        return _wkt(geometry["WGS84"], "Deviation.Geometry.WGS84")
    return None


_WKT = re.compile(r"\s*(POINT|LINESTRING|MULTILINESTRING)\s*(Z\s*)?\((.*)\)\s*", re.I | re.S)
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?", re.ASCII)
_PART = re.compile(r"\s*\(([^()]*)\)\s*(?:,|$)")


def _wkt(value: Any, field: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_WKT_CHARS:
        raise _Invalid("invalid_value", f"{field}: not a WKT string: {show(value)}")
    match = _WKT.fullmatch(value)
    if not match:
        raise _Invalid("invalid_value", f"{field}: not WKT POINT/LINESTRING: {show(value)}")
    kind, body = match.group(1).upper(), match.group(3)
    if kind == "POINT":
        return f"POINT ({_positions(body, field, 1)})"
    if kind == "LINESTRING":
        return f"LINESTRING ({_positions(body, field, 2)})"
    parts = [m.group(1) for m in _PART.finditer(body)]
    if not parts or sum(len(m.group(0)) for m in _PART.finditer(body)) != len(body):
        raise _Invalid("invalid_value", f"{field}: malformed MULTILINESTRING: {show(value)}")
    return "MULTILINESTRING (" + ", ".join(f"({_positions(p, field, 2)})" for p in parts) + ")"


def _positions(body: str, field: str, minimum: int) -> str:
    positions = body.split(",")
    if not minimum <= len(positions) <= MAX_WKT_POSITIONS or (minimum == 1 and len(positions) > 1):
        raise _Invalid("invalid_value", f"{field}: wrong number of positions: {show(body)}")
    out: list[str] = []
    for position in positions:
        numbers = position.split()
        if len(numbers) not in (2, 3) or not all(_NUMBER.fullmatch(n) for n in numbers):
            raise _Invalid("invalid_value", f"{field}: not a coordinate pair: {show(position)}")
        lon, lat = float(numbers[0]), float(numbers[1])
        if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
            raise _Invalid("invalid_value", f"{field}: outside WGS 84 lon/lat: {show(position)}")
        out.append(f"{numbers[0]} {numbers[1]}")
    return ", ".join(out)


# -- problems -------------------------------------------------------------------------


def _problem(error: _Invalid, item: Any, item_id: str | None) -> ItemProblem:
    return ItemProblem(
        code=error.code,
        detail=error.detail,
        item_id=item_id,
        excerpt=json_excerpt(item, EXCERPT_CHARS),
    )


def _id_or_none(item: Any) -> str | None:
    value = item.get("Id") if isinstance(item, dict) else None
    if isinstance(value, str) and value.strip():
        return value.strip()[:200]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None
