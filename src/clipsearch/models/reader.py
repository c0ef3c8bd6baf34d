"""Extractive question-answering models (``AutoModelForQuestionAnswering``) for the reader.

:func:`load_reader` finds the model in a local folder or the local Hugging Face cache (never
downloads) and checks that it can read: a question-answering head and a fast tokenizer, whose
offset mapping turns token spans back into characters. Reading itself is a task:
:func:`clipsearch.tasks.reader.read`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipsearch.errors import ModelNotAvailable
from clipsearch.models.hub import local_source

_LOCAL_HINT = "give a folder saved with save_pretrained or a hub id, or leave the reader out to get a sentence answer"


@dataclass
class Reader:
    """A loaded extractive QA model and its fast tokenizer."""

    model: Any
    tokenizer: Any
    name: str
    device: str = "cpu"

    @property
    def max_length(self) -> int:
        """The most tokens one window can hold."""
        limits = [int(getattr(self.model.config, "max_position_embeddings", 512))]
        if 0 < self.tokenizer.model_max_length < 100_000:
            limits.append(int(self.tokenizer.model_max_length))
        if getattr(self.model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
            limits[0] -= 2  # RoBERTa's position ids start after the padding index
        return min(limits)


def load_reader(name_or_folder: str | Path, *, device: str | None = None) -> Reader:
    """Load a question-answering model from a local folder or the Hugging Face Hub.

    Args:
        name_or_folder: a folder, or a hub id (downloaded on first use, then loaded offline).
        device: torch device (see :func:`clipsearch.models.device.resolve_device`; ``None``:
            ``$CLIPSEARCH_DEVICE``, else cpu).

    Raises:
        ModelNotAvailable: not on this machine, not a QA model, or without a fast tokenizer.
        DeviceUnavailable: a device that is malformed or not on this machine.
    """
    from transformers import AutoConfig, AutoModelForQuestionAnswering, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_QUESTION_ANSWERING_MAPPING

    from clipsearch.models.device import resolve_device
    from clipsearch.models.hf_progress import quiet_transformers

    device = resolve_device(device)

    name = str(name_or_folder)
    source = local_source(name, "reader")
    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(source, local_files_only=True)
            if type(config) not in MODEL_FOR_QUESTION_ANSWERING_MAPPING:
                raise ModelNotAvailable(
                    f"reader model {name!r} is not a question-answering model: transformers has no "
                    f"question-answering head for model type {config.model_type!r}"
                )
            model = AutoModelForQuestionAnswering.from_pretrained(source, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelNotAvailable(
            f"reader model {name!r} cannot be loaded from {source} ({str(exc).strip().splitlines()[0][:160]}); {_LOCAL_HINT}"
        ) from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ModelNotAvailable(
            f"reader model {name!r} has no fast tokenizer (tokenizer.json); the reader needs its offset mapping"
        )
    model.eval().to(device)
    return Reader(model, tokenizer, name, device)
