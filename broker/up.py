"""``ssr up`` / ``python -m broker``: run the broker, by default with the demo region.

Without a NATS URL it starts an embedded nats-server in the data folder. With
``demo`` it creates the demo region on first use, and after start-up sends
the demo scenario once and prints what happened and where to look.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from . import datadir
from .config import BrokerConfig
from .demo_setup import ensure_demo_data, load_demo_identities
from .demo_traffic import run_scenario
from .service import Service

log = logging.getLogger("ssr.up")
NATS_URL_FILE = "nats.url"


async def up(config: BrokerConfig, *, demo: bool = True, once: bool = False) -> None:
    """Run until SIGINT/SIGTERM (or, with ``once``, until the demo scenario has run)."""
    if demo and ensure_demo_data(config):
        print(f"created the demo region in {config.data_dir} (37 actors, keys, signed directory)")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Service(config) as service:
        assert service.http is not None
        print(f"broker running: NATS {service.nats_url}  HTTP {service.http.url}")
        # Where clients on this machine find the embedded server (``ssr --demo-dir``).
        url_file = config.data_dir / NATS_URL_FILE
        url_file.write_text(service.nats_url + "\n", encoding="ascii")
        try:
            await _show_and_wait(service, config, demo=demo, once=once, stop=stop)
        finally:
            url_file.unlink(missing_ok=True)  # no stale URL for local clients
    print("stopped cleanly.")


async def _show_and_wait(
    service: Service, config: BrokerConfig, *, demo: bool, once: bool, stop: asyncio.Event
) -> None:
    assert service.http is not None
    if demo:
        print("sending the demo scenario ...")
        directory = service.router.state.directory if service.router else None
        assert directory is not None
        report = await run_scenario(
            service.nats_url,
            load_demo_identities(config),
            directory,
            datadir.policy(config),
        )
        print("\n".join(report))
    print(
        "\nwhere to look:\n"
        f"  {service.http.url}/metrics   Prometheus metrics (ssr_broker_*)\n"
        f"  {service.http.url}/readyz    readiness\n"
        f"  {service.http.url}/console/  security officers' console (officer keys in"
        f" {config.data_dir}/keys/officers/)\n"
        f"  {config.data_dir}/           keys, signed directory, policy, NATS store\n"
        f"  ssr --demo-dir {config.data_dir} send --actor nacka --to solna --label INTERN"
        " --tlp GREEN --text hej      (see docs/integrating.md)\n"
        "  audit events are on the stream SSR_AUDIT, sealed with signed checkpoints:"
        f" ssr audit verify --data-dir {config.data_dir}\n"
    )
    if not once:
        print("Ctrl-C stops everything.")
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    from clients.cli import main as cli_main

    return cli_main(["up", *(argv or [])])
