"""The HTTP API and the search page over one store: :func:`create_app`.

Routes (the schema is served at ``/openapi.json``):

- ``GET /health``, ``GET /api/config`` (what the page needs to know), ``GET /api/stats``
- ``GET /api/search?q=...`` and ``POST /api/search`` (JSON terms with weights, or a multipart
  form with an image), results ``[{"id", "path", "text", "modality", "score", "confidence",
  "good_match", "caption", "label"}]`` best first; header ``X-No-Good-Match: 1`` when none is a good match
- ``GET /api/items/{id}``, ``.../thumbnail``, ``.../image``, ``.../similar``
- ``POST /api/items``: add images by upload (needs the token)
- ``POST /api/classify``, ``POST /api/localize`` and ``GET /api/items/{id}/localize``,
  ``POST /api/ask``: the tasks of :mod:`clipsearch.tasks`
- ``GET /``: the search page (``server/static``)

Safety: images are served by item id only (16 hex digits), from the file the store recorded,
and only while its bytes still hash to the id; bodies are capped while they stream
(:mod:`clipsearch.server.limits`); uploads go through the pixel cap of
:func:`clipsearch.images.load_image`; every error is ``{"detail": "one sentence"}``.

Concurrency: routes run in a thread pool. Text encoding is serialised (Hugging Face fast
tokenizers are not safe to call from two threads at once) and so is the short step that maps
the store's snapshot to hits; image decoding, image encoding and indexing run in parallel
with searches, which see new items as soon as their batch is committed.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Cookie, Depends, FastAPI, File, Query, Request, UploadFile
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as StarletteUpload
from starlette.exceptions import HTTPException

from clipsearch.errors import ImageRefused
from clipsearch.server.handlers import as_request_error, finite, install_error_handlers
from clipsearch.server.limits import DEFAULT_MAX_BODY, BodyLimit, HostCheck, SecurityHeaders
from clipsearch.server.listen import LOCAL_HOSTS
from clipsearch.server.schemas import (
    BEARER,
    CELL_WEIGHT_HELP,
    ID_PATTERN,
    MAX_CELL_WEIGHT,
    MAX_K,
    MAX_TEXT,
    MAX_UPLOAD_FILES,
    MIN_CONFIDENCE_HELP,
    RERANK_HELP,
    TOKEN_COOKIE,
    AddedOut,
    ItemIdPath,
    ItemOut,
    Modality,
    ResultOut,
    SearchForm,
    SearchIn,
    SessionIn,
    error_responses,
    search_form_schema,
    valid_unicode,
)
from clipsearch.server.state import ServerState, add_uploads, upload_name
from clipsearch.server.task_routes import add_task_routes
from clipsearch.server.thumbnails import Blob

if TYPE_CHECKING:
    from clipsearch.collection import Collection
    from clipsearch.store import Hit

STATIC_DIR = Path(__file__).resolve().parent / "static"

__all__ = ["ID_PATTERN", "STATIC_DIR", "create_app"]


# -- the app ----------------------------------------------------------------------------------


def create_app(
    store: Collection | str | Path,
    *,
    token: str | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    cors_origins: Sequence[str] = (),
    private: bool = False,
    allowed_hosts: Sequence[str] = LOCAL_HOSTS,
    max_pixels: int | None | Literal["env"] = "env",
    thumbnail_dir: str | Path | None = None,
) -> FastAPI:
    """The FastAPI app serving ``store``: the JSON API, the images and the search page.

    Args:
        store: an open :class:`~clipsearch.collection.Collection` (from :func:`clipsearch.open_store`), or the folder of a store.
        token: the secret for ``Authorization: Bearer TOKEN`` (or the session cookie). Adding
            images needs it; without a token, adding is disabled.
        max_body: the largest request body in bytes, enforced while the body streams in.
        cors_origins: origins allowed to call the API from a browser (default: same origin only).
        private: every ``/api`` route needs the token, not only writes (for non-local binds).
        allowed_hosts: ``Host`` header values answered; ``("*",)`` answers any.
        max_pixels: pixel cap for uploaded and served images; ``"env"`` reads
            ``$CLIPSEARCH_MAX_PIXELS`` (default :data:`clipsearch.images.MAX_PIXELS`).
        thumbnail_dir: where thumbnails are cached (default ``STORE/thumbnails``).

    Raises:
        ValueError: ``private`` without a token, an empty token, or a bad ``max_body``.
    """
    from clipsearch.collection import Collection, open_store
    from clipsearch.images import max_pixels_from_env

    if token is not None and not token.strip():
        raise ValueError("the token is empty; give a secret string or no token")
    if private and token is None:
        raise ValueError("private=True needs a token: every API call must present it")
    if not isinstance(max_body, int) or isinstance(max_body, bool) or max_body <= 0:
        raise ValueError(f"max_body must be a positive number of bytes, got {max_body!r}")
    if not isinstance(store, Collection):
        store = open_store(store, create=False)
    pixels = max_pixels_from_env() if max_pixels == "env" else max_pixels
    state = ServerState(
        store,
        token=token,
        private=private,
        max_pixels=pixels,  # type: ignore[arg-type]
        thumbnail_dir=Path(thumbnail_dir) if thumbnail_dir is not None else store.local_dir / "thumbnails",
    )

    from clipsearch.version import __version__

    app = FastAPI(
        title="clipsearch",
        version=__version__,
        description='Search images and texts by meaning. Errors are JSON objects `{"detail": "..."}`.',
        docs_url=None,  # Swagger UI and ReDoc load scripts from a CDN; the page works offline
        redoc_url=None,
    )
    app.state.clipsearch = state
    install_error_handlers(app)

    def _presented(credentials: HTTPAuthorizationCredentials | None, cookie: str | None) -> str | None:
        if credentials is not None and credentials.credentials:
            return credentials.credentials
        return cookie

    def _check(presented: str | None) -> None:
        assert state.token is not None
        if presented is None or not hmac.compare_digest(presented.encode("utf-8", "replace"), state.token.encode("utf-8")):
            raise HTTPException(
                401,
                "this needs the server's token: send 'Authorization: Bearer TOKEN'" if presented is None else "wrong token",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
        cookie: Annotated[str | None, Cookie(alias=TOKEN_COOKIE, include_in_schema=False)] = None,
    ) -> None:
        _check(_presented(credentials, cookie))

    def require_writer(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
        cookie: Annotated[str | None, Cookie(alias=TOKEN_COOKIE, include_in_schema=False)] = None,
    ) -> None:
        if state.token is None:
            raise HTTPException(403, "adding images is disabled: start the server with --token (or $CLIPSEARCH_TOKEN)")
        _check(_presented(credentials, cookie))

    reads = [Depends(require_token)] if private else []

    # -- basics ------------------------------------------------------------------------------
    @app.get("/health", tags=["server"])
    def health() -> dict[str, str]:
        """Liveness: always ``{"status": "ok"}``."""
        return {"status": "ok"}

    @app.get("/api/config", tags=["server"])
    def config() -> dict[str, Any]:
        """What the page needs: which features exist and what needs the token."""
        mods = state.modalities()
        both = "image" in mods and "text" in mods
        return {
            "auth": {"reads": state.private, "writes": "token" if state.token else "disabled"},
            "features": {
                "search_by_image": "image" in mods,
                "classify": both,
                "localize": both,
                "ask": "text" in mods,
                "add": state.token is not None and "image" in mods,
                "rerank": both and state.has_grid(),
            },
            "max_k": MAX_K,
            "max_body": max_body,
            "version": __version__,
        }

    @app.get("/api/stats", tags=["store"], dependencies=reads, responses=error_responses(401))
    def stats() -> dict[str, Any]:
        """Counts per modality, model, dimension, size on disk and the index in use."""
        return finite(state.store.stats())

    # -- search --------------------------------------------------------------------------------
    @app.get(
        "/api/search",
        tags=["search"],
        dependencies=reads,
        response_model=list[ResultOut],
        responses=error_responses(401, 409, 422, 503),
    )
    def search_get(
        response: Response,
        q: Annotated[str, Query(min_length=1, max_length=MAX_TEXT, pattern=r"\S", description="the query text")],
        k: Annotated[int, Query(ge=1, le=MAX_K, description="results wanted")] = 10,
        modality: Annotated[Modality, Query(description="what to return")] = "any",
        min_score: Annotated[float | None, Query(ge=-1.0, le=1.0, description="drop results below this cosine")] = None,
        rerank: Annotated[int | None, Query(ge=0, le=MAX_K, description=RERANK_HELP)] = None,
        cell_weight: Annotated[float | None, Query(ge=0.0, le=MAX_CELL_WEIGHT, description=CELL_WEIGHT_HELP)] = None,
        min_confidence: Annotated[float | None, Query(ge=0.0, le=1.0, description=MIN_CONFIDENCE_HELP)] = None,
    ) -> list[dict[str, Any]]:
        """The ``k`` items nearest the text ``q``, best first (images and texts ranked together by
        calibrated confidence for ``modality=any``); header ``X-No-Good-Match: 1`` when none is a
        good match."""
        t0 = time.perf_counter()
        hits = state.search(
            [(state.text_vector(valid_unicode(q)), 1.0)], k=k, modality=modality, min_score=min_score, rerank=rerank,
            cell_weight=cell_weight, min_confidence=min_confidence,
        )  # fmt: skip
        response.headers["Server-Timing"] = f"search;dur={(time.perf_counter() - t0) * 1000:.1f}"
        return state.results(hits, response)

    search_body = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/SearchIn"}},
                "multipart/form-data": {"schema": search_form_schema()},
            },
        }
    }

    @app.post(
        "/api/search",
        tags=["search"],
        dependencies=reads,
        response_model=list[ResultOut],
        responses=error_responses(401, 404, 409, 413, 415, 422, 503),
        openapi_extra=search_body,
    )
    async def search_post(request: Request, response: Response) -> list[dict[str, Any]]:
        """Search with a composed query: texts and stored items with weights (JSON), plus an
        uploaded image (multipart form, field ``image``). Results best first."""
        t0 = time.perf_counter()
        spec, image_bytes = await _read_search_request(request)
        hits = await run_in_threadpool(_run_search, state, spec, image_bytes)
        response.headers["Server-Timing"] = f"search;dur={(time.perf_counter() - t0) * 1000:.1f}"
        return state.results(hits, response)

    # -- items -----------------------------------------------------------------------------------
    @app.get("/api/items/{item_id}", tags=["items"], dependencies=reads, response_model=ItemOut, responses=error_responses(401, 404, 422))
    def get_item(item_id: ItemIdPath) -> dict[str, Any]:
        """Everything the store holds about one item, except its vector."""
        return finite(state.result(state.item(item_id)))

    image_types = {t: {} for t in ("image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp")}

    @app.get(
        "/api/items/{item_id}/thumbnail",
        tags=["items"],
        dependencies=reads,
        response_class=Response,
        responses={
            200: {"content": {"image/webp": {}, "image/jpeg": {}}, "description": "the thumbnail"},
            **error_responses(401, 404, 422),
        },
    )
    def thumbnail(item_id: ItemIdPath) -> Response:
        """A small version of an image item (longest side 320 px), made once and cached on disk."""
        blob = state.thumbnails.get(state.item(item_id))
        return _send(blob, cache="public, max-age=31536000, immutable")

    @app.get(
        "/api/items/{item_id}/image",
        tags=["items"],
        dependencies=reads,
        response_class=Response,
        responses={200: {"content": image_types, "description": "the image"}, **error_responses(401, 404, 422)},
    )
    def image(item_id: ItemIdPath) -> Response:
        """The image of an image item: its file as indexed (formats browsers cannot show become PNG)."""
        blob = state.files.original(state.item(item_id), max_pixels=state.max_pixels)
        return _send(blob, cache="private, max-age=3600")

    @app.get(
        "/api/items/{item_id}/similar",
        tags=["items"],
        dependencies=reads,
        response_model=list[ResultOut],
        responses=error_responses(401, 404, 409, 422),
    )
    def similar(
        item_id: ItemIdPath,
        k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
        modality: Modality = "any",
        min_score: Annotated[float | None, Query(ge=-1.0, le=1.0)] = None,
    ) -> list[dict[str, Any]]:
        """ "More like this": the ``k`` items nearest a stored item (itself excluded), best first."""
        item = state.item(item_id, with_vector=True)
        if item.vector is None:
            raise HTTPException(409, f"item {item_id} has no vector")
        hits = state.search(
            [(item.vector, 1.0)], k=k + 1, modality=modality, min_score=min_score, query_kind=item.modality
        )
        return [r for r in state.results(hits, Response()) if r["id"] != item.id][:k]

    @app.post(
        "/api/items",
        tags=["items"],
        dependencies=[Depends(require_writer)],
        response_model=AddedOut,
        responses=error_responses(401, 403, 409, 413, 422),
    )
    async def add_items(files: Annotated[list[UploadFile], File(description="image files to add")]) -> dict[str, Any]:
        """Add images to the store by upload (needs the token). Each file is checked (pixel cap,
        decodable) and kept under ``STORE/uploads/``; files that fail are listed with the reason."""
        if len(files) > MAX_UPLOAD_FILES:
            raise HTTPException(422, f"too many files ({len(files)}); send at most {MAX_UPLOAD_FILES} per request")
        uploads = [(upload_name(f), await f.read()) for f in files]
        return await run_in_threadpool(add_uploads, state, uploads)

    if token is not None:

        @app.post("/api/session", tags=["server"], status_code=204, response_class=Response, responses=error_responses(401, 422))
        def session(body: SessionIn) -> Response:
            """Check the token and keep it in an HttpOnly, same-site cookie, so the page's image
            requests carry it."""
            _check(body.token)
            out = Response(status_code=204)
            out.set_cookie(TOKEN_COOKIE, body.token, httponly=True, samesite="strict", path="/")
            return out

    add_task_routes(app, state, reads)

    # -- the page ----------------------------------------------------------------------------------
    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR, html=False), name="static")

    # -- the schema: one error shape everywhere ----------------------------------------------------------
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        search_schema = SearchIn.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(search_schema.pop("$defs", {}))
        components["SearchIn"] = search_schema
        components["HTTPValidationError"] = {
            "title": "HTTPValidationError",
            "type": "object",
            "properties": {
                "detail": {"type": "string", "title": "Detail"},
                "errors": {"type": "array", "items": {"type": "object"}, "title": "Errors"},
            },
            "required": ["detail"],
        }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

    # outermost last: host check, then security headers, then the body cap, then CORS
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(BodyLimit, max_body=max_body)
    app.add_middleware(SecurityHeaders, cross_origin=bool(cors_origins))
    app.add_middleware(HostCheck, allowed=allowed_hosts)
    return app


# -- search helpers ------------------------------------------------------------------------------


_FORM_FIELDS = tuple(SearchForm.model_fields)  # every field of the JSON body, plus image_weight


async def _read_search_request(request: Request) -> tuple[SearchForm, bytes | None]:
    """Parse POST /api/search: a JSON :class:`SearchIn`, or the multipart / urlencoded form."""
    import json

    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json" or ctype.endswith("+json"):
        try:
            raw = await request.json()
        except (ValueError, UnicodeDecodeError) as exc:
            raise HTTPException(422, f"the body is not valid JSON ({str(exc).splitlines()[0][:120]})") from None
        if isinstance(raw, dict):
            raw = {**_query_fields(request), **raw}  # the body wins over the query string
        try:
            spec = SearchIn.model_validate(raw)
        except ValidationError as exc:
            raise as_request_error(exc, "body") from None
        return SearchForm(**spec.model_dump()), None
    if ctype not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise HTTPException(415, f"send the query as application/json or multipart/form-data, not {ctype or 'no content type'}")
    image: bytes | None = None
    fields: dict[str, Any] = {}
    async with request.form(max_files=1, max_fields=len(_FORM_FIELDS) + 4) as form:
        for key, value in form.multi_items():
            if key == "image":
                if not isinstance(value, StarletteUpload):
                    raise HTTPException(422, "image: must be a file upload, not a text field")
                data = await value.read()
                image = data if data else None
            elif key in _FORM_FIELDS:
                if isinstance(value, StarletteUpload):
                    raise HTTPException(422, f"{key}: must be a text field, not a file")
                if value != "" and key not in fields:
                    fields[key] = value
            else:
                raise HTTPException(422, f"unknown form field {key[:40]!r}; use {', '.join(('image',) + _FORM_FIELDS)}")
    fields = {**_query_fields(request), **fields}  # the form wins over the query string
    if "terms" in fields:
        try:
            fields["terms"] = json.loads(fields["terms"])
        except ValueError:
            raise HTTPException(422, 'terms: must be a JSON list such as [{"text": "dog", "weight": 2}]') from None
    try:
        spec = SearchForm.model_validate(fields)
    except ValidationError as exc:
        raise as_request_error(exc, "body") from None
    return spec, image


def _query_fields(request: Request) -> dict[str, Any]:
    """Search settings given in the query string of a POST (``/api/search?k=1``), as a GET takes them."""
    fields: dict[str, Any] = {}
    for key, value in request.query_params.multi_items():
        if key not in _FORM_FIELDS or key == "terms":
            raise HTTPException(422, f"unknown query parameter {key[:40]!r}; use {', '.join(f for f in _FORM_FIELDS if f != 'terms')}")
        fields.setdefault(key, value)
    return fields


def _run_search(state: ServerState, spec: SearchForm, image: bytes | None) -> list[Hit]:
    terms: list[tuple[Any, float]] = []
    if spec.q is not None:
        terms.append((state.text_vector(spec.q), spec.text_weight))
    for term in spec.terms:
        if term.text is not None:
            terms.append((state.text_vector(term.text), term.weight))
        else:
            item = state.item(str(term.id), with_vector=True)
            terms.append((item.vector, term.weight))
    if image is not None:
        try:
            pil = state.decode_upload(image)
        except ImageRefused as exc:
            raise HTTPException(422, f"image: {exc.reason}") from None
        terms.append((state.image_vector(pil), spec.image_weight))
    if not terms:
        raise HTTPException(422, "empty query: give q, terms, or an image")
    # an uploaded image, or a stored image added in, makes an image query for calibration
    image_led = image is not None or any(
        t.id is not None and t.weight > 0 and state.item(str(t.id)).modality == "image" for t in spec.terms
    )
    return state.search(
        terms, k=spec.k, modality=spec.modality, min_score=spec.min_score, rerank=spec.rerank,
        cell_weight=spec.cell_weight, min_confidence=spec.min_confidence, query_kind="image" if image_led else "text",
    )  # fmt: skip


# -- responses ----------------------------------------------------------------------------------------


def _send(blob: Blob, *, cache: str) -> Response:
    headers = {"Cache-Control": cache, "Content-Disposition": "inline"}
    if blob.path is not None:
        return FileResponse(blob.path, media_type=blob.media_type, headers=headers)
    return Response(blob.data, media_type=blob.media_type, headers=headers)
