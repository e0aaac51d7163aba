"""The broker's operational HTTP surface: liveness, readiness and Prometheus metrics.

``make_app`` builds the aiohttp application; ``HttpServer`` runs it on a host
and port (port 0 picks a free one) as an async context manager. Every error
answer is a small JSON object: unknown paths are 404, wrong methods 405, and
an unexpected exception in a handler becomes a JSON 500 with no traceback in
the body (the traceback goes to the log) and is counted in
``ssr_broker_errors_total{stage="http"}``.

Routes:

- ``GET /healthz`` — 200 ``{"status": "ok"}`` while the process is live, else 503.
- ``GET /readyz``  — 200 with the named checks when all pass, else 503 with them.
- ``GET /metrics`` — the Prometheus text exposition.

The service adds the security officers' access-review API under ``/api/v1/``
(``broker.officer_api``, described by ``GET /api/v1/openapi.json``) and their
web console under ``/console/`` (``broker.console``).

Example::

    app = make_app(metrics, health)
    async with HttpServer(app, host="127.0.0.1", port=0) as server:
        print(server.url)  # http://127.0.0.1:43817
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Final, Protocol, Self

from aiohttp import web

from broker.metrics import BrokerMetrics

__all__ = [
    "DEFAULT_HOST",
    "MAX_FIELD_SIZE",
    "MAX_HEADERS",
    "MAX_LINE_SIZE",
    "MAX_REQUEST_BODY",
    "SHUTDOWN_TIMEOUT",
    "HealthSource",
    "HttpServer",
    "make_app",
]

log = logging.getLogger(__name__)

DEFAULT_HOST: Final = "127.0.0.1"
"""Listen on loopback unless the configuration says otherwise."""

MAX_REQUEST_BODY: Final = 64 * 1024
"""These endpoints take no body; anything larger is refused with 413."""

MAX_LINE_SIZE: Final = 8190
"""Longest request line (method, path, query) accepted; longer is a 400."""

MAX_FIELD_SIZE: Final = 8190
"""Longest single header accepted."""

MAX_HEADERS: Final = 64
"""Most header fields accepted in one request."""

SHUTDOWN_TIMEOUT: Final = 5.0
"""Seconds a clean stop waits for in-flight requests."""

_SECURITY_HEADERS: Final = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


class HealthSource(Protocol):
    """What the HTTP surface asks the running service about its health."""

    def live(self) -> bool:
        """True while the process is able to make progress (not wedged)."""
        ...

    def ready(self) -> dict[str, bool]:
        """Named readiness checks, e.g. ``{"nats_connected": True, "streams_ready": True}``."""
        ...


_METRICS: Final = web.AppKey("metrics", BrokerMetrics)
_HEALTH: Final = web.AppKey("health", HealthSource)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_app(metrics: BrokerMetrics, health: HealthSource) -> web.Application:
    """Build the application serving ``/healthz``, ``/readyz`` and ``/metrics``."""
    app = web.Application(
        middlewares=[_json_errors],
        client_max_size=MAX_REQUEST_BODY,
    )
    app[_METRICS] = metrics
    app[_HEALTH] = health
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.on_response_prepare.append(_add_security_headers)
    return app


async def _healthz(request: web.Request) -> web.Response:
    if request.app[_HEALTH].live():
        return web.json_response({"status": "ok"})
    return web.json_response({"status": "unavailable"}, status=503)


async def _readyz(request: web.Request) -> web.Response:
    checks = dict(request.app[_HEALTH].ready())
    # No checks at all means nothing vouches for readiness: fail closed.
    ready = bool(checks) and all(checks.values())
    body = {"status": "ready" if ready else "not_ready", "checks": checks}
    return web.json_response(body, status=200 if ready else 503)


async def _metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[_METRICS].render()
    return web.Response(body=body, headers={"Content-Type": content_type})


@web.middleware
async def _json_errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Turn every error answer into JSON; never let a traceback reach the client."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error_response(exc)
    except Exception:
        # CancelledError is a BaseException and passes through untouched.
        log.exception("unexpected error serving %s %s", request.method, request.rel_url.path)
        request.app[_METRICS].count_error("http")
        return web.json_response(
            {"error": "internal_error", "status": 500, "message": "internal server error"},
            status=500,
        )


def _error_response(exc: web.HTTPException) -> web.Response:
    # The code is derived from the status, never from the request, so nothing the
    # client sent is reflected back.
    code = exc.reason.lower().replace(" ", "_").replace("-", "_") or "error"
    body: dict[str, object] = {"error": code, "status": exc.status, "message": exc.reason}
    headers: dict[str, str] = {}
    if isinstance(exc, web.HTTPMethodNotAllowed):
        body["allowed"] = sorted(exc.allowed_methods)
        headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
    return web.json_response(body, status=exc.status, headers=headers)


async def _add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


class HttpServer:
    """Serve an aiohttp application on ``host:port`` for the life of an ``async with``.

    With ``port=0`` the operating system picks a free port; :attr:`port` and
    :attr:`url` give the bound one once started. Signals are left to the
    service, which stops the server as part of its own shutdown.
    """

    def __init__(
        self,
        app: web.Application,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        shutdown_timeout: float = SHUTDOWN_TIMEOUT,
    ) -> None:
        self._app = app
        self._host = host
        self._requested_port = port
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The bound port; only known after :meth:`start`."""
        if self._port is None:
            raise RuntimeError("HttpServer is not running")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("HttpServer already started")
        runner = web.AppRunner(
            self._app,
            handle_signals=False,
            shutdown_timeout=self._shutdown_timeout,
            max_line_size=MAX_LINE_SIZE,
            max_field_size=MAX_FIELD_SIZE,
            max_headers=MAX_HEADERS,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._requested_port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        log.info("HTTP listening on %s", self.url)

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish, release the port. Idempotent."""
        runner, self._runner = self._runner, None
        self._port = None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
