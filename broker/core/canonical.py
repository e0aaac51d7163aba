"""Canonical JSON: the strict RFC 8785 subset every signed document uses.

The subset: objects with string keys, arrays, strings, booleans, null and
integers in the I-JSON safe range (|n| <= 2**53 - 1). No floats, so the
number serialisation of RFC 8785 reduces to plain decimal integers.

``dumps`` writes the canonical form: no white space, object members sorted
by the UTF-16 code units of their names, strings escaped exactly as
ECMAScript ``JSON.stringify`` does (``\\"``, ``\\\\``, ``\\b \\f \\n \\r \\t``,
other control characters as ``\\u00xx``), everything else as raw UTF-8.

``loads`` is the strict reader: valid UTF-8, no duplicate names, no floats,
no NaN/Infinity, bounded depth and integers, no lone surrogates, and the
input must be byte-for-byte canonical. A document has exactly one encoding,
so a signature over it means one thing.
"""

from __future__ import annotations

import json
import re
from json.encoder import encode_basestring as _encode_string
from typing import Any

from .errors import CanonicalJsonError
from .limits import MAX_JSON_DEPTH, MAX_SAFE_INTEGER

JsonValue = Any  # dict[str, JsonValue] | list[JsonValue] | str | int | bool | None

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_MAX_INT_DIGITS = len(str(MAX_SAFE_INTEGER)) + 1  # room for a sign


def _escape(text: str) -> str:
    # The stdlib's C encoder escapes exactly as JSON.stringify does: \" \\ \b \f \n \r \t,
    # other control characters as lowercase \u00xx, everything else verbatim.
    if _LONE_SURROGATE.search(text):
        raise CanonicalJsonError("string contains a lone surrogate")
    return _encode_string(text)


def _utf16_key(name: str) -> bytes:
    return name.encode("utf-16-be", "surrogatepass")


def _write(value: JsonValue, out: list[str], depth: int) -> None:
    if depth > MAX_JSON_DEPTH:
        raise CanonicalJsonError(f"nesting deeper than {MAX_JSON_DEPTH}")
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise CanonicalJsonError(f"integer {value} outside the I-JSON safe range")
        out.append(str(value))
    elif isinstance(value, str):
        out.append(_escape(value))
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out, depth + 1)
        out.append("]")
    elif isinstance(value, dict):
        out.append("{")
        if not all(isinstance(name, str) for name in value):  # before sorting: key needs str
            raise CanonicalJsonError("object member names must be strings")
        for i, name in enumerate(sorted(value, key=_utf16_key)):
            if i:
                out.append(",")
            out.append(_escape(name))
            out.append(":")
            _write(value[name], out, depth + 1)
        out.append("}")
    else:
        raise CanonicalJsonError(f"type {type(value).__name__} is not allowed in canonical JSON")


def dumps(value: JsonValue) -> bytes:
    """Serialise ``value`` to canonical UTF-8 bytes.

    >>> dumps({"b": 1, "a": [True, None, "x"]})
    b'{"a":[true,null,"x"],"b":1}'
    """
    if _plain(value, 0):  # the common case, written by the C encoder: the same bytes
        return dumps_ascii_keys(value)
    out: list[str] = []
    _write(value, out, 0)
    return "".join(out).encode("utf-8")


def _plain(value: JsonValue, depth: int) -> bool:
    """Whether ``value`` holds only what the stdlib's C encoder writes exactly as the
    canonical form: strings, in-range integers, booleans, null, lists and tuples, and
    objects whose names are ASCII (code point order is then UTF-16 order), nested no
    deeper than the bound. Anything else takes the full writer, which also says why a
    value is refused."""
    if depth > MAX_JSON_DEPTH:
        return False
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(-MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER)
    if kind is list or kind is tuple:
        return all(_plain(item, depth + 1) for item in value)
    if kind is dict:
        return all(
            type(name) is str and name.isascii() and _plain(item, depth + 1)
            for name, item in value.items()
        )
    return False


def dumps_ascii_keys(value: JsonValue) -> bytes:
    """``dumps`` for values whose object names are all ASCII and whose integers are known
    to be in range (validated wire models): the C encoder then yields the same bytes.

    ASCII names sort the same by code point as by UTF-16 code unit, and models hold no
    floats. Lone surrogates are still refused. ``tests`` compare both paths.
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CanonicalJsonError("string contains a lone surrogate") from exc


def _no_duplicates(pairs: list[tuple[str, JsonValue]]) -> dict[str, JsonValue]:
    result: dict[str, JsonValue] = {}
    for name, value in pairs:
        if name in result:
            raise CanonicalJsonError(f"duplicate object member {name!r}")
        result[name] = value
    return result


def _parse_int(text: str) -> int:
    if len(text) > _MAX_INT_DIGITS:
        raise CanonicalJsonError("integer too large")
    number = int(text)
    if abs(number) > MAX_SAFE_INTEGER:
        raise CanonicalJsonError(f"integer {text} outside the I-JSON safe range")
    return number


def _refuse_float(text: str) -> float:
    raise CanonicalJsonError("numbers must be integers (no fractions or exponents)")


def _refuse_constant(text: str) -> float:
    raise CanonicalJsonError(f"{text} is not JSON")


def loads(data: bytes, *, max_bytes: int, require_canonical: bool = True) -> JsonValue:
    """Parse strict canonical JSON; raise :class:`CanonicalJsonError` otherwise.

    >>> loads(b'{"a":1}', max_bytes=100)
    {'a': 1}
    """
    if len(data) > max_bytes:
        raise CanonicalJsonError(f"document of {len(data)} bytes exceeds {max_bytes}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CanonicalJsonError("not valid UTF-8") from exc
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_int=_parse_int,
            parse_float=_refuse_float,
            parse_constant=_refuse_constant,
        )
    except CanonicalJsonError:
        raise
    except RecursionError as exc:
        raise CanonicalJsonError("nesting too deep") from exc
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise CanonicalJsonError(f"not JSON: {exc}") from exc
    if require_canonical and dumps(value) != data:  # also enforces depth and lone-surrogate rules
        raise CanonicalJsonError("JSON is valid but not in canonical form (RFC 8785 subset)")
    return value
