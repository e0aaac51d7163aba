from broker.core import Accept, Mode, decide, open_envelope

from .conftest import NOW


def test_round_trip_through_decision_and_open(region, policy, make_envelope):
    raw = make_envelope()
    decision = decide(
        raw, directory=region.directory, policy=policy, mode=Mode.ORDINARY, now=NOW, seen=set()
    )
    assert isinstance(decision, Accept)
    opened = open_envelope(
        raw, me=region.identities["sos-alarm"], directory=region.directory, policy=policy, now=NOW
    )
    assert opened.payload.startswith(b'{"text"')
