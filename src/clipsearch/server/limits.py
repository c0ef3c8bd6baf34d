"""What the server refuses before a route runs: oversized bodies, foreign hosts; and its headers.

Three small ASGI middlewares, and :func:`parse_size` for the body cap the ``serve`` command takes:

- :class:`BodyLimit` counts the bytes of the request body *as they arrive* and answers 413 as
  soon as the count passes the cap. A ``Content-Length`` over the cap is refused before
  anything is read, but the header is never trusted: chunked uploads (no length) and lying
  lengths are cut off by the count.
- :class:`HostCheck` answers 400 to requests whose ``Host`` is not one the server expects. A
  server on 127.0.0.1 without a token would otherwise be readable by any web page through DNS
  rebinding (the page's host name re-pointed at 127.0.0.1).
- :class:`SecurityHeaders` adds ``nosniff``, no-referrer, no framing and a same-origin content
  security policy to every response (the page needs nothing from elsewhere).

Nothing here imports FastAPI; the responses are written with plain ASGI messages. What an
address to listen on asks for (a token beyond this machine) is :mod:`clipsearch.server.listen`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_MAX_BODY = 20 * 1024 * 1024
"""Largest request body accepted by default: 20 MiB."""

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(text: str | int) -> int:
    """Bytes from ``"20MB"``, ``"512k"``, ``"1.5GiB"`` or a plain number (units are powers of 1024).

    Raises:
        ValueError: not a size, or not positive.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = _SIZE.match(str(text))
        if not m:
            raise ValueError(f"size {text!r} is not a number of bytes; use e.g. 20MB, 512KB or 1048576")
        value = int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()[:1]])
    if value <= 0:
        raise ValueError(f"size must be a positive number of bytes, got {text!r}")
    return value


def host_of(header: str) -> str:
    """The host name of a ``Host`` header without its port: ``"[::1]:8000"`` -> ``"::1"``."""
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        return header[1:end] if end > 0 else header
    if header.count(":") == 1:
        return header.split(":", 1)[0]
    return header  # a bare IPv6 address, or a name


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when the body passes the cap; FastAPI re-raises HTTPExceptions
    met while parsing a body, so the route's error handler answers 413."""

    def __init__(self, limit: int):
        super().__init__(status_code=413, detail=too_large_message(limit))


def too_large_message(limit: int) -> str:
    return f"request body too large: the limit is {human_size(limit)}"


def human_size(n: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            value = n / size
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} bytes"


async def send_json(send: Send, status: int, body: dict[str, Any], headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """Write a complete JSON response with plain ASGI messages."""
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


class BodyLimit:
    """Refuse request bodies larger than ``max_body`` bytes, counted while they stream in."""

    def __init__(self, app: ASGIApp, max_body: int = DEFAULT_MAX_BODY):
        if not isinstance(max_body, int) or isinstance(max_body, bool) or max_body <= 0:
            raise ValueError(f"max_body must be a positive number of bytes, got {max_body!r}")
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body:
            # Refused unread; the server closes the connection rather than drain the body.
            await send_json(send, 413, {"detail": too_large_message(self.max_body)}, [(b"connection", b"close")])
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            # Normally the app's handler answers; this catches a body read outside a route.
            if started:
                raise
            await send_json(send, 413, {"detail": too_large_message(self.max_body)}, [(b"connection", b"close")])


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class HostCheck:
    """Answer 400 unless the ``Host`` header names one of ``allowed`` (``"*"`` allows any)."""

    def __init__(self, app: ASGIApp, allowed: Iterable[str]):
        self.app = app
        self.allowed = frozenset(h.strip().strip("[]").lower() for h in allowed)
        if not self.allowed:
            raise ValueError("allowed_hosts is empty; give host names, or '*' to accept any")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or "*" in self.allowed:
            await self.app(scope, receive, send)
            return
        header = ""
        for name, value in scope.get("headers", ()):
            if name == b"host":
                header = value.decode("latin-1")
                break
        host = host_of(header)
        if host in self.allowed:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        shown = header[:100] if header else "(none)"
        await send_json(
            send,
            400,
            {"detail": f"host {shown!r} is not served here; use one of: {', '.join(sorted(self.allowed))}"},
        )


CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)

_SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"cross-origin-resource-policy", b"same-origin"),
)


class SecurityHeaders:
    """Add the headers above to every HTTP response that does not set them itself."""

    def __init__(self, app: ASGIApp, *, cross_origin: bool = False):
        self.app = app
        # with CORS configured, other origins may embed our images: drop the CORP header
        self.headers = tuple(h for h in _SECURITY_HEADERS if not (cross_origin and h[0] == b"cross-origin-resource-policy"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", ())}
                message["headers"] = [*message.get("headers", ()), *(h for h in self.headers if h[0] not in present)]
            await send(message)

        await self.app(scope, receive, with_headers)
