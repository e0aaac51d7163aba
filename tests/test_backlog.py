"""A bound on each sender's backlog in the shared submit queue (issue 9 item 11: fairness).

Every actor's submissions wait in one work queue (stream SSR_SUBMIT) that the broker takes
in order. ``StreamSettings.submit_backlog_per_sender`` caps how many of one actor's
submissions may wait there (JetStream ``max_msgs_per_subject`` with ``discard_new_per_subject``):
a further publish is refused by the server until the broker has taken one, so a flooding
sender can push others' messages back by at most that many of its own. Here, against a
real nats-server: the server refuses the publish beyond the cap, for that sender only; the
bus names the refusal; a client keeps what it could not hand over in its outbox and sends
it, in order, once the broker takes the backlog; a stream made before the cap gets it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest

from broker import subjects
from broker.bus import JetStreamBus, SubmitBacklogFull
from broker.config import StreamSettings
from broker.errors import ConfigError
from clients import Client

from . import nats_fixtures, service_helpers
from .nats_fixtures import connect_options
from .service_helpers import (
    Actors,
    BrokerFactory,
    header_of,
    metric,
    stream_messages,
    wait_until,
)

nats_server = nats_fixtures.nats_server
live_region = service_helpers.live_region
broker_factory = service_helpers.broker_factory
actors = service_helpers.actors

CAP = 3


async def waiting(js: nats.js.JetStreamContext, actor: str) -> int:
    """How many of ``actor``'s submissions the submit stream holds now."""
    subject = subjects.submit_subject(actor)
    info = await js.stream_info(subjects.SUBMIT_STREAM, subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


def test_the_backlog_bound_is_validated() -> None:
    assert StreamSettings().submit_backlog_per_sender == 100
    with pytest.raises(ConfigError) as caught:
        StreamSettings(submit_backlog_per_sender=0)
    assert caught.value.field == "submit_backlog_per_sender"


async def test_a_publish_beyond_the_backlog_is_refused_for_that_sender_only(
    broker_factory: BrokerFactory, actors: Actors
) -> None:
    service = await broker_factory(streams=StreamSettings(submit_backlog_per_sender=CAP))
    await service.stop()  # nothing takes submissions: the backlog stays
    net = await actors.start()
    assert net.js is not None
    held = [await net.send("nacka", ["solna"]) for _ in range(CAP)]
    extra = net.envelope("nacka", ["solna"])
    with pytest.raises(nats.js.errors.APIError) as refused:
        await net.js.publish(subjects.submit_subject("nacka"), extra)
    assert refused.value.err_code == 10077
    assert await waiting(net.js, "nacka") == CAP

    # Through the broker's own bus the refusal has a name a caller can retry on.
    nc = await nats.connect(broker_factory.server.url, **connect_options(name="bus"))
    try:
        bus = JetStreamBus(nc, nc.jetstream(timeout=5.0))
        with pytest.raises(SubmitBacklogFull) as named:
            await bus.publish(subjects.submit_subject("nacka"), extra, msg_id="extra")
        assert named.value.code == "submit_backlog_full"
        assert "ssr.submit.nacka" in named.value.message
    finally:
        await nc.close()

    # Another sender is not held back by nacka's backlog.
    _, other = await net.send("solna", ["nacka"])

    # Once a broker takes the backlog, everything held is routed and nacka may go on.
    await broker_factory(streams=StreamSettings(submit_backlog_per_sender=CAP))
    for _, data in held:
        await net.accepted_and_delivered("nacka", data)
    await net.accepted_and_delivered("solna", other)
    await net.submit("nacka", extra)
    await net.accepted_and_delivered("nacka", extra)
    assert [h.id for h, _ in held] + [header_of(extra, net.directory).id] == [
        m for m in net["solna"].deliveries
    ]


async def test_a_stream_made_without_the_bound_gets_it(
    broker_factory: BrokerFactory, actors: Actors
) -> None:
    service = await broker_factory()
    await service.stop()
    net = await actors.start()
    assert net.js is not None
    before = await net.js.stream_info(subjects.SUBMIT_STREAM)
    assert before.config.max_msgs_per_subject == 100
    await broker_factory(streams=StreamSettings(submit_backlog_per_sender=CAP))
    after = await net.js.stream_info(subjects.SUBMIT_STREAM)
    assert after.config.max_msgs_per_subject == CAP
    assert after.config.discard_new_per_subject


async def test_a_client_keeps_what_the_backlog_refused_and_sends_it_in_order(
    broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    settings = StreamSettings(submit_backlog_per_sender=CAP)
    service = await broker_factory(streams=settings)
    region = broker_factory.region

    def connect(actor: str) -> Client:
        return Client.connect(
            servers=[broker_factory.server.url],
            actor=actor,
            keys=region.identities[actor],
            authority_key=region.authority.public,
            state_dir=tmp_path / actor,
        )

    async with connect("nacka") as nacka, connect("solna") as solna:
        await service.stop()
        handles = [
            await nacka.send(to=["solna"], payload=f"rapport {i}", label="INTERN")
            for i in range(3 * CAP)
        ]
        assert nacka.connected
        js = nacka._transport.bus.js  # type: ignore[union-attr]
        # The client hands over what the stream takes and keeps the rest.
        await wait_until(
            lambda: sum(h.state.value == "submitted" for h in handles) == CAP,
            "the first submissions stored",
        )
        assert await waiting(js, "nacka") == CAP
        assert sum(h.state.value == "queued" for h in handles) == 2 * CAP

        await broker_factory(streams=settings)
        for handle in handles:
            await handle.delivered(timeout=30)
        texts = []
        async for message in solna.messages():
            texts.append(message.text)
            if len(texts) == len(handles):
                break
        assert texts == [f"rapport {i}" for i in range(3 * CAP)]


async def test_one_senders_backlog_does_not_hold_up_another_senders_message(
    broker_factory: BrokerFactory, actors: Actors
) -> None:
    """Routed in lanes: a message taken after 60 of nacka's is routed alongside them, not
    after them (before the lanes it waited for all 60), and nacka's keep their order."""
    service = await broker_factory()
    await service.stop()
    net = await actors.start()
    assert net.js is not None
    backlog = [await net.send("nacka", ["stockholm"]) for _ in range(60)]
    _, other = await net.send("solna", ["stockholm"])
    await broker_factory()
    await net.accepted_and_delivered("solna", other)
    for _, data in backlog:
        await net.accepted_and_delivered("nacka", data)

    def notice_sequences(actor: str) -> list[int]:
        return [m.metadata.sequence.stream for m in notices[actor] if m.data[4:5] == b"N"]

    notices = {
        actor: await stream_messages(net.js, subjects.DELIVER_STREAM, f"ssr.deliver.{actor}")
        for actor in ("nacka", "solna")
    }
    [solna_notice] = notice_sequences("solna")
    assert solna_notice < notice_sequences("nacka")[-1]
    # nacka's own messages reached stockholm in the order nacka sent them.
    sent = [header.id for header, _ in backlog]
    assert [m for m in net["stockholm"].deliveries if m in set(sent)] == sent


async def test_the_broker_keeps_taking_submissions_after_an_unexpected_fetch_error(
    broker_factory: BrokerFactory, actors: Actors
) -> None:
    service = await broker_factory()
    net = await actors.start()
    assert service.bus is not None
    fetch = service.bus.fetch
    failures = 0

    async def surprising(*args: Any, **kw: Any) -> Any:
        nonlocal failures
        if failures == 0:
            failures += 1
            raise RuntimeError("a fetch that hands over something unforeseen")
        return await fetch(*args, **kw)

    service.bus.fetch = surprising  # type: ignore[method-assign]
    await wait_until(lambda: failures == 1, "the unexpected error", timeout=5.0)
    _, data = await net.send("nacka", ["solna"])
    await net.accepted_and_delivered("nacka", data)
    assert service.live()
    assert metric(service, "ssr_broker_errors_total", stage="decide") == 1


@pytest.mark.parametrize("before", [None, 10])
async def test_bringing_in_or_lowering_the_bound_never_drops_waiting_submissions(
    broker_factory: BrokerFactory, actors: Actors, before: int | None
) -> None:
    """nats-server trims a subject to a lowered limit at once, oldest first: submissions
    already acknowledged to their sender would be lost. The broker keeps the limit at the
    largest backlog until it drained, and lowers it on a later start."""
    service = await broker_factory(
        streams=StreamSettings()
        if before is None
        else StreamSettings(submit_backlog_per_sender=before)
    )
    await service.stop()  # the broker is down (an upgrade): clients keep submitting
    net = await actors.start()
    assert net.js is not None
    if before is None:  # a stream from before the bound existed: no limit at all
        info = await net.js.stream_info(subjects.SUBMIT_STREAM)
        config = info.config
        config.max_msgs_per_subject = -1
        config.discard_new_per_subject = False
        config.discard = nats.js.api.DiscardPolicy.OLD
        await net.js.update_stream(config)
    held = [await net.send("nacka", ["solna"]) for _ in range(8)]
    assert await waiting(net.js, "nacka") == 8

    service = await broker_factory(streams=StreamSettings(submit_backlog_per_sender=CAP))
    info = await net.js.stream_info(subjects.SUBMIT_STREAM)
    assert info.config.max_msgs_per_subject >= 8  # not trimmed to the new bound yet
    for _, data in held:
        await net.accepted_and_delivered("nacka", data)  # all eight routed

    await service.stop()  # the next start, with the backlog drained, lowers it
    await broker_factory(streams=StreamSettings(submit_backlog_per_sender=CAP))
    info = await net.js.stream_info(subjects.SUBMIT_STREAM)
    assert info.config.max_msgs_per_subject == CAP
