"""Routing rules: which alerts go to whom, under which label, from a TOML file.

A rules file is a list of ``[[rule]]`` tables, tried in order; the first rule whose
criteria all hold routes the alert (:meth:`RuleSet.route` returns its :class:`Route`),
and an alert no rule matches is unrouted (the runtime counts and skips it). Within a
criterion any listed value matches; across criteria all must hold; a criterion left
out always holds.

Example::

    [[rule]]
    name = "vma-stockholm"             # required, unique
    source = ["vma"]                   # source names, as the runtime names its feeds
    event = ["Fara", "Brand"]          # exact event names, case-insensitive
    category = ["Fire", "Met"]         # any of the alert's categories (case-insensitive)
    min_severity = "severe"            # extreme > severe > moderate > minor > unknown
    county = ["01"]                    # any area in these counties (two digits)
    municipality = ["0182", "0180"]    # any area in these municipalities (four digits)
    msg_type = ["alert", "update"]     # alert, update, cancel (the source's own type)
    match_without_area = false         # may an alert without area codes match county/municipality?
    to = ["lansstyrelsen-stockholm"]   # addressed actors (a group id here counts as a group)
    groups = ["kommuner", "blaljus"]   # addressed groups; to and groups: at least one id
    label = "OFFENTLIG"                # a level of the policy's ladder, at most its ceiling
    tlp = "CLEAR"                      # CLEAR, GREEN, AMBER, AMBER+STRICT, RED
    priority = "immediate"             # routine, priority, immediate, flash
    incident = "storm-2026"            # optional: tag the envelopes with an incident
    status = "exercise"                # optional: actual, exercise, test (see below)

    [[rule]]
    name = "trafik"
    source = ["trafikverket"]
    groups = ["tib"]
    label = "INTERN"
    tlp = "GREEN"
    priority = "routine"

Geography: an area's counties are its county codes and the first two digits of its
municipality codes (a Swedish municipality code starts with its county's). A county
code alone does not match a municipality rule: "somewhere in county 01" is not "in
Nacka". An alert whose areas carry no codes at all matches a county or municipality
rule only when that rule says ``match_without_area = true``.

``status`` overrides the alert's own status, but never turns exercise or test
traffic into actual (see :func:`clients.adapters.mapping.send_arguments`).

Everything is checked at load against the directory and policy in force, and a
mistake raises :class:`RulesError` naming the rule, the field and the line: unknown
keys (typos), unknown actors or groups (listing the known ones), a label not on the
ladder or above the ceiling or above an addressee's clearance, OFFENTLIG with a TLP
other than CLEAR (public warnings are TLP:CLEAR), bad TLP, priority, status, severity
or message type, county codes that are not two digits and municipality codes that are
not four, no addressees, duplicate names, no rules, and malformed TOML. The directory
may change later; the client and the broker check addressees again at each send.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from broker.core import Policy, Priority, Status, Tlp, VerifiedDirectory
from broker.core.wire import SLUG_PATTERN
from clients._errors import ClientError
from clients.adapters.model import Area, MsgType, Severity, SourceAlert

__all__ = [
    "MAX_LIST_ITEMS",
    "MAX_RULES",
    "MAX_RULES_BYTES",
    "PUBLIC_LEVEL",
    "SEVERITY_RANK",
    "Route",
    "Rule",
    "RuleSet",
    "RulesError",
]

MAX_RULES_BYTES = 1024 * 1024  # a rules file; larger is refused unread
MAX_RULES = 1000
MAX_LIST_ITEMS = 1000  # values in any one list of a rule
MAX_VALUE_CHARS = 200  # one source, event or category name
MAX_NAME_CHARS = 64

PUBLIC_LEVEL = "OFFENTLIG"
"""The public level: what is public is TLP:CLEAR, and a rule must say so."""

SEVERITY_RANK: dict[Severity, int] = {
    Severity.UNKNOWN: 0,
    Severity.MINOR: 1,
    Severity.MODERATE: 2,
    Severity.SEVERE: 3,
    Severity.EXTREME: 4,
}

_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.:-]{0,62}[A-Za-z0-9])?")
_SLUG = re.compile(SLUG_PATTERN)
_COUNTY = re.compile(r"[0-9]{2}")  # [0-9], not \d: \d also matches other scripts' digits
_MUNICIPALITY = re.compile(r"[0-9]{4}")
_TOML_LINE = re.compile(r"line (\d+)")
# Linear-time line patterns (no nested quantifiers): they run over every line.
_RULE_HEADER = re.compile(r"^\s*\[\[\s*rule\s*\]\]")
_ANY_HEADER = re.compile(r"^\s*\[")
_KEY = re.compile(r"^\s*\"?([A-Za-z0-9_-]+)\"?\s*=")


class RulesError(ClientError):
    """The rules file is unusable; ``rule``, ``field`` and ``line`` say where, if known.

    ``rule`` is the rule's name, or ``#n`` (1-based) when it has none yet.
    """

    code = "rules_invalid"

    def __init__(
        self,
        message: str,
        *,
        rule: str | None = None,
        field: str | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(message)
        self.rule = rule
        self.field = field
        self.line = line


@dataclass(frozen=True)
class Route:
    """Where and how a matched alert is sent: the rule's addressees and marking."""

    rule: str
    to: tuple[str, ...]
    groups: tuple[str, ...]
    label: str
    tlp: str
    priority: str
    incident: str | None = None
    status: str | None = None  # None: the alert's own status


@dataclass(frozen=True)
class Rule:
    """One ``[[rule]]``: its criteria (``None``: not constrained) and its route."""

    name: str
    route: Route
    sources: frozenset[str] | None = None
    events: frozenset[str] | None = None  # casefolded
    categories: frozenset[str] | None = None  # casefolded
    min_severity: Severity | None = None
    counties: frozenset[str] | None = None
    municipalities: frozenset[str] | None = None
    msg_types: frozenset[MsgType] | None = None
    match_without_area: bool = False
    line: int | None = None  # where its [[rule]] header is

    def matches(self, source: str, alert: SourceAlert) -> bool:
        if self.sources is not None and source not in self.sources:
            return False
        if self.msg_types is not None and alert.msg_type not in self.msg_types:
            return False
        if self.events is not None and _fold(alert.event) not in self.events:
            return False
        if self.categories is not None and self.categories.isdisjoint(
            _fold(c) for c in alert.categories
        ):
            return False
        if (
            self.min_severity is not None
            and _severity_rank(alert.severity) < (SEVERITY_RANK[self.min_severity])
        ):
            return False
        return self._in_area(alert.areas)

    def _in_area(self, areas: tuple[Area, ...]) -> bool:
        if self.counties is None and self.municipalities is None:
            return True
        municipalities = {m for a in areas for m in a.municipalities}
        counties = {c for a in areas for c in a.counties} | {m[:2] for m in municipalities}
        if not counties and not municipalities:
            return self.match_without_area
        if self.counties is not None and self.counties.isdisjoint(counties):
            return False
        return self.municipalities is None or not self.municipalities.isdisjoint(municipalities)


@dataclass(frozen=True)
class RuleSet:
    """The rules of one file, in order. Build with :meth:`load` or :meth:`load_file`.

    >>> rules = RuleSet.load(text, directory=directory, policy=policy)  # doctest: +SKIP
    >>> route = rules.route("vma", alert)  # doctest: +SKIP
    >>> route.rule, route.groups  # doctest: +SKIP
    ('vma-stockholm', ('blaljus', 'kommuner'))
    """

    rules: tuple[Rule, ...]

    @classmethod
    def load(cls, text: str, *, directory: VerifiedDirectory, policy: Policy) -> RuleSet:
        """Parse and check a rules file's text; raises :class:`RulesError`."""
        if not isinstance(text, str):
            raise RulesError("rules text must be a str")
        if len(text.encode("utf-8", "surrogatepass")) > MAX_RULES_BYTES:
            raise RulesError(f"rules file larger than {MAX_RULES_BYTES} bytes")
        try:
            raw: dict[str, Any] = tomllib.loads(text)
        except RecursionError as exc:  # tomllib has no nesting bound: "a = [[[[..."
            raise RulesError("rules file nests arrays or tables too deeply") from exc
        except tomllib.TOMLDecodeError as exc:
            found = _TOML_LINE.search(str(exc))
            line = int(found.group(1)) if found else None
            if line is None and "end of document" in str(exc):
                line = max(len(text.splitlines()), 1)
            where = f" (line {line})" if line else ""
            raise RulesError(f"rules file is not valid TOML{where}: {exc}", line=line) from exc
        except ValueError as exc:  # int() of a > 4300-digit number (str-digits limit)
            raise RulesError(f"rules file holds a number that cannot be read: {exc}") from exc
        lines = _Lines(text)
        for key in raw:
            if key != "rule":
                raise RulesError(
                    f"unknown top-level key {key!r}{lines.where_top(key)}: a rules file"
                    " holds only [[rule]] tables",
                    field=key,
                    line=lines.top(key),
                )
        tables = raw.get("rule")
        if tables is None or tables == []:
            raise RulesError("rules file holds no [[rule]] tables")
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise RulesError(
                f"rule must be an array of tables ([[rule]]){lines.where_top('rule')}",
                field="rule",
                line=lines.top("rule"),
            )
        if len(tables) > MAX_RULES:
            raise RulesError(f"rules file holds more than {MAX_RULES} rules")
        context = _Context(directory, policy, lines)
        rules: list[Rule] = []
        names: set[str] = set()
        for index, table in enumerate(tables):
            rule = context.rule(index, table)
            if rule.name in names:
                _RuleContext(context, index, rule.name).fail(
                    "name", f"duplicate name {rule.name!r} (names must be unique)"
                )
            names.add(rule.name)
            rules.append(rule)
        return cls(tuple(rules))

    @classmethod
    def load_file(
        cls, path: str | Path, *, directory: VerifiedDirectory, policy: Policy
    ) -> RuleSet:
        """Read (at most :data:`MAX_RULES_BYTES`, UTF-8) and :meth:`load` a rules file."""
        try:
            with open(path, "rb") as file:
                data = file.read(MAX_RULES_BYTES + 1)
        except OSError as exc:
            raise RulesError(f"cannot read rules file {path}: {exc}") from exc
        if len(data) > MAX_RULES_BYTES:
            raise RulesError(f"rules file {path} is larger than {MAX_RULES_BYTES} bytes")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RulesError(f"rules file {path} is not UTF-8: {exc}") from exc
        return cls.load(text.removeprefix("\ufeff"), directory=directory, policy=policy)

    def route(self, source: str, alert: SourceAlert) -> Route | None:
        """The route of the first rule that matches; ``None`` when none does.

        A rule that would make an alert public (OFFENTLIG) never matches an alert its
        source restricted (CAP scope Restricted or Private): that would lower its label.
        """
        for rule in self.rules:
            if rule.route.label == PUBLIC_LEVEL and alert.scope != "public":
                continue
            if rule.matches(source, alert):
                return rule.route
        return None

    def __len__(self) -> int:
        return len(self.rules)


# --- matching helpers -------------------------------------------------------


def _fold(value: object) -> str:
    return value.strip().casefold() if isinstance(value, str) else ""


def _severity_rank(severity: object) -> int:
    if isinstance(severity, str) and severity in Severity._value2member_map_:
        return SEVERITY_RANK[Severity(severity)]
    return 0  # anything else ranks as "unknown"


def _at(line: int | None) -> str:
    return f" (line {line})" if line else ""


# --- loading ----------------------------------------------------------------


class _Lines:
    """Best-effort lines of ``[[rule]]`` headers and their keys, for error messages."""

    def __init__(self, text: str) -> None:
        self.headers: list[int] = []  # line of each [[rule]]
        self.keys: list[dict[str, int]] = []  # per rule: key -> first line
        self.top_keys: dict[str, int] = {}
        current: dict[str, int] | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            if _RULE_HEADER.match(line):
                self.headers.append(number)
                current = {}
                self.keys.append(current)
                continue
            if _ANY_HEADER.match(line):
                name = line.strip().strip("[]").strip()
                self.top_keys.setdefault(name.split(".")[0].strip().strip('"'), number)
                current = None
                continue
            key = _KEY.match(line)
            if key is None:
                continue
            target = current if current is not None else self.top_keys
            target.setdefault(key.group(1), number)

    def rule(self, index: int) -> int | None:
        return self.headers[index] if index < len(self.headers) else None

    def key(self, index: int, key: str) -> int | None:
        if index < len(self.keys):
            return self.keys[index].get(key, self.rule(index))
        return None

    def top(self, key: str) -> int | None:
        return self.top_keys.get(key)

    def where_top(self, key: str) -> str:
        return _at(self.top(key))


_Parser = Callable[["_RuleContext", Any], Any]


class _Context:
    def __init__(self, directory: VerifiedDirectory, policy: Policy, lines: _Lines) -> None:
        self.directory = directory
        self.policy = policy
        self.lines = lines

    def rule(self, index: int, table: dict[str, Any]) -> Rule:
        ctx = _RuleContext(self, index, table.get("name"))
        for key in table:
            if key not in _FIELDS:
                ctx.fail(key, f"unknown key (known: {', '.join(sorted(_FIELDS))})")
        if "name" not in table:
            ctx.fail("name", "missing (every rule needs a unique name)")
        values = {key: _FIELDS[key](ctx, value) for key, value in table.items()}
        for key in ("label", "tlp", "priority"):
            if key not in values:
                ctx.fail(key, "missing")
        to, groups = ctx.addressees(values.get("to", ()), values.get("groups", ()))
        label, tlp = values["label"], values["tlp"]
        if label == PUBLIC_LEVEL and tlp != Tlp.CLEAR:
            ctx.fail("tlp", f"{PUBLIC_LEVEL} is public: its TLP must be CLEAR, not {tlp}")
        ctx.cleared(to, groups, label)
        geographic = "county" in values or "municipality" in values
        if values.get("match_without_area") and not geographic:
            ctx.fail("match_without_area", "only means something with county or municipality")
        route = Route(
            rule=values["name"],
            to=to,
            groups=groups,
            label=label,
            tlp=str(tlp),
            priority=str(values["priority"]),
            incident=values.get("incident"),
            status=values.get("status"),
        )
        return Rule(
            name=values["name"],
            route=route,
            sources=values.get("source"),
            events=values.get("event"),
            categories=values.get("category"),
            min_severity=values.get("min_severity"),
            counties=values.get("county"),
            municipalities=values.get("municipality"),
            msg_types=values.get("msg_type"),
            match_without_area=bool(values.get("match_without_area", False)),
            line=self.lines.rule(index),
        )


class _RuleContext:
    """One rule being read: knows how to name itself, a field and its line in an error."""

    def __init__(self, context: _Context, index: int, name: object) -> None:
        self.context = context
        self.index = index
        self.name = name if isinstance(name, str) and _NAME.fullmatch(name) else None

    def fail(self, field: str, problem: str) -> NoReturn:
        lines = self.context.lines
        line = lines.key(self.index, field)
        who = f"rule #{self.index + 1}" + (f" {self.name!r}" if self.name else "")
        raise RulesError(
            f"{who}, field {field}{_at(line)}: {problem}",
            rule=self.name or f"#{self.index + 1}",
            field=field,
            line=line,
        )

    def addressees(
        self, to: tuple[str, ...], groups: tuple[str, ...]
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        directory = self.context.directory
        known_groups = sorted(g.id for g in directory.document.groups)
        actors: list[str] = []
        chosen_groups: list[str] = []
        for ident in to:
            if directory.actor(ident) is not None:
                actors.append(ident)
            elif directory.members(ident) is not None:
                chosen_groups.append(ident)  # "to" may name groups too
            else:
                known = sorted(a.id for a in directory.document.actors)
                self.fail(
                    "to",
                    f"unknown actor or group {ident!r} (actors: {', '.join(known)};"
                    f" groups: {', '.join(known_groups)})",
                )
        for ident in groups:
            if directory.members(ident) is None:
                hint = " (an actor: list it under to)" if directory.actor(ident) else ""
                self.fail(
                    "groups",
                    f"unknown group {ident!r}{hint} (known: {', '.join(known_groups)})",
                )
            chosen_groups.append(ident)
        if not actors and not chosen_groups:
            self.fail("to", "no addressees: list at least one actor or group in to or groups")
        return tuple(sorted(set(actors))), tuple(sorted(set(chosen_groups)))

    def cleared(self, to: tuple[str, ...], groups: tuple[str, ...], label: str) -> None:
        # The broker refuses the whole message if one recipient is not cleared for it.
        directory, ladder = self.context.directory, self.context.policy.ladder_order
        addressed = [(a, "") for a in to]
        addressed += [(m, f", a member of {g}") for g in groups for m in directory.members(g) or ()]
        for actor_id, why in addressed:
            actor = directory.actor(actor_id)
            if actor is None:  # pragma: no cover - members come from the directory
                continue
            clearance = actor.clearance
            if not ladder.knows(clearance) or ladder.rank(clearance) < ladder.rank(label):
                self.fail(
                    "label",
                    f"{label} is above the clearance of {actor_id} ({clearance}{why});"
                    " the broker would refuse every message",
                )

    # --- field parsers (each returns the parsed value or fails) ---

    def text(self, field: str, value: object, pattern: re.Pattern[str], what: str) -> str:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            self.fail(field, f"must be {what}, not {_show(value)}")
        return value

    def strings(self, field: str, value: object) -> list[str]:
        if not isinstance(value, list):
            self.fail(field, f"must be a list of strings, not {_show(value)}")
        if not value:
            self.fail(field, "must list at least one value (leave the key out to match any)")
        if len(value) > MAX_LIST_ITEMS:
            self.fail(field, f"lists more than {MAX_LIST_ITEMS} values")
        for item in value:
            if not isinstance(item, str) or not item.strip() or len(item) > MAX_VALUE_CHARS:
                self.fail(
                    field,
                    f"values must be non-empty strings of at most {MAX_VALUE_CHARS}"
                    f" characters, not {_show(item)}",
                )
        return value

    def choice(self, field: str, value: object, options: Iterable[str]) -> str:
        allowed = list(options)
        if not isinstance(value, str) or value not in allowed:
            self.fail(field, f"must be one of {', '.join(allowed)}, not {_show(value)}")
        return value


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _name(ctx: _RuleContext, value: object) -> str:
    return ctx.text(
        "name", value, _NAME, f"a name of letters, digits and _.:- (at most {MAX_NAME_CHARS})"
    )


def _folded_set(field: str) -> _Parser:
    def parse(ctx: _RuleContext, value: object) -> frozenset[str]:
        return frozenset(_fold(v) for v in ctx.strings(field, value))

    return parse


def _sources(ctx: _RuleContext, value: object) -> frozenset[str]:
    return frozenset(ctx.strings("source", value))


def _county(ctx: _RuleContext, value: object) -> frozenset[str]:
    codes = ctx.strings("county", value)
    for code in codes:
        if not _COUNTY.fullmatch(code):
            ctx.fail("county", f'{code!r} is not a county code (two digits, e.g. "01")')
    return frozenset(codes)


def _municipality(ctx: _RuleContext, value: object) -> frozenset[str]:
    codes = ctx.strings("municipality", value)
    for code in codes:
        if not _MUNICIPALITY.fullmatch(code):
            ctx.fail(
                "municipality", f'{code!r} is not a municipality code (four digits, e.g. "0182")'
            )
    return frozenset(codes)


def _min_severity(ctx: _RuleContext, value: object) -> Severity:
    return Severity(ctx.choice("min_severity", value, [s.value for s in Severity]))


def _msg_types(ctx: _RuleContext, value: object) -> frozenset[MsgType]:
    types = ctx.strings("msg_type", value)
    for item in types:
        ctx.choice("msg_type", item, [t.value for t in MsgType])
    return frozenset(MsgType(t) for t in types)


def _match_without_area(ctx: _RuleContext, value: object) -> bool:
    if not isinstance(value, bool):
        ctx.fail("match_without_area", f"must be true or false, not {_show(value)}")
    return bool(value)


def _ids(field: str) -> _Parser:
    def parse(ctx: _RuleContext, value: object) -> tuple[str, ...]:
        if value == []:
            return ()  # an empty list: the other of to/groups must name someone
        ids = ctx.strings(field, value)
        for ident in ids:
            ctx.text(field, ident, _SLUG, "a list of actor or group ids")
        return tuple(ids)

    return parse


def _label(ctx: _RuleContext, value: object) -> str:
    policy = ctx.context.policy
    ladder = policy.ladder_order
    level = ctx.choice("label", value, ladder.levels)
    if not ladder.at_most(level, policy.ceiling):
        ctx.fail("label", f"{level} is above the policy's ceiling {policy.ceiling}")
    return level


def _tlp(ctx: _RuleContext, value: object) -> Tlp:
    return Tlp(ctx.choice("tlp", value, [t.value for t in Tlp]))


def _priority(ctx: _RuleContext, value: object) -> str:
    return ctx.choice("priority", value, [p.value for p in Priority])


def _status(ctx: _RuleContext, value: object) -> str:
    return ctx.choice("status", value, [s.value for s in Status])


def _incident(ctx: _RuleContext, value: object) -> str:
    return ctx.text("incident", value, _SLUG, "an incident id (lowercase letters, digits, -)")


_FIELDS: dict[str, _Parser] = {
    "name": _name,
    "source": _sources,
    "event": _folded_set("event"),
    "category": _folded_set("category"),
    "min_severity": _min_severity,
    "county": _county,
    "municipality": _municipality,
    "msg_type": _msg_types,
    "match_without_area": _match_without_area,
    "to": _ids("to"),
    "groups": _ids("groups"),
    "label": _label,
    "tlp": _tlp,
    "priority": _priority,
    "incident": _incident,
    "status": _status,
}
