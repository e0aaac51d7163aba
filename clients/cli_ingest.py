"""``ssr ingest``: run the alert adapter, or check its configuration.

    ssr ingest --config ingest.toml            # runs until Ctrl-C or SIGTERM, then stops cleanly
    ssr ingest --config ingest.toml --check    # configuration, keys, policy and rules; then exit

The configuration and rules formats are in ``docs/ingest.md`` and
:mod:`clients.adapters.config`. ``--check`` verifies the rules against the directory on
disk (``directory_dir``, or the client's cache in the state folder), else reads it from
NATS without consuming anything.

Exit codes: 0 stopped cleanly, or the check passed; 2 the configuration, the rules, a
key file or the policy is invalid; 1 NATS unreachable with no directory to start (or
check) from, or the adapter failed. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from clients.cli import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE, CliError
from clients.cli_messages import _OneLine, _stop_on_signals

from ._errors import ClientError, ConfigurationError, Unavailable
from .adapters.config import IngestConfig, IngestConfigError, load_config
from .adapters.rules import RulesError

__all__ = ["add_ingest_verbs", "cmd_ingest"]

log = logging.getLogger("ssr.ingest")

CHECK_TIMEOUT_S = 10.0  # --check: the longest it tries NATS for the directory


def cmd_ingest(args: argparse.Namespace) -> int:
    _configure_logging(args.verbose, quiet=args.check)
    try:
        config = load_config(args.config, os.environ)
    except IngestConfigError as exc:
        raise CliError(exc.message, EXIT_USAGE) from exc
    work = _check(args, config) if args.check else _serve(config)
    try:
        return asyncio.run(work)
    except KeyboardInterrupt:  # a second Ctrl-C during the clean stop
        return EXIT_CHECK_FAILED
    except RulesError as exc:
        raise CliError(f"{config.rules_file}: {exc.message}", EXIT_USAGE) from exc
    except ConfigurationError as exc:
        raise CliError(f"{config.path}: {exc.code}: {exc.message}", EXIT_USAGE) from exc
    except Unavailable as exc:
        raise CliError(f"NATS unavailable: {exc.message}", EXIT_CHECK_FAILED) from exc
    except ClientError as exc:
        raise CliError(f"{exc.code}: {exc.message}", EXIT_CHECK_FAILED) from exc
    except OSError as exc:  # the HTTP port is taken, a folder cannot be made
        raise CliError(f"cannot start: {exc}", EXIT_CHECK_FAILED) from exc


async def _check(args: argparse.Namespace, config: IngestConfig) -> int:
    from .adapters.service import check

    rules = await check(config, timeout=CHECK_TIMEOUT_S)
    sources = ", ".join(f"{s.name} ({s.format}, {s.mode})" for s in config.sources)
    print(
        f"{config.path}: valid; actor {config.actor}; {len(config.sources)} source(s): "
        f"{sources}; {len(rules)} rule(s) in {config.rules_file}"
    )
    return EXIT_OK


async def _serve(config: IngestConfig) -> int:
    from .adapters.service import Ingest

    stop = asyncio.Event()
    restore = _stop_on_signals(stop)
    try:
        async with Ingest(config) as ingest:
            log.warning(
                "ingest running as %s: %d source(s); metrics on %s/metrics",
                config.actor,
                len(config.sources),
                ingest.url,
            )
            await stop.wait()
            log.warning("stopping")
    finally:
        restore()
    return EXIT_OK


def _configure_logging(verbose: bool, *, quiet: bool) -> None:
    # Only where nobody configured logging (a host program or a test runner keeps its own).
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine(verbose, "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    level = logging.DEBUG if verbose else logging.ERROR if quiet else logging.INFO
    logging.basicConfig(level=level, handlers=[handler])


def add_ingest_verbs(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``ssr ingest`` to ``commands``."""
    ingest = commands.add_parser(
        "ingest",
        help="run the alert adapter (CAP, Trafikverket, DATEX II feeds to signed alerts)",
        description="Fetch, receive or pick up alert feeds, route them with the rules and "
        "send them as signed alert envelopes; runs until Ctrl-C or SIGTERM.",
    )
    ingest.add_argument("--config", required=True, metavar="FILE", help="the adapter's TOML file")
    ingest.add_argument(
        "--check",
        action="store_true",
        help="check the configuration, keys, policy and rules, then exit (0 valid, 2 not)",
    )
    ingest.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    ingest.set_defaults(handler=cmd_ingest)
