"""How the CLI shows the library's progress events (:mod:`clipsearch.events`).

In a terminal, each task is a Rich bar with its rate and time left; a message replaces the
bar's description line. In a log (stderr not a terminal) there are no carriage returns: each
message is one plain line, and a task's end is one line with its count.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import ProgressColumn, Task
from rich.text import Text

from clipsearch.cli.common import err_console
from clipsearch.events import Event, ProgressCallback


class RateColumn(ProgressColumn):
    """Shows ``task.speed`` as ``12.3/s`` (Rich has byte-rate columns but none for plain counts)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f}/s" if speed else "-/s", style="progress.data.speed")


def progress_bar(total: int, description: str):
    """A Rich progress bar on stderr with rate and ETA; disabled for short runs."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=total < 16,
    )


@contextmanager
def rendered_progress(enabled: bool = True, *, bars: bool | None = None, transient: bool = False) -> Iterator[ProgressCallback | None]:
    """A callback that shows events on stderr for the block, or None when not ``enabled``.

    Args:
        enabled: False: no callback at all (the library then skips its bookkeeping).
        bars: Rich bars (True) or plain lines (False); default: bars when stderr is a terminal.
        transient: remove the bars when the block ends.
    """
    if not enabled:
        yield None
        return
    if bars is None:
        bars = sys.stderr.isatty()
    if not bars:
        yield _LogLines()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err_console,
        transient=transient,
    )
    tasks: dict[str, int] = {}

    def on_event(event: Event) -> None:
        task_id = tasks.get(event.task)
        if task_id is None:
            task_id = tasks[event.task] = progress.add_task(event.task, total=0)
        if event.kind == "total":
            progress.update(task_id, total=(progress.tasks[task_id].total or 0) + event.n)
        elif event.kind == "advance":
            progress.advance(task_id, event.n)
        elif event.kind == "message":
            progress.update(task_id, description=f"{event.task}: {event.message}")
        elif event.kind == "done":
            progress.update(task_id, description=event.task)

    with progress:
        yield on_event


class _LogLines:
    """Events as plain lines: every message, and each task's count when it ends."""

    def __init__(self) -> None:
        self.counts: dict[str, list[float]] = {}  # task -> [done, total, started]

    def __call__(self, event: Event) -> None:
        count = self.counts.setdefault(event.task, [0, 0, time.perf_counter()])
        if event.kind == "total":
            count[1] += event.n
        elif event.kind == "advance":
            count[0] += event.n
        elif event.kind == "message":
            err_console.print(f"{event.task}: {event.message}", highlight=False, soft_wrap=True)
        elif event.kind == "done" and count[0]:
            seconds = time.perf_counter() - count[2]
            err_console.print(f"{event.task}: {int(count[0]):,} done in {seconds:.1f} s", highlight=False, soft_wrap=True)
