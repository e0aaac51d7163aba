"""Canonical JSON: the RFC 8785 subset every signed document is written in."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.canonical import dumps, dumps_ascii_keys, loads
from broker.core.errors import CanonicalJsonError, CoreError, MalformedInput
from broker.core.limits import MAX_JSON_DEPTH, MAX_SAFE_INTEGER

BIG = 1 << 20


def nested(depth: int, inner: object) -> object:
    """``inner`` wrapped in ``depth`` arrays."""
    value = inner
    for _ in range(depth):
        value = [value]
    return value


def refused_by_loads(data: bytes, *, max_bytes: int = BIG) -> CanonicalJsonError:
    with pytest.raises(CanonicalJsonError) as info:
        loads(data, max_bytes=max_bytes)
    return info.value


def refused_by_dumps(value: object) -> CanonicalJsonError:
    with pytest.raises(CanonicalJsonError) as info:
        dumps(value)
    return info.value


# --- the error type ----------------------------------------------------------------------


def test_canonical_json_error_sits_under_malformed_input() -> None:
    error = refused_by_loads(b"{}  ")
    assert isinstance(error, MalformedInput)
    assert isinstance(error, CoreError)
    assert error.code == "malformed"
    assert error.field is None


# --- dumps -------------------------------------------------------------------------------


def test_dumps_docstring_example() -> None:
    assert dumps({"b": 1, "a": [True, None, "x"]}) == b'{"a":[true,null,"x"],"b":1}'


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, b"null"),
        (True, b"true"),
        (False, b"false"),
        (0, b"0"),
        (-1, b"-1"),
        (MAX_SAFE_INTEGER, b"9007199254740991"),
        (-MAX_SAFE_INTEGER, b"-9007199254740991"),
        ("", b'""'),
        ([], b"[]"),
        ({}, b"{}"),
        ((1, "a"), b'[1,"a"]'),  # tuples are arrays
        ([[], {}, [None]], b"[[],{},[null]]"),
        ({"a": {"c": 1, "b": 2}}, b'{"a":{"b":2,"c":1}}'),
    ],
)
def test_dumps_values(value: object, expected: bytes) -> None:
    assert dumps(value) == expected


def test_dumps_booleans_are_not_integers() -> None:
    assert dumps([True, 1, False, 0]) == b"[true,1,false,0]"


def test_members_sorted_by_utf16_code_units_not_code_points() -> None:
    # U+1F600 is the surrogate pair D83D DE00 in UTF-16, which sorts before U+E000;
    # by code point it would sort after.
    astral, private_use = "\U0001f600", "\ue000"
    out = dumps({private_use: 1, astral: 2})
    assert out == ('{"' + astral + '":2,"' + private_use + '":1}').encode()
    assert sorted([private_use, astral]) == [private_use, astral]  # code point order differs


def test_rfc8785_sorting_example() -> None:
    # RFC 8785 section 3.2.3: the names in the order the RFC gives them.
    names = ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]
    out = dumps(dict.fromkeys(reversed(names), 0))
    assert out == '{"\\r":0,"1":0,"\u0080":0,"ö":0,"€":0,"\U0001f600":0,"\ufb33":0}'.encode()


def test_member_order_does_not_depend_on_insertion_order() -> None:
    assert dumps({"b": 1, "a": 2, "aa": 3, "B": 4}) == dumps({"B": 4, "aa": 3, "a": 2, "b": 1})
    assert dumps({"b": 1, "a": 2, "aa": 3, "B": 4}) == b'{"B":4,"a":2,"aa":3,"b":1}'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('"', b'"\\""'),
        ("\\", b'"\\\\"'),
        ("\b", b'"\\b"'),
        ("\f", b'"\\f"'),
        ("\n", b'"\\n"'),
        ("\r", b'"\\r"'),
        ("\t", b'"\\t"'),
        ("\x00", b'"\\u0000"'),
        ("\x01", b'"\\u0001"'),
        ("\x0b", b'"\\u000b"'),
        ("\x1f", b'"\\u001f"'),  # lowercase hex, as JSON.stringify writes it
        ("\x7f", b'"\x7f"'),  # DEL is not a control character in JSON
        ("/", b'"/"'),  # no escaped solidus
        (" ", b'" "'),
        ("\u2028", '"\u2028"'.encode()),
        ("Länsstyrelsen", '"Länsstyrelsen"'.encode()),
        ("\U0001f600", b'"\xf0\x9f\x98\x80"'),  # raw UTF-8, not a \\ud83d escape pair
    ],
)
def test_dumps_escapes_exactly_like_json_stringify(text: str, expected: bytes) -> None:
    assert dumps(text) == expected
    assert loads(expected, max_bytes=100) == text


def test_escapes_in_member_names() -> None:
    assert dumps({"a\nb": 1, "\x02": 2}) == b'{"\\u0002":2,"a\\nb":1}'


def test_non_ascii_is_raw_utf8() -> None:
    value = {"namn": "Södertörns brandförsvarsförbund", "å": "Ä"}
    out = dumps(value)
    assert b"\\u" not in out
    assert out == '{"namn":"Södertörns brandförsvarsförbund","å":"Ä"}'.encode()


@pytest.mark.parametrize(
    "value",
    [
        MAX_SAFE_INTEGER + 1,
        -MAX_SAFE_INTEGER - 1,
        2**64,
        [1.0],
        1.5,
        float("nan"),
        float("inf"),
        b"bytes",
        {1, 2},
        object(),
        {"a": {"b": 0.5}},
    ],
    ids=repr,
)
def test_dumps_refuses_values_outside_the_subset(value: object) -> None:
    refused_by_dumps(value)


def test_dumps_refusal_messages_name_the_problem() -> None:
    assert "safe range" in refused_by_dumps(2**53).message
    assert "float" in refused_by_dumps(1.5).message
    assert "lone surrogate" in refused_by_dumps("\ud800").message


@pytest.mark.parametrize("key", [1, b"a", None, ("a",)], ids=repr)
def test_dumps_refuses_non_string_member_names(key: object) -> None:
    error = refused_by_dumps({key: 1})
    assert "names must be strings" in error.message
    assert "names must be strings" in refused_by_dumps({"a": 1, key: 2}).message


@pytest.mark.parametrize(
    "text", [chr(0xD800), chr(0xDFFF), "a" + chr(0xDC00) + "b", chr(0xD83D)], ids=ascii
)
def test_dumps_refuses_lone_surrogates(text: str) -> None:
    refused_by_dumps(text)
    refused_by_dumps({text: 1})


def test_depth_boundary_in_dumps() -> None:
    # The value at depth 0 is the document itself; a value deeper than MAX_JSON_DEPTH is refused.
    assert dumps(nested(MAX_JSON_DEPTH, 1)) == b"[" * 16 + b"1" + b"]" * 16
    error = refused_by_dumps(nested(MAX_JSON_DEPTH + 1, 1))
    assert "deeper than 16" in error.message
    refused_by_dumps(nested(MAX_JSON_DEPTH + 1, []))
    obj: object = 1
    for _ in range(MAX_JSON_DEPTH + 1):
        obj = {"a": obj}
    refused_by_dumps(obj)


def test_dumps_refuses_self_reference_without_recursion_error() -> None:
    loop: list[object] = []
    loop.append(loop)
    refused_by_dumps(loop)


# --- loads: accepted ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"null",
        b"true",
        b"0",
        b"-1",
        b"9007199254740991",
        b"-9007199254740991",
        b'""',
        b"[]",
        b"{}",
        b'{"":0}',
        b'{"a":[1,{"b":null}],"b":"\\u001f\\n"}',
        '{"\U0001f600":1,"\ue000":2}'.encode(),
    ],
)
def test_loads_accepts_canonical_documents(data: bytes) -> None:
    assert dumps(loads(data, max_bytes=100)) == data


def test_loads_docstring_example() -> None:
    assert loads(b'{"a":1}', max_bytes=100) == {"a": 1}


def test_loads_max_bytes_is_inclusive() -> None:
    assert loads(b"1234", max_bytes=4) == 1234
    error = refused_by_loads(b"1234", max_bytes=3)
    assert "exceeds 3" in error.message


# --- loads: refused ----------------------------------------------------------------------

REFUSED = {
    # not UTF-8
    "invalid byte": b"\xff",
    "invalid utf-8 in string": b'"\xc3"',
    "overlong utf-8": b'"\xc0\xaf"',
    "utf-8 encoded surrogate": b'"\xed\xa0\x80"',
    "byte order mark": b"\xef\xbb\xbf1",
    # not JSON at all
    "empty": b"",
    "truncated object": b'{"a":',
    "single quotes": b"{'a':1}",
    "trailing comma": b"[1,]",
    "two documents": b"{}{}",
    "bare word": b"nul",
    "raw control char in string": b'"\x01"',
    "raw newline in string": b'"\n"',
    # duplicates
    "duplicate member": b'{"a":1,"a":1}',
    "nested duplicate member": b'{"x":{"a":1,"a":2}}',
    # numbers outside the subset
    "fraction": b"1.0",
    "fraction in array": b"[0.5]",
    "exponent": b"1e3",
    "upper exponent": b"1E3",
    "negative exponent": b"-1e-3",
    "fraction and exponent": b"2.5e1",
    "NaN": b"NaN",
    "Infinity": b"Infinity",
    "-Infinity": b"-Infinity",
    "2**53": b"9007199254740992",
    "-(2**53)": b"-9007199254740992",
    "huge integer": b"123456789012345678901234567890",
    "negative zero": b"-0",
    "leading zero": b"01",
    "plus sign": b"+1",
    # lone surrogates and non-canonical escapes
    "lone high surrogate": b'"\\ud800"',
    "lone low surrogate": b'"\\udc00"',
    "lone surrogate in name": b'{"\\udfff":1}',
    "escaped surrogate pair": b'"\\ud83d\\ude00"',
    "escaped ascii": b'"\\u0041"',
    "escaped solidus": b'"\\/"',
    "uppercase hex escape": b'"\\u001F"',
    "long form of a short escape": b'"\\u000a"',
    "escaped non-ascii": b'"\\u00e5"',
    # non-canonical form
    "leading space": b" 1",
    "trailing newline": b"1\n",
    "space after colon": b'{"a": 1}',
    "space after comma": b"[1, 2]",
    "pretty printed": b'{\n  "a": 1\n}',
    "members out of order": b'{"b":1,"a":2}',
    "code point order instead of utf-16 order": '{"\ue000":2,"\U0001f600":1}'.encode(),
    # depth
    "17 levels around a scalar": b"[" * 17 + b"1" + b"]" * 17,
    "18 levels": b"[" * 18 + b"]" * 18,
    "deep objects": b'{"a":' * 17 + b"1" + b"}" * 17,
    "100000 open brackets": b"[" * 100_000,
    "100000 balanced brackets": b"[" * 100_000 + b"]" * 100_000,
}


@pytest.mark.parametrize("data", list(REFUSED.values()), ids=list(REFUSED))
def test_loads_refuses(data: bytes) -> None:
    refused_by_loads(data)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"\xff", "UTF-8"),
        (b'{"a":1,"a":2}', "duplicate"),
        (b"1.5", "integers"),
        (b"1e3", "integers"),
        (b"NaN", "NaN is not JSON"),
        (b"9007199254740992", "safe range"),
        (b"[" * 100_000, "too deep"),
        (b'{"b":1,"a":2}', "canonical form"),
        (b'"\\ud800"', "lone surrogate"),
        (b"{", "not JSON"),
    ],
)
def test_loads_refusal_says_why(data: bytes, words: str) -> None:
    assert words in refused_by_loads(data).message


def test_depth_boundary_in_loads() -> None:
    at_limit = b"[" * MAX_JSON_DEPTH + b"1" + b"]" * MAX_JSON_DEPTH
    assert loads(at_limit, max_bytes=100) == nested(MAX_JSON_DEPTH, 1)
    assert "deeper" in refused_by_loads(b"[" * 17 + b"1" + b"]" * 17).message


def test_5000_digit_number_is_refused_quickly() -> None:
    for data in (b"9" * 5000, b"-" + b"9" * 5000, b"[" + b"1" * 5000 + b"]"):
        started = time.perf_counter()
        error = refused_by_loads(data)
        assert time.perf_counter() - started < 0.5
        assert "too large" in error.message


def test_integer_length_bound_leaves_room_for_the_sign() -> None:
    # 17 characters: "-" and the 16 digits of 2**53 - 1 pass the length gate.
    assert loads(b"-9007199254740991", max_bytes=100) == -MAX_SAFE_INTEGER
    assert "safe range" in refused_by_loads(b"99999999999999999").message
    assert "too large" in refused_by_loads(b"999999999999999999").message


def test_oversize_input_is_refused_before_parsing() -> None:
    error = refused_by_loads(b"[" * 100_000, max_bytes=1000)
    assert "100000 bytes exceeds 1000" in error.message


# --- the fast paths used by wire models ---------------------------------------------------


def test_dumps_ascii_keys_matches_dumps_on_escapes_and_non_ascii_values() -> None:
    value = {
        "b": ['\x00\x1f\b\f\n\r\t"\\/\x7f', "Länsstyrelsen \U0001f600 \u2028"],
        "a": {"z": None, "A": [True, False, -MAX_SAFE_INTEGER, MAX_SAFE_INTEGER]},
        "": "",
    }
    assert dumps_ascii_keys(value) == dumps(value)


def test_dumps_ascii_keys_refuses_lone_surrogates() -> None:
    with pytest.raises(CanonicalJsonError, match="lone surrogate"):
        dumps_ascii_keys({"a": "x" + chr(0xD800)})


def test_loads_without_the_canonical_form_check() -> None:
    assert loads(b'{ "b": 1, "a": [1, 2] }', max_bytes=100, require_canonical=False) == {
        "a": [1, 2],
        "b": 1,
    }
    assert loads(b'"\\u0041"', max_bytes=100, require_canonical=False) == "A"
    # Every strict JSON rule still holds.
    for data in (
        b'{"a":1,"a":2}',
        b"1.0",
        b"1e3",
        b"NaN",
        b"9007199254740992",
        b"\xff",
        b"[" * 100_000,
    ):
        with pytest.raises(CanonicalJsonError):
            loads(data, max_bytes=BIG, require_canonical=False)
    with pytest.raises(CanonicalJsonError, match="exceeds"):
        loads(b"1234", max_bytes=3, require_canonical=False)


# --- properties --------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
    | st.text(max_size=20)
)


def json_values(depth: int) -> st.SearchStrategy[object]:
    if depth == 0:
        return scalars
    inner = json_values(depth - 1)
    return (
        scalars
        | st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    )


@settings(max_examples=200, deadline=None)
@given(json_values(5))
def test_round_trip(value: object) -> None:
    data = dumps(value)
    assert loads(data, max_bytes=BIG) == value
    assert json.loads(data) == value  # any JSON reader reads the same value back


ascii_names = st.text(alphabet=st.characters(max_codepoint=127), max_size=8)


def ascii_keyed_values(depth: int) -> st.SearchStrategy[object]:
    if depth == 0:
        return scalars
    inner = ascii_keyed_values(depth - 1)
    return scalars | st.lists(inner, max_size=4) | st.dictionaries(ascii_names, inner, max_size=4)


@settings(max_examples=200, deadline=None)
@given(ascii_keyed_values(4))
def test_dumps_ascii_keys_equals_dumps(value: object) -> None:
    assert dumps_ascii_keys(value) == dumps(value)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=6), st.integers(0, 9), max_size=8))
def test_members_follow_utf16_order(value: dict[str, int]) -> None:
    parsed_names = list(json.loads(dumps(value), object_pairs_hook=lambda pairs: pairs))
    names = [name for name, _ in parsed_names]
    assert names == sorted(value, key=lambda name: name.encode("utf-16-be"))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_a_value_or_canonical_json_error(data: bytes) -> None:
    try:
        value = loads(data, max_bytes=BIG)
    except CanonicalJsonError:
        return
    assert dumps(value) == data  # whatever is accepted has exactly this one encoding


TOKENS = [
    b"{", b"}", b"[", b"]", b'"a"', b'"b"', b":", b",", b"0", b"1", b"-", b".", b"e",
    b"true", b"null", b" ", b'"\\u', b"d800", b'"', b"\xff", b"NaN", b"9" * 20,
]  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=30).map(b"".join))
def test_json_like_bytes_give_a_value_or_canonical_json_error(data: bytes) -> None:
    try:
        value = loads(data, max_bytes=BIG)
    except CanonicalJsonError:
        return
    assert dumps(value) == data


_SLOW_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**54), max_value=2**54)
    | st.text(st.characters(codec=None, exclude_categories=()), max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(_SLOW_VALUES)
def test_dumps_fast_path_writes_what_the_full_writer_writes(value: object) -> None:
    """``dumps`` hands plain values to the C encoder; the bytes (or the refusal) must be
    exactly those of the full writer, for any mix of names, strings and integers."""
    from broker.core.canonical import _write

    out: list[str] = []
    try:
        _write(value, out, 0)
        expected: bytes | str = "".join(out).encode("utf-8")
    except (CanonicalJsonError, UnicodeEncodeError) as exc:
        expected = type(exc).__name__
    try:
        got: bytes | str = dumps(value)
    except CanonicalJsonError as exc:
        got = type(exc).__name__
    assert got == expected
