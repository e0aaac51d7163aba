"""The one exception tree of the service shell (everything outside ``broker.core``).

    BrokerError                    every error the service shell raises
    ├── ConfigError                the configuration is invalid or incomplete
    ├── NatsUnavailable            cannot connect to NATS, or the connection was lost
    └── EmbeddedNatsError          the embedded nats-server cannot be found, started or stopped

The protocol core keeps its own root (``broker.core.errors.CoreError``); the
shell maps core errors to reason codes where it calls the core, and maps
third-party errors (nats, aiohttp, OS errors) to this tree at exactly one
boundary each. Errors carry fields (``code`` and, per class, more), not just
strings, so callers branch on data and never parse messages.
"""

from __future__ import annotations

__all__ = ["BrokerError", "ConfigError", "EmbeddedNatsError", "NatsUnavailable"]


class BrokerError(Exception):
    """Root of every error raised by the service shell."""

    code: str = "broker_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(BrokerError):
    """Invalid or incomplete configuration; ``field`` names the setting when known."""

    code = "config_invalid"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.field = field


class NatsUnavailable(BrokerError):
    """NATS cannot be reached, or the connection to it was lost."""

    code = "nats_unavailable"


class EmbeddedNatsError(BrokerError):
    """The embedded nats-server is missing, failed to start, or did not stop.

    ``log_tail`` holds the last lines the server wrote (empty when it never ran),
    and is also appended to the message so a failing test or log shows why.
    """

    code = "embedded_nats"

    def __init__(self, message: str, *, log_tail: str = "", code: str | None = None) -> None:
        if log_tail:
            message = f"{message}\n--- nats-server log (tail) ---\n{log_tail}"
        super().__init__(message, code=code)
        self.log_tail = log_tail
