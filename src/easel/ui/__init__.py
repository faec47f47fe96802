"""The web UI: one static page (HTML, JS, CSS shipped as package data) over the native API.

Why a page of our own and not Gradio: see docs/architecture.md ("Web UI"). The page is served
by the same app as the APIs, so the API key middleware covers it like every other route, and
it reaches the models only through the native jobs API (the one queue). No build step, no CDN:
the files below are all there is, and the Content-Security-Policy says so to the browser.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.responses import Response  # at runtime: FastAPI reads the routes' return annotations

if TYPE_CHECKING:
    from fastapi import APIRouter

# file name -> media type; nothing else under static/ is served
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
HEADERS = {
    "Cache-Control": "no-cache",  # a new easel version must not run an old page
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
}


def asset(name: str) -> Response:
    """One of ASSETS read from the installed package (importlib.resources: works from a wheel)."""
    from importlib.resources import files

    from starlette.exceptions import HTTPException

    if name not in ASSETS:
        raise HTTPException(404, f"no UI file named {name!r}")
    body = files("easel.ui").joinpath("static", name).read_bytes()
    return Response(body, media_type=ASSETS[name], headers=HEADERS)


def build_router() -> APIRouter:
    """`/` (the page) and `/ui/<file>` (its script and style), built per app like the API routers."""
    from fastapi import APIRouter

    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def index() -> Response:
        return asset("index.html")

    @router.get("/favicon.ico")
    async def favicon() -> Response:  # browsers and tools ask for it whatever the page says
        return asset("favicon.svg")

    @router.get("/ui/{name}")
    async def static_file(name: str) -> Response:
        return asset(name)

    return router
