"""Routes for the tasks of :mod:`clipsearch.tasks`: classify, localise (JSON map or PNG overlay), ask.

``GET /api/config`` tells the page which of them the store's model can serve. The routes parse
the request, call the library and render its answer; the work is the library's.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import FastAPI, File, Form, Query, UploadFile
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from clipsearch.errors import ImageRefused
from clipsearch.server.handlers import finite
from clipsearch.server.schemas import (
    ID_PATTERN,
    MAX_LABELS,
    MAX_TEXT,
    OVERLAY_SIDE,
    AskIn,
    Format,
    ItemIdPath,
    Method,
    error_responses,
    valid_unicode,
)
from clipsearch.viz.overlay import map_over_image

if TYPE_CHECKING:
    from PIL import Image

    from clipsearch.server.state import ServerState


def add_task_routes(app: FastAPI, state: ServerState, reads: list[Any]) -> None:
    """Add the task routes to ``app``; ``reads`` are the dependencies every read route needs."""

    def image_from(upload: bytes | None, item_id: str | None) -> Image.Image:
        if (upload is None) == (item_id is None):
            raise HTTPException(422, "give either an uploaded image (field 'image') or an item id (field 'id'), not both")
        if item_id is not None:
            return state.item_image(item_id)
        try:
            from clipsearch.images import load_image

            return load_image(upload, max_pixels=state.max_pixels)  # type: ignore[arg-type]
        except ImageRefused as exc:
            raise HTTPException(422, f"image: {exc.reason}") from None

    async def read_upload(image: UploadFile | None) -> bytes | None:
        if image is None:
            return None
        data = await image.read()
        return data or None

    @app.post("/api/classify", tags=["tasks"], dependencies=reads, responses=error_responses(401, 404, 413, 422, 503))
    async def classify(
        labels: Annotated[str, Form(min_length=1, max_length=10_000, description="labels, comma or newline separated")],
        image: Annotated[UploadFile | None, File(description="an image to classify")] = None,
        id: Annotated[str | None, Form(pattern=ID_PATTERN, description="or a stored image item")] = None,  # noqa: A002
        top: Annotated[int, Form(ge=1, le=MAX_LABELS)] = 5,
        templates: Annotated[Literal["simple", "ensemble"], Form()] = "simple",
    ) -> dict[str, Any]:
        """Zero-shot classification of one image among the labels: ``{"predictions": [{"label", "prob"}]}``."""
        names = tuple(_labels(labels))
        data = await read_upload(image)

        def work() -> dict[str, Any]:
            clf = state.classifier(names, templates)
            prediction = clf.classify([image_from(data, id)], top=top)[0]
            if prediction.error is not None:
                raise HTTPException(422, f"image: {prediction.error}")
            return {"id": id, "predictions": prediction.to_dict()["predictions"]}

        return await run_in_threadpool(work)

    loc_content = {200: {"content": {"application/json": {}, "image/png": {}}, "description": "the map"}}

    def localize_response(pil: Image.Image, prompt: str, method: str, fmt: str) -> Response:
        from clipsearch.tasks.localize import localize

        valid_unicode(prompt)
        loc = localize(state.encoder, pil, prompt, method=method, text_vector=state.text_vector(prompt))
        if fmt == "png":
            overlay = map_over_image(pil, loc.map, loc.bbox, max_side=OVERLAY_SIDE)
            return Response(_png(overlay), media_type="image/png", headers={"Cache-Control": "no-store"})
        return JSONResponse(finite(loc.to_dict()))

    @app.get(
        "/api/items/{item_id}/localize",
        tags=["tasks"],
        dependencies=reads,
        response_class=Response,
        responses={**loc_content, **error_responses(401, 404, 422, 503)},
    )
    def localize_item(
        item_id: ItemIdPath,
        prompt: Annotated[str, Query(min_length=1, max_length=MAX_TEXT, pattern=r"\S")],
        format: Format = "json",  # noqa: A002
        method: Method = "auto",
    ) -> Response:
        """Where in a stored image is ``prompt``? A relevance map (JSON) or the map drawn over the image (PNG)."""
        return localize_response(state.item_image(item_id), prompt, method, format)

    @app.post(
        "/api/localize",
        tags=["tasks"],
        dependencies=reads,
        response_class=Response,
        responses={**loc_content, **error_responses(401, 404, 413, 422, 503)},
    )
    async def localize_upload(
        prompt: Annotated[str, Form(min_length=1, max_length=MAX_TEXT, pattern=r"\S")],
        image: Annotated[UploadFile | None, File(description="an image")] = None,
        id: Annotated[str | None, Form(pattern=ID_PATTERN, description="or a stored image item")] = None,  # noqa: A002
        format: Annotated[Format, Form()] = "json",  # noqa: A002
        method: Annotated[Method, Form()] = "auto",
    ) -> Response:
        """Where in this image is ``prompt``? An uploaded image or a stored one; JSON map or PNG overlay."""
        data = await read_upload(image)
        return await run_in_threadpool(lambda: localize_response(image_from(data, id), prompt, method, format))

    @app.post("/api/ask", tags=["tasks"], dependencies=reads, responses=error_responses(401, 409, 422, 503))
    def ask(body: AskIn) -> dict[str, Any]:
        """Answer a question from the store's text passages: the best sentence of the top ``k``."""
        from clipsearch.tasks.qa import StoreRetriever
        from clipsearch.tasks.qa import ask as ask_question

        if "text" not in state.modalities():
            raise HTTPException(422, f"model {state.store.model_name!r} embeds images only; it cannot answer questions")
        with state.model_lock:
            result = ask_question(body.question, StoreRetriever(state.store, state.store.encoder), k=body.k)
        return finite(result.to_dict())


def _labels(text: str) -> list[str]:
    """The form's labels (:func:`clipsearch.tasks.templates.parse_labels`), within the server's limits."""
    from clipsearch.tasks.templates import parse_labels

    labels = parse_labels(text)
    if len(labels) > MAX_LABELS:
        raise HTTPException(422, f"labels: at most {MAX_LABELS}, got {len(labels)}")
    if len(labels) < 2:
        raise HTTPException(422, f"labels: give at least two labels to choose between, not {len(labels)}")
    for lab in labels:
        valid_unicode(lab)
    return labels


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
