"""NATS subjects, streams, consumers and KV buckets of ssr-broker: names only, no I/O.

| subject / bucket            | stream / store  | content                                   |
|-----------------------------|-----------------|-------------------------------------------|
| ``ssr.submit.<actor>``      | SSR_SUBMIT      | envelopes, receipts, directory versions   |
|                             | (work queue)    | published by an actor                     |
| ``ssr.deliver.<actor>``     | SSR_DELIVER     | envelopes, forwarded receipts and notices |
|                             | (limits, age)   | for an actor; one durable consumer each   |
| ``ssr.audit.<kind>``        | SSR_AUDIT       | audit events; deny delete, deny purge     |
| KV ``ssr_directory``        |                 | signed directory versions by ``v<N>``      |
| KV ``ssr_state``            |                 | ``mode``, ``incident.<id>``,              |
|                             |                 | ``join.<incident>.<actor>`` (queued joins) |
| KV ``ssr_messages``         |                 | per message: header, receipt state        |
| KV ``ssr_index``            |                 | ``<incident>.<message id>``: index entry   |
"""

from __future__ import annotations

import re

SUBMIT_STREAM = "SSR_SUBMIT"
DELIVER_STREAM = "SSR_DELIVER"
AUDIT_STREAM = "SSR_AUDIT"
SUBMIT_WILDCARD = "ssr.submit.*"
DELIVER_WILDCARD = "ssr.deliver.*"
AUDIT_WILDCARD = "ssr.audit.>"
BROKER_CONSUMER = "ssr-broker"
DIRECTORY_BUCKET = "ssr_directory"
STATE_BUCKET = "ssr_state"
MESSAGES_BUCKET = "ssr_messages"
INDEX_BUCKET = "ssr_index"
MODE_KEY = "mode"
CURRENT_DIRECTORY_KEY = "current"
INCIDENT_PATTERN = "incident.>"  # every incident record in ``ssr_state``
JOIN_PATTERN = "join.>"  # every queued late joiner in ``ssr_state``

_TOKEN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
_MESSAGE_ID = re.compile(r"^[0-9a-f]{32}$")


def submit_subject(actor: str) -> str:
    return f"ssr.submit.{_token(actor)}"


def deliver_subject(actor: str) -> str:
    return f"ssr.deliver.{_token(actor)}"


def audit_subject(kind: str) -> str:
    return f"ssr.audit.{kind}"


def actor_of_submit(subject: str) -> str | None:
    """The actor a submit subject belongs to, or None for anything else."""
    parts = subject.split(".")
    if len(parts) == 3 and parts[:2] == ["ssr", "submit"] and _TOKEN.match(parts[2]):
        return parts[2]
    return None


def incident_key(incident_id: str) -> str:
    return f"incident.{_token(incident_id)}"


def join_key(incident_id: str, actor: str) -> str:
    """A queued late joiner whose grant requests are still to be sent."""
    return f"join.{_token(incident_id)}.{_token(actor)}"


def index_prefix(incident_id: str) -> str:
    """The key prefix of an incident's message index; ``index_prefix(i) + ">"`` watches it."""
    return f"{_token(incident_id)}."


def index_key(incident_id: str, message_id: str) -> str:
    """The index entry (``IncidentEntry``, header metadata only) of one incident message."""
    if not _MESSAGE_ID.match(message_id):
        raise ValueError(f"{message_id!r} is not a message id")
    return index_prefix(incident_id) + message_id


def directory_key(version: int) -> str:
    return f"v{version:08d}"


def _token(value: str) -> str:
    if not _TOKEN.match(value):
        raise ValueError(f"{value!r} is not a valid subject token")
    return value
