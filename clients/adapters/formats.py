"""The feed formats an adapter source may name, each with its parser.

A parser is a pure function from the document's bytes to a :class:`ParseResult`
(it raises :class:`FeedError` for a document it cannot read at all). The keys
are the ``format`` values of a ``[[source]]`` in the adapter's configuration.

    >>> sorted(PARSERS)
    ['cap-json', 'cap-xml', 'datex2', 'trafikverket']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from .cap import parse_cap_json, parse_cap_xml
from .datex import parse_datex
from .model import ParseResult
from .trafikverket import parse_trafikverket

__all__ = ["PARSERS", "Parser"]

Parser = Callable[[bytes], ParseResult]

PARSERS: Final[dict[str, Parser]] = {
    "cap-xml": parse_cap_xml,  # CAP 1.2 XML (SR's VMA feed, SOS Alarm)
    "cap-json": parse_cap_json,  # CAP 1.2 as JSON
    "trafikverket": parse_trafikverket,  # Trafikverket's open API, Situation objects
    "datex2": parse_datex,  # DATEX II v3 SituationPublication
}
