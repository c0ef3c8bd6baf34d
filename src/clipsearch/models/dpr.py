"""Facebook's DPR (dense passage retrieval) dual encoder as an :class:`Encoder`.

DPR is asymmetric: questions go through a question encoder and passages through a separate
context encoder, each a BERT whose ``[CLS]`` output is the vector. ``encode_texts(role="query")``
uses the question encoder and ``role="passage"`` the context encoder.

The paper scores with the dot product of unnormalised vectors. clipsearch normalises every vector
and ranks by cosine like every other model, so one store and one search path serve all models;
the ranking can differ slightly from raw dot products (longer vectors no longer win by length),
which the tests check still puts the answering passage first.

Names (see :func:`parse_dpr_name`): ``dpr`` (the NQ single pair from the hub cache),
``dpr:QUESTION,CTX`` (hub ids or folders), ``dpr:QUESTION`` (the ctx id is the question id with
``question_encoder`` replaced by ``ctx_encoder``), a hub id containing ``question_encoder`` or
``ctx_encoder`` (paired the same way), a folder with ``question_encoder/`` and ``ctx_encoder/``
subfolders, or a single DPR folder (used for both roles). Weights are never downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy.typing as npt

from clipsearch.errors import ModelNotAvailable
from clipsearch.models.base import Encoder, ModelInfo, TextRole

DEFAULT_QUESTION_ENCODER = "facebook/dpr-question_encoder-single-nq-base"
DEFAULT_CTX_ENCODER = "facebook/dpr-ctx_encoder-single-nq-base"
_QUESTION_CLASS = "DPRQuestionEncoder"
_CTX_CLASS = "DPRContextEncoder"
_LOCAL_HINT = "copy the model with `hf download` on a machine with internet, or pass local folders as dpr:QUESTION_FOLDER,CTX_FOLDER"


class DPREncoder(Encoder):
    """A DPR question encoder and context encoder, each with its own tokenizer."""

    def __init__(self, towers: dict[str, tuple[Any, Any]], info: ModelInfo, device: str = "cpu"):
        """``towers`` maps "query" and "passage" to ``(model, tokenizer)``."""
        self.towers = towers
        self.info = info
        self.device = device

    def _encode_text_batch(self, texts: list[str], role: TextRole) -> npt.NDArray:
        import torch

        model, tokenizer = self._tower(role)
        batch = tokenizer(
            texts, padding="longest", truncation=True, max_length=self.info.context_length, return_tensors="pt"
        )
        with torch.inference_mode():
            out = model(**{k: v.to(self.device) for k, v in batch.items()})
        return out.pooler_output.float().cpu().numpy()

    def count_tokens(self, text: str, role: TextRole = "passage") -> int:
        """Tokens in ``text``, special tokens included, as the ``role`` encoder sees it."""
        _, tokenizer = self._tower(role)
        return len(tokenizer(text, truncation=False, verbose=False)["input_ids"])

    def count_truncated(self, texts: Sequence[str], role: TextRole = "passage") -> int:
        return sum(self.count_tokens(t, role) > self.info.context_length for t in texts)

    def _tower(self, role: str) -> tuple[Any, Any]:
        if role not in self.towers:
            raise ValueError(f"role must be 'query' or 'passage', not {role!r}")
        return self.towers[role]


def looks_like_dpr(name: str) -> bool:
    """True when :func:`load_dpr` is the loader for ``name`` (for the registry's dispatch)."""
    if name == "dpr" or name.startswith("dpr:"):
        return True
    path = Path(name).expanduser()
    if path.is_dir():
        return _is_pair_folder(path) or _folder_class(path) is not None
    return "/" in name and ("question_encoder" in name or "ctx_encoder" in name) and "dpr" in name.lower()


def parse_dpr_name(name: str) -> tuple[str, str]:
    """The ``(question encoder, context encoder)`` sources a DPR model name stands for.

    Raises:
        ValueError: the name is not a DPR name (the message lists the accepted forms).
    """
    if name == "dpr":
        return DEFAULT_QUESTION_ENCODER, DEFAULT_CTX_ENCODER
    if name.startswith("dpr:"):
        rest = name[len("dpr:") :].strip()
        if "," in rest:
            question, ctx = (part.strip() for part in rest.split(",", 1))
            if question and ctx:
                return question, ctx
        elif rest:
            return _pair_of(rest, name)
    else:
        path = Path(name).expanduser()
        if path.is_dir() and _is_pair_folder(path):
            return str(path / "question_encoder"), str(path / "ctx_encoder")
        if path.is_dir() and _folder_class(path) is not None:
            return str(path), str(path)
        if not path.exists() and ("question_encoder" in name or "ctx_encoder" in name):
            return _pair_of(name, name)
    raise ValueError(
        f"{name!r} is not a DPR model name: use 'dpr', 'dpr:QUESTION,CTX', a hub id containing "
        "'question_encoder' or 'ctx_encoder', or a folder with question_encoder/ and ctx_encoder/"
    )


def load_dpr(
    name_or_folder: str = "dpr",
    ctx_encoder: str | None = None,
    *,
    name: str | None = None,
    device: str = "cpu",
) -> DPREncoder:
    """Load a DPR question encoder and context encoder from local folders or the hub cache.

    Args:
        name_or_folder: a DPR name (see :func:`parse_dpr_name`), or the question encoder's hub
            id or folder when ``ctx_encoder`` is given.
        ctx_encoder: the context encoder's hub id or folder.
        name: recorded as :attr:`ModelInfo.name` (what the store remembers); default: the name
            it was loaded by (``name_or_folder``, or ``dpr:QUESTION,CTX`` for two arguments).
        device: torch device for inference.

    Raises:
        ModelNotAvailable: weights not on this machine, or a folder that holds something else.
    """
    if ctx_encoder is not None:
        question_src, ctx_src = name_or_folder, ctx_encoder
        name = name or f"dpr:{name_or_folder},{ctx_encoder}"
    else:
        name_or_folder = str(name_or_folder)
        question_src, ctx_src = parse_dpr_name(name_or_folder)
        if question_src == ctx_src and name and name != name_or_folder and not Path(name).expanduser().exists():
            # The registry resolved a hub id to its cached snapshot folder: pair by the id.
            try:
                pair = parse_dpr_name(name)
            except ValueError:
                pair = None
            if pair and pair[0] != pair[1]:
                question_src, ctx_src = _cached_folder(pair[0], name), _cached_folder(pair[1], name)
        name = name or name_or_folder
    shared = question_src == ctx_src
    question = _load_tower(question_src, None if shared else _QUESTION_CLASS, name, device)
    ctx = question if shared else _load_tower(ctx_src, _CTX_CLASS, name, device)
    q_dim, c_dim = _out_dim(question[0].config), _out_dim(ctx[0].config)
    if q_dim != c_dim:
        raise ModelNotAvailable(
            f"DPR model {name!r} pairs a {q_dim}-d question encoder with a {c_dim}-d context encoder; both must match"
        )
    context_length = min(
        int(question[0].config.max_position_embeddings),
        int(ctx[0].config.max_position_embeddings),
        *(int(t.model_max_length) for t in (question[1], ctx[1]) if 0 < t.model_max_length < 100_000),
    )
    info = ModelInfo(
        name=name,
        backend="dpr",
        dim=q_dim,
        modalities=("text",),
        context_length=context_length,
        preprocess=None,
        # Cosines between DPR questions and passages spread over roughly 0.3-0.8; 20 (the
        # sentence-transformers contrastive scale) makes a softmax over them usable.
        logit_scale=20.0,
        extra={"question_encoder": question_src, "ctx_encoder": ctx_src, "similarity": "cosine"},
    )
    return DPREncoder({"query": question, "passage": ctx}, info, device)


def _pair_of(source: str, name: str) -> tuple[str, str]:
    if "question_encoder" in source:
        return source, source.replace("question_encoder", "ctx_encoder")
    if "ctx_encoder" in source:
        return source.replace("ctx_encoder", "question_encoder"), source
    path = Path(source).expanduser()
    if path.is_dir() and _is_pair_folder(path):
        return str(path / "question_encoder"), str(path / "ctx_encoder")
    if path.is_dir():
        return str(path), str(path)
    raise ValueError(f"cannot tell the question and context encoders apart in {name!r}: use dpr:QUESTION,CTX")


def _cached_folder(repo_id: str, name: str) -> str:
    """The local snapshot of a hub repo, downloaded on first use (:func:`clipsearch.models.hub.hub_folder`)."""
    from clipsearch.models.hub import hub_folder

    return str(hub_folder(repo_id, name=name))


def _is_pair_folder(path: Path) -> bool:
    return (path / "question_encoder" / "config.json").is_file() and (path / "ctx_encoder" / "config.json").is_file()


def _folder_class(path: Path) -> str | None:
    """The DPR class a folder's config.json names, ``"DPR"`` for an unnamed DPR, else None."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or config.get("model_type") != "dpr":
        return None
    archs = [a for a in config.get("architectures") or [] if a in (_QUESTION_CLASS, _CTX_CLASS)]
    return archs[0] if archs else "DPR"


def _load_tower(source: str, want: str | None, name: str, device: str) -> tuple[Any, Any]:
    """Load one encoder (``want``: its class, or None for whatever the folder holds) and tokenizer."""
    import transformers
    from transformers import AutoTokenizer

    from clipsearch.models.hf_progress import quiet_transformers

    path = Path(source).expanduser()
    if path.exists() and not path.is_dir():
        raise ModelNotAvailable(f"DPR model {name!r}: {source} is a file; give a folder saved with save_pretrained")
    if not path.exists() and (source.startswith((".", "/", "~")) or source.count("/") > 1):
        raise ModelNotAvailable(f"DPR model {name!r}: folder {source} does not exist")
    if not path.exists():  # a hub id: its snapshot, downloaded on first use
        source = _cached_folder(source, name)
        path = Path(source)
    if path.is_dir():
        found = _folder_class(path)
        if found is None:
            raise ModelNotAvailable(f"DPR model {name!r}: {source} has no config.json with model_type 'dpr'")
        if want and found not in ("DPR", want):
            raise ModelNotAvailable(f"DPR model {name!r}: {source} holds a {found}, not a {want}")
        want = want or (found if found != "DPR" else _QUESTION_CLASS)
    want = want or _QUESTION_CLASS
    cls = getattr(transformers, want)
    try:
        with quiet_transformers():
            model, loading = cls.from_pretrained(source, local_files_only=True, output_loading_info=True)
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ModelNotAvailable(f"DPR model {name!r}: {source} cannot be loaded ({first}); {_LOCAL_HINT}") from exc
    missing = [k for k in loading.get("missing_keys", []) if "position_ids" not in k]
    if missing:
        raise ModelNotAvailable(
            f"DPR model {name!r}: {source} lacks weights for a {want} (missing {missing[0]}, ...); "
            "is it the other encoder of the pair?"
        )
    model.eval().to(device)
    return model, tokenizer


def _out_dim(config: Any) -> int:
    return int(config.projection_dim or config.hidden_size)
