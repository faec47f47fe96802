"""Helpers shared by the server tests (not a conftest: only test_server_* import it)."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def server(home: Path, engine: Any, **settings: Any) -> Iterator[Any]:
    """A TestClient for a fresh app on `home` sharing the session's loaded engine; the
    lifespan (queue workers) runs for the duration of the block."""
    from fastapi.testclient import TestClient

    from easel import Settings
    from easel.server import create_app

    app = create_app(Settings.from_env(home=home, **settings), engine=engine)
    with TestClient(app) as client:
        yield client


def data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def b64(path: Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02) -> Any:
    """Poll until predicate() is truthy (bounded); returns its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def routes(app: Any) -> list[tuple[str, set[str]]]:
    """Every (path, methods) the app serves, routers included (FastAPI may nest them)."""
    found: list[tuple[str, set[str]]] = []

    def walk(entries: list[Any]) -> None:
        for route in entries:
            nested = getattr(route, "original_router", None)
            if nested is not None:
                walk(nested.routes)
            elif getattr(route, "path", None) is not None:
                found.append((route.path, set(getattr(route, "methods", None) or {"GET"})))

    walk(app.routes)
    return found
