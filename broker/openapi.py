"""The OpenAPI 3.1 document of the security officers' API (``broker.officer_api``).

``openapi_document()`` returns it as a plain dict, served at
``GET /api/v1/openapi.json``. Schemas are JSON Schema 2020-12 (what OpenAPI 3.1
uses) and strict enough that ``tests/test_officer_api.py`` validates every real
answer, success and error, against the schema given here for its path and status.
Keep this file and the handlers in step: the contract tests fail when they drift.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any, Final

from broker import __version__
from broker.audit import EVENT_FIELDS, AuditKind
from broker.core.directory import ActorStatus
from broker.core.wire import SLUG_PATTERN

from .officer_auth import MAX_TOKEN_CHARS, AuthCode

__all__ = ["openapi_document"]

Schema = dict[str, Any]

_PREFIX: Final = "/api/v1"
_SLUG: Final[Schema] = {"type": "string", "pattern": SLUG_PATTERN, "maxLength": 64}
_HEX32: Final[Schema] = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
_HEX64: Final[Schema] = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_MILLIS: Final[Schema] = {"type": "integer", "minimum": 0, "maximum": 2**53 - 1}
_COUNT: Final[Schema] = {"type": "integer", "minimum": 0}
_TEXT: Final[Schema] = {"type": "string"}
_BOOL: Final[Schema] = {"type": "boolean"}
_JSON_MEDIA: Final = "application/json"
_TOKEN_CODES: Final = ["bad_token", "token_expired", "officer_revoked"]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _obj(properties: dict[str, Schema], *, optional: tuple[str, ...] = ()) -> Schema:
    """A closed object: every property required unless ``optional``, nothing else allowed."""
    return {
        "type": "object",
        "required": [name for name in properties if name not in optional],
        "properties": properties,
        "additionalProperties": False,
    }


def _array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


_COUNTS: Final[Schema] = {
    "type": "object",
    "description": "Counts by value (a missing value counts under `none`).",
    "additionalProperties": _COUNT,
}

_EVENT_FIELDS: Final = EVENT_FIELDS
_CHECKPOINT_FIELDS: Final = (
    "v",
    "kind",
    "number",
    "first",
    "last",
    "leaves",
    "chain",
    "previous",
    "at",
    "broker",
    "signer_key",
    "signature",
)


def _schemas() -> dict[str, Schema]:
    opt_text = _nullable(_TEXT)
    return {
        "Error": {
            **_obj({"error": {"type": "string", "pattern": "^[a-z][a-z_]*$"}, "detail": _TEXT}),
            "description": "Every error this API answers: a stable code and an English detail.",
        },
        "InternalError": {
            "type": "object",
            "description": "An unexpected failure (logged by the broker; no traceback here).",
            "required": ["error"],
            "properties": {
                "error": {"const": "internal_error"},
                "status": {"const": 500},
                "message": _TEXT,
                "detail": _TEXT,
            },
            "additionalProperties": False,
        },
        "ChallengeRequest": _obj({"officer": _SLUG}),
        "Challenge": _obj(
            {
                "officer": _SLUG,
                "challenge": {
                    "type": "string",
                    "pattern": "^[A-Za-z0-9_-]+$",
                    "maxLength": MAX_TOKEN_CHARS,
                    "description": "Broker-signed, base64url; sign `ssr-officer-login\\n` + this.",
                },
                "expires": _MILLIS,
            }
        ),
        "TokenRequest": _obj(
            {
                "officer": _SLUG,
                "challenge": {"type": "string", "maxLength": MAX_TOKEN_CHARS},
                "signature": {
                    "type": "string",
                    "pattern": "^[0-9a-fA-F]{128}$",
                    "description": "Ed25519 signature (hex) of the UTF-8 bytes of "
                    "`ssr-officer-login\\n` followed by the challenge.",
                },
            }
        ),
        "Session": _obj(
            {
                "token": {
                    "type": "string",
                    "pattern": "^[A-Za-z0-9_-]+$",
                    "maxLength": MAX_TOKEN_CHARS,
                },
                "officer": _SLUG,
                "scope": {
                    **_nullable(_SLUG),
                    "description": "The actor the officer may see; null: the whole region.",
                },
                "expires": _MILLIS,
            }
        ),
        "Label": {
            "type": "object",
            "description": "The message's security label as the broker recorded it.",
            "additionalProperties": {"anyOf": [_TEXT, _array(_TEXT), {"type": "null"}]},
        },
        "Event": {
            "type": "object",
            "description": "One audit event with its stream sequence `seq`. Checkpoints "
            "(kind `checkpoint`) seal the trail and have their own fields; an event the "
            "index could not read has kind `unreadable`, its `size` and `sha256`.",
            "required": ["seq", "kind"],
            "properties": {
                "seq": {"type": "integer", "minimum": 1},
                "v": _nullable({"type": "integer"}),
                "id": opt_text,
                "kind": _TEXT,
                "at": _nullable(_MILLIS),
                "broker": opt_text,
                "actor": opt_text,
                "message": opt_text,
                "reason": opt_text,
                "recipients": _array(_TEXT),
                "status": opt_text,
                "label": _nullable(_ref("Label")),
                "priority": opt_text,
                "incident": opt_text,
                "officer": opt_text,
                "detail": _TEXT,
                "number": {"type": "integer", "minimum": 1},
                "first": {"type": "integer", "minimum": 1},
                "last": {"type": "integer", "minimum": 1},
                "leaves": _array(_HEX64),
                "chain": _HEX64,
                "previous": _nullable(_HEX64),
                "signer_key": _HEX32,
                "signature": {"type": "string", "pattern": "^[0-9a-f]{128}$"},
                "size": _COUNT,
                "sha256": _HEX64,
            },
            "if": {"properties": {"kind": {"const": "checkpoint"}}},
            "then": {"required": list(_CHECKPOINT_FIELDS)},
            "else": {"required": list(_EVENT_FIELDS)},
        },
        "EventsPage": _obj(
            {
                "events": _array(_ref("Event")),
                "next": {
                    **_nullable({"type": "integer", "minimum": 1}),
                    "description": "Pass as `after` for the next page; null: no more.",
                },
            }
        ),
        "Refusal": _obj(
            {
                "seq": {"type": "integer", "minimum": 1},
                "kind": _TEXT,
                "actor": opt_text,
                "at": _nullable(_MILLIS),
                "reason": opt_text,
                "recipients": _array(_TEXT),
                "detail": _TEXT,
            }
        ),
        "ReceiptMarks": _obj(
            {
                "delivered": _nullable(_MILLIS),
                "read": _nullable(_MILLIS),
                "acknowledged": _nullable(_MILLIS),
            }
        ),
        "MessageTrace": _obj(
            {
                "message": _HEX32,
                "sender": opt_text,
                "recipients": _array(_TEXT),
                "label": _nullable(_ref("Label")),
                "status": opt_text,
                "priority": opt_text,
                "incident": opt_text,
                "accepted_at": _nullable(_MILLIS),
                "refusals": _array(_ref("Refusal")),
                "refusals_total": _COUNT,
                "receipts": {
                    "type": "object",
                    "description": "Per recipient: when each receipt kind was recorded.",
                    "additionalProperties": _ref("ReceiptMarks"),
                },
                "escalated": _array(_TEXT),
                "events": _array(_ref("Event")),
                "events_truncated": _BOOL,
            }
        ),
        "Flow": _obj(
            {
                "total": _COUNT,
                "by_classification": _COUNTS,
                "by_tlp": _COUNTS,
                "by_status": _COUNTS,
                "by_category": _COUNTS,
            }
        ),
        "Traffic": _obj(
            {
                "actor": _SLUG,
                "from": _MILLIS,
                "to": _MILLIS,
                "sent": _ref("Flow"),
                "received": _ref("Flow"),
                "refused": _obj(
                    {"total": _COUNT, "by_reason": _COUNTS, "recent": _array(_ref("Event"))}
                ),
                "named_in_refusals": _obj({"total": _COUNT, "by_reason": _COUNTS}),
                "receipts_signed": _obj(
                    {"delivered": _COUNT, "read": _COUNT, "acknowledged": _COUNT}
                ),
                "escalations": _COUNT,
                "escalations_as_sender": _COUNT,
            }
        ),
        "KeyState": _obj(
            {
                "key_id": _HEX32,
                "kind": {"enum": ["signing", "encryption"]},
                "not_before": _MILLIS,
                "not_after": _MILLIS,
                "revoked_at": _nullable(_MILLIS),
                "days_left": _COUNT,
                "state": {"enum": ["valid", "expiring", "expired", "revoked", "pending"]},
            }
        ),
        "AccessReview": _obj(
            {
                "actor": _SLUG,
                "name": _TEXT,
                "status": {"enum": [s.value for s in ActorStatus]},
                "directory_version": {"type": "integer", "minimum": 1},
                "from": _MILLIS,
                "to": _MILLIS,
                "generated": _MILLIS,
                "clearance": _obj(
                    {
                        "held": _TEXT,
                        "categories": _array(_TEXT),
                        "highest_received": opt_text,
                        "unused_levels": _array(_TEXT),
                        "unused_categories": _array(_TEXT),
                        "note": _TEXT,
                    }
                ),
                "keys": _array(_ref("KeyState")),
                "revoked_key_attempts": _array(_ref("Event")),
                "refused": _obj({"total": _COUNT, "by_reason": _COUNTS}),
                "dormant": _BOOL,
                "last_activity": _nullable(_MILLIS),
                "traffic": _ref("Traffic"),
            }
        ),
        "DirectoryChange": {
            **_obj(
                {
                    "actor": _TEXT,
                    "officer": _TEXT,
                    "broker": _TEXT,
                    "group": _TEXT,
                    "authority": _TEXT,
                    "change": _TEXT,
                    "from": {"description": "The value before (any JSON)."},
                    "to": {"description": "The value after (any JSON)."},
                    "key_id": _nullable(_HEX32),
                    "key_kind": {"enum": ["signing", "encryption", "authority"]},
                    "scope": _nullable(_SLUG),
                },
                optional=("actor", "officer", "broker", "group", "authority", "key_kind", "scope"),
            ),
            "oneOf": [
                {"required": [who]} for who in ("actor", "officer", "broker", "group", "authority")
            ],
        },
        "DirectoryVersion": _obj(
            {
                "version": {"type": "integer", "minimum": 1},
                "hash": _HEX64,
                "previous": _nullable(_HEX64),
                "issued": _MILLIS,
                "signed_by": _HEX32,
                "baseline": _BOOL,
                "changes": _array(_ref("DirectoryChange")),
            },
            optional=("baseline",),
        ),
        "DirectoryHistory": _obj({"versions": _array(_ref("DirectoryVersion"))}),
        "AuditStatus": _obj(
            {
                "verified": {
                    **_nullable(_BOOL),
                    "description": "null until the trail has been verified once.",
                },
                "checked_at": _nullable(_MILLIS),
                "events": _COUNT,
                "sealed_through": _COUNT,
                "latest_checkpoint": {
                    **_nullable(_obj({"number": _COUNT, "hash": _HEX64})),
                    "description": "The latest verified checkpoint: note it outside NATS (an"
                    " auditor's anchor against truncation, `ssr audit verify --expect`).",
                },
                "findings": _array(
                    _obj(
                        {
                            "seq": _nullable({"type": "integer", "minimum": 0}),
                            "problem": _TEXT,
                            "detail": _TEXT,
                        }
                    )
                ),
            },
            optional=("latest_checkpoint",),
        ),
    }


def _error(description: str, codes: list[str]) -> Schema:
    return {
        "description": f"{description} (`error`: {', '.join(codes)})",
        "content": {
            _JSON_MEDIA: {
                "schema": {"allOf": [_ref("Error"), {"properties": {"error": {"enum": codes}}}]}
            }
        },
    }


_CHALLENGE_HEADER: Final[Schema] = {
    "WWW-Authenticate": {
        "description": 'RFC 6750: `Bearer realm="ssr"`, with `error="invalid_token"` and '
        "the code as `error_description` when a token or login was refused.",
        "required": True,
        "schema": {"type": "string", "pattern": '^Bearer realm="ssr"'},
    }
}


def _unauthorized(description: str, codes: list[str]) -> Schema:
    """A 401: the error body and the ``WWW-Authenticate`` challenge every 401 carries."""
    return {**_error(description, codes), "headers": _CHALLENGE_HEADER}


def _ok(description: str, schema: str) -> Schema:
    return {"description": description, "content": {_JSON_MEDIA: {"schema": _ref(schema)}}}


_INTERNAL: Final[Schema] = {
    "description": "Unexpected failure",
    "content": {_JSON_MEDIA: {"schema": _ref("InternalError")}},
}


def _param(name: str, where: str, schema: Schema, description: str, **more: Any) -> Schema:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "schema": schema,
        "description": description,
        **more,
    }


_TIME: Final[Schema] = {
    "type": "string",
    "maxLength": 64,
    "anyOf": [{"pattern": "^[0-9]{1,16}$"}, {"format": "date-time"}],
}
_TIME_NOTE: Final = (
    "epoch milliseconds or ISO 8601 with a timezone (encode `+` as `%2B`, or use `Z`)"
)


def _parameters() -> dict[str, Schema]:
    return {
        "From": _param(
            "from",
            "query",
            _TIME,
            f"Start of the period, inclusive: {_TIME_NOTE}. "
            "Default: 30 days before `to`. The period is at most 366 days.",
        ),
        "To": _param(
            "to", "query", _TIME, f"End of the period, exclusive: {_TIME_NOTE}. Default: now."
        ),
        "After": _param(
            "after",
            "query",
            {"type": "integer", "minimum": 0},
            "Only events with a larger `seq` (the `next` of the previous page).",
        ),
        "Limit": _param(
            "limit",
            "query",
            {"type": "integer", "minimum": 1, "maximum": 500, "default": 100},
            "Most events in the page.",
        ),
        "Kind": _param(
            "kind",
            "query",
            _array({"enum": [k.value for k in AuditKind]}),
            "Only events of these kinds (repeat the parameter for several).",
            style="form",
            explode=True,
        ),
        "ActorQuery": _param(
            "actor",
            "query",
            _SLUG,
            "Only events concerning this actor (its own, or naming it as recipient). "
            "An actor's officer always gets their own actor's; another is 403.",
        ),
        "ActorPath": _param("actor", "path", _SLUG, "An actor id from the directory."),
        "MessageId": _param(
            "message_id", "path", _HEX32, "The message id (32 lowercase hex digits)."
        ),
    }


def _pref(name: str) -> Schema:
    return {"$ref": f"#/components/parameters/{name}"}


def _read(
    summary: str,
    description: str,
    ok: Schema,
    *,
    parameters: list[str],
    not_found: list[str] | None = None,
    scoped: bool = False,
    tag: str = "audit",
) -> Schema:
    responses: dict[str, Schema] = {
        "200": ok,
        "400": _error("A parameter is malformed or out of range", ["bad_parameter"]),
        "401": _unauthorized("No valid bearer token", ["unauthenticated", *_TOKEN_CODES]),
    }
    if scoped:
        responses["403"] = _error("Outside the officer's scope (audited)", ["out_of_scope"])
    if not_found:
        responses["404"] = _error("Not found", not_found)
    responses["500"] = _INTERNAL
    responses["503"] = _error(
        "The query could not be audited, so it was not answered", ["audit_unavailable"]
    )
    return {
        "tags": [tag],
        "summary": summary,
        "description": description,
        "parameters": [_pref(p) for p in parameters],
        "responses": dict(sorted(responses.items())),
    }


def _login(summary: str, description: str, request: str, ok: Schema, failures: Schema) -> Schema:
    return {
        "tags": ["login"],
        "summary": summary,
        "description": description,
        "security": [],
        "requestBody": {
            "required": True,
            "content": {_JSON_MEDIA: {"schema": _ref(request)}},
        },
        "responses": {
            "200": ok,
            "400": _error(
                "The body is not a JSON object with exactly these fields", ["bad_request"]
            ),
            **failures,
            "413": _error("The body is larger than 8 KiB", ["body_too_large"]),
            "500": _INTERNAL,
        },
    }


def _paths() -> dict[str, Schema]:
    auth_codes = [c.value for c in AuthCode if c.value not in _TOKEN_CODES]
    return {
        f"{_PREFIX}/auth/challenge": {
            "post": _login(
                "Ask for a login challenge",
                "A broker-signed challenge, valid 60 s, that any broker of the region accepts. "
                "Sign `ssr-officer-login\\n` + challenge with your directory key "
                "(`ssr officer sign --key FILE CHALLENGE`).",
                "ChallengeRequest",
                _ok("The challenge", "Challenge"),
                {"404": _error("No such officer in the directory", ["unknown_officer"])},
            )
        },
        f"{_PREFIX}/auth/token": {
            "post": _login(
                "Redeem a signed challenge for a bearer token",
                "A token valid 15 minutes. Each challenge is redeemed once; the officer's key "
                "must be usable now, and every later request re-checks it against the "
                "current directory (a revocation takes effect at once).",
                "TokenRequest",
                _ok("The session", "Session"),
                {"401": _unauthorized("Login refused", auth_codes)},
            )
        },
        f"{_PREFIX}/messages/{{message_id}}": {
            "get": _read(
                "One message's trace",
                "Sender, recipients, label, refusals, receipts, escalations and every audit "
                "event of the message (never content). An actor's officer sees only messages "
                "their actor sent or was addressed; others answer 404 as if unknown.",
                _ok("The trace", "MessageTrace"),
                parameters=["MessageId"],
                not_found=["not_found"],
            )
        },
        f"{_PREFIX}/actors/{{actor}}/traffic": {
            "get": _read(
                "An actor's traffic in a period",
                "Sent and received messages by classification, TLP, status and category; "
                "refusals; receipts signed; escalations.",
                _ok("The traffic summary", "Traffic"),
                parameters=["ActorPath", "From", "To"],
                not_found=["unknown_actor"],
                scoped=True,
            )
        },
        f"{_PREFIX}/actors/{{actor}}/review": {
            "get": _read(
                "An access review of an actor",
                "Clearance held against clearance used, keys and their state, attempts with "
                "revoked keys, refusals, dormancy.",
                _ok("The access review", "AccessReview"),
                parameters=["ActorPath", "From", "To"],
                not_found=["unknown_actor"],
                scoped=True,
            )
        },
        f"{_PREFIX}/events": {
            "get": _read(
                "Audit events",
                "Events in ascending `seq`, filtered; page with `after` = the previous `next`. "
                "An actor's officer gets only events concerning their actor.",
                _ok("A page of events", "EventsPage"),
                parameters=["Kind", "ActorQuery", "From", "To", "After", "Limit"],
                not_found=["unknown_actor"],
                scoped=True,
            )
        },
        f"{_PREFIX}/directory/history": {
            "get": _read(
                "The directory's versions and what each changed",
                "Every signed version, oldest first, with who signed it and the changes; an "
                "actor's officer sees only the changes concerning their actor.",
                _ok("The history", "DirectoryHistory"),
                parameters=[],
                tag="directory",
            )
        },
        f"{_PREFIX}/audit/status": {
            "get": _read(
                "The latest verification of the audit trail",
                "Whether the trail verified against its signed checkpoints, when, how far it "
                "is sealed, and every finding (altered, deleted, reordered, truncated).",
                _ok("The status", "AuditStatus"),
                parameters=[],
            )
        },
        f"{_PREFIX}/openapi.json": {
            "get": {
                "tags": ["meta"],
                "summary": "This document",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The OpenAPI 3.1 document",
                        "content": {_JSON_MEDIA: {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    }


@cache
def _document() -> Schema:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ssr-broker security officers' API",
            "version": __version__,
            "description": (
                "Security officers (säkerhetschefer) log in with their directory key and read "
                "the audit trail within their scope: an actor's officer sees that actor's "
                "traffic and refusals, a regional officer everything. Every query and every "
                "refusal for scope is itself an audit event. Times are epoch milliseconds. "
                'Errors are `{"error": code, "detail": text}`.'
            ),
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "tags": [
            {"name": "login", "description": "Challenge-response login"},
            {"name": "audit", "description": "The audit trail"},
            {"name": "directory", "description": "The signed directory"},
            {"name": "meta", "description": "This document"},
        ],
        "paths": _paths(),
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "ssr officer token (broker-signed, 15 min)",
                }
            },
            "schemas": _schemas(),
            "parameters": _parameters(),
        },
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``/api/v1`` (a fresh copy; the caller may change it).

    >>> openapi_document()["openapi"]
    '3.1.0'
    """
    return copy.deepcopy(_document())
