"""Per-operation costs of the protocol core, with raw libsodium baselines from the same run.

    .venv/bin/python bench/core_costs.py [--seconds 0.5] [--out bench/results/core-latest.json]

Each operation runs repeatedly for a fixed time; the table reports the
median microseconds per call over five rounds and the ratio to the raw
Ed25519 verify of the same envelope bytes (the least any verifier must do).
Absolute times on a shared 2-core machine say little; the ratios are the result.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import nacl.bindings as sodium
import nacl.signing

from broker.core import (
    Label,
    MessageType,
    Mode,
    Policy,
    ReceiptKind,
    RecipientKey,
    Tlp,
    build_envelope,
    decide,
    make_receipt,
    open_envelope,
    read_envelope,
    verify_receipt,
)
from broker.demo import demo_region

NOW = 1_790_000_000_000
PAYLOAD = bytes(range(256)) * 4  # 1 KiB plaintext
ROUNDS = 5


def per_call_us(fn: Callable[[], object], seconds: float) -> float:
    samples = []
    for _ in range(ROUNDS):
        calls, start = 0, time.perf_counter()
        deadline = start + seconds / ROUNDS
        while time.perf_counter() < deadline and calls < 1_000_000:
            fn()
            calls += 1
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="time per operation")
    parser.add_argument("--out", default="bench/results/core-latest.json")
    args = parser.parse_args()

    region = demo_region(now=NOW)
    directory, policy = region.directory, Policy()
    sender, reader = region.identities["nacka"], region.identities["sos-alarm"]
    label = Label(policy="ssr", classification="SEKRETESS", tlp=Tlp.AMBER, legal="OSL 18:13")

    def keys(n: int) -> list[RecipientKey]:
        actors = [
            a for a in directory.document.actors if a.id != "nacka" and a.clearance != "INTERN"
        ]
        return [RecipientKey.of(a, NOW) for a in actors[:n]]

    def build(n: int) -> bytes:
        return build_envelope(
            sender=sender,
            recipients=keys3 if n == 3 else keys(n),
            label=label,
            message_type=MessageType.SITUATION_REPORT,
            payload=PAYLOAD,
            created=NOW,
            expires=NOW + 3_600_000,
        )

    keys3 = [
        RecipientKey.of(directory.actor(a), NOW)  # type: ignore[arg-type]
        for a in ("polisen-stockholm", "sos-alarm", "stockholm")
    ]
    raw = build(3)
    signed = read_envelope(raw, directory)
    receipt = make_receipt(
        reader, signed.header, signed.header_hash, ReceiptKind.DELIVERED, at=NOW + 1
    )
    verify_key = nacl.signing.VerifyKey(sender.signing.public)
    signing_key = nacl.signing.SigningKey(sender.signing.seed)
    body, signature = raw[:-64], raw[-64:]
    content_key, nonce = bytes(32), bytes(24)

    def decide_once() -> object:
        return decide(
            raw, directory=directory, policy=policy, mode=Mode.ORDINARY, now=NOW + 1, seen=()
        )

    def open_once() -> object:
        return open_envelope(raw, me=reader, directory=directory, policy=policy, now=NOW + 1)

    def receipt_once() -> object:
        return make_receipt(
            reader, signed.header, signed.header_hash, ReceiptKind.DELIVERED, at=NOW + 1
        )

    def raw_encrypt() -> object:
        return sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(PAYLOAD, b"", nonce, content_key)

    operations: dict[str, Callable[[], object]] = {
        "baseline: raw Ed25519 verify (envelope bytes)": lambda: verify_key.verify(body, signature),
        "baseline: raw Ed25519 sign (envelope bytes)": lambda: signing_key.sign(body),
        "baseline: raw XChaCha20-Poly1305 encrypt 1 KiB": raw_encrypt,
        "build envelope, 3 recipients": lambda: build(3),
        "build envelope, 36 recipients": lambda: build(36),
        "verify only (read_envelope)": lambda: read_envelope(raw, directory),
        "broker decision (decide)": decide_once,
        "open envelope (recipient)": open_once,
        "make receipt": receipt_once,
        "verify receipt": lambda: verify_receipt(receipt, directory, now=NOW + 1),
    }
    results = {name: per_call_us(fn, args.seconds) for name, fn in operations.items()}
    baseline = results["baseline: raw Ed25519 verify (envelope bytes)"]
    width = max(map(len, results))
    print(f"envelope: {len(raw)} bytes for 3 recipients and 1 KiB plaintext")
    print(f"{'operation':<{width}}  {'µs/call':>9}  {'× raw verify':>12}")
    for name, us in results.items():
        print(f"{name:<{width}}  {us:>9.1f}  {us / baseline:>12.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": platform.platform(),
                "python": platform.python_version(),
                "envelope_bytes": len(raw),
                "microseconds_per_call": {k: round(v, 2) for k, v in results.items()},
                "ratio_to_raw_verify": {k: round(v / baseline, 2) for k, v in results.items()},
            },
            indent=2,
            ensure_ascii=False,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
