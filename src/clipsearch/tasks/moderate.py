"""Rule-based image moderation with calibrated zero-shot scores.

A rule is a description of what to flag ("a photo of a weapon"), a probability threshold, and
counter-descriptions of what such images are easily confused with ("a photo of a kitchen knife
on a chopping board", "a photo of a power drill"). Raw cosine similarities are not comparable
between prompts or models, so a rule's score is a probability:

    score = softmax(logit_scale * [cos(image, description), cos(image, counter_1), ...])[0]

the chance that the description beats all its counters for this image, with the model's own
temperature. The rule fires when ``score >= threshold``. Rules without counters compete against
:data:`DEFAULT_COUNTERS`. See docs/moderation.md.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from clipsearch.models.base import Encoder

DEFAULT_COUNTERS: tuple[str, ...] = ("a photo.", "a photo of an ordinary, everyday scene.")
"""What a rule competes against when it names no counter-descriptions of its own."""

DEFAULT_THRESHOLD = 0.5
RULE_KEYS = ("name", "description", "threshold", "counter")


@dataclass(frozen=True)
class Rule:
    """One moderation rule: fire when ``description`` beats ``counter`` with probability >= ``threshold``."""

    name: str
    description: str
    threshold: float = DEFAULT_THRESHOLD
    counter: tuple[str, ...] = ()

    @property
    def competitors(self) -> tuple[str, ...]:
        """The counter-descriptions actually used (the defaults when none were given)."""
        return self.counter or DEFAULT_COUNTERS


@dataclass
class Moderated:
    """One image's outcome: every rule's score, and the names of the rules that fired."""

    image: str
    scores: dict[str, float] = field(default_factory=dict)
    fired: list[str] = field(default_factory=list)
    error: str | None = None

    def to_dict(self, digits: int = 6) -> dict[str, Any]:
        if self.error is not None:
            return {"image": self.image, "error": self.error}
        return {
            "image": self.image,
            "fired": [{"rule": r, "score": round(self.scores[r], digits)} for r in self.fired],
            "scores": {r: round(s, digits) for r, s in self.scores.items()},
        }


def parse_rules(data: Any, *, source: str = "rules") -> list[Rule]:
    """Validate rules given as a list of mappings, or a mapping with a ``rules`` list.

    Each mapping has ``name`` and ``description`` (strings), optional ``threshold`` (a
    probability in (0, 1], default 0.5) and optional ``counter`` (a string or a list of strings;
    ``counters`` is accepted too).
    """
    if isinstance(data, Mapping) and "rules" in data:
        data = data["rules"]
    if not isinstance(data, list) or not data:
        raise ValueError(f"{source} must hold a non-empty list of rules (a 'rules:' list of name/description/threshold/counter)")
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, raw in enumerate(data, 1):
        where = f"{source} rule #{i}"
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where} must be a mapping with name, description, threshold and counter, not {type(raw).__name__}")
        raw = dict(raw)
        if "counters" in raw and "counter" not in raw:
            raw["counter"] = raw.pop("counters")
        unknown = sorted(set(map(str, raw)) - set(RULE_KEYS))
        if unknown:
            raise ValueError(f"{where} has unknown key {unknown[0]!r}; allowed keys: {', '.join(RULE_KEYS)}")
        name = str(raw.get("name") or "").strip()
        if not name:
            raise ValueError(f"{where} has no name")
        where = f"{source} rule {name!r}"
        if name in seen:
            raise ValueError(f"{where} is defined twice; rule names must be distinct")
        seen.add(name)
        description = raw.get("description")
        if not isinstance(description, str) or not description.strip():
            raise ValueError(f"{where} needs a description: the text that should match images it flags")
        threshold = raw.get("threshold", DEFAULT_THRESHOLD)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise ValueError(f"{where} has threshold {threshold!r}; use a probability in (0, 1], such as 0.6")
        counter = raw.get("counter") or []
        if isinstance(counter, str):
            counter = [counter]
        if not isinstance(counter, list) or not all(isinstance(c, str) and c.strip() for c in counter):
            raise ValueError(f"{where} has counter {counter!r}; use a list of non-empty descriptions")
        rules.append(Rule(name, description.strip(), float(threshold), tuple(c.strip() for c in counter)))
    return rules


def load_rules(path: str | Path) -> list[Rule]:
    """Read rules from a YAML (or JSON) file; see :func:`parse_rules` for the format."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"rules file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"rules file {str(p)!r} is not valid YAML{at}") from None
    return parse_rules(data, source=str(p))


def rule_probabilities(cosines: np.ndarray, logit_scale: float) -> np.ndarray:
    """Calibrated rule scores from cosines.

    Args:
        cosines: ``(n_images, 1 + n_counters)``: column 0 the description, the rest its counters.
        logit_scale: the model's temperature multiplier.

    Returns:
        ``(n_images,)``: ``softmax(logit_scale * cosines)[:, 0]``, the probability the description wins.
    """
    z = float(logit_scale) * np.atleast_2d(np.asarray(cosines, dtype=np.float64))
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e[:, 0] / e.sum(axis=1)


class Moderator:
    """Rules with their description and counter embeddings computed once, ready for images."""

    def __init__(self, encoder: "Encoder", rules: Sequence[Rule]):
        from clipsearch.tasks.classify import require_image_and_text

        require_image_and_text(encoder, "moderation")
        if not rules:
            raise ValueError("give at least one moderation rule")
        self.encoder = encoder
        self.rules = list(rules)
        self.logit_scale = float(encoder.info.logit_scale)
        texts: list[str] = []
        self._spans: list[slice] = []
        for rule in self.rules:
            start = len(texts)
            texts.extend((rule.description, *rule.competitors))
            self._spans.append(slice(start, len(texts)))
        self.text_vectors = encoder.encode_texts(texts)  # (n_texts, dim), unit rows

    def scores(self, image_vectors: np.ndarray) -> np.ndarray:
        """``(n_images, n_rules)`` calibrated scores for unit image vectors ``(n_images, dim)``."""
        cos = np.atleast_2d(image_vectors) @ self.text_vectors.T
        return np.stack([rule_probabilities(cos[:, span], self.logit_scale) for span in self._spans], axis=1)

    def moderate(
        self,
        images: Sequence[Any],
        *,
        batch_size: int = 32,
        on_progress: Callable[[int], None] | None = None,
    ) -> list[Moderated]:
        """Score every image against every rule; unreadable images come back with ``error``."""
        from clipsearch.tasks.classify import _draft_size, iter_image_batches

        out: list[Moderated] = []
        for batch in iter_image_batches(images, batch_size=batch_size, draft=_draft_size(self.encoder)):
            ok = [item for item in batch if item.image is not None]
            rows = self.scores(self.encoder.encode_images([item.image for item in ok])) if ok else []
            by_index = dict(zip((item.index for item in ok), rows))
            for item in batch:
                if item.image is None:
                    out.append(Moderated(item.name, error=item.error))
                    continue
                scores = {rule.name: float(s) for rule, s in zip(self.rules, by_index[item.index])}
                fired = [r.name for r in self.rules if scores[r.name] >= r.threshold]
                out.append(Moderated(item.name, scores, fired))
            if on_progress:
                on_progress(len(batch))
        return out


def moderate(
    encoder: "Encoder",
    images: Sequence[Any],
    rules: Sequence[Rule] | str | Path,
    *,
    batch_size: int = 32,
    on_progress: Callable[[int], None] | None = None,
) -> list[Moderated]:
    """Check images against moderation rules.

    Args:
        encoder: a model that embeds images and text.
        images: file paths, bytes or RGB ``PIL.Image`` objects.
        rules: :class:`Rule` objects, or the path of a rules YAML file.
        batch_size: images per forward pass.
        on_progress: called with the number of images just finished.

    Returns:
        One :class:`Moderated` per image, in input order.
    """
    if isinstance(rules, (str, Path)):
        rules = load_rules(rules)
    return Moderator(encoder, rules).moderate(images, batch_size=batch_size, on_progress=on_progress)


def summarize(results: Sequence[Moderated], rules: Sequence[Rule]) -> dict[str, int]:
    """Images each rule fired on, in rule order (rules that never fired count 0)."""
    counts = Counter(name for r in results for name in r.fired)
    return {rule.name: counts.get(rule.name, 0) for rule in rules}
