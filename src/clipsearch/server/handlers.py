"""Every error as ``{"detail": "one sentence"}``: the exception handlers and their helpers.

No stack trace ever reaches a client; unexpected exceptions become a 500 that names only the
exception's type (the server's log has the rest).
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from clipsearch.errors import ClipsearchError, EmptyText, ImageRefused, ModelNotAvailable, StoreError
from clipsearch.server.schemas import ID_PATTERN
from clipsearch.server.thumbnails import ImageUnavailable
from clipsearch.store.schema import ID_HEX


def finite(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def as_request_error(exc: ValidationError, where: str) -> RequestValidationError:
    errors = []
    for err in exc.errors(include_url=False):
        errors.append({"loc": (where, *err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", ""), "ctx": err.get("ctx")})
    return RequestValidationError(errors)


def _message(err: dict[str, Any]) -> str:
    loc = [str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path", "header", "cookie")]
    where = ".".join(loc) or "request"
    kind = err.get("type", "")
    msg = str(err.get("msg", "invalid"))
    pattern = (err.get("ctx") or {}).get("pattern")
    if kind == "string_pattern_mismatch" and pattern == ID_PATTERN:
        msg = f"must be an item id: {ID_HEX} hex digits (0-9, a-f), or a unique prefix of 4 or more"
    elif kind == "string_pattern_mismatch" and pattern == r"\S":
        msg = "must contain a non-space character"
    elif kind == "missing":
        msg = "is required"
    msg = msg.removeprefix("Value error, ")
    return f"{where}: {msg}"


def install_error_handlers(app: FastAPI) -> None:
    """Every error becomes ``{"detail": "one sentence"}``; no stack trace ever reaches a client."""

    def reply(status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
        return JSONResponse({"detail": detail, **extra}, status_code=status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 405:
            detail = f"method {request.method} is not allowed here"
        elif exc.status_code == 404 and detail == "Not Found":
            detail = f"no such page or API route: {request.url.path[:200]}"
        return reply(exc.status_code, detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        errors = list(exc.errors())
        detail = "; ".join(_message(e) for e in errors[:4]) or "invalid request"
        if len(errors) > 4:
            detail += f"; and {len(errors) - 4} more"
        machine = [
            {"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))} for e in errors
        ]
        return reply(422, detail, errors=machine)

    @app.exception_handler(ValidationError)
    async def invalid_value(request: Request, exc: ValidationError) -> Response:
        return await invalid_request(request, as_request_error(exc, "body"))

    @app.exception_handler(ImageUnavailable)
    async def no_image(request: Request, exc: ImageUnavailable) -> Response:
        return reply(404, str(exc))

    @app.exception_handler(ImageRefused)
    async def refused(request: Request, exc: ImageRefused) -> Response:
        return reply(422, f"image refused: {exc.reason}")

    @app.exception_handler(ModelNotAvailable)
    async def no_model(request: Request, exc: ModelNotAvailable) -> Response:
        return reply(503, str(exc))

    @app.exception_handler(StoreError)
    async def store_error(request: Request, exc: StoreError) -> Response:
        return reply(409, str(exc))

    @app.exception_handler(EmptyText)
    async def empty(request: Request, exc: EmptyText) -> Response:
        return reply(422, str(exc))

    @app.exception_handler(ClipsearchError)
    async def clipsearch_error(request: Request, exc: ClipsearchError) -> Response:
        return reply(400, str(exc))

    @app.exception_handler(ValueError)
    async def value_error(request: Request, exc: ValueError) -> Response:
        return reply(422, str(exc).splitlines()[0][:500] if str(exc) else "invalid value")

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> Response:
        return reply(500, f"internal error ({type(exc).__name__}); the server's log has the details")
