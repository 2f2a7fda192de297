"""Run trial functions somewhere else and hand their outcomes back to the driver.

The driver submits jobs (a key and a JSON-serialisable payload) and polls for outcomes; the
executor decides where the function runs. `RayExecutor` runs each job as a Ray task with the
study's per-trial resources (fractional GPUs allowed), on a local Ray started on demand or on an
existing cluster (`address=`). It keeps at most `workers` jobs in flight, retries a job whose
worker or node died, and stops a job over its time limit. `LocalExecutor` runs jobs one at a time
in the driver's process (debugging, and machines without Ray).

Executors are generic over the function: the same machinery runs `automix.trial.run_trial` and
the trivial functions of the orchestration benchmark.
"""

from __future__ import annotations

import importlib
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

__all__ = ["Outcome", "Executor", "RayExecutor", "LocalExecutor", "resolve_function"]


@dataclass
class Outcome:
    """What became of one submitted job.

    status: "ok" (the function returned `value`), "failed" (it raised), "timeout" (stopped over
    its time limit), "crashed" (its worker or node died more often than retries allow), or
    "cancelled" (the driver stopped it, e.g. on Ctrl-C).
    """

    key: Hashable
    status: str
    value: Any = None
    error: str | None = None
    attempts: int = 1
    submitted_at: float = 0.0
    finished_at: float = 0.0

    @property
    def seconds(self) -> float:
        return self.finished_at - self.submitted_at


def resolve_function(fn: Callable[[Any], Any] | str) -> Callable[[Any], Any]:
    """A callable from itself or from "package.module:function" (how the CLI names it)."""
    if callable(fn):
        return fn
    module, _, name = str(fn).partition(":")
    if not name:
        raise ValueError(f"function must be 'module:function', got {fn!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import trial function {fn!r}: {err}") from None


class Executor:
    """Interface the driver uses: submit, poll, cancel, shutdown."""

    workers: int = 1

    def free_slots(self) -> int:
        return self.workers - self.in_flight()

    def in_flight(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def submit(self, key: Hashable, payload: Any) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def poll(self, timeout: float = 1.0) -> list[Outcome]:  # pragma: no cover - interface
        raise NotImplementedError

    def cancel_all(self) -> list[Outcome]:  # pragma: no cover - interface
        raise NotImplementedError

    def shutdown(self) -> None:
        pass

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


class LocalExecutor(Executor):
    """Run jobs in the driver's process, one at a time (no isolation, no time limit)."""

    def __init__(self, fn: Callable[[Any], Any] | str, timeout_s: float | None = None) -> None:
        self.fn = resolve_function(fn)
        self.workers = 1
        self._queue: list[tuple[Hashable, Any, float]] = []

    def in_flight(self) -> int:
        return len(self._queue)

    def submit(self, key: Hashable, payload: Any) -> None:
        self._queue.append((key, payload, time.time()))

    def poll(self, timeout: float = 1.0) -> list[Outcome]:
        if not self._queue:
            time.sleep(min(timeout, 0.05))
            return []
        key, payload, t0 = self._queue.pop(0)
        try:
            value = self.fn(payload)
            return [Outcome(key, "ok", value=value, submitted_at=t0, finished_at=time.time())]
        except Exception as err:  # a trial function's failure is data, not a driver crash
            msg = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=5)}"
            return [Outcome(key, "failed", error=msg, submitted_at=t0, finished_at=time.time())]

    def cancel_all(self) -> list[Outcome]:
        now = time.time()
        out = [Outcome(k, "cancelled", error="cancelled by the driver", submitted_at=t, finished_at=now)
               for k, _, t in self._queue]
        self._queue.clear()
        return out


@dataclass
class _Running:
    key: Hashable
    payload: Any
    submitted_at: float
    attempts: int = 1
    cancelled_for: str | None = None
    extra: dict = field(default_factory=dict)


class RayExecutor(Executor):
    """Run jobs as Ray tasks with per-job resources, retries and time limits.

    Args:
        fn: the job function (or "module:function"); it must be importable on the workers.
        workers: most jobs in flight at once (the driver keeps this many busy).
        cpus, gpus: resources each job asks for; fractional GPUs share a device.
        timeout_s: a job running longer is force-cancelled and reported as "timeout".
        max_retries: Ray re-runs a job whose worker process or node died this many times; when
            those are spent the executor resubmits it itself, up to `max_retries` more times.
        address: join an existing cluster ("auto" or "HOST:PORT"); None starts a local Ray
            sized for `workers` jobs.
        resources: extra custom resources per job, e.g. {"node2": 0.1}.
    """

    def __init__(
        self,
        fn: Callable[[Any], Any] | str,
        *,
        workers: int = 1,
        cpus: float = 1.0,
        gpus: float = 0.0,
        timeout_s: float | None = None,
        max_retries: int = 2,
        address: str | None = None,
        resources: dict[str, float] | None = None,
        ray_init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        import ray

        self.fn = resolve_function(fn)
        self.workers = int(workers)
        self.timeout_s = timeout_s
        self.max_retries = int(max_retries)
        self._owns_ray = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=True,
                                          configure_logging=False)
            if address:
                kwargs["address"] = address
            else:
                # Enough logical CPUs for `workers` jobs even on a small machine: Ray's CPU
                # counts are for scheduling; the study's `workers` is the real parallelism.
                kwargs["num_cpus"] = max(int(workers * cpus + 0.999), 1)
                if gpus:
                    kwargs["num_gpus"] = max(int(workers * gpus + 0.999), 1)
                kwargs["object_store_memory"] = 256 * 1024**2
            kwargs.update(ray_init_kwargs or {})
            try:
                ray.init(**kwargs)
            except ConnectionError as err:
                raise ValueError(f"cannot connect to the Ray cluster at {address!r}: {err}") from None
            self._owns_ray = True
        self._ray = ray
        _ship_by_value(self.fn)
        # The job function itself is the Ray task (exported once per session, not per job).
        self._remote = ray.remote(self.fn).options(
            num_cpus=cpus, num_gpus=gpus, max_retries=self.max_retries,
            retry_exceptions=False, resources=resources or None,
        )
        self._running: dict[Any, _Running] = {}  # ObjectRef -> job

    def in_flight(self) -> int:
        return len(self._running)

    def submit(self, key: Hashable, payload: Any, *, attempts: int = 1) -> None:
        ref = self._remote.remote(payload)
        self._running[ref] = _Running(key, payload, time.time(), attempts)

    def poll(self, timeout: float = 1.0) -> list[Outcome]:
        """Outcomes of jobs that finished within `timeout` seconds (and of expired ones)."""
        if not self._running:
            time.sleep(min(timeout, 0.05))
            return []
        out = self._expire()
        refs = list(self._running)
        if not refs:
            return out
        wait = timeout
        if self.timeout_s:
            next_deadline = min(j.submitted_at for j in self._running.values()) + self.timeout_s
            wait = max(0.0, min(timeout, next_deadline - time.time()))
        ready, _ = self._ray.wait(refs, num_returns=len(refs), timeout=wait, fetch_local=True)
        for ref in ready:
            out.extend(self._collect(ref))
        return out

    def _expire(self) -> list[Outcome]:
        if not self.timeout_s:
            return []
        now = time.time()
        for ref, job in self._running.items():
            if job.cancelled_for is None and now - job.submitted_at > self.timeout_s:
                job.cancelled_for = "timeout"
                self._ray.cancel(ref, force=True)
        return []

    def _collect(self, ref: Any) -> list[Outcome]:
        ray = self._ray
        job = self._running.pop(ref)
        now = time.time()

        def outcome(status: str, value: Any = None, error: str | None = None) -> list[Outcome]:
            return [Outcome(job.key, status, value, error, job.attempts, job.submitted_at, now)]

        try:
            value = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            return self._cancelled(job, now)
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                ray.exceptions.LocalRayletDiedError, ray.exceptions.ObjectLostError) as err:
            if job.cancelled_for is not None:
                return self._cancelled(job, now)
            if job.attempts <= self.max_retries:
                # Ray's own retries are spent (or did not apply): run it again elsewhere.
                self.submit(job.key, job.payload, attempts=job.attempts + 1)
                return []
            return outcome("crashed", error=f"worker died {job.attempts} times: {err}")
        except ray.exceptions.RayTaskError as err:
            cause = err.cause if getattr(err, "cause", None) is not None else err
            return outcome("failed", error=f"{type(cause).__name__}: {cause}\n{err}")
        except ray.exceptions.RayError as err:
            if job.cancelled_for is not None:
                return self._cancelled(job, now)
            return outcome("crashed", error=f"{type(err).__name__}: {err}")
        return outcome("ok", value)

    def _cancelled(self, job: _Running, now: float) -> list[Outcome]:
        if job.cancelled_for == "timeout":
            return [Outcome(job.key, "timeout",
                            error=f"stopped after {now - job.submitted_at:.0f} s: over the "
                                  f"{self.timeout_s:.0f} s time limit per trial",
                            attempts=job.attempts, submitted_at=job.submitted_at, finished_at=now)]
        return [Outcome(job.key, "cancelled", error="cancelled by the driver",
                        attempts=job.attempts, submitted_at=job.submitted_at, finished_at=now)]

    def cancel_all(self) -> list[Outcome]:
        """Force-stop every job in flight (Ctrl-C); returns their "cancelled" outcomes."""
        now = time.time()
        out = []
        for ref, job in list(self._running.items()):
            try:
                self._ray.cancel(ref, force=True)
            except Exception:  # already finished or its node is gone
                pass
            out.append(Outcome(job.key, "cancelled", error="cancelled by the driver",
                               attempts=job.attempts, submitted_at=job.submitted_at, finished_at=now))
        self._running.clear()
        return out

    def shutdown(self) -> None:
        if self._running:
            self.cancel_all()
        if self._owns_ray and self._ray.is_initialized():
            self._ray.shutdown()
            self._owns_ray = False


def _ship_by_value(fn: Callable[[Any], Any]) -> None:
    """Let workers run functions from scripts and test files they cannot import by name."""
    import sys

    from ray import cloudpickle

    name = getattr(fn, "__module__", None) or "__main__"
    module = sys.modules.get(name)
    if module is None or name == "__main__" or name.split(".")[0] in ("automix", "ray", "builtins"):
        return
    try:
        cloudpickle.register_pickle_by_value(module)
    except (ValueError, TypeError):  # already registered, or a built-in module
        pass
