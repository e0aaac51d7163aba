"""A demonstration region: the 37 actors of Samverkan Stockholmsregionen with keys.

Used by tests, test vectors, benchmarks and ``make run``. Deterministic for
a given random source, so vectors built from it are reproducible. The keys
are for demonstration only.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.core.crypto import SYSTEM_RANDOM, Random
from broker.core.directory import (
    Actor,
    ActorKind,
    BrokerService,
    DirectoryDocument,
    Group,
    KeyRecord,
    Officer,
    VerifiedDirectory,
    sign_directory,
    verify_directory,
)
from broker.core.keys import Identity, SigningKeyPair
from broker.core.notices import BrokerIdentity
from broker.core.vocabulary import Role

YEAR_MS = 365 * 24 * 3600 * 1000

MUNICIPALITIES = (
    "botkyrka", "danderyd", "ekero", "haninge", "huddinge", "jarfalla", "lidingo", "nacka",
    "norrtalje", "nykvarn", "nynashamn", "osteraker", "salem", "sigtuna", "sodertalje",
    "sollentuna", "solna", "stockholm", "sundbyberg", "taby", "tyreso", "upplands-bro",
    "upplands-vasby", "vallentuna", "varmdo", "vaxholm",
)  # fmt: skip

# id, name, kind, clearance, categories, groups, roles
_ActorRow = tuple[str, str, ActorKind, str, tuple[str, ...], tuple[str, ...], tuple[Role, ...]]
OTHER_ACTORS: tuple[_ActorRow, ...] = (
    ("lansstyrelsen-stockholm", "Länsstyrelsen Stockholm", ActorKind.COUNTY, "SEKRETESS",
     ("infrastruktur",), ("inriktande", "kommunikatorer", "samordnande", "tib"),
     (Role.ACTIVATOR, Role.AUTHORITY)),
    ("region-stockholm", "Region Stockholm", ActorKind.REGION, "SEKRETESS",
     ("infrastruktur",), ("blaljus", "inriktande", "samordnande", "tib"), (Role.ACTIVATOR,)),
    ("polisen-stockholm", "Polismyndigheten region Stockholm", ActorKind.POLICE, "SEKRETESS",
     ("taktik",), ("blaljus", "inriktande", "samordnande", "tib"), (Role.ACTIVATOR,)),
    ("forsvarsmakten-mmr", "Försvarsmakten Mellersta militärregionen", ActorKind.MILITARY,
     "HEMLIG", ("infrastruktur", "taktik"), ("inriktande", "samordnande"), ()),
    ("sos-alarm", "SOS Alarm", ActorKind.DISPATCH, "SEKRETESS", ("taktik",),
     ("blaljus", "samordnande", "tib"), ()),
    ("trafikverket", "Trafikverket", ActorKind.TRANSPORT, "SEKRETESS", ("infrastruktur",),
     ("samordnande", "tib"), ()),
    ("kustbevakningen", "Kustbevakningen", ActorKind.COAST_GUARD, "SEKRETESS", ("taktik",),
     ("samordnande", "tib"), ()),
    ("stockholms-hamnar", "Stockholms Hamnar", ActorKind.PORT, "INTERN", (),
     ("samordnande",), ()),
    ("storstockholms-brandforsvar", "Storstockholms brandförsvar", ActorKind.FIRE_RESCUE,
     "SEKRETESS", ("taktik",), ("blaljus", "samordnande", "tib"), (Role.ACTIVATOR,)),
    ("sodertorns-brandforsvar", "Södertörns brandförsvarsförbund", ActorKind.FIRE_RESCUE,
     "SEKRETESS", ("taktik",), ("blaljus", "samordnande", "tib"), (Role.ACTIVATOR,)),
    ("brandkaren-attunda", "Brandkåren Attunda", ActorKind.FIRE_RESCUE, "SEKRETESS",
     ("taktik",), ("blaljus", "samordnande", "tib"), (Role.ACTIVATOR,)),
)  # fmt: skip

GROUPS = (
    ("blaljus", "Blåljusaktörer"),
    ("inriktande", "Inriktande nivå (regional chefsgrupp)"),
    ("kommuner", "Länets 26 kommuner"),
    ("kommunikatorer", "Kommunikatörer"),
    ("samordnande", "Samordnande nivå"),
    ("tib", "Tjänstemän i beredskap"),
)


@dataclass(frozen=True)
class DemoRegion:
    authority: SigningKeyPair
    identities: dict[str, Identity]
    officers: dict[str, SigningKeyPair]
    broker: BrokerIdentity
    directory: VerifiedDirectory

    @property
    def frame(self) -> bytes:
        return self.directory.raw


def _keys(identity: Identity, since: int) -> tuple[tuple[KeyRecord, ...], tuple[KeyRecord, ...]]:
    until = since + 2 * YEAR_MS
    sign = KeyRecord.for_key(identity.signing.public, not_before=since, not_after=until)
    enc = KeyRecord.for_key(identity.encryption.public, not_before=since, not_after=until)
    return (sign,), (enc,)


def demo_actors(identities: dict[str, Identity], since: int) -> tuple[Actor, ...]:
    actors = []
    for slug in MUNICIPALITIES:
        sign, enc = _keys(identities[slug], since)
        groups: tuple[str, ...] = (
            ("kommuner", "kommunikatorer", "tib")
            if slug in {"stockholm", "nacka"}
            else ("kommuner", "tib")
        )
        actors.append(
            Actor(
                id=slug,
                name=f"{slug.replace('-', ' ').title()} kommun",
                kind=ActorKind.MUNICIPALITY,
                clearance="SEKRETESS",
                groups=groups,
                roles=(Role.ACTIVATOR,) if slug == "stockholm" else (),
                signing_keys=sign,
                encryption_keys=enc,
            )
        )
    for slug, name, kind, clearance, categories, groups, roles in OTHER_ACTORS:
        sign, enc = _keys(identities[slug], since)
        actors.append(
            Actor(
                id=slug,
                name=name,
                kind=kind,
                clearance=clearance,
                categories=categories,
                groups=groups,
                roles=roles,
                signing_keys=sign,
                encryption_keys=enc,
            )
        )
    return tuple(sorted(actors, key=lambda a: a.id))


def demo_region(*, now: int, rand: Random = SYSTEM_RANDOM, region: str = "ssr") -> DemoRegion:
    """Build and sign version 1 of a 37-actor directory, valid from ``now`` for two years."""
    authority = SigningKeyPair.generate(rand)
    slugs = sorted([*MUNICIPALITIES, *(a[0] for a in OTHER_ACTORS)])
    identities = {slug: Identity.generate(slug, rand) for slug in slugs}
    officers = {
        "sakerhetschef-lansstyrelsen": SigningKeyPair.generate(rand),
        "sakerhetschef-nacka": SigningKeyPair.generate(rand),
    }
    broker = BrokerIdentity("ssr-broker", SigningKeyPair.generate(rand))
    until = now + 2 * YEAR_MS
    document = DirectoryDocument(
        region=region,
        version=1,
        previous=None,
        issued=now,
        authority_keys=(KeyRecord.for_key(authority.public, not_before=now, not_after=until),),
        actors=demo_actors(identities, now),
        groups=tuple(Group(id=g, name=n) for g, n in GROUPS),
        officers=(
            Officer(
                id="sakerhetschef-lansstyrelsen",
                name="Säkerhetschef, Länsstyrelsen (regional)",
                actor=None,
                signing_keys=(
                    KeyRecord.for_key(
                        officers["sakerhetschef-lansstyrelsen"].public,
                        not_before=now,
                        not_after=until,
                    ),
                ),
            ),
            Officer(
                id="sakerhetschef-nacka",
                name="Säkerhetschef, Nacka kommun",
                actor="nacka",
                signing_keys=(
                    KeyRecord.for_key(
                        officers["sakerhetschef-nacka"].public, not_before=now, not_after=until
                    ),
                ),
            ),
        ),
        brokers=(
            BrokerService(
                id=broker.broker,
                name="ssr-broker (demo)",
                signing_keys=(
                    KeyRecord.for_key(broker.signing.public, not_before=now, not_after=until),
                ),
            ),
        ),
    )
    signed = sign_directory(document, authority)
    verified = verify_directory(signed, pinned=authority.public)
    return DemoRegion(authority, identities, officers, broker, verified)
