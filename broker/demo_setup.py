"""Creating the demo data folder: the 37 SSR actors with keys, a signed directory, a policy.

``ensure_demo_data(folder)`` writes everything ``broker.config`` describes on the
first run and leaves an existing folder alone, so re-running reuses it. Every key
here is a demonstration key, generated on this machine.
"""

from __future__ import annotations

import time
from pathlib import Path

from broker.core import EncryptionKeyPair, Identity, load_identity, save_identity
from broker.demo import DemoRegion, demo_region

from .config import BrokerConfig

EXAMPLE_POLICY = Path(__file__).resolve().parent.parent / "deploy" / "policy.toml"


def ensure_demo_data(config: BrokerConfig) -> bool:
    """Create the demo region in ``config.data_dir`` unless it exists; True if created."""
    if config.authority_key_file.exists():
        return False
    region = demo_region(now=time.time_ns() // 1_000_000 - 60_000)
    write_region(config, region)
    return True


def write_region(config: BrokerConfig, region: DemoRegion) -> None:
    keys = config.data_dir / "keys"
    keys.mkdir(parents=True, exist_ok=True, mode=0o700)
    config.directory_dir.mkdir(parents=True, exist_ok=True)
    for actor, identity in region.identities.items():
        save_identity(keys / f"{actor}.key", identity)
    broker = region.broker
    # Key files hold a signing and an encryption key; the broker and the authority only sign,
    # so their encryption key is a throwaway.
    save_identity(keys / "broker.key", Identity(broker.broker, broker.signing, _throwaway()))
    save_identity(keys / "authority.key", Identity("authority", region.authority, _throwaway()))
    officers = keys / "officers"
    officers.mkdir(exist_ok=True, mode=0o700)
    for officer, signing in region.officers.items():
        save_identity(officers / f"{officer}.key", Identity(officer, signing, _throwaway()))
    (config.directory_dir / "v00000001.dir").write_bytes(region.directory.raw)
    if EXAMPLE_POLICY.exists() and not config.policy_file.exists():
        config.policy_file.write_text(EXAMPLE_POLICY.read_text(encoding="utf-8"), encoding="utf-8")
    config.authority_key_file.write_text(region.authority.public.hex() + "\n", encoding="ascii")


def load_demo_identities(config: BrokerConfig) -> dict[str, Identity]:
    keys = config.data_dir / "keys"
    skip = {"broker", "authority"}
    return {
        path.stem: load_identity(path)
        for path in sorted(keys.glob("*.key"))
        if path.stem not in skip
    }


def _throwaway() -> EncryptionKeyPair:
    return EncryptionKeyPair.generate()
