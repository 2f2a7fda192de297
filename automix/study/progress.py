"""The live display of a running study (rich): done / running / failed, best in budget, front, HV."""

from __future__ import annotations

from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["StudyProgress"]


class StudyProgress:
    """Rich progress: done / running / failed, best quality within budget, front size, ETA."""

    def __init__(self, run: Any, enabled: bool = True) -> None:
        self.run, self.enabled, self._progress, self._task = run, enabled, None, None

    def __enter__(self) -> "StudyProgress":
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.fields[name]}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                TextColumn("{task.description}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                refresh_per_second=2,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("", total=self.run.target, name=self.run.name,
                                                 completed=self.run.done)
        return self

    def update(self) -> None:
        if not self._progress:
            return
        r = self.run
        best = "—" if r.best_quality is None else f"{r.best_quality:.4g}"
        self._progress.update(
            self._task, completed=min(r.done, r.target),
            description=f"running {r.running} · failed {r.failed} · best in budget {best} · "
                        f"front {len(r.front)} · HV {r.hypervolume:.3f}",
        )

    def __exit__(self, *exc: Any) -> None:
        if self._progress:
            self._progress.__exit__(*exc)
