"""Shared building blocks of every signed document: field types and the wire model.

A wire model is a frozen pydantic model whose canonical JSON (RFC 8785
subset, see ``canonical``) is its one and only encoding. ``parse`` accepts
bytes only if they are exactly that encoding: strict JSON, strict types,
every field present, sets sorted and unique.
"""

from __future__ import annotations

from typing import Annotated, Any, Self, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from . import canonical
from .errors import CanonicalJsonError, MalformedInput
from .limits import (
    MAX_CATEGORIES,
    MAX_GROUPS,
    MAX_ID_CHARS,
    MAX_NAME_CHARS,
    MAX_RECIPIENTS,
    MAX_SAFE_INTEGER,
    MAX_TEXT_CHARS,
)

SLUG_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"
"""Ids of actors, groups, officers, incidents, categories: safe as a NATS subject token."""

Slug = Annotated[str, Field(pattern=SLUG_PATTERN, max_length=MAX_ID_CHARS)]
HexId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
"""Message ids and key ids: 16 bytes as 32 lowercase hex digits."""
Hash = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
"""SHA-256 digests as 64 lowercase hex digits."""
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
Millis = Annotated[int, Field(ge=0, le=MAX_SAFE_INTEGER)]
"""A UTC time as integer milliseconds since the Unix epoch."""


def _sorted_unique(values: tuple[str, ...]) -> tuple[str, ...]:
    if list(values) != sorted(set(values)):
        raise ValueError("must be sorted and without duplicates")
    return values


_UNIQUE = {"uniqueItems": True}
SortedSlugs = Annotated[
    tuple[Slug, ...],
    Field(max_length=MAX_GROUPS, json_schema_extra=_UNIQUE),
    AfterValidator(_sorted_unique),
]
"""A set of ids, written as a sorted array without duplicates (one encoding per set)."""
Categories = Annotated[
    tuple[Slug, ...],
    Field(max_length=MAX_CATEGORIES, json_schema_extra=_UNIQUE),
    AfterValidator(_sorted_unique),
]
Recipients = Annotated[
    tuple[Slug, ...],
    Field(min_length=1, max_length=MAX_RECIPIENTS, json_schema_extra=_UNIQUE),
    AfterValidator(_sorted_unique),
]

M = TypeVar("M", bound="WireModel")


class WireModel(BaseModel):
    """Base of all protocol documents: frozen, no unknown fields, strict JSON types."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    def wire(self) -> dict[str, Any]:
        """The JSON value of this document (every field present, None as null)."""
        return self.model_dump(mode="json")

    def to_bytes(self) -> bytes:
        """The canonical bytes of this document (field names are ASCII identifiers)."""
        return canonical.dumps_ascii_keys(self.wire())

    @classmethod
    def parse(cls, data: bytes, *, max_bytes: int) -> Self:
        """Parse canonical bytes; raise :class:`MalformedInput` naming the first bad field."""
        # Strict JSON rules first (duplicate names, floats, integer range, UTF-8); nesting is
        # bounded by the size limit and then by the model's fixed shape. The canonical-form
        # check happens once, on the validated model, so every field and set order is covered.
        canonical.loads(data, max_bytes=max_bytes, require_canonical=False)
        try:
            model = cls.model_validate_json(data, strict=True)
        except ValidationError as exc:
            raise validation_error(exc, cls.__name__) from exc
        if model.to_bytes() != data:
            raise CanonicalJsonError(f"{cls.__name__} is not in canonical form (missing field?)")
        return model


def validation_error(exc: ValidationError, what: str) -> MalformedInput:
    """Map a pydantic error to ours, naming the first offending field path."""
    first = exc.errors(include_url=False)[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    where = f" at {field}" if field else ""
    return MalformedInput(f"invalid {what}{where}: {first['msg']}", field=field)
