"""The security officers' web console: three static files served under ``/console/``.

The console (``broker/console/``: ``index.html``, ``app.js``, ``style.css``) is a
small page that talks only to the officer API (``/api/v1/...``) of the same
origin. Officers sign in with their own key (a signed challenge, pasted in),
then read access reviews, message traces and the audit trail's verification
status. It has no build step and loads nothing from anywhere else; the page puts
every value from the API on screen as text, never as markup.

This module only serves the files, from memory, with strict headers: a Content
Security Policy that allows nothing but this origin's own script and style (no
inline code, no framing), ``nosniff``, no referrer and no caching.

Routes added by :func:`add_console_routes`:

- ``GET /console``            — redirect to ``/console/``
- ``GET /console/``           — the page
- ``GET /console/app.js``     — its script
- ``GET /console/style.css``  — its style sheet

Example::

    app = make_app(metrics, health)
    add_officer_routes(app, officer_context)
    add_console_routes(app)
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler

__all__ = [
    "CONSOLE_FILES",
    "CONSOLE_PATH",
    "CONTENT_SECURITY_POLICY",
    "SECURITY_HEADERS",
    "add_console_routes",
]

CONSOLE_PATH: Final = "/console/"
"""Where the page lives; its script and style sheet are relative to it."""

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'"
)
"""Only this origin's own files; no inline script or style, no embedding in frames."""

SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
}
"""Sent with every console answer, the redirect included."""

CONSOLE_FILES: Final = {
    "": ("index.html", "text/html"),
    "app.js": ("app.js", "text/javascript"),
    "style.css": ("style.css", "text/css"),
}
"""URL name under ``/console/`` → (file in ``broker/console/``, media type)."""


@dataclass(frozen=True)
class _Asset:
    body: bytes
    content_type: str

    def response(self) -> web.Response:
        return web.Response(
            body=self.body,
            content_type=self.content_type,
            charset="utf-8",
            headers=SECURITY_HEADERS,
        )


def _load_assets() -> dict[str, _Asset]:
    folder = resources.files("broker").joinpath("console")
    return {
        name: _Asset(folder.joinpath(file).read_bytes(), content_type)
        for name, (file, content_type) in CONSOLE_FILES.items()
    }


def add_console_routes(app: web.Application) -> None:
    """Serve the console under ``/console/`` on ``app`` (files read once, now)."""
    assets = _load_assets()

    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={**SECURITY_HEADERS, "Location": CONSOLE_PATH})

    def serve(asset: _Asset) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            return asset.response()

        return handler

    app.router.add_get(CONSOLE_PATH.rstrip("/"), redirect)
    for name, asset in assets.items():
        app.router.add_get(CONSOLE_PATH + name, serve(asset))
