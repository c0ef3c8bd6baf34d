"""Progress display pieces shared by the library's ``progress=True`` paths and the CLI."""

from __future__ import annotations

from rich.progress import ProgressColumn, Task
from rich.text import Text


class RateColumn(ProgressColumn):
    """Shows ``task.speed`` as ``12.3/s`` (Rich has byte-rate columns but none for plain counts)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f}/s" if speed else "-/s", style="progress.data.speed")
