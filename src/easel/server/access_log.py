"""One log line per HTTP request: method, path, status and duration, nothing else.

Why its own middleware instead of uvicorn's access log: uvicorn logs the query string (where a
client may put a key) and the client address, and says nothing of how long a request took.
This line never carries a header, a query string or a body (keys and prompts stay out of logs),
and it is written for every answer, refusals by the key and body-size middlewares included.
`easel serve` prints it on stderr (logger "easel.access"); an embedding app configures it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

LOGGER = "easel.access"


class AccessLogMiddleware:
    """Pure ASGI (no body buffering): times each HTTP request and logs its answer's status."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.logger = logging.getLogger(LOGGER)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]  # what the client gets when the app fails before answering

        async def send_and_note(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            self.logger.info("%s %s %d %.0f ms", scope["method"], scope["path"], status[0], elapsed_ms)


def log_to_stderr() -> None:
    """`easel serve`: access lines on stderr, timestamped, once."""
    logger = logging.getLogger(LOGGER)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
