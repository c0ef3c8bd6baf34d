"""A frozen text tower's token states, computed once per distinct caption while training.

A frozen tower gives a caption the same states at every step, so the trainer runs it once per
caption (:meth:`TextStateCache.fill`) and the text head reads the states from host memory at each
step (:meth:`TextStateCache.inputs`) instead of running the tower again.

The states are cached in batches that depend only on the set of captions (longest first, ties
by the text). That mattered: the tower's float16 states shift a little with the texts that share
a padded batch, and batches in a set's hash order made two launches of the same recipe drift
apart (see :mod:`clipsearch.train.trainer`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from clipsearch.events import ProgressCallback, Reporter

if TYPE_CHECKING:
    import torch

    from clipsearch.models.dual.modules import DualModel

TASK = "caching text tower states"
"""The task name of :meth:`TextStateCache.fill`'s progress events."""


class TextStateCache:
    """Token states of a ``"dual"`` model's frozen text tower per distinct text, float16 on the host."""

    def __init__(self, model: DualModel):
        """
        Raises:
            ValueError: the model's text tower is trainable (its states change every step).
        """
        if model.cfg.text_trainable:
            raise ValueError("a trainable text tower cannot be cached; freeze it to cache its token states")
        self.model = model
        self.states: dict[str, torch.Tensor] = {}  # text -> (tokens, text_width) float16, padding cut off

    def __len__(self) -> int:
        return len(self.states)

    def fill(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 128,
        on_progress: ProgressCallback | None = None,
        deadline: float | None = None,
    ) -> None:
        """Compute the states of the ``texts`` not cached yet.

        Args:
            texts: captions; repeats and cached ones cost nothing.
            batch_size: texts per forward pass of the tower.
            on_progress: events of task :data:`TASK`: the texts to compute, then each batch done.
            deadline: a ``time.perf_counter()`` after which filling stops (a training run's time
                limit); texts left out are computed when a batch first needs them.
        """
        import time

        import torch

        report = Reporter(on_progress, TASK)
        # Ties broken by the text: a set's order changes with Python's hash seed, and other
        # batches would round the float16 states differently from run to run.
        todo = sorted({t for t in texts if t not in self.states}, key=lambda t: (-len(t), t))
        report.total(len(todo))
        with torch.inference_mode():
            for i in range(0, len(todo), batch_size):
                if deadline is not None and time.perf_counter() > deadline:
                    break
                chunk = todo[i : i + batch_size]
                ids = self.model.tokenize(chunk)
                states = self.model.tower_states(ids).to(torch.float16).cpu()  # the cache stays in host memory
                lengths = ids["attention_mask"].sum(1).tolist()
                for text, st, n in zip(chunk, states, lengths):
                    self.states[text] = st[:n].clone()
                report.advance(len(chunk))
        if todo:
            report.done()

    def inputs(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """What the model's ``encode_text`` takes for ``texts``: ``hidden``, their ``(n, T,
        text_width)`` float32 states padded to the longest, and ``mask``, ``(n, T)`` booleans,
        on the model's device. Texts not cached yet are computed first."""
        import torch

        missing = [t for t in texts if t not in self.states]
        if missing:
            self.fill(missing)
        states = [self.states[t] for t in texts]
        longest = max(s.shape[0] for s in states)
        hidden = torch.zeros(len(states), longest, self.model.cfg.text_width)
        mask = torch.zeros(len(states), longest, dtype=torch.bool)
        for i, s in enumerate(states):
            hidden[i, : s.shape[0]] = s.float()
            mask[i, : s.shape[0]] = True
        return {"hidden": hidden.to(self.model.device), "mask": mask.to(self.model.device)}
