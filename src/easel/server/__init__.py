"""The HTTP door: `easel serve`, or create_app(settings) for any ASGI server.

Modules: app (create_app), state (ServerState), jobs (queue, workers, SQLite records), native / a1111 /
openai (the three API flavours), policy (limits, what a remote caller may name), security
(bind check, API key, body size), errors (the one exception -> status mapping, per-flavour
bodies). Importing this package imports nothing heavy; create_app imports FastAPI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from easel.config import Settings

__all__ = ["create_app"]


def create_app(settings: Settings | None = None, **kwargs: Any) -> FastAPI:
    """See easel.server.app.create_app."""
    from easel.server.app import create_app as build

    return build(settings, **kwargs)
