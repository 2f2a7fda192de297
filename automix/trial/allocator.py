"""The allocator's count of a trial's memory, phase by phase, independent of the memory model.

:mod:`automix.trial.meter` accounts for the tensors the memory model names (the model's
parameters and buffers, gradients, optimizer states, what autograd saves); it cannot see what
nobody modelled (a full-precision copy of a weight still referenced, the logits of an
evaluation batch, a calibration buffer). :class:`AllocatorMeter` asks the allocator instead:

* **CPU**: torch's CPU allocator reports every allocation and free to the profiler while memory
  profiling is on (``torch.profiler.profile(profile_memory=True)``, what
  ``export_memory_timeline`` reads). The meter runs one profiling session over the whole trial
  and takes the running total of its allocation events in time order: bytes allocated since the
  meter started and not yet freed. Each phase is a ``record_function`` range; its peak is the
  largest running total inside the range (or the total it started with). Tensors that existed
  before the meter started are not counted, nor are their frees: the count is the trial's own.
  (A caller's own profiler session, already running, turns the meter off: one session at a time.)
* **CUDA**: ``torch.cuda.max_memory_allocated`` per phase (the peak statistics are reset when a
  phase starts), minus ``memory_allocated`` when the meter started.

The profiler records every operator too; on CPU that costs time (``benchmarks/memory_model.md``
has the overhead), so on CPU a trial runs it only when asked (``TrialSpec.allocator_meter``).
"""

from __future__ import annotations

import bisect
import contextlib
import os
import sys
from typing import Any, Iterator

import torch

from automix.trial._torch_compat import profiler_active

__all__ = ["AllocatorMeter", "PHASE_PREFIX"]

PHASE_PREFIX = "automix.phase:"


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """The profiler's C++ side prints a line to fd 2 when a session starts and stops; keep it out
    of the trial's output (Python's own stderr is flushed first and is left alone otherwise)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (a captured stream): nothing to hide
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class AllocatorMeter:
    """Peak bytes the allocator holds for the trial in each phase (see the module docstring).

    ``with AllocatorMeter(device) as meter:`` then ``with meter.phase("load"): ...`` for each
    phase, one after the other; after the ``with`` block :attr:`peaks` maps each phase to its
    peak, in the order the phases ran. ``enabled=False``: the phases are plain blocks and
    :attr:`peaks` stays empty.
    """

    def __init__(self, device: str = "cpu", enabled: bool = True) -> None:
        self.device = str(device)
        self.cuda = self.device.startswith("cuda")
        self.enabled = enabled
        self.peaks: dict[str, int] = {}
        self.held: dict[str, int] = {}  # bytes still allocated when each phase ended
        self._names: list[str] = []
        self._prof: Any = None
        self._base = 0

    # ------------------------------------------------------------------ session
    def __enter__(self) -> "AllocatorMeter":
        if not self.cuda and profiler_active():  # the caller profiles: one session at a time
            self.enabled = False
        if not self.enabled:
            return self
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self._base = int(torch.cuda.memory_allocated(self.device))
        else:
            self._prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                profile_memory=True)
            with _quiet_stderr():
                self._prof.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._prof is None:
            return
        with _quiet_stderr():
            self._prof.__exit__(*exc)
        try:
            self.peaks, self.held = _profiled_peaks(self._prof.profiler.kineto_results.experimental_event_tree(),
                                                    self._names)
        finally:
            self._prof = None

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Measure the block as phase ``name`` (names are unique within a session)."""
        if not self.enabled:
            yield
            return
        if name in self._names:
            raise ValueError(f"phase {name!r} measured twice")
        self._names.append(name)
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            try:
                yield
            finally:
                torch.cuda.synchronize(self.device)
                self.peaks[name] = int(torch.cuda.max_memory_allocated(self.device)) - self._base
                self.held[name] = int(torch.cuda.memory_allocated(self.device)) - self._base
            return
        with torch.profiler.record_function(PHASE_PREFIX + name):
            yield

    @property
    def peak(self) -> tuple[str, int] | None:
        """(phase, bytes) of the largest phase peak (the first of equals); None before any."""
        if not self.peaks:
            return None
        name = max(self.peaks, key=lambda k: self.peaks[k])
        return name, self.peaks[name]


def _profiled_peaks(tree: Any, names: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """Per phase, the largest running total of the session's CPU allocations within its range,
    and the total at its end. A free counts only when the session saw the allocation: tensors
    made before the meter started (a previous trial's, freed late by the garbage collector)
    are not the trial's."""
    allocs: list[tuple[int, int, int]] = []  # (time, address, bytes: + allocated, - freed)
    windows: dict[str, tuple[int, int]] = {}
    stack = list(tree)
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        fields = node.extra_fields
        if type(fields).__name__ == "_ExtraFields_Allocation":
            if str(fields.device).startswith("cpu"):
                allocs.append((node.start_time_ns, fields.ptr, int(fields.alloc_size)))
        elif node.name.startswith(PHASE_PREFIX):
            windows[node.name[len(PHASE_PREFIX):]] = (node.start_time_ns, node.end_time_ns)
    allocs.sort(key=lambda a: a[0])
    times, totals, live, total = [], [], {}, 0
    for t, ptr, n in allocs:
        if n > 0:
            live[ptr] = n
        elif live.pop(ptr, None) is None:
            continue
        total += n
        times.append(t)
        totals.append(total)
    out: dict[str, int] = {}
    held: dict[str, int] = {}
    for name in names:
        if name not in windows:
            continue
        start, end = windows[name]
        lo, hi = bisect.bisect_left(times, start), bisect.bisect_right(times, end)
        before = totals[lo - 1] if lo > 0 else 0
        out[name] = max([before, *totals[lo:hi]])
        held[name] = totals[hi - 1] if hi > 0 else 0
    return out, held
