"""Access reviews, dormant actors and directory history over the demo region.

Directories are real signed successors of the demo directory (as a client would
accept them); the index holds events built by ``broker.audit.audit_event``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.audit import AuditKind, audit_event
from broker.audit_index import AuditIndex
from broker.core import (
    Actor,
    ActorKind,
    ActorStatus,
    Identity,
    KeyRecord,
    Policy,
    SigningKeyPair,
    VerifiedDirectory,
    sign_directory,
    successor,
    verify_directory,
)
from broker.core.crypto import seeded_random
from broker.demo import YEAR_MS, DemoRegion
from broker.review import (
    DAY_MS,
    UnknownActor,
    access_review,
    directory_history,
    dormant_actors,
    scoped_history,
)

from .conftest import NOW
from .envelope_helpers import actor, edit_directory, encryption_key_update, signing_key_update

START = NOW - 30 * DAY_MS
END = NOW
SEKRETESS = {
    "policy": "ssr",
    "classification": "SEKRETESS",
    "tlp": "AMBER",
    "categories": ["taktik"],
    "legal": "OSL 18:13",
}
INTERN = {"policy": "ssr", "classification": "INTERN", "tlp": "GREEN", "categories": []}


def event(kind: AuditKind, at: int, key: str, who: str | None, **fields: Any) -> bytes:
    return audit_event(kind, at=at, broker="ssr-broker", key=key, actor=who, **fields)[1]


def accepted(sender: str, to: Iterable[str], at: int, label: dict[str, Any]) -> bytes:
    key = f"{sender}.{at}"
    recipients = tuple(to)
    return event(
        AuditKind.ACCEPTED,
        at,
        key,
        sender,
        message=key,
        recipients=recipients,
        status="actual",
        label=label,
    )


def refused(
    submitter: str, reason: str, at: int, kind: AuditKind = AuditKind.REJECTED, **fields: Any
) -> bytes:
    return event(kind, at, f"{submitter}.{at}", submitter, reason=reason, **fields)


def officer_query(about: str, at: int) -> bytes:
    return event(AuditKind.OFFICER_QUERY, at, f"q.{at}", about, officer="sakerhetschef-nacka")


@pytest.fixture
def index(tmp_path: Path) -> Iterator[AuditIndex]:
    ix = AuditIndex(tmp_path / "audit.sqlite")
    try:
        yield ix
    finally:
        ix.close()


def fill(index: AuditIndex, events: Iterable[bytes]) -> None:
    index.add(enumerate(events, start=index.last_seq() + 1))


# --- access review -----------------------------------------------------------------------------


@pytest.fixture
def reviewed(region: DemoRegion) -> VerifiedDirectory:
    """Trafikverket's signing key revoked yesterday and its encryption key ending in 10 days."""
    return edit_directory(
        region,
        {
            "trafikverket": signing_key_update(region, "trafikverket", revoked_at=NOW - DAY_MS)
            | encryption_key_update(region, "trafikverket", not_after=NOW + 10 * DAY_MS + 5)
        },
    )


def test_access_review(index: AuditIndex, reviewed: VerifiedDirectory, policy: Policy) -> None:
    fill(
        index,
        [
            accepted("nacka", ["trafikverket", "solna"], START - 1, SEKRETESS),  # before
            accepted("nacka", ["trafikverket"], START, INTERN),
            accepted("trafikverket", ["nacka"], START + 10, SEKRETESS),  # sent, not received
            refused("trafikverket", "sender_key_revoked", START + 20, message="m1"),
            refused("trafikverket", "expired", START + 30, message="m2"),
            refused(
                "trafikverket", "receipt_key_invalid", START + 40, kind=AuditKind.RECEIPT_REJECTED
            ),
            refused("solna", "sender_key_revoked", START + 50),  # another actor's
            refused("nacka", "recipient_lacks_category", START + 60, recipients=("trafikverket",)),
            refused("trafikverket", "sender_key_revoked", END, message="m3"),  # after
            officer_query("trafikverket", START + 70),
        ],
    )
    report = access_review(index, reviewed, policy, "trafikverket", START, END, now=NOW)

    assert report["actor"] == "trafikverket"
    assert report["name"] == "Trafikverket"
    assert (report["from"], report["to"], report["generated"]) == (START, END, NOW)
    assert report["status"] == "active"
    assert report["directory_version"] == 2

    clearance = report["clearance"]
    assert clearance["held"] == "SEKRETESS"
    assert clearance["categories"] == ["infrastruktur"]
    assert clearance["highest_received"] == "INTERN"  # SEKRETESS only before the period
    assert clearance["unused_levels"] == ["SEKRETESS"]
    assert clearance["unused_categories"] == ["infrastruktur"]
    assert (
        "clearance SEKRETESS, nothing above INTERN received: consider lowering"
        in (clearance["note"])
    )
    assert "1 messages refused because the actor lacked clearance" in clearance["note"]

    signing, encryption = report["keys"]
    record = reviewed.actor("trafikverket")
    assert record is not None
    assert signing["kind"] == "signing"
    assert signing["key_id"] == record.signing_keys[0].key_id
    assert signing["state"] == "revoked"
    assert signing["revoked_at"] == NOW - DAY_MS
    assert encryption["kind"] == "encryption"
    assert encryption["key_id"] == record.encryption_keys[0].key_id
    assert encryption["state"] == "expiring"
    assert encryption["days_left"] == 10
    assert encryption["not_after"] == NOW + 10 * DAY_MS + 5

    attempts = report["revoked_key_attempts"]
    assert [(e["reason"], e["at"]) for e in attempts] == [
        ("receipt_key_invalid", START + 40),
        ("sender_key_revoked", START + 20),
    ]
    assert report["refused"] == {
        "total": 3,
        "by_reason": {"sender_key_revoked": 1, "expired": 1, "receipt_key_invalid": 1},
    }
    assert report["dormant"] is False
    assert report["last_activity"] == START + 60  # the officer's query is not activity
    assert report["traffic"] == index.actor_traffic("trafikverket", START, END)
    assert report["traffic"]["sent"]["total"] == 1


def test_clearance_notes(index: AuditIndex, region: DemoRegion, policy: Policy) -> None:
    fill(
        index,
        [
            accepted("nacka", ["forsvarsmakten-mmr", "polisen-stockholm"], START, SEKRETESS),
            accepted("nacka", ["stockholms-hamnar"], START + 1, INTERN),
        ],
    )

    def clearance(who: str) -> dict[str, Any]:
        report = access_review(index, region.directory, policy, who, START, END, now=NOW)
        return dict(report["clearance"])

    military = clearance("forsvarsmakten-mmr")  # HEMLIG, above the SEKRETESS ceiling
    assert military["highest_received"] == "SEKRETESS"
    assert military["unused_levels"] == ["BEGRÄNSAT HEMLIG", "KONFIDENTIELL", "HEMLIG"]
    assert "HEMLIG is above the broker's ceiling SEKRETESS" in military["note"]
    assert military["unused_categories"] == ["infrastruktur"]  # it got taktik only

    police = clearance("polisen-stockholm")
    assert police["unused_levels"] == []
    assert police["note"] == "clearance SEKRETESS, used up to SEKRETESS"

    assert clearance("stockholms-hamnar")["note"] == "clearance INTERN, used up to INTERN"

    idle = clearance("salem")
    assert idle["highest_received"] is None
    assert idle["unused_levels"] == ["OFFENTLIG", "INTERN", "SEKRETESS"]
    assert "nothing received in the period" in idle["note"]

    ladder = Policy(ladder=("ÖPPEN", "INTERN", "SEKRETESS"), ceiling="SEKRETESS")
    report = access_review(index, region.directory, ladder, "salem", START, END, now=NOW)
    assert report["clearance"]["unused_levels"] == ["ÖPPEN", "INTERN", "SEKRETESS"]


def test_key_states_over_time(index: AuditIndex, region: DemoRegion, policy: Policy) -> None:
    upcoming = KeyRecord.for_key(
        SigningKeyPair.generate(seeded_random(b"upcoming")).public,
        not_before=NOW + 5 * DAY_MS,
        not_after=NOW + 3 * YEAR_MS,
    )
    (current,) = actor(region, "solna").signing_keys
    directory = edit_directory(region, {"solna": {"signing_keys": (current, upcoming)}})

    def states(now: int) -> list[tuple[str, str, int]]:
        report = access_review(index, directory, policy, "solna", START, END, now=now)
        return [(k["kind"], k["state"], k["days_left"]) for k in report["keys"]]

    assert states(NOW) == [
        ("signing", "valid", 730),
        ("signing", "pending", 1095 + 0),
        ("encryption", "valid", 730),
    ]
    later = NOW + 2 * YEAR_MS - 29 * DAY_MS
    assert states(later) == [
        ("signing", "expiring", 29),
        ("signing", "valid", 394),
        ("encryption", "expiring", 29),
    ]
    assert states(NOW + 2 * YEAR_MS) == [
        ("signing", "expired", 0),
        ("signing", "valid", 365),
        ("encryption", "expired", 0),
    ]


def test_dormant(index: AuditIndex, region: DemoRegion, policy: Policy) -> None:
    directory = edit_directory(region, {"salem": {"status": ActorStatus.SUSPENDED}})
    fill(
        index,
        [
            accepted("nacka", ["solna"], START - 5 * DAY_MS, INTERN),  # before the period
            officer_query("nacka", START + 1),  # a review is not activity
            officer_query("solna", START + 2),
            accepted("stockholm", ["polisen-stockholm", "sos-alarm"], START + 3, INTERN),
            refused("danderyd", "expired", START + 4),
            event(
                AuditKind.RECEIPT,
                START + 5,
                "r",
                "taby",
                recipients=("taby",),
                message="x",
                detail="delivered",
            ),
        ],
    )
    nacka = access_review(index, directory, policy, "nacka", START, END, now=NOW)
    assert nacka["dormant"] is True
    assert nacka["last_activity"] == START - 5 * DAY_MS
    vaxholm = access_review(index, directory, policy, "vaxholm", START, END, now=NOW)
    assert (vaxholm["dormant"], vaxholm["last_activity"]) == (True, None)

    busy = {"stockholm", "polisen-stockholm", "sos-alarm", "danderyd", "taby"}
    expected = sorted(a.id for a in directory.document.actors if a.id not in busy | {"salem"})
    found = dormant_actors(index, directory, START, END)
    assert found == expected
    assert {"nacka", "solna"} <= set(found)  # only reviewed, or active before the period
    assert "salem" not in found  # suspended
    assert len(found) == 37 - len(busy) - 1


def test_unknown_actor(index: AuditIndex, region: DemoRegion, policy: Policy) -> None:
    with pytest.raises(UnknownActor) as caught:
        access_review(index, region.directory, policy, "atlantis", START, END, now=NOW)
    assert caught.value.code == "unknown_actor"
    assert isinstance(caught.value, LookupError)


# --- directory history -------------------------------------------------------------------------


def _next(
    region: DemoRegion, previous: VerifiedDirectory, issued: int, **changes: Any
) -> VerifiedDirectory:
    document = successor(previous, issued=issued, **changes)
    return verify_directory(
        sign_directory(document, region.authority),
        pinned=region.authority.public,
        previous=previous,
    )


def _edit(directory: VerifiedDirectory, actor_id: str, **update: Any) -> tuple[Actor, ...]:
    return tuple(
        a.model_copy(update=update) if a.id == actor_id else a for a in directory.document.actors
    )


def _edit_in(
    actors: tuple[Actor, ...], actor_id: str, signing_keys: tuple[KeyRecord, ...]
) -> tuple[Actor, ...]:
    return tuple(
        a.model_copy(update={"signing_keys": signing_keys}) if a.id == actor_id else a
        for a in actors
    )


END_V3 = NOW + YEAR_MS


@pytest.fixture
def chain(region: DemoRegion) -> list[VerifiedDirectory]:
    """v1 the demo; v2: a clearance raised and nacka's signing key rotated; v3: nacka's old
    key revoked, a port added, nacka's officer moved to Värmdö, a second authority key."""
    v1 = region.directory
    rand = seeded_random(b"review-chain")
    (old,) = actor(region, "nacka").signing_keys
    new = KeyRecord.for_key(
        SigningKeyPair.generate(rand).public, not_before=NOW + DAY_MS, not_after=NOW + 2 * YEAR_MS
    )
    shortened = old.model_copy(update={"not_after": NOW + 7 * DAY_MS})
    actors = _edit(v1, "stockholms-hamnar", clearance="SEKRETESS")
    v2 = _next(region, v1, NOW + DAY_MS, actors=_edit_in(actors, "nacka", (shortened, new)))

    port = Identity.generate("norvik-hamn", rand)
    added = Actor(
        id="norvik-hamn",
        name="Stockholm Norvik Hamn",
        kind=ActorKind.PORT,
        clearance="INTERN",
        groups=("samordnande",),
        signing_keys=(KeyRecord.for_key(port.signing.public, not_before=NOW, not_after=END_V3),),
        encryption_keys=(
            KeyRecord.for_key(port.encryption.public, not_before=NOW, not_after=END_V3),
        ),
    )
    revoked = shortened.model_copy(update={"revoked_at": NOW + 2 * DAY_MS})
    actors = tuple(
        sorted((*_edit_in(v2.document.actors, "nacka", (revoked, new)), added), key=lambda a: a.id)
    )
    officers = tuple(
        o.model_copy(update={"actor": "varmdo"}) if o.id == "sakerhetschef-nacka" else o
        for o in v2.document.officers
    )
    authority = KeyRecord.for_key(
        SigningKeyPair.generate(rand).public, not_before=NOW, not_after=NOW + YEAR_MS
    )
    v3 = _next(
        region,
        v2,
        NOW + 2 * DAY_MS,
        actors=actors,
        officers=officers,
        authority_keys=(*v2.document.authority_keys, authority),
    )
    return [v1, v2, v3]


def _without_principal(change: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in change.items() if k not in ("actor", "officer", "authority")}


def test_directory_history(region: DemoRegion, chain: list[VerifiedDirectory]) -> None:
    v1, v2, v3 = chain
    history = directory_history([v3, v1, v2])  # any order in, oldest first out
    assert [h["version"] for h in history] == [1, 2, 3]
    assert [h["hash"] for h in history] == [v.hash for v in chain]
    assert [h["previous"] for h in history] == [None, v1.hash, v2.hash]
    assert [h["issued"] for h in history] == [NOW, NOW + DAY_MS, NOW + 2 * DAY_MS]
    assert {h["signed_by"] for h in history} == {region.authority.key_id}

    first = history[0]["changes"]
    added = [c["actor"] for c in first if c.get("actor") and c["change"] == "added"]
    assert added == sorted(a.id for a in v1.document.actors)
    assert sum(c["change"] == "key_added" and "actor" in c for c in first) == 2 * 37
    assert {c["officer"] for c in first if "officer" in c} == {
        "sakerhetschef-lansstyrelsen",
        "sakerhetschef-nacka",
    }
    assert {c.get("group") for c in first if "group" in c} == {g.id for g in v1.document.groups}
    assert any(c.get("broker") == "ssr-broker" and c["change"] == "added" for c in first)
    assert {c["change"] for c in first if "authority" in c} == {"key_added"}

    (old,) = actor(region, "nacka").signing_keys
    nacka = v2.actor("nacka")
    assert nacka is not None
    new_key = next(k for k in nacka.signing_keys if k.key_id != old.key_id)
    assert history[1]["changes"] == [
        {
            "actor": "nacka",
            "change": "key_expiry_changed",
            "from": old.not_after,
            "to": NOW + 7 * DAY_MS,
            "key_id": old.key_id,
            "key_kind": "signing",
        },
        {
            "actor": "nacka",
            "change": "key_added",
            "from": None,
            "to": {"not_before": NOW + DAY_MS, "not_after": NOW + 2 * YEAR_MS},
            "key_id": new_key.key_id,
            "key_kind": "signing",
        },
        {
            "actor": "stockholms-hamnar",
            "change": "clearance",
            "from": "INTERN",
            "to": "SEKRETESS",
            "key_id": None,
        },
    ]

    third = history[2]["changes"]
    by_change = {(next(iter(c)), c[next(iter(c))], c["change"]): c for c in third}
    assert set(by_change) == {
        ("authority", "ssr", "key_added"),
        ("actor", "nacka", "key_revoked"),
        ("actor", "norvik-hamn", "added"),
        ("actor", "norvik-hamn", "key_added"),
        ("officer", "sakerhetschef-nacka", "scope"),
    }
    revoked = by_change[("actor", "nacka", "key_revoked")]
    assert _without_principal(revoked) == {
        "change": "key_revoked",
        "from": None,
        "to": NOW + 2 * DAY_MS,
        "key_id": old.key_id,
        "key_kind": "signing",
    }
    scope = by_change[("officer", "sakerhetschef-nacka", "scope")]
    assert (scope["from"], scope["to"], scope["scope"]) == ("nacka", "varmdo", "varmdo")
    assert sum(c["change"] == "key_added" and c.get("actor") == "norvik-hamn" for c in third) == 2


def test_history_starting_after_version_1_is_a_baseline(chain: list[VerifiedDirectory]) -> None:
    history = directory_history(chain[1:])
    assert history[0]["baseline"] is True
    assert history[0]["changes"] == []
    assert history[1]["changes"] == directory_history(chain)[2]["changes"]


def test_field_changes_are_json_values(region: DemoRegion) -> None:
    update = {"status": ActorStatus.SUSPENDED, "categories": ("taktik",), "groups": ("kommuner",)}
    edited = edit_directory(region, {"solna": update})
    changes = directory_history([region.directory, edited])[1]["changes"]
    assert [(c["change"], c["from"], c["to"]) for c in changes] == [
        ("status", "active", "suspended"),
        ("categories", [], ["taktik"]),
        ("groups", ["kommuner", "tib"], ["kommuner"]),
    ]


def test_scoped_history(chain: list[VerifiedDirectory]) -> None:
    history = directory_history(chain)
    nacka = scoped_history(history, "nacka")
    assert [h["version"] for h in nacka] == [1, 2, 3]  # every version stays listed
    assert [h["hash"] for h in nacka] == [h["hash"] for h in history]
    v1, v2, v3 = (
        [(c.get("actor") or c.get("officer"), c["change"]) for c in h["changes"]] for h in nacka
    )
    assert v1 == [
        ("nacka", "added"),
        ("nacka", "key_added"),
        ("nacka", "key_added"),
        ("sakerhetschef-nacka", "added"),
        ("sakerhetschef-nacka", "key_added"),
    ]
    assert v2 == [("nacka", "key_expiry_changed"), ("nacka", "key_added")]
    assert v3 == [("nacka", "key_revoked"), ("sakerhetschef-nacka", "scope")]  # moved away

    varmdo = scoped_history(history, "varmdo")
    assert [(c.get("actor") or c.get("officer"), c["change"]) for c in varmdo[2]["changes"]] == [
        ("sakerhetschef-nacka", "scope")  # moved here
    ]
    hamnar = scoped_history(history, "stockholms-hamnar")
    assert [c["change"] for c in hamnar[1]["changes"]] == ["clearance"]
    assert hamnar[2]["changes"] == []
    assert all(h["changes"] == [] for h in scoped_history(history, "atlantis"))
    assert history == directory_history(chain)  # the full history is not modified
