"""Labels: the classification ladder, TLP 2.0, categories and the dominance order."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from broker.core.errors import CanonicalJsonError, MalformedInput
from broker.core.labels import (
    DEFAULT_CEILING,
    NEVER_FORWARDED,
    STANDARD_LADDER,
    Label,
    Ladder,
    Tlp,
)
from broker.core.limits import MAX_LABEL_BYTES

LADDER = Ladder()


def label(**changes: Any) -> Label:
    fields: dict[str, Any] = {"policy": "ssr", "classification": "SEKRETESS", "tlp": Tlp.AMBER}
    fields.update(changes)
    return Label(**fields)


def invalid_field(**changes: Any) -> str:
    with pytest.raises(ValidationError) as info:
        label(**changes)
    return ".".join(str(part) for part in info.value.errors()[0]["loc"])


# --- the ladder --------------------------------------------------------------------------


def test_standard_ladder_order() -> None:
    assert STANDARD_LADDER == (
        "OFFENTLIG",
        "INTERN",
        "SEKRETESS",
        "BEGRÄNSAT HEMLIG",
        "KONFIDENTIELL",
        "HEMLIG",
        "KVALIFICERAT HEMLIG",
    )
    assert LADDER.levels == STANDARD_LADDER
    assert [LADDER.rank(level) for level in STANDARD_LADDER] == list(range(7))
    assert DEFAULT_CEILING == "SEKRETESS"
    assert LADDER.knows(DEFAULT_CEILING)


def test_knows_and_rank_of_unknown_levels() -> None:
    assert LADDER.knows("HEMLIG")
    assert not LADDER.knows("hemlig")
    assert not LADDER.knows("TOP SECRET")
    with pytest.raises(KeyError) as info:
        LADDER.rank("TOP SECRET")
    assert info.value.args == ("TOP SECRET",)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


def test_at_most() -> None:
    assert LADDER.at_most("INTERN", "SEKRETESS")
    assert LADDER.at_most("SEKRETESS", "SEKRETESS")
    assert not LADDER.at_most("BEGRÄNSAT HEMLIG", "SEKRETESS")
    with pytest.raises(KeyError):
        LADDER.at_most("SEKRETESS", "NOPE")


def test_custom_ladder() -> None:
    ladder = Ladder(("LOW", "HIGH"))
    assert ladder.rank("HIGH") == 1
    assert not ladder.knows("SEKRETESS")
    assert ladder.dominates(
        label(classification="HIGH", tlp=Tlp.CLEAR), label(classification="LOW", tlp=Tlp.CLEAR)
    )


# --- TLP ---------------------------------------------------------------------------------


def test_tlp_ranks_from_least_to_most_restrictive() -> None:
    assert [t.rank for t in (Tlp.CLEAR, Tlp.GREEN, Tlp.AMBER, Tlp.AMBER_STRICT, Tlp.RED)] == [
        0,
        1,
        2,
        3,
        4,
    ]
    assert Tlp.AMBER_STRICT.value == "AMBER+STRICT"
    assert Tlp("AMBER+STRICT") is Tlp.AMBER_STRICT
    assert [t.value for t in Tlp] == ["CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED"]


def test_never_forwarded_is_red_and_amber_strict() -> None:
    assert {Tlp.RED, Tlp.AMBER_STRICT} == NEVER_FORWARDED


# --- dominance ---------------------------------------------------------------------------


def test_a_label_dominates_itself() -> None:
    a = label(categories=("infrastruktur",))
    assert LADDER.dominates(a, a)


@pytest.mark.parametrize(
    ("higher", "lower"),
    [
        ({"classification": "HEMLIG"}, {"classification": "SEKRETESS"}),
        ({"classification": "SEKRETESS"}, {"classification": "OFFENTLIG"}),
        ({"tlp": Tlp.RED}, {"tlp": Tlp.AMBER_STRICT}),
        ({"tlp": Tlp.AMBER_STRICT}, {"tlp": Tlp.AMBER}),
        ({"tlp": Tlp.AMBER}, {"tlp": Tlp.GREEN}),
        ({"tlp": Tlp.GREEN}, {"tlp": Tlp.CLEAR}),
        ({"categories": ("infrastruktur", "taktik")}, {"categories": ("taktik",)}),
        ({"categories": ("taktik",)}, {}),
    ],
)
def test_dominance_in_each_dimension(higher: dict[str, Any], lower: dict[str, Any]) -> None:
    assert LADDER.dominates(label(**higher), label(**lower))
    assert not LADDER.dominates(label(**lower), label(**higher))


def test_dominance_needs_every_dimension() -> None:
    # Higher classification but a weaker TLP: neither dominates.
    a = label(classification="HEMLIG", tlp=Tlp.GREEN)
    b = label(classification="SEKRETESS", tlp=Tlp.AMBER)
    assert not LADDER.dominates(a, b)
    assert not LADDER.dominates(b, a)
    # Disjoint categories: neither dominates.
    c, d = label(categories=("taktik",)), label(categories=("infrastruktur",))
    assert not LADDER.dominates(c, d)
    assert not LADDER.dominates(d, c)


def test_labels_of_different_policies_never_dominate() -> None:
    ours = label()
    theirs = label(policy="other")
    assert not LADDER.dominates(ours, theirs)
    assert not LADDER.dominates(theirs, ours)
    assert not LADDER.dominates(label(policy="other", classification="HEMLIG", tlp=Tlp.RED), ours)


def test_dominates_with_an_unknown_classification_raises() -> None:
    with pytest.raises(KeyError):
        LADDER.dominates(label(classification="TOP SECRET"), label())


# --- clearance ---------------------------------------------------------------------------


def test_cleared_for_classification() -> None:
    assert LADDER.cleared_for("SEKRETESS", (), label(classification="SEKRETESS"))
    assert LADDER.cleared_for("HEMLIG", (), label(classification="SEKRETESS"))
    assert LADDER.cleared_for("SEKRETESS", (), label(classification="OFFENTLIG"))
    assert not LADDER.cleared_for("INTERN", (), label(classification="SEKRETESS"))


def test_cleared_for_needs_every_category() -> None:
    both = label(categories=("infrastruktur", "taktik"))
    assert LADDER.cleared_for("SEKRETESS", ("infrastruktur", "taktik"), both)
    assert LADDER.cleared_for("SEKRETESS", ("annat", "infrastruktur", "taktik"), both)
    assert not LADDER.cleared_for("SEKRETESS", ("taktik",), both)
    assert not LADDER.cleared_for("SEKRETESS", (), both)
    assert not LADDER.cleared_for("HEMLIG", ("taktik",), both)  # rank cannot stand in


def test_cleared_for_ignores_tlp() -> None:
    assert LADDER.cleared_for("SEKRETESS", (), label(tlp=Tlp.RED))


def test_cleared_for_unknown_clearance_raises() -> None:
    with pytest.raises(KeyError):
        LADDER.cleared_for("TOP SECRET", (), label())


# --- Label validation --------------------------------------------------------------------


def test_label_defaults_and_fields() -> None:
    plain = label()
    assert plain.categories == ()
    assert plain.legal is None
    full = label(categories=("a", "b"), legal="OSL 18:13")
    assert full.wire() == {
        "policy": "ssr",
        "classification": "SEKRETESS",
        "tlp": "AMBER",
        "categories": ["a", "b"],
        "legal": "OSL 18:13",
    }


@pytest.mark.parametrize(
    "classification",
    ["OFFENTLIG", "BEGRÄNSAT HEMLIG", "KVALIFICERAT HEMLIG", "AB", "A-B", "A+B", "ÅÄÖ", "A" * 32],
)
def test_classification_names_accepted(classification: str) -> None:
    assert label(classification=classification).classification == classification


@pytest.mark.parametrize(
    "classification",
    [
        "",
        "A",
        "sekretess",
        "Sekretess",
        "SEKRETESS ",
        " SEKRETESS",
        "A1",
        "-AB",
        "AB+",
        "A" * 33,
        "É",
    ],
)
def test_classification_names_refused(classification: str) -> None:
    assert invalid_field(classification=classification) == "classification"


@pytest.mark.parametrize(
    "categories",
    [("b", "a"), ("a", "a"), ("A",), ("a_b",), ("-a",), tuple(f"c{i:02}" for i in range(17))],
)
def test_categories_must_be_sorted_unique_slugs_and_bounded(categories: tuple[str, ...]) -> None:
    assert invalid_field(categories=categories).startswith("categories")


def test_sixteen_categories_are_allowed() -> None:
    many = tuple(f"c{i:02}" for i in range(16))
    assert label(categories=many).categories == many


def test_label_size_is_bounded() -> None:
    # Sixteen 64-character categories are each valid, but together exceed MAX_LABEL_BYTES.
    long_categories = tuple(f"{i:02}" + "c" * 62 for i in range(16))
    with pytest.raises(ValidationError, match="label larger than 1024 bytes"):
        label(categories=long_categories)
    # The bound is inclusive and counts the canonical bytes.
    base = label(categories=long_categories[:13])
    room = MAX_LABEL_BYTES - len(base.to_bytes()) + len("null") - len('""')
    at_bound = label(categories=long_categories[:13], legal="x" * room)
    assert len(at_bound.to_bytes()) == MAX_LABEL_BYTES
    with pytest.raises(ValidationError, match="label larger than"):
        label(categories=long_categories[:13], legal="x" * (room + 1))
    # Escaped control characters count as their encoded size (6 bytes each).
    with pytest.raises(ValidationError, match="label larger than"):
        label(categories=long_categories[:13], legal="\x01" * 20)


@pytest.mark.parametrize("legal", ["", "x" * 101])
def test_legal_reference_length(legal: str) -> None:
    assert invalid_field(legal=legal) == "legal"


def test_legal_reference_of_100_characters() -> None:
    assert label(legal="x" * 100).legal == "x" * 100


@pytest.mark.parametrize("policy", ["", "SSR", "-ssr", "ssr-", "a" * 65, "ssr.x"])
def test_policy_id_must_be_a_slug(policy: str) -> None:
    assert invalid_field(policy=policy) == "policy"


def test_label_is_strict_and_closed() -> None:
    assert invalid_field(tlp="PURPLE") == "tlp"
    assert invalid_field(categories=["a"]) == "categories"  # a list is not a tuple in strict mode
    assert invalid_field(colour="red") == "colour"
    with pytest.raises(ValidationError):
        label().policy = "other"  # type: ignore[misc]


# --- Label on the wire -------------------------------------------------------------------


def test_label_bytes_round_trip() -> None:
    original = label(categories=("infrastruktur",), legal="OSL 18:13")
    data = original.to_bytes()
    assert data == (
        b'{"categories":["infrastruktur"],"classification":"SEKRETESS",'
        b'"legal":"OSL 18:13","policy":"ssr","tlp":"AMBER"}'
    )
    assert Label.parse(data, max_bytes=1024) == original


def test_label_parse_names_the_bad_field() -> None:
    data = label().to_bytes().replace(b'"AMBER"', b'"PURPLE"')
    with pytest.raises(MalformedInput) as info:
        Label.parse(data, max_bytes=1024)
    assert info.value.field == "tlp"
    assert "invalid Label at tlp" in info.value.message


def test_label_parse_refuses_a_missing_optional_field() -> None:
    # Valid JSON and a valid Label, but not its one encoding: "legal":null is left out.
    data = b'{"categories":[],"classification":"SEKRETESS","policy":"ssr","tlp":"AMBER"}'
    with pytest.raises(CanonicalJsonError, match="not in canonical form"):
        Label.parse(data, max_bytes=1024)


def test_label_parse_refuses_non_canonical_json_and_oversize() -> None:
    data = label().to_bytes()
    with pytest.raises(CanonicalJsonError):
        Label.parse(data + b" ", max_bytes=1024)
    with pytest.raises(CanonicalJsonError):
        Label.parse(data, max_bytes=len(data) - 1)


def test_label_parse_refuses_a_non_object() -> None:
    with pytest.raises(MalformedInput) as info:
        Label.parse(b"[]", max_bytes=1024)
    assert info.value.field is None
