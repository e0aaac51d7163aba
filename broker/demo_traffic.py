"""A short demo scenario over a running broker, using demo actors' keys.

It stands in for the actors' own systems (the client library comes later):
each demo actor publishes to its submit subject and reads its delivery
subject, opens what it receives and signs a ``delivered`` receipt.

The scenario: Länsstyrelsen activates a storm incident (a typhändelse from the
policy's catalogue) for the municipalities and the blue-light actors; SOS Alarm
sends an alert to the blue-light group; Nacka sends a situation report
(lägesbild) to all municipalities; Stockholm drafts a press line for Länsstyrelsen,
the incident's communication lead, who approves it for the public (OFFENTLIG,
TLP:CLEAR); Nacka tries to send a SEKRETESS message to the Port of Stockholm,
which is cleared for INTERN only, and is refused.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import nats
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from broker.core import (
    Control,
    CoreError,
    Identity,
    Label,
    MessageType,
    NoticeKind,
    Policy,
    PressStage,
    Priority,
    ReceiptKind,
    RecipientKey,
    Reference,
    ReferenceKind,
    Tlp,
    VerifiedDirectory,
    build_envelope,
    make_receipt,
    open_envelope,
    read_envelope,
    verify_notice,
    verify_receipt,
)
from broker.core import frame as frames

from . import subjects

HOUR_MS = 3_600_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class DemoActor:
    identity: Identity
    js: JetStreamContext
    directory: VerifiedDirectory
    policy: Policy
    opened: list[str] = field(default_factory=list)
    verdicts: dict[str, tuple[str, str | None, tuple[str, ...]]] = field(default_factory=dict)
    receipts: Counter[str] = field(default_factory=Counter)
    _sub: JetStreamContext.PullSubscription | None = None

    @property
    def id(self) -> str:
        return self.identity.principal

    def envelope(
        self, to: Iterable[str], label: Label, message_type: MessageType, text: str, **kw: object
    ) -> bytes:
        now = now_ms()
        keys = [RecipientKey.of(self.directory.actor(a), now) for a in sorted(set(to))]  # type: ignore[arg-type]
        return build_envelope(
            sender=self.identity,
            recipients=keys,
            label=label,
            message_type=message_type,
            payload=json.dumps({"text": text}, ensure_ascii=False).encode(),
            content_type="application/json",
            created=now,
            expires=now + 24 * HOUR_MS,
            **kw,  # type: ignore[arg-type]  # the scenario's own extras (incident, control, …)
        )

    async def submit(self, data: bytes, key: str) -> None:
        await self.js.publish(subjects.submit_subject(self.id), data, headers={"Nats-Msg-Id": key})

    async def poll(self) -> int:
        """Handle what has arrived; returns how many messages were read."""
        if self._sub is None:
            self._sub = await self.js.pull_subscribe(
                subjects.deliver_subject(self.id),
                durable=f"demo-{self.id}",
                stream=subjects.DELIVER_STREAM,
            )
        try:
            messages = await self._sub.fetch(64, timeout=0.2)
        except (nats.errors.TimeoutError, TimeoutError):
            return 0
        for msg in messages:
            await self._handle(msg.data)
            await msg.ack()
        return len(messages)

    async def _handle(self, data: bytes) -> None:
        kind = data[4:5]
        now = now_ms()
        try:
            if kind == frames.Kind.ENVELOPE.value:
                opened = open_envelope(
                    data, me=self.identity, directory=self.directory, policy=self.policy, now=now
                )
                self.opened.append(opened.header.id)
                receipt = make_receipt(
                    self.identity, opened.header, opened.header_hash, ReceiptKind.DELIVERED, at=now
                )
                await self.submit(receipt, f"receipt.{opened.header.id}.{self.id}")
            elif kind == frames.Kind.NOTICE.value:
                body = verify_notice(data, self.directory, now=now)
                if body.message is not None and body.kind is not NoticeKind.ESCALATION:
                    self.verdicts[body.message] = (body.kind.value, body.reason, body.recipients)
            elif kind == frames.Kind.RECEIPT.value:
                self.receipts[verify_receipt(data, self.directory, now=now).body.message] += 1
        except CoreError as exc:
            print(f"  ! {self.id} refused something it received: {exc.code}")


async def run_scenario(
    url: str,
    identities: dict[str, Identity],
    directory: VerifiedDirectory,
    policy: Policy,
    *,
    settle_s: float = 6.0,
) -> list[str]:
    """Send the demo messages, let every demo actor read and confirm, and return a report."""
    nc: NatsClient = await nats.connect(url, name="ssr-demo")
    js = nc.jetstream()
    actors = {a: DemoActor(identities[a], js, directory, policy) for a in identities}
    members = {g.id: directory.members(g.id) or () for g in directory.document.groups}
    storm = f"storm-{time.strftime('%Y%m%d-%H%M%S')}"
    intern = Label(policy=policy.id, classification="INTERN", tlp=Tlp.GREEN)
    sekretess = Label(
        policy=policy.id, classification="SEKRETESS", tlp=Tlp.AMBER, legal="OSL 18:13"
    )
    participants = {*members["kommuner"], *members["blaljus"], "trafikverket"} - {
        "lansstyrelsen-stockholm"
    }
    lst, sos, nacka = actors["lansstyrelsen-stockholm"], actors["sos-alarm"], actors["nacka"]
    stockholm = actors["stockholm"]
    public = Label(policy=policy.id, classification=policy.ladder[0], tlp=Tlp.CLEAR)
    communicators = set(members["kommunikatorer"]) & (participants | {lst.id})
    draft = stockholm.envelope(
        {lst.id, "nacka"},
        intern,
        MessageType.COMMUNICATION,
        "Pressmeddelande (utkast): stay indoors, avoid travel, follow krisinformation.se",
        incident=storm,
        control=Control(press=PressStage.DRAFT),
    )
    draft_header = read_envelope(draft, directory)
    plan = [
        (
            "Länsstyrelsen activates incident " + storm,
            lst,
            lst.envelope(
                participants,
                intern,
                MessageType.ACTIVATION,
                "Storm Ylva: regional samverkan activated",
                incident=storm,
                control=Control(incident_type="storm", communication_lead=lst.id),
                priority=Priority.PRIORITY,
            ),
        ),
        (
            "SOS Alarm alerts the blue-light actors",
            sos,
            sos.envelope(
                set(members["blaljus"]) - {"sos-alarm"} | {"lansstyrelsen-stockholm"},
                sekretess,
                MessageType.ALERT,
                "Tree on power line, Värmdö: 4 000 households without power",
                incident=storm,
                priority=Priority.IMMEDIATE,
            ),
        ),
        (
            "Nacka sends a lägesbild to the municipalities",
            nacka,
            nacka.envelope(
                set(members["kommuner"]) - {"nacka"},
                intern,
                MessageType.SITUATION_REPORT,
                "Lägesbild 14:00: two schools closed, reception centre open",
                incident=storm,
            ),
        ),
        ("Stockholm drafts a press line for the communication lead", stockholm, draft),
        (
            "Länsstyrelsen approves the press line for the public",
            lst,
            lst.envelope(
                communicators - {lst.id},
                public,
                MessageType.COMMUNICATION,
                "Pressmeddelande: stay indoors, avoid travel, follow krisinformation.se",
                incident=storm,
                control=Control(press=PressStage.APPROVED),
                references=(
                    Reference(
                        kind=ReferenceKind.UPDATE,
                        message=draft_header.header.id,
                        header_hash=draft_header.header_hash,
                    ),
                ),
            ),
        ),
        (
            "Nacka sends SEKRETESS to Stockholms Hamnar (cleared for INTERN)",
            nacka,
            nacka.envelope(
                {"stockholms-hamnar"},
                sekretess,
                MessageType.COORDINATION,
                "Evacuation plan for Nacka strand",
            ),
        ),
    ]
    report = []
    ids = []
    recipients: dict[str, tuple[str, ...]] = {}
    for title, sender, data in plan:
        header = read_envelope(data, directory).header
        recipients[header.id] = header.recipients
        ids.append((title, sender, header.id))
        await sender.submit(data, f"demo.{header.id}")
        await asyncio.sleep(0.3)  # keep the story in order: the incident exists before its traffic
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline:
        read = sum(await asyncio.gather(*(a.poll() for a in actors.values())))
        if not read and all(_settled(s, m, len(recipients[m])) for _, s, m in ids):
            break
    for title, sender, message_id in ids:
        verdict = sender.verdicts.get(message_id)
        if verdict is None:
            report.append(f"  ? {title}: no answer from the broker yet")
        elif verdict[0] == NoticeKind.REJECTED:
            report.append(f"  ✗ {title}: refused ({verdict[1]}; {', '.join(verdict[2]) or '-'})")
        else:
            got, expected = sender.receipts[message_id], len(recipients[message_id])
            report.append(f"  ✓ {title}: accepted; {got}/{expected} recipients signed receipts")
    await nc.close()
    return report


def _settled(sender: DemoActor, message_id: str, expected: int) -> bool:
    verdict = sender.verdicts.get(message_id)
    if verdict is None:
        return False
    return verdict[0] == NoticeKind.REJECTED or sender.receipts[message_id] >= expected
