"""What the feed parsers (``cap``, ``trafikverket``, ``datex``) share: reading a document.

Pure functions, no I/O. Each raises :class:`FeedError` with the same code for the same
fault whichever parser calls it:

- :func:`decode_utf8` bounds the document (``too_large``) and reads it as UTF-8 only
  (``encoding``: invalid bytes, a UTF-16/32 byte order mark, NUL bytes); a UTF-8 byte
  order mark is skipped.
- :func:`read_xml` also refuses a declared encoding other than UTF-8 (``encoding``) and
  parses with ``defusedxml``: any DTD is refused unread (``dtd_forbidden``), entities and
  external references too (``entities_forbidden``, ``external_reference_forbidden``,
  ``xml_forbidden`` for any other refusal), and a tree builder stops the parser as soon
  as elements nest deeper than ``max_depth`` (``too_deep``) or number more than
  ``max_elements`` (``too_many_elements``); anything else unreadable is ``malformed_xml``.
- :func:`read_json` parses JSON without NaN or Infinity (``malformed_json``) and bounds
  its nesting (``too_deep``).
- :func:`epoch_millis` reads an ISO 8601 date-time with a UTC offset as epoch
  milliseconds; :func:`show`, :func:`xml_excerpt` and :func:`json_excerpt` bound what
  a problem quotes.

    >>> epoch_millis("1970-01-01T01:00:00.5+01:00")
    500
    >>> show("x" * 70)
    "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…'"
"""

from __future__ import annotations

import codecs
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, NoReturn
from xml.etree.ElementTree import Element, TreeBuilder, tostring

from defusedxml import (
    DefusedXmlException,
    DTDForbidden,
    EntitiesForbidden,
    ExternalReferenceForbidden,
)
from defusedxml.ElementTree import ParseError, XMLParser

from clients.adapters.model import MAX_DOCUMENT_BYTES, FeedError

__all__ = [
    "HOSTILE_XML",
    "MAX_ERROR_CHARS",
    "MAX_XML_ELEMENTS",
    "SHOWN_VALUE_CHARS",
    "decode_utf8",
    "epoch_millis",
    "is_time_shaped",
    "json_excerpt",
    "read_json",
    "read_xml",
    "show",
    "split_tag",
    "xml_excerpt",
]

MAX_ERROR_CHARS = 200  # of a parser's own message, repeated in FeedError.detail
SHOWN_VALUE_CHARS = 60  # of a bad value quoted in a problem's detail
# Elements in one XML document: MAX_ITEMS items of ~40 elements each are 200 000, and an
# 8 MiB document of empty elements would be 2 million (hundreds of MB as a tree).
MAX_XML_ELEMENTS = 400_000

# Every defusedxml refusal gets its own code; any other DefusedXmlException is
# "xml_forbidden". A test proves that each one becomes a FeedError.
HOSTILE_XML: tuple[tuple[type[DefusedXmlException], str], ...] = (
    (DTDForbidden, "dtd_forbidden"),
    (EntitiesForbidden, "entities_forbidden"),
    (ExternalReferenceForbidden, "external_reference_forbidden"),
)


# -- bytes to text --------------------------------------------------------------------


def check_size(data: bytes) -> None:
    if len(data) > MAX_DOCUMENT_BYTES:
        raise FeedError("too_large", f"{len(data)} bytes, the limit is {MAX_DOCUMENT_BYTES}")


def decode_utf8(data: bytes) -> str:
    """The document as text, if it is within bounds and UTF-8."""
    check_size(data)
    if data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise FeedError("encoding", "a UTF-32 byte order mark; only UTF-8 is read")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise FeedError("encoding", "a UTF-16 byte order mark; only UTF-8 is read")
    if b"\x00" in data:  # never in XML or JSON text; expat would take it for UTF-16
        raise FeedError("encoding", "NUL bytes (UTF-16 or UTF-32?); only UTF-8 is read")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise FeedError("encoding", f"not UTF-8 at byte {e.start}") from None


# -- XML ------------------------------------------------------------------------------

_XML_DECLARATION = re.compile(rb"<\?xml\s[^>]{0,200}?\bencoding\s*=\s*([\"'])(.{0,40}?)\1")


class _BoundedTreeBuilder(TreeBuilder):
    """A TreeBuilder that stops the parser as soon as the document is too deep or large."""

    def __init__(self, max_depth: int, max_elements: int) -> None:
        super().__init__()
        self._max_depth = max_depth
        self._max_elements = max_elements
        self._depth = 0
        self._elements = 0

    def start(self, tag: Any, attrs: dict[str, str], /) -> Element:
        self._depth += 1
        self._elements += 1
        if self._depth > self._max_depth:
            raise FeedError("too_deep", f"elements nested deeper than {self._max_depth}")
        if self._elements > self._max_elements:
            raise FeedError("too_many_elements", f"more than {self._max_elements} elements")
        return super().start(tag, attrs)

    def end(self, tag: Any, /) -> Element:
        self._depth -= 1
        return super().end(tag)


def read_xml(data: bytes, *, max_depth: int, max_elements: int = MAX_XML_ELEMENTS) -> Element:
    """The document element of an XML document, read within bounds (see the module doc)."""
    check_size(data)
    # The declaration before decoding, so that a declared Latin-1 is named as such.
    head = data[: 3 + 256].removeprefix(codecs.BOM_UTF8)
    declared = _XML_DECLARATION.match(head)
    if declared and declared.group(2).strip().lower() not in (b"utf-8", b"utf8"):
        name = declared.group(2).decode("ascii", "replace")
        raise FeedError("encoding", f"declared encoding {show(name)}; only UTF-8 is read")
    text = decode_utf8(data)
    parser = XMLParser(
        target=_BoundedTreeBuilder(max_depth, max_elements),
        forbid_dtd=True,
        forbid_entities=True,
        forbid_external=True,
    )
    # Parsing the decoded text makes expat read UTF-8 whatever the declaration says.
    try:
        parser.feed(text)
        root: Element = parser.close()
    except DefusedXmlException as e:
        code = next((c for kind, c in HOSTILE_XML if isinstance(e, kind)), "xml_forbidden")
        raise FeedError(code, _refusal(e)) from None
    except ParseError as e:
        raise FeedError("malformed_xml", str(e)[:MAX_ERROR_CHARS]) from None
    except (ValueError, LookupError) as e:  # pragma: no cover - text input, no codec lookup
        raise FeedError("malformed_xml", str(e)[:MAX_ERROR_CHARS]) from None
    return root


def _refusal(error: DefusedXmlException) -> str:
    """What defusedxml refused, without anything the document could make long."""
    if isinstance(error, DTDForbidden):
        return "the document has a DTD (<!DOCTYPE>); DTDs are refused unread"
    if isinstance(error, EntitiesForbidden):
        name = getattr(error, "name", None)
        return f"entity {show(name)} declared" if isinstance(name, str) else "an entity declared"
    if isinstance(error, ExternalReferenceForbidden):
        return "an external reference"
    return f"refused: {type(error).__name__}"


def split_tag(tag: Any) -> tuple[str, str]:
    """``{namespace}local`` as (namespace, local)."""
    if not isinstance(tag, str):  # pragma: no cover - comments and PIs are not built
        return "", ""
    if tag.startswith("{"):
        namespace, _, local = tag[1:].partition("}")
        return namespace, local
    return "", tag


def xml_excerpt(element: Element, limit: int) -> str:
    return tostring(element, encoding="unicode")[:limit]


# -- JSON -----------------------------------------------------------------------------


def read_json(data: bytes, *, max_depth: int | None) -> Any:
    """A JSON document within bounds; ``max_depth`` None leaves only Python's own limit."""
    text = decode_utf8(data)
    deeper = f"JSON nested deeper than {max_depth}" if max_depth else "JSON nested too deeply"
    try:
        doc = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise FeedError("too_deep", deeper) from None
    except ValueError as e:  # JSONDecodeError, NaN/Infinity, integers too long to convert
        raise FeedError("malformed_json", str(e)[:MAX_ERROR_CHARS]) from None
    if max_depth is not None:
        _check_json_depth(doc, max_depth, deeper)
    return doc


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _check_json_depth(doc: Any, max_depth: int, message: str) -> None:
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > max_depth:
            raise FeedError("too_deep", message)
        stack.extend((child, depth + 1) for child in children)


def json_excerpt(item: Any, limit: int) -> str:
    try:
        text = json.dumps(item, ensure_ascii=False)
    except (ValueError, TypeError, RecursionError):  # pragma: no cover - parsed JSON dumps
        text = repr(item)
    return text[:limit]


# -- values ---------------------------------------------------------------------------

_TIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]{1,9})?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def is_time_shaped(value: str) -> bool:
    """Whether ``value`` is written like ``2026-03-14T09:12:00+01:00`` (valid or not)."""
    return _TIME.fullmatch(value) is not None


def epoch_millis(value: str) -> int | None:
    """An ISO 8601 date-time with an offset (``Z`` too) as epoch milliseconds, or None.

    Fractions are cut to milliseconds; an offset beyond +-14:59, month 13, February 30,
    hour 24 or second 60 is None.
    """
    match = _TIME.fullmatch(value)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, zone = match.group(7), match.group(8)
    if zone == "Z":
        offset = timedelta(0)
    else:
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        if hours > 14 or minutes > 59:
            return None
        offset = timedelta(hours=hours, minutes=minutes) * (-1 if zone[0] == "-" else 1)
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=timezone(offset))
    except ValueError:  # month 13, February 30, hour 24, second 60
        return None
    millis = (moment - _EPOCH) // timedelta(milliseconds=1)
    if fraction:
        millis += int(fraction[1:4].ljust(3, "0"))
    return millis


def show(value: Any) -> str:
    """A short, safe rendering of a bad value for a problem's detail."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False)
        except (ValueError, TypeError, RecursionError):  # pragma: no cover - parsed JSON dumps
            text = type(value).__name__
    if len(text) > SHOWN_VALUE_CHARS:
        text = text[:SHOWN_VALUE_CHARS] + "…"
    return repr(text)
