"""The label and routing policy: a versioned TOML file a region can adapt without code.

It holds the classification ladder, the accreditation ceiling (default
SEKRETESS: this software is not approved for protective-security levels),
size and time limits, each sender's delivery budget (a fan-out flood is refused as
``rate_limited``), which roles may send which message types, receipt
deadlines per priority, and overlays per mode. Loading a bad file raises
:class:`PolicyError` naming the field and, where it can, the line.

Example (every key is optional; apart from the mode overlay these are the
defaults; a [receipt_deadlines] table replaces the default one as a whole,
so it must list every priority, while a [rights] table amends the defaults)::

    format = 1
    id = "ssr"
    version = 1
    ceiling = "SEKRETESS"

    [limits]                     # a sender's deliveries (one per recipient) per broker process
    sender_deliveries_per_minute = 6000   # refill rate of the sender's budget
    sender_burst_deliveries = 600         # the most at once; at least max_recipients

    [receipt_deadlines]          # seconds until delivery must be confirmed
    routine = 3600
    priority = 900
    immediate = 300
    flash = 60

    [rights]                     # message type -> roles; amends the defaults ("member": all)
    mode_change = ["authority"]
    relabel = ["authority"]
    activation = ["authority", "activator"]
    incident_close = ["authority", "activator"]

    [modes.heightened_alert.required_recipients]
    situation_report = ["lansstyrelsen-stockholm"]

    [incident_types.storm]       # the catalogue of typhändelser (empty: any type)
    name = "Storm"
    groups = ["kommuner"]        # default participants (directory groups)
    classification = "INTERN"
    tlp = "AMBER"
    priority = "priority"
    communicators = "kommunikatorer"
    checklist = ["Activate the TiB", "First lägesbild within 60 minutes"]
"""

from __future__ import annotations

import re
import tomllib
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from .errors import PolicyError
from .labels import DEFAULT_CEILING, STANDARD_LADDER, ClassificationName, Ladder, Tlp
from .limits import (
    DEFAULT_CLOCK_SKEW_MS,
    DEFAULT_MAX_ENVELOPE_BYTES,
    DEFAULT_MAX_LIFETIME_MS,
    DEFAULT_MAX_RECIPIENTS,
    MAX_ENVELOPE_BYTES,
    MAX_GROUPS,
    MAX_NAME_CHARS,
    MAX_RECIPIENTS,
)
from .ratelimit import (
    DEFAULT_SENDER_BURST_DELIVERIES,
    DEFAULT_SENDER_DELIVERIES_PER_MINUTE,
    MAX_SENDER_BURST_DELIVERIES,
    MAX_SENDER_DELIVERIES_PER_MINUTE,
    Budget,
)
from .vocabulary import MessageType, Mode, Priority, Role
from .wire import Slug

POLICY_FORMAT = 1
MAX_POLICY_BYTES = 256 * 1024
# TOML has real integers: Strict() refuses "3", true and 2.0 where a number belongs.
Seconds = Annotated[int, Strict(), Field(gt=0, le=366 * 24 * 3600)]


class _PolicyModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Limits(_PolicyModel):
    max_envelope_bytes: Annotated[int, Strict(), Field(ge=1024, le=MAX_ENVELOPE_BYTES)] = (
        DEFAULT_MAX_ENVELOPE_BYTES
    )
    max_recipients: Annotated[int, Strict(), Field(ge=1, le=MAX_RECIPIENTS)] = (
        DEFAULT_MAX_RECIPIENTS
    )
    clock_skew_seconds: Annotated[int, Strict(), Field(ge=0, le=3600)] = (
        DEFAULT_CLOCK_SKEW_MS // 1000
    )
    max_lifetime_seconds: Seconds = DEFAULT_MAX_LIFETIME_MS // 1000
    # A sender's delivery budget (broker.core.ratelimit): a fan-out flood is refused as
    # ``rate_limited``. Enforced by each broker process on its own.
    sender_deliveries_per_minute: Annotated[
        int, Strict(), Field(ge=1, le=MAX_SENDER_DELIVERIES_PER_MINUTE)
    ] = DEFAULT_SENDER_DELIVERIES_PER_MINUTE
    sender_burst_deliveries: Annotated[
        int, Strict(), Field(ge=1, le=MAX_SENDER_BURST_DELIVERIES)
    ] = DEFAULT_SENDER_BURST_DELIVERIES

    @field_validator("sender_burst_deliveries")
    @classmethod
    def _burst_fits_one_message(cls, value: int, info: ValidationInfo) -> int:
        # A smaller burst would refuse every message to max_recipients actors for ever.
        max_recipients = info.data.get("max_recipients")  # absent when it was invalid
        if max_recipients is not None and value < max_recipients:
            raise ValueError(f"must be at least max_recipients ({max_recipients})")
        return value

    @property
    def sender_budget(self) -> Budget:
        return Budget(self.sender_deliveries_per_minute, self.sender_burst_deliveries)


DEFAULT_DEADLINES: dict[Priority, int] = {
    Priority.ROUTINE: 3600,
    Priority.PRIORITY: 900,
    Priority.IMMEDIATE: 300,
    Priority.FLASH: 60,
}

DEFAULT_RIGHTS: dict[MessageType, tuple[Role, ...]] = {
    MessageType.MODE_CHANGE: (Role.AUTHORITY,),
    MessageType.RELABEL: (Role.AUTHORITY,),
    MessageType.ACTIVATION: (Role.AUTHORITY, Role.ACTIVATOR),
    MessageType.INCIDENT_CLOSE: (Role.AUTHORITY, Role.ACTIVATOR),
    MessageType.RECEIPT: (),  # reserved: receipts travel as their own signed frames
}


class RegionWide(_PolicyModel):
    """An activation to at least ``min_recipients`` actors is region-wide."""

    min_recipients: Annotated[int, Strict(), Field(ge=2, le=MAX_RECIPIENTS)] = 10
    roles: tuple[Role, ...] = (Role.AUTHORITY,)


class ModeOverlay(_PolicyModel):
    """What changes in one mode: deadlines, rights, recipients that must be included."""

    receipt_deadlines: dict[Priority, Seconds] = {}
    rights: dict[MessageType, tuple[Role, ...]] = {}
    required_recipients: dict[MessageType, tuple[Slug, ...]] = {}


class IncidentType(_PolicyModel):
    """A typhändelse: a prioritised incident type with its plan.

    An activation from this template goes to the members of ``groups`` at
    ``classification``/``tlp`` and ``priority``, and carries the ``checklist``; press
    lines go to the members of ``communicators`` among the participants.
    """

    name: Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]
    groups: Annotated[tuple[Slug, ...], Field(max_length=MAX_GROUPS)] = ()
    classification: ClassificationName = "INTERN"
    tlp: Tlp = Tlp.AMBER
    priority: Priority = Priority.PRIORITY
    communicators: Slug | None = None
    checklist: Annotated[
        tuple[Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)], ...],
        Field(max_length=100),
    ] = ()


class Policy(_PolicyModel):
    """One version of the region's policy; ``Policy()`` is the built-in default."""

    format: Annotated[int, Strict()] = POLICY_FORMAT
    id: Slug = "ssr"
    version: Annotated[int, Strict(), Field(ge=1)] = 1
    ladder: Annotated[tuple[ClassificationName, ...], Field(min_length=2, max_length=16)] = (
        STANDARD_LADDER
    )
    # validate_default: a ladder given without a ceiling must still hold the default ceiling.
    ceiling: Annotated[ClassificationName, Field(validate_default=True)] = DEFAULT_CEILING
    limits: Limits = Limits()
    receipt_deadlines: dict[Priority, Seconds] = DEFAULT_DEADLINES
    rights: dict[MessageType, tuple[Role, ...]] = DEFAULT_RIGHTS
    region_wide_activation: RegionWide = RegionWide()
    modes: dict[Mode, ModeOverlay] = {}
    # The catalogue of typhändelser; empty means any incident type is accepted.
    incident_types: Annotated[dict[Slug, IncidentType], Field(max_length=100)] = {}

    # Field validators, not one model validator, so that an error names its field and line.
    @field_validator("format")
    @classmethod
    def _known_format(cls, value: int) -> int:
        if value != POLICY_FORMAT:
            raise ValueError(f"format must be {POLICY_FORMAT}")
        return value

    @field_validator("ladder")
    @classmethod
    def _distinct_levels(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("ladder lists a level twice")
        return value

    @field_validator("ceiling")
    @classmethod
    def _ceiling_on_ladder(cls, value: str, info: ValidationInfo) -> str:
        ladder = info.data.get("ladder")  # absent when the ladder itself was invalid
        if ladder is not None and value not in ladder:
            raise ValueError(f"ceiling {value!r} is not on the ladder")
        return value

    @field_validator("receipt_deadlines")
    @classmethod
    def _every_priority(cls, value: dict[Priority, int]) -> dict[Priority, int]:
        missing = set(Priority) - set(value)
        if missing:
            raise ValueError(f"receipt_deadlines lacks {', '.join(sorted(missing))}")
        return value

    @field_validator("rights")
    @classmethod
    def _over_defaults(
        cls, value: dict[MessageType, tuple[Role, ...]]
    ) -> dict[MessageType, tuple[Role, ...]]:
        # A [rights] table amends the defaults: leaving out mode_change must not open it
        # to everyone. To open a type to every actor, grant it to ["member"].
        return {**DEFAULT_RIGHTS, **value}

    @field_validator("incident_types")
    @classmethod
    def _levels_on_ladder(
        cls, value: dict[str, IncidentType], info: ValidationInfo
    ) -> dict[str, IncidentType]:
        ladder, ceiling = info.data.get("ladder"), info.data.get("ceiling")
        if ladder is None:  # the ladder itself was refused; that error is reported
            return value
        for type_id, template in value.items():
            if template.classification not in ladder:
                raise ValueError(
                    f"{type_id}: classification {template.classification!r} is not on the ladder"
                )
            if ceiling in ladder and ladder.index(template.classification) > ladder.index(ceiling):
                raise ValueError(f"{type_id}: classification is above the ceiling {ceiling}")
        return value

    def incident_type(self, type_id: str) -> IncidentType | None:
        return self.incident_types.get(type_id)

    def knows_incident_type(self, type_id: str) -> bool:
        return not self.incident_types or type_id in self.incident_types

    @property
    def ladder_order(self) -> Ladder:
        return Ladder(self.ladder)

    def receipt_deadline_ms(self, priority: Priority, mode: Mode) -> int:
        overlay = self.modes.get(mode)
        if overlay and priority in overlay.receipt_deadlines:
            return overlay.receipt_deadlines[priority] * 1000
        return self.receipt_deadlines[priority] * 1000

    def allowed_roles(self, message_type: MessageType, mode: Mode) -> tuple[Role, ...] | None:
        """Roles allowed to send ``message_type`` in ``mode``; ``None`` means every actor."""
        overlay = self.modes.get(mode)
        if overlay and message_type in overlay.rights:
            return overlay.rights[message_type]
        return self.rights.get(message_type)

    def required_recipients(self, message_type: MessageType, mode: Mode) -> tuple[str, ...]:
        overlay = self.modes.get(mode)
        if overlay is None:
            return ()
        return overlay.required_recipients.get(message_type, ())


# Linear-time patterns only: the loader runs them over every line of a file of up to
# 256 KiB, and nested ambiguous quantifiers (``\s*([^\]]+?)\s*``) backtrack cubically on a
# long "[   ..." line. Names are stripped in Python instead.
_HEADER = re.compile(r"^\s*\[\[?([^\]]+)\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-\"]+)\s*=")
_TOML_LINE = re.compile(r"line (\d+)")


def _line_of(text: str, loc: tuple[str, ...]) -> int | None:
    """Best line for a field path: where its deepest named table or key is written."""
    best: tuple[int, int] | None = None  # (matched depth, line)
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            table = tuple(part.strip().strip('"') for part in header.group(1).split("."))
            path = table
        else:
            key = _KEY.match(line)
            if not key:
                continue
            path = (*table, key.group(1).strip('"'))
        # A table deeper than the field (``[incident_types.storm]`` for ``incident_types``)
        # is where that field is written.
        depth = min(len(path), len(loc)) if header else len(path)
        if loc[:depth] == path[:depth] and (best is None or depth > best[0]):
            best = (depth, number)
    return best[1] if best else None


def load_policy(text: str) -> Policy:
    """Parse a policy file's text.

    >>> load_policy('ceiling = "INTERN"').ceiling
    'INTERN'
    """
    if len(text.encode("utf-8", "surrogatepass")) > MAX_POLICY_BYTES:
        raise PolicyError(f"policy file larger than {MAX_POLICY_BYTES} bytes")
    try:
        raw: dict[str, Any] = tomllib.loads(text)
    except RecursionError as exc:  # tomllib has no nesting bound: "a = [[[[..."
        raise PolicyError("policy file nests arrays or tables too deeply") from exc
    except tomllib.TOMLDecodeError as exc:
        found = _TOML_LINE.search(str(exc))
        raise PolicyError(
            f"policy file is not valid TOML: {exc}", line=int(found.group(1)) if found else None
        ) from exc
    except ValueError as exc:  # tomllib's int() of a > 4300-digit number (str-digits limit)
        raise PolicyError(f"policy file holds a number that cannot be read: {exc}") from exc
    try:
        return Policy.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = tuple(str(part) for part in first["loc"])
        field = ".".join(loc) or None
        line = _line_of(text, loc) if loc else None
        where = f" (line {line})" if line else ""
        raise PolicyError(
            f"policy field {field or '(top level)'}{where}: {first['msg']}", field=field, line=line
        ) from exc
