"""DATEX II version 3 situation publications (XML) as :class:`SourceAlert`.

One pure function, :func:`parse_datex`: document bytes in, a :class:`ParseResult` out.
One alert per ``situationRecord``; a record that cannot be used becomes an
:class:`ItemProblem` and its siblings go on; a document that cannot be read at all (too
large, malformed, a DTD or entity, too deep, not a v3 situation publication) raises
:class:`FeedError`.

Codes. :class:`FeedError`: ``too_large``, ``encoding`` (UTF-8 only, as in the CAP
parser), ``malformed_xml``, ``dtd_forbidden`` / ``entities_forbidden`` /
``external_reference_forbidden`` / ``xml_forbidden``, ``too_deep``, ``too_many_elements``,
``too_many_items``, ``unexpected_shape``, ``unsupported_version`` (DATEX II v2),
``unsupported_publication``, and ``missing_field`` / ``invalid_timestamp`` for the
``publicationTime``. :class:`ItemProblem`: ``missing_field``, ``invalid_value``,
``invalid_timestamp``, ``text_too_long``; the detail starts with the element or
attribute it names (``situationRecord@version: missing``).

XML is read with ``defusedxml`` (no DTD, no entities, no external references) through a
tree builder that bounds depth and element count, by the reader the CAP parser uses too
(``clients.adapters._common``). Elements are matched on namespace URI and local name,
never on prefixes. Publishers disagree on which v3 namespace holds the
shared children (``publicationTime`` is in ``common`` in the schema but some feeds put
it elsewhere), so a child matches by local name in any ``http://datex2.eu/schema/3/...``
namespace; the document element itself must be exactly one of:

- ``{.../d2Payload}payload`` with ``xsi:type`` ``...:SituationPublication`` (or none);
- ``{.../situation}situationPublication``;
- ``{.../messageContainer}messageContainer`` whose ``payload`` children are read as above.

The shape read (v3 ``situation`` namespace unless noted)::

    payload  @lang  publicationTime  publicationCreator/{country, nationalIdentifier}
      situation  overallSeverity  headerInformation/informationStatus
        situationRecord  @id @version @xsi:type
          situationRecordCreationTime  situationRecordVersionTime
          probabilityOfOccurrence  severity
          validity/{validityStatus, validityTimeSpecification/{overallStartTime, overallEndTime}}
          generalPublicComment*/{comment/values/value@lang, commentType}
          locationReference (PointLocation, LinearLocation, ItineraryByIndexedLocations, ...)
          accidentType*, roadMaintenanceType*, ... (any direct child named ``...Type``)

Assumptions and choices:

- A record's ``severity`` falls back on its situation's ``overallSeverity``.
- A record is cancelled when ``validityStatus`` is ``suspended`` or ``overallEndTime`` is
  at or before the ``publicationTime``. A cancel's version is the record version plus
  ``+cancel`` so that it never shares a deduplication key with the alert it withdraws
  (a record whose end time passes is often republished with an unchanged version).
- Geometry, first found: ``gmlLineString/posList`` (GML axis order for WGS 84: latitude
  then longitude), ``tpegLinearLocation`` from/to, ``pointByCoordinates``,
  ``tpegPointLocation``, ``coordinatesForDisplay``; itineraries and location groups give
  one area per contained location. WKT is written longitude first.
- Comments of type ``locationDescriptor`` make the headline (``"Accident: E4 vid
  Kista"``) and the area description; ``internalNote`` is never published; the others
  are joined into the description. One info per comment language (``value@lang``, else
  the payload's ``lang``).
- ``headerInformation/informationStatus`` sets the status: ``real`` actual, ``test``
  test, the exercises exercise.
- Enumerations are closed: a value outside ``severity``, ``probabilityOfOccurrence``,
  ``validityStatus`` or ``informationStatus`` is a problem, not a guess. A v3
  ``_extended`` value is read from its ``_extendedValue`` attribute.

Example::

    >>> doc = (b'<payload xmlns="http://datex2.eu/schema/3/d2Payload">'
    ...        b'<publicationTime>2024-03-01T08:00:00Z</publicationTime></payload>')
    >>> parse_datex(doc)
    ParseResult(alerts=(), problems=())
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from xml.etree.ElementTree import Element

from clients.adapters._common import (
    MAX_ERROR_CHARS,
    MAX_XML_ELEMENTS,
    epoch_millis,
    is_time_shaped,
    read_xml,
    show,
    split_tag,
    xml_excerpt,
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

__all__ = ["FORMAT", "parse_datex"]

FORMAT = "datex2"
NS_V3 = "http://datex2.eu/schema/3/"
NS_PAYLOAD = NS_V3 + "d2Payload"
NS_SITUATION = NS_V3 + "situation"
NS_CONTAINER = NS_V3 + "messageContainer"
NS_V2 = "http://datex2.eu/schema/2/"
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
CANCEL_VERSION_SUFFIX = "+cancel"

MAX_XML_DEPTH = 64  # a v3 situation record is about 15 deep; anything far deeper is hostile
MAX_CATEGORIES = 16
MAX_GEOMETRIES = 64  # areas from one itinerary or location group
MAX_LINE_POSITIONS = 10_000
EXCERPT_CHARS = 500

SEVERITY: dict[str, Severity] = {
    "highest": Severity.EXTREME,
    "high": Severity.SEVERE,
    "medium": Severity.MODERATE,
    "low": Severity.MINOR,
    "lowest": Severity.MINOR,
    "none": Severity.UNKNOWN,
    "unknown": Severity.UNKNOWN,
}
CERTAINTY = {"certain": "observed", "probable": "likely", "riskOf": "possible"}
VALIDITY_STATUSES = frozenset({"active", "suspended", "definedByValidityTimeSpec"})
STATUS = {
    "real": "actual",
    "test": "test",
    "technicalExercise": "exercise",
    "securityExercise": "exercise",
}
LOCATION_COMMENT = "locationDescriptor"
PRIVATE_COMMENT = "internalNote"


class _Invalid(Exception):
    """One situation record is unusable; becomes an ItemProblem."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class _Publication:
    time: int
    language: str
    sender: str


def parse_datex(data: bytes) -> ParseResult:
    """Parse a DATEX II v3 situation publication into alerts and item problems."""
    root = read_xml(data, max_depth=MAX_XML_DEPTH, max_elements=MAX_XML_ELEMENTS)
    alerts: list[SourceAlert] = []
    problems: list[ItemProblem] = []
    payloads = _payloads(root)
    records = [
        (payload, situation, record)
        for payload in payloads
        for situation in _children(payload, "situation")
        for record in _children(situation, "situationRecord")
    ]
    if len(records) > MAX_ITEMS:
        raise FeedError(
            "too_many_items", f"{len(records)} situation records; the limit is {MAX_ITEMS}"
        )
    publications = {id(p): _publication(p) for p in payloads}
    for payload, situation, record in records:
        try:
            alerts.append(_alert(record, situation, publications[id(payload)]))
        except _Invalid as e:
            problems.append(
                ItemProblem(
                    code=e.code,
                    detail=e.detail,
                    item_id=_bounded(record.get("id")),
                    excerpt=xml_excerpt(record, EXCERPT_CHARS),
                )
            )
    return ParseResult(alerts=tuple(alerts), problems=tuple(problems))


# -- reading XML ----------------------------------------------------------------------


def _is(element: Element, local: str) -> bool:
    namespace, name = split_tag(element.tag)
    return name == local and namespace.startswith(NS_V3)


def _children(element: Element | None, local: str) -> list[Element]:
    return [] if element is None else [c for c in element if _is(c, local)]


def _child(element: Element | None, *path: str) -> Element | None:
    for local in path:
        if element is None:
            return None
        element = next((c for c in element if _is(c, local)), None)
    return element


def _text(element: Element | None, *path: str) -> str:
    found = _child(element, *path)
    return (found.text or "").strip() if found is not None else ""


def _type_name(element: Element) -> str:
    """The local part of an ``xsi:type`` QName (``sit:Accident`` → ``Accident``)."""
    return (element.get(XSI_TYPE) or "").strip().rpartition(":")[2]


# -- the publication ------------------------------------------------------------------


def _payloads(root: Element) -> list[Element]:
    namespace, local = split_tag(root.tag)
    if namespace.startswith(NS_V2) or local == "d2LogicalModel":
        raise FeedError("unsupported_version", f"DATEX II v2 ({namespace or local}); v3 is read")
    if (namespace, local) == (NS_CONTAINER, "messageContainer"):
        found = [c for c in root if split_tag(c.tag) == (NS_CONTAINER, "payload")]
        payloads = [p for p in found if _type_name(p) in ("", "SituationPublication")]
        if not payloads:
            kinds = ", ".join(sorted({_type_name(p) for p in found})) or "no payload"
            raise FeedError("unsupported_publication", f"messageContainer holds {kinds}")
        return payloads
    if (namespace, local) not in ((NS_PAYLOAD, "payload"), (NS_SITUATION, "situationPublication")):
        raise FeedError("unexpected_shape", f"document element {{{namespace}}}{local}"[:200])
    if _type_name(root) not in ("", "SituationPublication"):
        raise FeedError("unsupported_publication", _type_name(root)[:MAX_ERROR_CHARS])
    return [root]


def _publication(payload: Element) -> _Publication:
    value = _text(payload, "publicationTime")
    if not value:
        raise FeedError("missing_field", "publicationTime: missing")
    try:
        time = _time(value, "publicationTime")
    except _Invalid as e:
        raise FeedError(e.code, e.detail) from None
    creator = _child(payload, "publicationCreator")
    country, national = _text(creator, "country").upper(), _text(creator, "nationalIdentifier")
    language = (payload.get("lang") or "").strip()
    return _Publication(
        time=time,
        language=language if _LANGUAGE.fullmatch(language) else "und",
        sender=_bounded("/".join(p for p in (country, national) if p)) or "",
    )


# -- one situation record -------------------------------------------------------------


def _alert(record: Element, situation: Element, publication: _Publication) -> SourceAlert:
    item_id = _attribute(record, "id")
    version = _attribute(record, "version")
    event = _type_name(record)
    if not event:
        raise _Invalid("missing_field", "situationRecord@xsi:type: missing")
    if not _NAME.fullmatch(event):
        raise _Invalid("invalid_value", f"situationRecord@xsi:type: not a type name: {show(event)}")

    sent = _required_time(record, "situationRecordVersionTime")
    _optional_time(record, "situationRecordCreationTime")
    severity_field, severity = "severity", _enum(_child(record, "severity"))
    if not severity:
        severity_field, severity = "overallSeverity", _enum(_child(situation, "overallSeverity"))
    if severity and severity not in SEVERITY:
        raise _Invalid("invalid_value", f"{severity_field}: not a DATEX severity: {show(severity)}")
    probability = _enum(_child(record, "probabilityOfOccurrence"))
    if probability and probability not in CERTAINTY:
        raise _Invalid(
            "invalid_value", f"probabilityOfOccurrence: unknown value {show(probability)}"
        )
    information_status = _enum(_child(situation, "headerInformation", "informationStatus"))
    if information_status and information_status not in STATUS:
        raise _Invalid(
            "invalid_value", f"informationStatus: unknown value {show(information_status)}"
        )

    validity = _child(record, "validity")
    validity_status = _enum(_child(validity, "validityStatus"))
    if validity_status and validity_status not in VALIDITY_STATUSES:
        raise _Invalid("invalid_value", f"validityStatus: unknown value {show(validity_status)}")
    spec = _child(validity, "validityTimeSpecification")
    start = _optional_time(spec, "overallStartTime")
    end = _optional_time(spec, "overallEndTime")
    if start is not None and end is not None and end < start:
        raise _Invalid("invalid_value", "overallEndTime: before overallStartTime")

    cancelled = validity_status == "suspended" or (end is not None and end <= publication.time)
    comments = _comments(record, publication.language)
    location = _location_comment(comments, publication.language)
    return SourceAlert(
        format=FORMAT,
        item_id=item_id,
        version=version + CANCEL_VERSION_SUFFIX if cancelled else version,
        msg_type=MsgType.CANCEL if cancelled else MsgType.ALERT,
        sent=sent,
        event=event,
        severity=SEVERITY.get(severity, Severity.UNKNOWN),
        status=STATUS.get(information_status, "actual"),
        references=(item_id,) if cancelled else (),
        categories=_categories(record, event),
        certainty=CERTAINTY.get(probability, "unknown"),
        expires=end,
        areas=_areas(_child(record, "locationReference"), location),
        infos=_infos(comments, event),
        sender=publication.sender,
    )


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}", re.ASCII)
_LANGUAGE = re.compile(r"[A-Za-z]{2,8}(?:-[A-Za-z0-9]{1,8}){0,4}", re.ASCII)


def _attribute(record: Element, name: str) -> str:
    value = (record.get(name) or "").strip()
    if not value:
        raise _Invalid("missing_field", f"situationRecord@{name}: missing")
    if len(value) > 200 or not value.isprintable():
        raise _Invalid("invalid_value", f"situationRecord@{name}: not an identifier: {show(value)}")
    return value


def _enum(element: Element | None) -> str:
    """An enumeration's value; a v3 ``_extended`` value is read from its attribute."""
    if element is None:
        return ""
    value = (element.text or "").strip()
    if value == "_extended":
        value = (element.get("_extendedValue") or "").strip()
    return value


def _categories(record: Element, event: str) -> tuple[str, ...]:
    found = [event]
    for child in record:
        namespace, local = split_tag(child.tag)
        if not (namespace.startswith(NS_V3) and local.endswith("Type")):
            continue
        value = _enum(child)
        if not _NAME.fullmatch(value):
            raise _Invalid("invalid_value", f"{local}: not an enumeration value: {show(value)}")
        found.append(value)
    categories = tuple(dict.fromkeys(found))
    if len(categories) > MAX_CATEGORIES:
        raise _Invalid("invalid_value", f"more than {MAX_CATEGORIES} ...Type classes")
    return categories


# -- times ----------------------------------------------------------------------------


def _time(value: str, field: str) -> int:
    """An xs:dateTime with a UTC offset, as epoch milliseconds."""
    if not is_time_shaped(value):
        raise _Invalid("invalid_timestamp", f"{field}: not a time with an offset: {show(value)}")
    millis = epoch_millis(value)
    if millis is None:
        raise _Invalid("invalid_timestamp", f"{field}: not a valid time: {show(value)}")
    return millis


def _required_time(element: Element, local: str) -> int:
    value = _text(element, local)
    if not value:
        raise _Invalid("missing_field", f"{local}: missing")
    return _time(value, local)


def _optional_time(element: Element | None, local: str) -> int | None:
    value = _text(element, local)
    return _time(value, local) if value else None


# -- comments and infos ---------------------------------------------------------------


@dataclass(frozen=True)
class _Comment:
    kind: str  # commentType: description, locationDescriptor, warning, ...
    language: str
    text: str


def _comments(record: Element, default_language: str) -> list[_Comment]:
    comments: list[_Comment] = []
    for holder in _children(record, "generalPublicComment"):
        kind = _enum(_child(holder, "commentType")) or "description"
        if kind == PRIVATE_COMMENT:
            continue
        for value in _children(_child(holder, "comment", "values"), "value"):
            language = (value.get("lang") or "").strip() or default_language
            if not _LANGUAGE.fullmatch(language):
                raise _Invalid(
                    "invalid_value", f"comment value@lang: not a language: {show(language)}"
                )
            text = (value.text or "").strip()
            if len(text) > MAX_TEXT_CHARS:
                raise _Invalid("text_too_long", f"comment: longer than {MAX_TEXT_CHARS} characters")
            if text:
                comments.append(_Comment(kind, language, text))
    return comments


def _location_comment(comments: list[_Comment], preferred_language: str) -> str:
    places = [c for c in comments if c.kind == LOCATION_COMMENT]
    preferred = [c for c in places if c.language == preferred_language]
    return (preferred or places)[0].text if places else ""


def _infos(comments: list[_Comment], event: str) -> tuple[Info, ...]:
    infos: list[Info] = []
    for language in dict.fromkeys(c.language for c in comments):
        mine = [c for c in comments if c.language == language]
        place = next((c.text for c in mine if c.kind == LOCATION_COMMENT), "")
        description = "\n".join(c.text for c in mine if c.kind != LOCATION_COMMENT)
        if len(description) > MAX_TEXT_CHARS:
            raise _Invalid("text_too_long", f"comment: longer than {MAX_TEXT_CHARS} characters")
        infos.append(
            Info(
                language=language,
                event=event,
                headline=f"{event}: {place}" if place else event,
                description=description,
            )
        )
    return tuple(infos)


# -- locations ------------------------------------------------------------------------

_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?", re.ASCII)


def _areas(location: Element | None, place: str) -> tuple[Area, ...]:
    if location is None:
        return (Area(description=place),) if place else ()
    description = place or _road(location)
    geometries = _geometries(location, nesting=0)
    if len(geometries) > MAX_GEOMETRIES:
        raise _Invalid("invalid_value", f"locationReference: more than {MAX_GEOMETRIES} locations")
    if not geometries:
        return (Area(description=description),) if description else ()
    return tuple(Area(description=description, geometry=g) for g in geometries)


def _road(location: Element) -> str:
    """Road number and name from anywhere in a location, when no comment names the place."""
    numbers = [(e.text or "").strip() for e in location.iter() if _is(e, "roadNumber")]
    names = [
        (v.text or "").strip()
        for e in location.iter()
        if _is(e, "roadName")
        for v in e.iter()
        if _is(v, "value")
    ]
    return " ".join(dict.fromkeys(t for t in [*numbers[:1], *names[:1]] if t))[:MAX_TEXT_CHARS]


def _geometries(location: Element, nesting: int) -> list[str]:
    """WKT for one location, or for each location of an itinerary or group."""
    members = sorted(
        (
            m
            for m in location
            if _is(m, "locationContainedInItinerary") or _is(m, "locationContainedInGroup")
        ),
        key=_index,
    )
    if members and nesting < 2:
        inner = [_child(m, "location") for m in members]
        return [
            wkt
            for member, found in zip(members, inner, strict=True)
            for wkt in _geometries(found if found is not None else member, nesting + 1)
        ]
    line = _child(location, "gmlLineString")
    if line is not None:
        return [_line_wkt(line)]
    linear = _child(location, "tpegLinearLocation")
    ends = [_child(linear, end, "pointCoordinates") for end in ("from", "to")]
    if ends[0] is not None and ends[1] is not None:
        return [f"LINESTRING ({_position(ends[0])}, {_position(ends[1])})"]
    for path in (
        ("pointByCoordinates", "pointCoordinates"),
        ("tpegPointLocation", "point", "pointCoordinates"),
        ("coordinatesForDisplay",),
    ):
        point = _child(location, *path)
        if point is not None:
            return [f"POINT ({_position(point)})"]
    return []


def _index(member: Element) -> int:
    index = member.get("index") or ""
    return int(index) if index.isdigit() and len(index) < 6 else 0


def _position(coordinates: Element) -> str:
    """``lon lat`` (WKT order) from an element with ``latitude`` and ``longitude``."""
    return _lon_lat(_text(coordinates, "latitude"), _text(coordinates, "longitude"))


def _lon_lat(latitude: str, longitude: str) -> str:
    for name, value, limit in (("latitude", latitude, 90.0), ("longitude", longitude, 180.0)):
        if not value:
            raise _Invalid("missing_field", f"{name}: missing")
        if not _NUMBER.fullmatch(value):
            raise _Invalid("invalid_value", f"{name}: not a number: {show(value)}")
        if not -limit <= float(value) <= limit:
            raise _Invalid("invalid_value", f"{name}: outside WGS 84: {show(value)}")
    return f"{longitude} {latitude}"


def _line_wkt(line: Element) -> str:
    pos_list = _child(line, "posList")
    numbers = (pos_list.text or "").split() if pos_list is not None else []
    dimension = pos_list.get("srsDimension") if pos_list is not None else None
    step = 3 if (dimension or line.get("srsDimension") or "").strip() == "3" else 2
    if len(numbers) % step or not 2 <= len(numbers) // step <= MAX_LINE_POSITIONS:
        raise _Invalid(
            "invalid_value", f"posList: not {step}-number positions: {show(' '.join(numbers))}"
        )
    positions = [_lon_lat(numbers[i], numbers[i + 1]) for i in range(0, len(numbers), step)]
    return f"LINESTRING ({', '.join(positions)})"


# -- problems -------------------------------------------------------------------------


def _bounded(value: str | None) -> str | None:
    value = (value or "").strip()
    return value[:200] or None
