"""The server's limits, and the shapes of its requests and responses (pydantic models).

These are what ``/openapi.json`` documents; the routes live in :mod:`clipsearch.server.app`.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Annotated, Any, Literal

from fastapi import Path as PathParam
from fastapi.security import HTTPBearer
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from clipsearch.store.lance_store import Item
from clipsearch.store.schema import ID_HEX

ID_PATTERN = rf"^[0-9a-f]{{4,{ID_HEX}}}$"
"""An item id, or a unique prefix of at least 4 hex digits (as the CLI prints and takes them)."""
MAX_K = 1000
MAX_TEXT = 1000  # characters in one query text
MAX_TERMS = 16  # terms in one composed query
MAX_WEIGHT = 100.0
MAX_CELL_WEIGHT = 100.0
RERANK_HELP = (
    "re-score the best N images by their best grid cell too (0: off; default: 20 when the store kept "
    "grid cells, else off)"
)
CELL_WEIGHT_HELP = "how much the best grid cell counts beside the vector (default 0.25; 1 finds one object among several)"
MAX_UPLOAD_FILES = 64
MAX_LABELS = 100
TOKEN_COOKIE = "clipsearch_token"
MIN_CONFIDENCE_HELP = (
    "drop results whose calibrated confidence (0-1) is below this; default: keep them and flag "
    "whether any is a good match"
)
TEXT_CACHE_SIZE = 512  # query texts whose vectors are kept
OVERLAY_SIDE = 1024  # longest side of a relevance overlay PNG
UPLOAD_DIR = "uploads"
UPLOAD_SUFFIX = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp",
                  "TIFF": ".tif", "PPM": ".ppm", "HEIF": ".heic", "AVIF": ".avif"}  # fmt: skip

Modality = Literal["image", "text", "any"]
Method = Literal["auto", "windows", "patches"]  # localisation: "auto" picks patches when the model has a patch grid
Format = Literal["json", "png"]


# -- request and response models -------------------------------------------------------------


def valid_unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text is not valid Unicode (it holds a lone surrogate)") from None
    return text


QueryText = Annotated[str, Field(min_length=1, max_length=MAX_TEXT, pattern=r"\S"), AfterValidator(valid_unicode)]
ItemId = Annotated[str, Field(pattern=ID_PATTERN, description=f"an item id ({ID_HEX} hex digits) or a unique prefix of 4 or more")]
Weight = Annotated[
    float,
    Field(ge=-MAX_WEIGHT, le=MAX_WEIGHT, json_schema_extra={"not": {"const": 0}}, description="non-zero; negative subtracts"),
]
ItemIdPath = Annotated[
    str, PathParam(pattern=ID_PATTERN, description=f"an item id ({ID_HEX} hex digits, 0-9 a-f) or a unique prefix of 4 or more")
]


def _nonzero(value: float, what: str) -> None:
    if value == 0:
        raise ValueError(f"{what} must be non-zero (negative weights subtract)")


class ErrorOut(BaseModel):
    detail: str


class TermIn(BaseModel):
    """One query term: a text or a stored item, times a weight."""

    model_config = ConfigDict(extra="forbid")
    text: QueryText | None = None
    id: ItemId | None = None
    weight: Weight = 1.0

    @model_validator(mode="after")
    def _one_thing(self) -> TermIn:
        if (self.text is None) == (self.id is None):
            raise ValueError("a term has either a text or an id, not both and not neither")
        _nonzero(self.weight, "weight")
        return self


class SearchIn(BaseModel):
    """A composed query: ``q`` (times ``text_weight``) plus ``terms``; the JSON body of POST /api/search."""

    model_config = ConfigDict(extra="forbid")
    q: QueryText | None = None
    text_weight: Weight = 1.0
    terms: list[TermIn] = Field(default_factory=list, max_length=MAX_TERMS)
    k: int = Field(10, ge=1, le=MAX_K)
    modality: Modality = "any"
    min_score: float | None = Field(None, ge=-1.0, le=1.0)
    min_confidence: float | None = Field(None, ge=0.0, le=1.0, description=MIN_CONFIDENCE_HELP)
    rerank: int | None = Field(None, ge=0, le=MAX_K, description=RERANK_HELP)
    cell_weight: float | None = Field(None, ge=0.0, le=MAX_CELL_WEIGHT, description=CELL_WEIGHT_HELP)

    @field_validator("k", "rerank", mode="before")
    @classmethod
    def _no_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("Input should be a whole number, not true or false")
        return value

    @model_validator(mode="after")
    def _weights(self) -> SearchIn:
        _nonzero(self.text_weight, "text_weight")
        return self


class SearchForm(SearchIn):
    """The multipart form of POST /api/search (``terms`` is then a JSON string), without the file."""

    image_weight: Weight = 1.0

    @model_validator(mode="after")
    def _image_weight(self) -> SearchForm:
        _nonzero(self.image_weight, "image_weight")
        return self


class ResultOut(BaseModel):
    id: str
    path: str | None
    text: str | None
    modality: str
    score: float  # the raw cosine (or grid re-ranked score)
    confidence: float | None = None  # calibrated for this store, 0-1 (clipsearch.calibration)
    good_match: bool | None = None  # confidence at or above the store's line
    match: str | None = None  # the confidence in a word: strong, good, weak or none
    caption: str | None = None  # what a table says of an image (or a text record's caption field)
    label: str | None = None


def _item_model() -> type[BaseModel]:
    """The JSON shape of a stored :class:`~clipsearch.store.lance_store.Item` (its vector left
    out), built from the dataclass so the API documents whatever fields the store has."""
    hints = typing.get_type_hints(Item)
    columns: dict[str, Any] = {}
    for f in dataclasses.fields(Item):
        if f.name == "vector":
            continue
        if f.default_factory is not dataclasses.MISSING:
            default = Field(default_factory=f.default_factory)
        else:
            default = ... if f.default is dataclasses.MISSING else f.default
        columns[f.name] = (hints[f.name], default)
    return create_model("ItemOut", __config__=ConfigDict(extra="allow"), **columns)


ItemOut = _item_model()


class AddedOut(BaseModel):
    added: list[dict[str, str]]
    failed: list[dict[str, str]]
    summary: dict[str, int]


class AskIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: QueryText
    k: int = Field(5, ge=1, le=50)


class SessionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=1, max_length=1000)


BEARER = HTTPBearer(auto_error=False, description="the server's token (clipsearch serve --token)")


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorOut, "description": _ERROR_TEXT.get(code, "error")} for code in codes}


_ERROR_TEXT = {
    400: "bad request",
    401: "the token is missing or wrong",
    403: "not allowed on this server",
    404: "no such item, or no image for it",
    409: "the store is busy or cannot answer this",
    413: "request body over the cap",
    415: "unsupported body type",
    422: "invalid input",
    503: "the model cannot be loaded",
}


def search_form_schema() -> dict[str, Any]:
    weight = {"type": "number", "minimum": -MAX_WEIGHT, "maximum": MAX_WEIGHT, "not": {"const": 0}, "default": 1}
    return {
        "type": "object",
        "properties": {
            "image": {"type": "string", "format": "binary", "description": "an image to search with"},
            "image_weight": weight,
            "q": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT, "pattern": r"\S", "description": "a text"},
            "text_weight": weight,
            "terms": {"type": "string", "description": 'JSON list of terms: [{"text": "dog", "weight": 2}, {"id": "ITEM"}]'},
            "k": {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 10},
            "modality": {"type": "string", "enum": ["image", "text", "any"], "default": "any"},
            "min_score": {"type": "number", "minimum": -1, "maximum": 1},
            "min_confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "rerank": {"type": "integer", "minimum": 0, "maximum": MAX_K, "description": RERANK_HELP},
            "cell_weight": {"type": "number", "minimum": 0, "maximum": MAX_CELL_WEIGHT, "description": CELL_WEIGHT_HELP},
        },
    }
