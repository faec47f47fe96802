"""Who may call the server and how much they may send.

- Binding: loopback by default; any other address needs an API key, or an explicit
  --insecure (check_bind), because an image server on a LAN without a key is an open GPU.
- The key: when set, every route requires it, the OpenAPI document and docs UI included;
  only the bare /health stays open (load balancers, `curl` checks). Clients send it as
  `Authorization: Bearer KEY` (OpenAI clients) or HTTP Basic with any user name and the key
  as password (webuiapi, browsers). This is ASGI middleware, not a route dependency, so a
  route added later cannot forget it.
- Body size: Content-Length over the limit is refused before reading; a chunked body is
  counted while it is read, and once over the limit the app's own answer to the cut-off body
  is replaced by the 413 (in the flavour of the path). Both close the connection: the rest
  of the body is never read.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from easel.errors import InvalidRequest
from easel.server.errors import PayloadTooLarge, Unauthorized, error_response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = ("/health",)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, *, api_key: str | None, insecure: bool) -> None:
    """Refuse to serve a non-loopback address without a key unless the user insists."""
    if is_loopback(host) or api_key or insecure:
        return
    raise InvalidRequest(
        f"invalid host={host!r}: serving beyond this machine without an API key lets anyone on the "
        "network use it; set EASEL_API_KEY (or --api-key), or pass --insecure if you mean it",
        field="host",
        value=host,
    )


def key_matches(authorization: str, api_key: str) -> bool:
    """Bearer KEY, or Basic with any user name and KEY as password; constant-time compare."""
    scheme, _, credential = authorization.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        offered = credential.strip()
    elif scheme == "basic":
        try:
            decoded = base64.b64decode(credential.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return False
        offered = decoded.partition(":")[2]
    else:
        return False
    return hmac.compare_digest(offered.encode("utf-8"), api_key.encode("utf-8"))


class ApiKeyMiddleware:
    """Every HTTP request but OPEN_PATHS must carry the key (when the server has one)."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app, self.api_key = app, api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.api_key and scope["path"] not in OPEN_PATHS:
            headers = dict(scope.get("headers") or [])
            authorization = headers.get(b"authorization", b"").decode("latin-1")
            if not key_matches(authorization, self.api_key):
                response = error_response(
                    Unauthorized("missing or wrong API key: send 'Authorization: Bearer KEY' or HTTP Basic "
                                 "with the key as password"),
                    scope["path"],
                )  # fmt: skip
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuse bodies over `limit` bytes with 413, before or while reading them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            refusal = error_response(self._too_large(int(length)), scope["path"], close=True)
            await refusal(scope, receive, send)
            return
        seen, refused, started = 0, None, False

        async def counting_receive() -> Message:
            nonlocal seen, refused
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                refused = self._too_large(seen)
                raise refused
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused is not None:  # the app's own answer to the cut-off body ("error parsing"): 413 instead
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:  # whatever the app made of the cut-off body, the answer is 413
            if refused is None or started:
                raise
        if refused is not None and not started:
            await error_response(refused, scope["path"], close=True)(scope, receive, send)

    def _too_large(self, size: int) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"request body of {size} bytes is larger than this server's limit of {self.limit} bytes",
            field="body",
            value=size,
        )
