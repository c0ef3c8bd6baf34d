"""What an indexing run did: counts and the inputs that failed, with their reasons."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from clipsearch.paths import display_path


@dataclass
class Failure:
    """An input that could not be indexed, and why (one line of ``--report``)."""

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        """``{"path", "reason"}``, the path readable (bytes that are not UTF-8 shown as ``\\xe9``)."""
        return {"path": display_path(self.path), "reason": self.reason}


@dataclass
class IndexSummary:
    """What one indexing run did.

    Counts are of inputs: an image file, or a text item (paragraph or record).

    - ``added``: new inputs now in the store (embedded, or a new path for bytes already there);
    - ``updated``: inputs already indexed whose content or metadata changed;
    - ``unchanged``: inputs already indexed as they are;
    - ``failed``: inputs that could not be indexed (see ``failures``);
    - ``removed``: items or paths taken out (pruned, or replaced by a changed file's new content).
    """

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    removed: int = 0
    embedded: int = 0  # vectors the model computed in this run
    cells_added: int = 0  # images already stored that were given the grid cells they lacked
    failed_unread: int = 0  # of the failed: unchanged since they failed before, so not read again
    captions_dropped: int = 0  # stored images whose table no longer names them (or is gone): caption cleared
    prune_kept: dict[str, int] = field(default_factory=dict)  # what seems out of reach (empty or unlistable folder, dangling entry) -> vanished paths under it not pruned
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    index: str = "exact"  # what happened to the ANN index (see Store.update_index)

    def to_dict(self) -> dict[str, int]:
        """The ``--json`` summary: ``{"added", "updated", "unchanged", "failed", "removed"}``."""
        return {k: getattr(self, k) for k in ("added", "updated", "unchanged", "failed", "removed")}

    def fail(self, path: str, reason: str) -> None:
        self.failed += 1
        self.failures.append(Failure(str(path), reason))

    def write_report(self, path: str | os.PathLike[str]) -> None:
        """Write every failure to ``path`` as JSON lines, ``{"path", "reason"}`` each (its folder is made)."""
        from pathlib import Path

        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", encoding="utf-8") as fh:
            for f in self.failures:
                fh.write(json.dumps(f.to_dict(), ensure_ascii=False) + "\n")
