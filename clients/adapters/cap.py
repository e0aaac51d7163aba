"""CAP 1.2 alerts (OASIS Common Alerting Protocol) as :class:`SourceAlert`, from XML or JSON.

Two pure functions, bytes in and a :class:`ParseResult` out:

- :func:`parse_cap_xml` reads one ``<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">``,
  or a container holding several (an Atom or RSS feed, a plain ``<alerts>``): every
  ``alert`` element below the root is an item.
- :func:`parse_cap_json` reads the shape of Sveriges Radio's VMA API,
  ``{"timestamp": ..., "alerts": [...]}``, each entry a CAP alert with CAP's own names.

Both take the same three steps. The document is bounded, decoded and parsed; if that fails
it raises :class:`FeedError` (the codes are in ``FEED_ERROR_CODES``). Each alert is then
turned into a small format-neutral tree (``_Node``, ``_Text``) in which every value
remembers its path. One checker validates that tree against CAP 1.2 and maps it; an alert
that breaks CAP becomes one :class:`ItemProblem` whose ``code`` is the first finding and
whose ``detail`` lists every finding, each naming the element: ``alert/info[1]/urgency``
in XML (XPath, 1-based), ``alerts[0].info[0].urgency`` in JSON (0-based). Its siblings go on.

Assumptions and choices, beyond CAP 1.2 itself:

- Only UTF-8 is read (a UTF-8 byte order mark is skipped). A UTF-16/32 byte order mark,
  NUL bytes, or an XML declaration naming another encoding is a :class:`FeedError`.
- XML with any DTD is refused unread (``forbid_dtd``), which also refuses every entity
  declaration and external reference; entities and external references are forbidden too
  in case a DTD ever got through.
- Times must carry an offset. CAP forbids ``Z``, but ``Z`` and fractional seconds are
  accepted because they are unambiguous; a time without an offset is refused.
- ``references`` must hold ``sender,identifier,sent`` triples; ``SourceAlert.references``
  keeps the identifiers. An Update or Cancel without ``references`` is refused
  (``missing_field``): CAP's msgType definitions make the references what it updates or
  cancels, and without them it would replace nothing.
- ``info`` is optional in CAP (SR's Cancels have ``"info": null``). Without one the alert's
  ``event`` is ``""`` and severity, urgency and certainty are ``unknown``.
- ``event``, severity, urgency and certainty come from the first ``info``; ``categories``
  are the union of every info's, in CAP's spelling (``Safety``, ``CBRNE``); ``expires`` is
  the earliest ``expires`` of any info. ``infos`` keeps the first info of each language.
- Areas come from every info, and one that repeats an earlier one is dropped: the same
  county codes, municipality codes and geometry (or, for an area with none of those, the
  same ``areaDesc``). That keeps a translated info from doubling every area.
- Swedish geocodes are recognised by ``valueName``, case-insensitively:
  ``MUNICIPALITY_CODE_NAMES`` (four digits, as SR writes ``{"valueName": "Kommun",
  "value": "0180"}``) and ``COUNTY_CODE_NAMES`` (two digits, SR's ``"Län"``, ``"12"``). A
  recognised name with a malformed value is refused, as it would misroute the alert. Other
  geocodes (NUTS, SAME) are ignored; a municipality does not imply its county.
- ``polygon`` (``lat,lon lat,lon ...``, at least four points, closed) becomes WKT in WGS 84,
  ``POLYGON ((lon lat, ...))``, several become a ``MULTIPOLYGON``, re-emitted with the
  source's own number tokens. ``circle`` is validated but not converted.
- ``sender`` is the alert's ``sender`` (the CAP identity used in references), not the
  info's human-readable ``senderName``. ``scope`` is validated (and Private needs
  ``addresses``) but the model has no place for it.
- Elements in a foreign namespace inside an alert (an XML signature, extensions) are
  ignored; elements in no namespace or another CAP version's are ``wrong_namespace``.
  JSON keys that CAP does not define are ignored.
- Every text read is bounded by ``MAX_TEXT_CHARS`` (longer is ``text_too_long``, never cut)
  and every list by ``MAX_ITEMS``; the alerts in a document by ``MAX_ITEMS``
  (``too_many_items``), nesting by ``MAX_DEPTH`` (``too_deep``) and the elements of an
  XML document by ``MAX_XML_ELEMENTS`` (``too_many_elements``, the parser stops there).
- Reading the document (size, UTF-8, defusedxml, bounds, times) is shared with the other
  parsers (``clients.adapters._common``), so a fault has the same code in every format.

Example::

    >>> doc = b'{"timestamp": "2026-03-14T09:00:00+01:00", "alerts": []}'
    >>> parse_cap_json(doc)
    ParseResult(alerts=(), problems=())
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from xml.etree.ElementTree import Element

from clients.adapters._common import (
    MAX_XML_ELEMENTS,
    epoch_millis,
    json_excerpt,
    read_json,
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

__all__ = [
    "CAP_NAMESPACE",
    "COUNTY_CODE_NAMES",
    "FEED_ERROR_CODES",
    "MAX_DEPTH",
    "MUNICIPALITY_CODE_NAMES",
    "PROBLEM_CODES",
    "parse_cap_json",
    "parse_cap_xml",
]

CAP_NAMESPACE = "urn:oasis:names:tc:emergency:cap:1.2"
_CAP_FAMILY = "urn:oasis:names:tc:emergency:cap:"  # 1.0, 1.1 and 1.2 all start so
MAX_DEPTH = 32  # elements or JSON containers; a CAP alert in an Atom feed is about 10 deep
# MAX_XML_ELEMENTS (400 000, from _common): elements in one XML document, as in DATEX II
EXCERPT_CHARS = 1000  # of one alert, for the quarantine file
DETAIL_CHARS = 1000  # of one problem's detail (its findings listed)
MAX_ID_CHARS = 256  # an identifier quoted as a problem's item_id

FEED_ERROR_CODES = frozenset(
    {
        "too_large",  # over MAX_DOCUMENT_BYTES, refused unread
        "encoding",  # not UTF-8: invalid bytes, a UTF-16/32 BOM, NULs, another declared encoding
        "malformed_xml",
        "malformed_json",  # also NaN/Infinity and integers too long to convert
        "dtd_forbidden",  # any <!DOCTYPE>, so also every entity and external DTD
        "entities_forbidden",
        "external_reference_forbidden",
        "xml_forbidden",  # any other refusal of defusedxml's
        "too_deep",  # nested deeper than MAX_DEPTH
        "too_many_elements",  # more than MAX_XML_ELEMENTS elements, stopped there
        "too_many_items",  # more than MAX_ITEMS alerts
        "unexpected_shape",  # no alert and no container of alerts
    }
)
PROBLEM_CODES = frozenset(
    {
        "missing_field",  # a required element is absent or empty
        "invalid_value",  # outside CAP's enumerations or syntax, repeated, or of the wrong type
        "invalid_timestamp",  # not a date-time with an offset
        "wrong_namespace",  # not CAP 1.2's namespace
        "unsupported_status",  # System, Draft
        "unsupported_msg_type",  # Ack, Error
        "text_too_long",  # over MAX_TEXT_CHARS
        "too_many",  # a list over MAX_ITEMS
    }
)

# CAP 1.2 enumerations, in the order the specification lists them.
STATUSES = ("Actual", "Exercise", "System", "Test", "Draft")
MSG_TYPES = ("Alert", "Update", "Cancel", "Ack", "Error")
SCOPES = ("Public", "Restricted", "Private")
CATEGORIES = (
    "Geo", "Met", "Safety", "Security", "Rescue", "Fire", "Health", "Env", "Transport",
    "Infra", "CBRNE", "Other",
)  # fmt: skip
RESPONSE_TYPES = (
    "Shelter", "Evacuate", "Prepare", "Execute", "Avoid", "Monitor", "Assess", "AllClear",
    "None",
)  # fmt: skip
URGENCIES = ("Immediate", "Expected", "Future", "Past", "Unknown")
SEVERITIES = ("Extreme", "Severe", "Moderate", "Minor", "Unknown")
CERTAINTIES = ("Observed", "Likely", "Possible", "Unlikely", "Unknown")

STATUS_MAP = {"Actual": "actual", "Exercise": "exercise", "Test": "test"}
MSG_TYPE_MAP = {"Alert": MsgType.ALERT, "Update": MsgType.UPDATE, "Cancel": MsgType.CANCEL}
DEFAULT_LANGUAGE = "en-US"  # CAP's default when an info has no language

# Geocode valueNames, compared case-folded: SR writes "Kommun" and "Län".
MUNICIPALITY_CODE_NAMES = frozenset({"kommun", "kommunkod", "municipality", "municipalitycode"})
COUNTY_CODE_NAMES = frozenset({"län", "lan", "länskod", "lanskod", "county", "countycode"})

# XML elements that always hold elements (so `<info/>` is an empty info, not a text).
_STRUCTURES = frozenset({"info", "area", "geocode", "resource", "parameter", "eventCode"})
# XML roots that may hold alerts, and may hold none (an empty feed).
_CONTAINERS = frozenset({"feed", "rss", "RDF", "alerts"})


# -- the public functions -------------------------------------------------------------


def parse_cap_xml(data: bytes) -> ParseResult:
    """Parse a CAP 1.2 XML alert, or a feed holding several, into alerts and item problems.

    Raises :class:`FeedError` when the document as a whole is unusable (see
    ``FEED_ERROR_CODES``): too large, not UTF-8, not well-formed, with a DTD or
    entities, nested too deeply, more than ``MAX_XML_ELEMENTS`` elements or ``MAX_ITEMS``
    alerts, or neither an alert nor a feed.

        >>> doc = b'<feed xmlns="http://www.w3.org/2005/Atom"><title>VMA</title></feed>'
        >>> parse_cap_xml(doc)
        ParseResult(alerts=(), problems=())
    """
    root = read_xml(data, max_depth=MAX_DEPTH, max_elements=MAX_XML_ELEMENTS)
    elements = _find_alert_elements(root)
    if not elements and split_tag(root.tag)[1] not in _CONTAINERS:
        raise FeedError(
            "unexpected_shape",
            f"the root element {show(root.tag)} is neither a CAP alert nor a feed of alerts",
        )
    results = []
    for index, element in enumerate(elements, start=1):
        path = "alert" if element is root else f"alert[{index}]"
        results.append(_xml_item(element, path))
    return _result(results)


def parse_cap_json(data: bytes) -> ParseResult:
    """Parse CAP alerts in Sveriges Radio's VMA JSON into alerts and item problems.

    The document is ``{"alerts": [alert, ...]}`` (``alerts`` may also be one object or
    null), a bare list of alerts, or one alert object. Raises :class:`FeedError` when the
    document as a whole is unusable (see ``FEED_ERROR_CODES``).

        >>> parse_cap_json(b'{"alerts": null}')
        ParseResult(alerts=(), problems=())
    """
    entries = _json_entries(read_json(data, max_depth=MAX_DEPTH))
    return _result([_json_item(entry, path) for path, entry in entries])


def _result(results: list[SourceAlert | ItemProblem]) -> ParseResult:
    return ParseResult(
        alerts=tuple(r for r in results if isinstance(r, SourceAlert)),
        problems=tuple(r for r in results if isinstance(r, ItemProblem)),
    )


# -- reading the document -------------------------------------------------------------


def _find_alert_elements(root: Element) -> list[Element]:
    """Every element called ``alert`` in no or a CAP namespace, in document order."""
    found: list[Element] = []
    stack = [root]
    while stack:
        element = stack.pop()
        namespace, local = split_tag(element.tag)
        if local == "alert" and (namespace == "" or namespace.startswith(_CAP_FAMILY)):
            found.append(element)
            if len(found) > MAX_ITEMS:
                raise FeedError("too_many_items", f"more than {MAX_ITEMS} alerts")
            continue  # an alert is an item, never a container
        stack.extend(reversed(list(element)))
    return found


def _json_entries(doc: Any) -> list[tuple[str, Any]]:
    """The alert entries of a JSON document, each with its path."""
    if isinstance(doc, dict) and "alerts" in doc:
        found = doc["alerts"]
        if isinstance(found, list):
            entries = [(f"alerts[{i}]", entry) for i, entry in enumerate(found)]
        elif isinstance(found, dict):
            entries = [("alerts", found)]
        elif found is None:
            entries = []
        else:
            raise FeedError("unexpected_shape", f"alerts is {_kind(found)}, not a list")
    elif isinstance(doc, list):
        entries = [(f"[{i}]", entry) for i, entry in enumerate(doc)]
    elif isinstance(doc, dict) and ("identifier" in doc or "msgType" in doc):
        entries = [("alert", doc)]
    else:
        raise FeedError("unexpected_shape", "neither an object with an alerts list nor an alert")
    if len(entries) > MAX_ITEMS:
        raise FeedError("too_many_items", f"{len(entries)} alerts, the limit is {MAX_ITEMS}")
    return entries


# -- one alert, as a tree that remembers paths ----------------------------------------


@dataclass(frozen=True)
class _Text:
    path: str
    value: str


@dataclass(frozen=True)
class _Other:
    """A value that is neither text nor a structure (a JSON number, a list in a list)."""

    path: str
    found: str


@dataclass
class _Node:
    path: str
    separator: str  # "/" in XML, "." in JSON
    fields: dict[str, list[_Text | _Node | _Other]] = field(default_factory=dict)

    def child_path(self, name: str) -> str:
        return f"{self.path}{self.separator}{name}"


class _Findings:
    """What is wrong with one alert, in the order found."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, str]] = []  # code, path, what

    def add(self, code: str, path: str, what: str) -> None:
        self.items.append((code, path, what))


def _xml_item(element: Element, path: str) -> SourceAlert | ItemProblem:
    findings = _Findings()
    namespace = split_tag(element.tag)[0]
    if namespace != CAP_NAMESPACE:
        # Another CAP version, or none: its elements are not read as CAP 1.2's.
        findings.add(
            "wrong_namespace", path, f"namespace {show(namespace)}, CAP 1.2 is {CAP_NAMESPACE!r}"
        )
        return _problem(findings, _loose_xml_identifier(element), _xml_excerpt(element))
    node = _xml_node(element, path, findings)
    alert = _check_alert(node, "cap-xml", findings)
    return alert or _problem(findings, _loose_identifier(node), _xml_excerpt(element))


def _xml_excerpt(element: Element) -> str:
    return xml_excerpt(element, EXCERPT_CHARS)


def _loose_xml_identifier(element: Element) -> str | None:
    """The identifier of an alert in the wrong namespace, for the quarantine."""
    for child in element:
        if split_tag(child.tag)[1] == "identifier" and not len(child):
            return _bounded_id((child.text or "").strip())
    return None


def _xml_node(element: Element, path: str, findings: _Findings) -> _Node:
    node = _Node(path, "/")
    children = list(element)
    counts: dict[str, int] = {}
    for child in children:
        counts[child.tag] = counts.get(child.tag, 0) + 1
    seen: dict[str, int] = {}
    overflowing: set[str] = set()
    for child in children:
        namespace, name = split_tag(child.tag)
        seen[child.tag] = seen.get(child.tag, 0) + 1
        child_path = node.child_path(name)
        if counts[child.tag] > 1 or name in _STRUCTURES:
            child_path += f"[{seen[child.tag]}]"
        if namespace != CAP_NAMESPACE:
            if namespace == "" or namespace.startswith(_CAP_FAMILY):
                findings.add(
                    "wrong_namespace", child_path, f"in namespace {show(namespace)}, not CAP 1.2's"
                )
            continue  # a signature or an extension
        values = node.fields.setdefault(name, [])
        if len(values) >= MAX_ITEMS:
            if name not in overflowing:  # said once
                findings.add("too_many", child_path, f"more than {MAX_ITEMS} {name} elements")
                overflowing.add(name)
            continue
        if name in _STRUCTURES:
            values.append(_xml_node(child, child_path, findings))
        elif len(child):
            values.append(_Other(child_path, "child elements"))
        else:
            values.append(_Text(child_path, (child.text or "").strip()))
    return node


def _json_item(entry: Any, path: str) -> SourceAlert | ItemProblem:
    findings = _Findings()
    excerpt = json_excerpt(entry, EXCERPT_CHARS)
    if not isinstance(entry, dict):
        findings.add("invalid_value", path, f"an alert must be an object, found {_kind(entry)}")
        return _problem(findings, None, excerpt)
    node = _json_node(entry, path, findings)
    alert = _check_alert(node, "cap-json", findings)
    return alert or _problem(findings, _loose_identifier(node), excerpt)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _json_node(obj: dict[str, Any], path: str, findings: _Findings) -> _Node:
    node = _Node(path, ".")
    for key, value in obj.items():
        key_path = node.child_path(key)
        if value is None:
            continue  # SR writes absent optional fields as null
        if isinstance(value, list):
            if len(value) > MAX_ITEMS:
                findings.add(
                    "too_many", key_path, f"{len(value)} entries, the limit is {MAX_ITEMS}"
                )
            listed = [(f"{key_path}[{i}]", v) for i, v in enumerate(value[:MAX_ITEMS])]
        else:
            listed = [(key_path, value)]
        values: list[_Text | _Node | _Other] = []
        for item_path, item in listed:
            if isinstance(item, str) and not _SURROGATE.search(item):
                values.append(_Text(item_path, item.strip()))
            elif isinstance(item, dict):
                values.append(_json_node(item, item_path, findings))
            elif item is not None:
                values.append(_Other(item_path, _kind(item)))
        if values:
            node.fields[key] = values
    return node


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string with an unpaired surrogate" if _SURROGATE.search(value) else "a string"
    if isinstance(value, dict):
        return "an object"
    return "null"


def _problem(findings: _Findings, item_id: str | None, excerpt: str) -> ItemProblem:
    """One problem for one alert: the first finding's code, every finding in the detail."""
    parts = [f"{path}: {what}" for _, path, what in findings.items]
    detail = "; ".join(parts)
    if len(detail) > DETAIL_CHARS:
        detail = detail[:DETAIL_CHARS] + f" ... ({len(parts)} findings in all)"
    return ItemProblem(code=findings.items[0][0], detail=detail, item_id=item_id, excerpt=excerpt)


def _loose_identifier(node: _Node) -> str | None:
    """The alert's identifier for the quarantine, if it has one that looks usable."""
    values = node.fields.get("identifier", [])
    return _bounded_id(values[0].value) if values and isinstance(values[0], _Text) else None


def _bounded_id(value: str) -> str | None:
    return value if 0 < len(value) <= MAX_ID_CHARS else None


# -- checking one alert against CAP 1.2 and mapping it --------------------------------


def _check_alert(node: _Node, fmt: str, f: _Findings) -> SourceAlert | None:
    identifier = _cap_id(node, "identifier", f)
    sender = _cap_id(node, "sender", f)
    sent = _time(node, "sent", f, required=True)
    status = _enum(node, "status", STATUSES, f)
    if status in ("System", "Draft"):
        f.add("unsupported_status", node.child_path("status"), f"{status} is not forwarded")
    msg_type = _enum(node, "msgType", MSG_TYPES, f)
    if msg_type in ("Ack", "Error"):
        f.add("unsupported_msg_type", node.child_path("msgType"), f"{msg_type} is not forwarded")
    scope = _enum(node, "scope", SCOPES, f)
    for name in ("source", "restriction", "note", "incidents"):
        _single(node, name, f)
    _texts(node, "code", f)
    addresses = _single(node, "addresses", f)
    if scope == "Private" and not (addresses and addresses.value):
        f.add("missing_field", node.child_path("addresses"), "required when scope is Private")
    references = _references(node, f)
    if msg_type in ("Update", "Cancel") and references is None:
        f.add("missing_field", node.child_path("references"), f"required for msgType {msg_type}")
    infos = [_check_info(info, f) for info in _nodes(node, "info", f)]

    if f.items or identifier is None or sender is None or sent is None:
        return None
    if status not in STATUS_MAP or msg_type not in MSG_TYPE_MAP:
        return None
    checked = [info for info in infos if info is not None]
    first = checked[0] if checked else None
    expiries = [info.expires for info in checked if info.expires is not None]
    return SourceAlert(
        format=fmt,
        item_id=identifier,
        version=sent[0],
        msg_type=MSG_TYPE_MAP[msg_type],
        sent=sent[1],
        event=first.info.event if first else "",
        severity=Severity(first.severity.lower()) if first else Severity.UNKNOWN,
        status=STATUS_MAP[status],
        references=references or (),
        categories=_unique(c for info in checked for c in info.categories),
        urgency=first.urgency.lower() if first else "unknown",
        certainty=first.certainty.lower() if first else "unknown",
        expires=min(expiries) if expiries else None,
        areas=_distinct_areas(a for info in checked for a in info.areas),
        infos=_one_per_language(info.info for info in checked),
        sender=sender,
        scope=(scope or "Public").lower(),
    )


@dataclass(frozen=True)
class _CheckedInfo:
    info: Info
    categories: tuple[str, ...]
    urgency: str
    severity: str
    certainty: str
    expires: int | None
    areas: tuple[Area, ...]


def _check_info(node: _Node, f: _Findings) -> _CheckedInfo | None:
    language = _single(node, "language", f)
    categories = _enums(node, "category", CATEGORIES, f, required=True)
    event = _single(node, "event", f, required=True)
    _enums(node, "responseType", RESPONSE_TYPES, f, required=False)
    urgency = _enum(node, "urgency", URGENCIES, f)
    severity = _enum(node, "severity", SEVERITIES, f)
    certainty = _enum(node, "certainty", CERTAINTIES, f)
    for name in ("audience", "senderName", "contact"):
        _single(node, name, f)
    _time(node, "effective", f)
    _time(node, "onset", f)
    expires = _time(node, "expires", f)
    headline = _single(node, "headline", f)
    description = _single(node, "description", f)
    instruction = _single(node, "instruction", f)
    web = _single(node, "web", f)
    for name in ("eventCode", "parameter"):
        for pair in _nodes(node, name, f):
            _single(pair, "valueName", f, required=True)
            _single(pair, "value", f, required=True)
    for resource in _nodes(node, "resource", f):
        _single(resource, "resourceDesc", f, required=True)
        _single(resource, "mimeType", f, required=True)
    areas = [_check_area(area, f) for area in _nodes(node, "area", f)]
    if event is None or urgency is None or severity is None or certainty is None:
        return None
    return _CheckedInfo(
        info=Info(
            language=language.value if language and language.value else DEFAULT_LANGUAGE,
            event=event.value,
            headline=headline.value if headline else "",
            description=description.value if description else "",
            instruction=instruction.value if instruction else "",
            web=web.value if web else "",
        ),
        categories=categories,
        urgency=urgency,
        severity=severity,
        certainty=certainty,
        expires=expires[1] if expires else None,
        areas=tuple(area for area in areas if area is not None),
    )


_MUNICIPALITY_CODE = re.compile("[0-9]{4}")
_COUNTY_CODE = re.compile("[0-9]{2}")


def _check_area(node: _Node, f: _Findings) -> Area | None:
    description = _single(node, "areaDesc", f, required=True)
    rings = [_polygon_ring(polygon, f) for polygon in _texts(node, "polygon", f)]
    for circle in _texts(node, "circle", f):
        if not _CIRCLE.fullmatch(circle.value) or not _point(circle.value.split()[0]):
            f.add("invalid_value", circle.path, f"{show(circle.value)} is not 'lat,lon radius'")
    municipalities: list[str] = []
    counties: list[str] = []
    for geocode in _nodes(node, "geocode", f):
        name = _single(geocode, "valueName", f, required=True)
        value = _single(geocode, "value", f, required=True)
        if name is None or value is None or not value.value:
            continue
        kind = name.value.casefold()
        if kind in MUNICIPALITY_CODE_NAMES:
            if _MUNICIPALITY_CODE.fullmatch(value.value):
                municipalities.append(value.value)
            else:
                f.add(
                    "invalid_value",
                    value.path,
                    f"{show(value.value)} is not a four-digit municipality code",
                )
        elif kind in COUNTY_CODE_NAMES:
            if _COUNTY_CODE.fullmatch(value.value):
                counties.append(value.value)
            else:
                f.add(
                    "invalid_value",
                    value.path,
                    f"{show(value.value)} is not a two-digit county code",
                )
    for measure in ("altitude", "ceiling"):
        number = _single(node, measure, f)
        if number and not _DECIMAL.fullmatch(number.value):
            f.add("invalid_value", number.path, f"{show(number.value)} is not a number")
    if description is None or None in rings:
        return None
    valid_rings = [ring for ring in rings if ring is not None]
    if not valid_rings:
        geometry = None
    elif len(valid_rings) == 1:
        geometry = f"POLYGON ({valid_rings[0]})"
    else:
        geometry = "MULTIPOLYGON (" + ", ".join(f"({ring})" for ring in valid_rings) + ")"
    return Area(
        description=description.value,
        counties=_unique(counties),
        municipalities=_unique(municipalities),
        geometry=geometry,
    )


_DECIMAL = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?")
_CIRCLE = re.compile(r"\S+\s+[0-9]+(?:\.[0-9]+)?")


def _point(pair: str) -> tuple[str, str] | None:
    """``lat,lon`` as WKT's ``lon lat`` parts in the source's own tokens, if in range."""
    parts = pair.split(",")
    if len(parts) != 2 or not all(_DECIMAL.fullmatch(p) for p in parts):
        return None
    lat, lon = parts
    if not (-90 <= float(lat) <= 90 and -180 <= float(lon) <= 180):
        return None
    return lon, lat


def _polygon_ring(polygon: _Text, f: _Findings) -> str | None:
    """A CAP polygon as a WKT ring ``(lon lat, ...)``, or None with a finding."""
    pairs = polygon.value.split()
    if len(pairs) < 4:
        f.add(
            "invalid_value", polygon.path, f"a polygon needs 4 or more points, found {len(pairs)}"
        )
        return None
    points = []
    for pair in pairs:
        point = _point(pair)
        if point is None:
            f.add("invalid_value", polygon.path, f"{show(pair)} is not a 'lat,lon' point")
            return None
        points.append(point)
    first, last = points[0], points[-1]
    if (float(first[0]), float(first[1])) != (float(last[0]), float(last[1])):
        f.add("invalid_value", polygon.path, "the polygon is not closed (first point != last)")
        return None
    return "(" + ", ".join(f"{lon} {lat}" for lon, lat in points) + ")"


def _references(node: _Node, f: _Findings) -> tuple[str, ...] | None:
    """The identifiers named in ``references`` (``sender,identifier,sent`` triples).

    None when there are no references; () when they are malformed (with a finding).
    """
    if not node.fields.get("references"):
        return None
    text = _single(node, "references", f)
    if text is None:
        return ()
    if not text.value:
        return None
    identifiers = []
    for triple in text.value.split():
        parts = triple.split(",")
        if len(parts) != 3 or not all(parts):
            f.add("invalid_value", text.path, f"{show(triple)} is not sender,identifier,sent")
            return ()
        identifiers.append(parts[1])
    if len(identifiers) > MAX_ITEMS:
        f.add("too_many", text.path, f"{len(identifiers)} references, the limit is {MAX_ITEMS}")
        return ()
    return _unique(identifiers)


# -- reading values, with findings ----------------------------------------------------


def _texts(node: _Node, name: str, f: _Findings) -> list[_Text]:
    """Every text value of ``name``; anything else is a finding."""
    texts = []
    for value in node.fields.get(name, ()):
        if isinstance(value, _Node):
            f.add("invalid_value", value.path, "expected text, found a structure")
        elif isinstance(value, _Other):
            f.add("invalid_value", value.path, f"expected text, found {value.found}")
        elif len(value.value) > MAX_TEXT_CHARS:
            f.add(
                "text_too_long",
                value.path,
                f"{len(value.value)} characters, the limit is {MAX_TEXT_CHARS}",
            )
        else:
            texts.append(value)
    return texts


def _single(node: _Node, name: str, f: _Findings, *, required: bool = False) -> _Text | None:
    """The one text value of ``name``; absent, empty (if required) or repeated is a finding."""
    values = node.fields.get(name, [])
    if not values:
        if required:
            f.add("missing_field", node.child_path(name), "required, missing")
        return None
    if len(values) > 1:
        f.add("invalid_value", values[1].path, f"{name} given {len(values)} times, CAP allows one")
        return None
    texts = _texts(node, name, f)
    if not texts:
        return None
    if required and not texts[0].value:
        f.add("missing_field", texts[0].path, "required, empty")
        return None
    return texts[0]


def _enum(node: _Node, name: str, allowed: tuple[str, ...], f: _Findings) -> str | None:
    """A required value from one of CAP's enumerations."""
    text = _single(node, name, f, required=True)
    if text is None:
        return None
    if text.value not in allowed:
        f.add("invalid_value", text.path, f"{show(text.value)} is not one of {', '.join(allowed)}")
        return None
    return text.value


def _enums(
    node: _Node, name: str, allowed: tuple[str, ...], f: _Findings, *, required: bool
) -> tuple[str, ...]:
    """The values of a repeatable enumerated element (``category``, ``responseType``)."""
    if required and not node.fields.get(name):
        f.add("missing_field", node.child_path(name), "required, missing")
        return ()
    values = []
    for text in _texts(node, name, f):
        if text.value in allowed:
            values.append(text.value)
        else:
            f.add(
                "invalid_value",
                text.path,
                f"{show(text.value)} is not one of {', '.join(allowed)}",
            )
    return _unique(values)


def _cap_id(node: _Node, name: str, f: _Findings) -> str | None:
    """``identifier`` or ``sender``: required, without spaces, commas, '<' or '&'."""
    text = _single(node, name, f, required=True)
    if text is None:
        return None
    if _RESTRICTED.search(text.value):
        f.add(
            "invalid_value",
            text.path,
            f"{show(text.value)} has a space, comma, '<' or '&', which CAP forbids",
        )
        return None
    return text.value


_RESTRICTED = re.compile(r"[\s,<&]")


def _time(
    node: _Node, name: str, f: _Findings, *, required: bool = False
) -> tuple[str, int] | None:
    """A CAP date-time as (the text as given, epoch milliseconds)."""
    text = _single(node, name, f, required=required)
    if text is None or not text.value:
        return None
    millis = epoch_millis(text.value)
    if millis is None:
        f.add(
            "invalid_timestamp",
            text.path,
            f"{show(text.value)} is not a date-time with an offset like 2026-03-14T09:12:00+01:00",
        )
        return None
    return text.value, millis


def _nodes(node: _Node, name: str, f: _Findings) -> list[_Node]:
    """The structures of ``name`` (``info``, ``area``, ``geocode``); a text there is a finding."""
    nodes = []
    for value in node.fields.get(name, ()):
        if isinstance(value, _Node):
            nodes.append(value)
        else:
            found = value.found if isinstance(value, _Other) else "text"
            f.add("invalid_value", value.path, f"expected a structure, found {found}")
    return nodes


# -- small helpers --------------------------------------------------------------------


def _unique(values: Any) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def _distinct_areas(areas: Any) -> tuple[Area, ...]:
    kept: dict[object, Area] = {}
    for area in areas:
        located = (area.counties, area.municipalities, area.geometry)
        key = located if any(located) else area.description
        kept.setdefault(key, area)
    return tuple(kept.values())


def _one_per_language(infos: Any) -> tuple[Info, ...]:
    kept: dict[str, Info] = {}
    for info in infos:
        kept.setdefault(info.language.casefold(), info)
    return tuple(kept.values())
