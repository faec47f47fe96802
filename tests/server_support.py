"""Helpers shared by the server tests (not a conftest: only test_server_* import it)."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
import urllib.request
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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serve_process(home: Path, api_key: str, startup_s: float = 90) -> Iterator[int]:
    """`python -m easel serve` on a free loopback port with `api_key`, offline, one torch
    thread; yields the port once /health answers, stops the process afterwards. The server's
    output goes to home/server.log (shown if it dies while starting)."""
    with started_server(home, api_key, startup_s) as (_, port):
        yield port


@contextmanager
def started_server(
    home: Path, api_key: str | None, startup_s: float = 90, args: tuple[str, ...] = (), session: bool = False
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """serve_process's server (more `args` to `easel serve`; no key with None); yields (process,
    port). `session`: in a session of its own, so a test can signal its process group as a
    terminal's Ctrl-C would (and its Ctrl-C does not reach the test)."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "EASEL_THREADS": "1", "EASEL_HOME": str(home)}
    if api_key is not None:
        env["EASEL_API_KEY"] = api_key
    log_path = home / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "easel", "serve", "--host", "127.0.0.1", "--port", str(port), *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=session,
        )
        try:
            deadline = time.monotonic() + startup_s
            while True:
                assert process.poll() is None, log_path.read_text()
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                        if answer.status == 200:
                            break
                except OSError:
                    pass
                assert time.monotonic() < deadline, f"server did not start in {startup_s:g} s"
                time.sleep(0.2)
            yield process, port
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
