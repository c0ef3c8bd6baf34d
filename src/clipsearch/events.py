"""Progress leaves the library as events; the faces decide how to show them.

The library never prints. A long call (indexing, training, building the demo world) takes an
``on_progress`` callback and sends it :class:`Event` objects; the CLI renders them as a Rich
bar in a terminal or one plain line per message in a log (:mod:`clipsearch.cli.progress`), the
server its own way, and a notebook may collect them or pass nothing::

    summary = collection.add(["photos/"], on_progress=lambda e: print(e.task, e.kind, e.n))

Events are plain frozen data, so they pickle and can cross a process or a Ray task.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

EventKind = Literal["total", "advance", "message", "done"]


@dataclass(frozen=True)
class Event:
    """One step of a long-running task.

    Attributes:
        task: what is running, in a few words ("indexing", "training", "demo world (train)").
        kind: ``"total"``: ``n`` more units are expected; ``"advance"``: ``n`` units finished;
            ``"message"``: a line worth logging (``message``, with numbers in ``data``);
            ``"done"``: the task ended (successfully or not).
        n: units, for ``"total"`` and ``"advance"``.
        message: the line, for ``"message"``.
        data: numbers behind a message (``{"step": 120, "loss": 3.27}``) for a face that
            draws them rather than printing the line.
    """

    task: str
    kind: EventKind
    n: int = 0
    message: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)


ProgressCallback = Callable[[Event], None]
"""What ``on_progress`` arguments take: called in the caller's thread, in order."""


class Reporter:
    """Sends one task's events to a callback, or nowhere when there is none.

    The library's long calls make one of these from their ``on_progress`` argument, so the
    code that does the work reads ``report.advance()`` whether or not anyone listens.
    """

    def __init__(self, on_progress: ProgressCallback | None, task: str):
        self.callback = on_progress
        self.task = task

    def __bool__(self) -> bool:
        return self.callback is not None

    def total(self, n: int) -> None:
        """``n`` more units of work are expected."""
        if self.callback is not None and n:
            self.callback(Event(self.task, "total", n=int(n)))

    def advance(self, n: int = 1) -> None:
        """``n`` units of work finished."""
        if self.callback is not None and n:
            self.callback(Event(self.task, "advance", n=int(n)))

    def message(self, text: str, **data: Any) -> None:
        """A line worth logging, with the numbers behind it."""
        if self.callback is not None:
            self.callback(Event(self.task, "message", message=text, data=data))

    def done(self) -> None:
        """The task ended."""
        if self.callback is not None:
            self.callback(Event(self.task, "done"))
