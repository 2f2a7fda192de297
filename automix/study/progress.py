"""The live display of a running study (rich): done / running / failed / pruned, best in budget,
front, HV.

On a terminal: a progress bar (done of target, elapsed, ETA) with the study's numbers on the
line under it. Elsewhere (a log file, CI, a pipe): one plain line each time a trial finishes.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

from rich.console import Console, RenderableType
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

__all__ = ["StudyProgress", "describe", "show_step", "end_step"]

# The step a command shows until the study's display takes over (a live display at a time).
_step: list[Progress] = []


def show_step(console: Console, text: str) -> None:
    """Say what the command does now (`starting a local Ray ...`): the line, and on a terminal,
    under it, a spinner with the elapsed time until the next step or the study's display."""
    end_step()
    console.print(text, markup=False, soft_wrap=True, highlight=False)
    if console.is_terminal:
        p = Progress(SpinnerColumn(), TimeElapsedColumn(), console=console, transient=True)
        p.start()
        p.add_task("")
        _step.append(p)


def end_step() -> None:
    """Stop the spinner of `show_step` (nothing when none runs)."""
    while _step:
        _step.pop().stop()


def describe(run: Any) -> str:
    """The study's numbers: `running 2 · failed 0 · best in budget 2.109 · front 3 · HV 0.512`
    (`pruned N` too once a trial was pruned)."""
    best = "—" if run.best_quality is None else f"{run.best_quality:.4g}"
    parts = [f"running {run.running}", f"failed {run.failed}"]
    pruned = getattr(run, "pruned", 0)
    if pruned:
        parts.append(f"pruned {pruned}")
    parts += [f"best in budget {best}", f"front {len(run.front)}", f"HV {run.hypervolume:.3f}"]
    return " · ".join(parts)


class _StatsProgress(Progress):
    """A progress bar with each task's `stats` field on a line of its own (the numbers do not
    fit beside the bar in 80 columns)."""

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        for task in self.tasks:
            yield Text(f"  {task.fields.get('stats', '')}", no_wrap=True, overflow="ellipsis")


class StudyProgress:
    """Progress of a running study: a live bar on a terminal, a line per finished trial elsewhere."""

    def __init__(self, run: Any, enabled: bool = True, console: Console | None = None) -> None:
        self.run, self.enabled = run, enabled
        self.console = console or Console()
        self._progress: Progress | None = None
        self._task: Any = None
        self._last: tuple | None = None
        self._t0 = time.monotonic()

    def __enter__(self) -> "StudyProgress":
        end_step()
        self._t0 = time.monotonic()
        if self.enabled and self.console.is_terminal:
            self._progress = _StatsProgress(
                SpinnerColumn(), TextColumn("[bold]{task.fields[name]}"), BarColumn(bar_width=30),
                TextColumn("{task.completed}/{task.total} done"), TimeElapsedColumn(), TextColumn("ETA"),
                TimeRemainingColumn(), console=self.console, refresh_per_second=2,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("", total=self.run.target, name=self.run.name,
                                                 completed=min(self.run.done, self.run.target),
                                                 stats="waiting for the first trials ...")
        return self

    def update(self) -> None:
        if not self.enabled:
            return
        r = self.run
        if self._progress is not None:
            self._progress.update(self._task, completed=min(r.done, r.target), stats=describe(r))
            return
        key = (r.done, r.failed, getattr(r, "pruned", 0))
        if key != self._last:  # the first call (trials started), then each finished trial
            self._last = key
            self.console.print(f"{r.name}: {min(r.done, r.target)}/{r.target} done · {describe(r)} · "
                               f"{time.monotonic() - self._t0:.0f} s", soft_wrap=True, highlight=False)

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
