"""Zero-shot tasks on top of any image-text encoder: classify, evaluate, localise, caption, moderate.

Each function takes a loaded :class:`~clipsearch.models.base.Encoder` first::

    from clipsearch import load_model
    from clipsearch.tasks import classify, localize

    model = load_model("demo")
    classify(model, ["scene.png"], ["circle", "square", "star"])[0].top   # [("circle", 0.93), ...]
    localize(model, "scene.png", "red circle").bbox                       # (x0, y0, x1, y1)

The submodules share these names (``clipsearch.tasks.classify`` the module holds ``classify`` the
function); import helpers from the submodule explicitly: ``from clipsearch.tasks.classify import
ZeroShotClassifier``. Nothing here imports torch; the encoder does, when it is loaded.
"""

from __future__ import annotations

from clipsearch.tasks.caption import Captioned, caption
from clipsearch.tasks.classify import Prediction, ZeroShotClassifier, classify
from clipsearch.tasks.evaluate_classify import ClassificationReport, evaluate_classification, write_report
from clipsearch.tasks.localize import Localization, LocalizationReport, evaluate_localization, localize
from clipsearch.tasks.moderate import Moderated, Rule, load_rules, moderate

__all__ = [
    "ClassificationReport",
    "Captioned",
    "Localization",
    "LocalizationReport",
    "Moderated",
    "Prediction",
    "Rule",
    "ZeroShotClassifier",
    "caption",
    "classify",
    "evaluate_classification",
    "evaluate_localization",
    "load_rules",
    "localize",
    "moderate",
    "write_report",
]
