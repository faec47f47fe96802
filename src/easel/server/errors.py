"""Errors over HTTP: the one mapping of exceptions to statuses, and one body shape per API flavour.

`describe` is the only place an exception becomes a status (the EaselError tree as documented
in easel/errors.py, plus the server's own: queue full, unknown job, payload too large,
missing key, and FastAPI's request validation). Each API flavour then renders that
description in the shape its clients expect, chosen by the URL prefix:

- native   {"error": {"type", "message", "field"}}
- A1111    {"error", "detail", "body", "errors", "field"} as AUTOMATIC1111's API answers
- OpenAI   {"error": {"message", "type", "param", "code"}} as the OpenAI API answers

Every error response carries `x-should-retry: false` (the OpenAI client otherwise retries
409 and 5xx twice) except 429, which carries Retry-After; every 5xx carries `Connection:
close` (the server may not trust the connection's state after one). A validation error is a
4xx naming the field, never a 500; an unexpected exception is a 500 whose body says nothing
internal, and no message carries an object repr or a file-system path of the server
(public_message). A body FastAPI cannot parse is named: nested too deep or not UTF-8 is a 422
naming `body`, one cut off for its size a 413.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import TYPE_CHECKING, Any

from easel.errors import (
    Cancelled,
    EaselError,
    GenerationFailed,
    InvalidRequest,
    ModelNotFound,
    UnsupportedFeature,
)

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.requests import Request
    from starlette.responses import JSONResponse

log = logging.getLogger("easel.server")

OBJECT_REPR = re.compile(r"<[^<>]*? at 0x[0-9a-fA-F]+>")  # "<_io.BytesIO object at 0x7f...>"
# An absolute path with at least two parts (/a/b, C:\a\b); not a URL's path (it follows the host
# name) nor one of this server's routes.
SERVER_PATH = re.compile(
    r"(?<![\w.:/~\\-])(?:/(?!(?:api|sdapi|v1|controlnet)/)|[A-Za-z]:\\)"
    r"(?:[^\s'\"()<>\[\]{},;:/\\]+[/\\])+[^\s'\"()<>\[\]{},;:]*"
)


def public_message(message: str) -> str:
    """`message` fit for a client: object reprs and the server's file-system paths (the HF
    cache, the gallery, model folders) left out. The CLI keeps them: they are the user's."""
    return SERVER_PATH.sub("<server path>", OBJECT_REPR.sub("<object>", message))


class PayloadTooLarge(InvalidRequest):
    """A body or an uploaded image is larger than the server accepts (HTTP 413)."""


class Unauthorized(Exception):
    """No or a wrong API key (HTTP 401)."""


class ImageNotFound(Exception):
    """No gallery image has this id (HTTP 404)."""


class QueueFull(Exception):
    """The queue holds `queue_size` jobs already; retry after `retry_after` seconds."""

    def __init__(self, size: int, retry_after: int) -> None:
        super().__init__(f"the queue is full ({size} jobs waiting); retry in about {retry_after} s")
        self.retry_after = retry_after


class JobNotFound(Exception):
    """No job has this id (HTTP 404)."""


class JobConflict(Exception):
    """The job is in a state that does not allow this (HTTP 409), e.g. cancelling a finished job."""


# The EaselError tree, most specific first (as documented in easel/errors.py), then the server's.
STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (PayloadTooLarge, 413),
    (InvalidRequest, 422),
    (ModelNotFound, 404),
    (UnsupportedFeature, 422),
    (GenerationFailed, 500),
    (Cancelled, 409),
    (QueueFull, 429),
    (JobNotFound, 404),
    (ImageNotFound, 404),
    (JobConflict, 409),
    (Unauthorized, 401),
)


@dataclasses.dataclass(frozen=True)
class Problem:
    """An error as every flavour sees it before rendering."""

    status: int
    type: str
    message: str
    field: str | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


def describe(error: BaseException) -> Problem:
    """The one mapping of exceptions to HTTP statuses."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    if isinstance(error, RequestValidationError):
        return _validation_problem(error)
    if isinstance(error, HTTPException) and error.status_code == 400 and error.__cause__ is not None:
        body = _body_problem(error.__cause__)  # FastAPI's "There was an error parsing the body"
        if body is not None:
            return body
    if isinstance(error, HTTPException):  # routing: 404 unknown path, 405 wrong method
        return Problem(error.status_code, "HTTPError", str(error.detail), headers=dict(error.headers or {}))
    for kind, status in STATUS:
        if isinstance(error, kind):
            headers: dict[str, str] = {}
            if isinstance(error, QueueFull):
                headers["Retry-After"] = str(error.retry_after)
            if isinstance(error, Unauthorized):
                headers["WWW-Authenticate"] = 'Basic realm="easel", charset="UTF-8"'
            name = next(cls.__name__ for cls in type(error).__mro__ if cls in dict(STATUS))
            return Problem(status, name, str(error), getattr(error, "field", None), headers)
    return Problem(500, "InternalError", "internal server error (see the server log)")


def _body_problem(cause: BaseException) -> Problem | None:
    """Why FastAPI could not read a JSON body, as the client's error it is."""
    if isinstance(cause, PayloadTooLarge):  # counted by BodyLimitMiddleware while read
        return describe(cause)
    if isinstance(cause, RecursionError):
        return Problem(422, "InvalidRequest", "invalid body: JSON nested too deeply", "body")
    if isinstance(cause, UnicodeDecodeError):
        return Problem(422, "InvalidRequest", f"invalid body: not valid UTF-8 JSON ({cause.reason} at byte "
                       f"{cause.start})", "body")  # fmt: skip
    if isinstance(cause, ValueError):
        return Problem(422, "InvalidRequest", f"invalid body: not readable JSON ({cause})", "body")
    return None


def _validation_problem(error: Any) -> Problem:
    first = error.errors()[0]
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "form")]
    name = ".".join(location) or "body"
    if first.get("type") == "json_invalid":
        return Problem(422, "InvalidRequest", f"invalid body: not valid JSON ({first.get('msg')})", "body")
    if first.get("type") == "missing":
        return Problem(422, "InvalidRequest", f"{name} is required", name)
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    value = first.get("input")
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    return Problem(422, "InvalidRequest", f"invalid {name}={shown}: {message}", name)


# -- the three flavours -----------------------------------------------------------------------


def _native_body(problem: Problem) -> dict[str, Any]:
    return {"error": {"type": problem.type, "message": problem.message, "field": problem.field}}


def _a1111_body(problem: Problem) -> dict[str, Any]:
    return {
        "error": problem.type,
        "detail": problem.message,
        "body": "",
        "errors": problem.message,
        "field": problem.field,
    }


OPENAI_TYPES = {
    401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error",
}  # fmt: skip


def _openai_body(problem: Problem) -> dict[str, Any]:
    kind = OPENAI_TYPES.get(
        problem.status, "server_error" if problem.status >= 500 else "invalid_request_error"
    )
    return {"error": {"message": problem.message, "type": kind, "param": problem.field, "code": problem.type}}


def flavour_of(path: str) -> str:
    if path.startswith(("/sdapi/", "/controlnet/")):
        return "a1111"
    if path.startswith("/v1/"):
        return "openai"
    return "native"


RENDERERS = {"native": _native_body, "a1111": _a1111_body, "openai": _openai_body}


def error_response(error: BaseException, path: str, *, close: bool = False) -> JSONResponse:
    """The response for `error` on a route under `path`; `close` (and every 5xx) ends the
    connection after it."""
    from starlette.responses import JSONResponse

    problem = describe(error)
    if problem.status >= 500 and problem.type == "InternalError":
        log.error("unexpected error on %s", path, exc_info=error)
    headers = {"x-should-retry": "true" if problem.status == 429 else "false", **problem.headers}
    if close or problem.status >= 500:
        headers["Connection"] = "close"
    problem = dataclasses.replace(problem, message=public_message(problem.message))
    return JSONResponse(RENDERERS[flavour_of(path)](problem), status_code=problem.status, headers=headers)


def install(app: FastAPI) -> None:
    """Route every exception through error_response."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    async def handle(request: Request, error: Exception) -> JSONResponse:
        return error_response(error, request.url.path)

    for kind in (RequestValidationError, HTTPException, EaselError, QueueFull, JobNotFound, JobConflict,
                 Unauthorized, ImageNotFound, Exception):  # fmt: skip
        app.add_exception_handler(kind, handle)
