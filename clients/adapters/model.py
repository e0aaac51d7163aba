"""The one shape every feed is parsed into, and the feed error every parser raises.

Parsers (``cap``, ``trafikverket``, ``datex``) are pure functions from bytes to a
:class:`ParseResult`: the alerts that parsed, and a :class:`ItemProblem` for each item
that did not (quarantined with its reason; the others go on). A document that cannot
be read at all raises :class:`FeedError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

MAX_DOCUMENT_BYTES = 8 * 1024 * 1024  # a whole feed document; larger is refused unread
MAX_ITEMS = 5000  # items per document
MAX_TEXT_CHARS = 20_000  # any one text field, after parsing


class FeedError(Exception):
    """The whole document is unusable (malformed, hostile, too large, wrong encoding)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class MsgType(StrEnum):
    ALERT = "alert"  # a new alert
    UPDATE = "update"  # replaces an earlier one (references name it)
    CANCEL = "cancel"  # withdraws an earlier one (also: a deleted or expired situation)


class Severity(StrEnum):
    EXTREME = "extreme"
    SEVERE = "severe"
    MODERATE = "moderate"
    MINOR = "minor"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Area:
    description: str = ""
    counties: tuple[str, ...] = ()  # Swedish county codes, two digits: "01" is Stockholm
    municipalities: tuple[str, ...] = ()  # four digits: "0182" is Nacka
    geometry: str | None = None  # WKT in WGS 84 where the source gives one


@dataclass(frozen=True)
class Info:
    """One language's text of an alert (CAP ``info``)."""

    language: str  # e.g. "sv-SE", "en-US"
    event: str = ""
    headline: str = ""
    description: str = ""
    instruction: str = ""
    web: str = ""


@dataclass(frozen=True)
class SourceAlert:
    """One alert, update or cancel from a source, normalised."""

    format: str  # "cap-xml", "cap-json", "trafikverket", "datex2"
    item_id: str  # the source's identifier (CAP identifier, Deviation Id, situation record id)
    version: str  # changes when the item changes (CAP sent, VersionTime, record version)
    msg_type: MsgType
    sent: int  # epoch milliseconds
    event: str  # what happened, the routing key (CAP event, Trafikverket MessageType, DATEX type)
    severity: Severity = Severity.UNKNOWN
    status: str = "actual"  # actual, exercise, test (CAP System/Draft are refused as problems)
    references: tuple[str, ...] = ()  # item ids this one updates or cancels
    categories: tuple[str, ...] = ()  # CAP category, Trafikverket/DATEX classes
    urgency: str = "unknown"
    certainty: str = "unknown"
    expires: int | None = None  # epoch milliseconds
    areas: tuple[Area, ...] = ()
    infos: tuple[Info, ...] = ()
    sender: str = ""  # the source's own sender name
    scope: str = "public"  # CAP scope: public, restricted, private (traffic feeds are public)

    @property
    def key(self) -> str:
        """Deduplication key: the same item in the same version is the same alert."""
        return f"{self.item_id}@{self.version}"

    @property
    def headline(self) -> str:
        return next((i.headline for i in self.infos if i.headline), self.event)


@dataclass(frozen=True)
class ItemProblem:
    """One item that could not be used: quarantined with this reason."""

    code: str  # e.g. "missing_field", "invalid_value", "unsupported_status"
    detail: str  # names the element or field and what is wrong
    item_id: str | None = None
    excerpt: str = ""  # a bounded excerpt of the item, for the quarantine file


@dataclass(frozen=True)
class ParseResult:
    alerts: tuple[SourceAlert, ...] = ()
    problems: tuple[ItemProblem, ...] = field(default_factory=tuple)
