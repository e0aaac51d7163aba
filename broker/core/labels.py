"""Classification labels: the ladder, TLP 2.0 markings, categories, and their order.

A :class:`Label` says how sensitive a message is (``classification`` on the
policy's ladder), how far it may be shared onward (``tlp``), which
need-to-know compartments a recipient must all hold (``categories``) and,
for secrecy, the legal ground (``legal``, e.g. "OSL 18:13").

Labels form a partial order: ``a`` dominates ``b`` when it is at least as
high on the ladder, at least as restrictive in TLP, and carries every
category of ``b``. A forward must dominate the label it forwards, so a label
can never be lowered by passing a message on.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Self

from pydantic import Field, model_validator

from .limits import MAX_LABEL_BYTES
from .wire import Categories, Slug, WireModel

STANDARD_LADDER: tuple[str, ...] = (
    "OFFENTLIG",
    "INTERN",
    "SEKRETESS",
    "BEGRÄNSAT HEMLIG",
    "KONFIDENTIELL",
    "HEMLIG",
    "KVALIFICERAT HEMLIG",
)
"""Public < internal < secrecy under OSL < the four protective-security levels."""

DEFAULT_CEILING = "SEKRETESS"
"""Highest level this software is accredited for by default (DESIGN.md section 2)."""

ClassificationName = Annotated[str, Field(pattern=r"^[A-ZÅÄÖ][A-ZÅÄÖ +-]{0,30}[A-ZÅÄÖ]$")]


class Tlp(StrEnum):
    """Traffic Light Protocol 2.0 markings, from least to most restrictive."""

    CLEAR = "CLEAR"
    GREEN = "GREEN"
    AMBER = "AMBER"
    AMBER_STRICT = "AMBER+STRICT"
    RED = "RED"

    @property
    def rank(self) -> int:
        return _TLP_ORDER.index(self)


_TLP_ORDER = (Tlp.CLEAR, Tlp.GREEN, Tlp.AMBER, Tlp.AMBER_STRICT, Tlp.RED)

NEVER_FORWARDED = frozenset({Tlp.RED, Tlp.AMBER_STRICT})
"""TLP markings whose messages are never forwarded to another actor."""


class Label(WireModel):
    """The classification label every envelope carries inside its signed header.

    Example: ``Label(policy="ssr", classification="SEKRETESS", tlp=Tlp.AMBER,
    legal="OSL 18:13")`` - secrecy under OSL 18:13, shared with need-to-know
    inside the recipients' organisations.
    """

    policy: Slug
    classification: ClassificationName
    tlp: Tlp
    categories: Categories = ()
    legal: Annotated[str, Field(min_length=1, max_length=100)] | None = None

    @model_validator(mode="after")
    def _bounded(self) -> Self:
        if len(self.to_bytes()) > MAX_LABEL_BYTES:
            raise ValueError(f"label larger than {MAX_LABEL_BYTES} bytes")
        return self


@dataclass(frozen=True)
class Ladder:
    """An ordered list of classification levels, lowest first."""

    levels: tuple[str, ...] = STANDARD_LADDER

    def knows(self, level: str) -> bool:
        return level in self.levels

    def rank(self, level: str) -> int:
        """Position of ``level``; raises ``KeyError`` for a level not on the ladder."""
        try:
            return self.levels.index(level)
        except ValueError:
            raise KeyError(level) from None

    def at_most(self, level: str, ceiling: str) -> bool:
        return self.rank(level) <= self.rank(ceiling)

    def dominates(self, a: Label, b: Label) -> bool:
        """True when ``a`` is at least as protective as ``b`` in every respect."""
        return (
            a.policy == b.policy
            and self.rank(a.classification) >= self.rank(b.classification)
            and a.tlp.rank >= b.tlp.rank
            and set(a.categories) >= set(b.categories)
        )

    def cleared_for(self, clearance: str, categories: tuple[str, ...], label: Label) -> bool:
        """Whether a holder of ``clearance`` and ``categories`` may receive ``label``."""
        return self.rank(clearance) >= self.rank(label.classification) and set(
            label.categories
        ) <= set(categories)


__all__ = [
    "DEFAULT_CEILING",
    "NEVER_FORWARDED",
    "STANDARD_LADDER",
    "Label",
    "Ladder",
    "Slug",
    "Tlp",
]
