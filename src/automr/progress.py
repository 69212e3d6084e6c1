"""A drop-in :class:`rich.progress.Progress` that also reports into log files.

Rich draws nothing while its console is not an interactive terminal (``nohup`` or a redirect),
so a log stays empty until a step ends. :class:`Progress` behaves exactly like rich's on a
terminal (and in Jupyter); elsewhere it prints one plain line per task at most every
``every`` seconds (default 30, or ``$AUTOMR_PROGRESS_EVERY``), once when a task completes and
once when the display stops, e.g.::

    finetune: 40/128 (31%) 12.3 s elapsed, ~28 s left; loss 1.234

Import it instead of rich's; the columns are re-exported so one import line serves a module.
"""

import os
from typing import Any, final

import attrs
from rich import progress as rich_progress
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

__all__ = [
    "BarColumn",
    "DownloadColumn",
    "MofNCompleteColumn",
    "Progress",
    "TaskID",
    "TextColumn",
    "TimeElapsedColumn",
    "TimeRemainingColumn",
    "TransferSpeedColumn",
    "report_interval",
]

DEFAULT_EVERY = 30.0
ENV_EVERY = "AUTOMR_PROGRESS_EVERY"


def report_interval() -> float:
    """Seconds between plain lines: ``$AUTOMR_PROGRESS_EVERY`` when it is a number >= 0, else 30."""
    try:
        value = float(os.environ.get(ENV_EVERY, DEFAULT_EVERY))
    except ValueError:
        return DEFAULT_EVERY
    return value if value >= 0 else DEFAULT_EVERY


@attrs.define
class _Reported:
    """What has been printed for one task."""

    at: float  # clock time of the last line (or of the task's creation)
    start_completed: float  # completed steps when the task was added (a resumed run)
    printed_completed: float  # completed steps in the last line
    finished: bool = False


@final
class Progress(rich_progress.Progress):
    """rich's ``Progress`` on a terminal; plain, throttled lines on any other console.

    Takes rich's arguments plus ``every`` (seconds between lines per task; ``None``: the
    environment's :func:`report_interval`). ``disable=True`` prints nothing either way. It
    writes to stderr unless given another ``console``, so that a command's results alone are
    on stdout (``automr evaluate > table.md`` held a progress line).
    """

    def __init__(self, *columns: str | ProgressColumn, every: float | None = None,
                 **kwargs: Any) -> None:
        kwargs.setdefault("console", Console(stderr=True))
        super().__init__(*columns, **kwargs)
        self.every = report_interval() if every is None else every
        self.plain = not self.disable and not (self.console.is_interactive
                                               or self.console.is_jupyter)
        if self.plain:
            self.disable = True  # rich's display stays off; the lines below replace it
        self._reported: dict[TaskID, _Reported] = {}

    def add_task(self, description: str, start: bool = True, total: float | None = 100.0,
                 completed: int = 0, visible: bool = True, **fields: Any) -> TaskID:
        task_id = super().add_task(description, start=start, total=total, completed=completed,
                                   visible=visible, **fields)
        self._reported[task_id] = _Reported(self.get_time(), completed, completed)
        return task_id

    def update(self, task_id: TaskID, **kwargs: Any) -> None:  # type: ignore[override]
        super().update(task_id, **kwargs)
        self._report(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._report(task_id)

    def remove_task(self, task_id: TaskID) -> None:
        super().remove_task(task_id)
        self._reported.pop(task_id, None)

    def stop(self) -> None:
        super().stop()
        if not self.plain:
            return
        for task_id, seen in self._reported.items():
            task = self._task(task_id)
            if task is not None and not seen.finished and task.completed != seen.printed_completed:
                self._print(task_id, final=True)

    def _task(self, task_id: TaskID) -> rich_progress.Task | None:
        """The task ``task_id`` through rich's public ``tasks`` (None once removed)."""
        return next((task for task in self.tasks if task.id == task_id), None)

    def _report(self, task_id: TaskID) -> None:
        seen = self._reported.get(task_id)
        task = self._task(task_id)
        if not self.plain or seen is None or task is None:
            return
        if task.total == 0 and not task.completed:  # nothing to do (all cached): no "0/0" line
            return
        if seen.finished and not task.finished:  # the total grew after the task completed
            seen.finished = False
        if seen.finished:
            return
        if task.finished or self.get_time() - seen.at >= self.every:
            self._print(task_id, final=task.finished)

    def _print(self, task_id: TaskID, final: bool) -> None:
        task, seen = self._task(task_id), self._reported[task_id]
        assert task is not None
        seen.at, seen.printed_completed, seen.finished = (self.get_time(), task.completed,
                                                          task.finished)
        self.console.print(self.plain_line(task_id, final=final), markup=False,
                           highlight=False, soft_wrap=True)

    def plain_line(self, task_id: TaskID, final: bool = False) -> str:
        """``label: 40/100 (40%) 12.3 s elapsed, ~18 s left; extra fields``."""
        task = self._task(task_id)
        if task is None:
            raise KeyError(task_id)
        label = next((column.render(task).plain for column in self.columns
                      if isinstance(column, TextColumn)), task.description)
        label = label.strip() or task.description
        line = f"{label}: {_count(task.completed)}"
        if task.total is not None:
            line += f"/{_count(task.total)}"
            if task.total > 0:
                line += f" ({100 * task.completed / task.total:.0f}%)"
        elapsed = task.elapsed or 0.0
        line += f" {_duration(elapsed, precise=True)} elapsed"
        done_here = task.completed - self._reported[task_id].start_completed
        if not final and task.total is not None and done_here > 0 and elapsed > 0:
            left = (task.total - task.completed) * elapsed / done_here
            line += f", ~{_duration(left, precise=False)} left"
        extras = [str(value) for value in task.fields.values() if str(value).strip()]
        return "; ".join([line, *extras])


def _count(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,.1f}"


def _duration(seconds: float, precise: bool) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s" if precise else f"{seconds:.0f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s" if precise else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
