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
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

__all__ = ["Outcome", "Executor", "RayExecutor", "LocalExecutor", "resolve_function"]


@dataclass
class Outcome:
    """What became of one submitted job.

    status: "ok" (the function returned `value`), "failed" (it raised), "timeout" (stopped over
    its time limit), "crashed" (its worker or node died on every attempt `max_retries` allows),
    or "cancelled" (the driver stopped it, e.g. on Ctrl-C). `started_at` is when the job's own
    work began on its worker (None when it never started): `seconds` is the job's run time from
    then, `startup_seconds` the wait before it (queueing, worker start-up, imports).
    """

    key: Hashable
    status: str
    value: Any = None
    error: str | None = None
    attempts: int = 1
    submitted_at: float = 0.0
    finished_at: float = 0.0
    started_at: float | None = None

    @property
    def seconds(self) -> float:
        return self.finished_at - (self.started_at if self.started_at is not None else self.submitted_at)

    @property
    def startup_seconds(self) -> float | None:
        return None if self.started_at is None else self.started_at - self.submitted_at


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
        started = time.time()
        try:
            value = self.fn(payload)
            return [Outcome(key, "ok", value=value, submitted_at=t0, finished_at=time.time(), started_at=started)]
        except Exception as err:  # a trial function's failure is data, not a driver crash
            msg = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=5)}"
            return [Outcome(key, "failed", error=msg, submitted_at=t0, finished_at=time.time(),
                            started_at=started)]

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
    started_at: float | None = None
    cancelled_for: str | None = None
    cancel_sent_at: float = 0.0
    forced: bool = False
    deaths: list[str] = field(default_factory=list)
    early_error: BaseException | None = None  # read in place of the start marker


_STARTED = "started"  # the first item a job yields: its work begins now


def _streaming(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """The Ray task around `fn`: yields a start marker, then fn's value (a streaming generator),
    so the driver knows when the job's own work began, apart from worker start-up."""

    def job(payload: Any) -> Any:
        yield _STARTED
        yield fn(payload)

    job.__name__ = job.__qualname__ = getattr(fn, "__name__", "job")
    return job


def _probe_address(address: str, timeout_s: float) -> None:
    """Fail within `timeout_s` when nothing listens at a cluster's HOST:PORT (ray.init would hang)."""
    if address == "auto" or ":" not in address:
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    try:
        port_n = int(port)
    except ValueError:
        raise ValueError(f"--ray-address {address!r}: expected HOST:PORT or 'auto'") from None
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port_n), timeout=max(0.1, deadline - time.monotonic())):
                return
        except OSError as err:
            if time.monotonic() + 1.0 >= deadline:
                raise ValueError(
                    f"cannot reach the Ray cluster at {address!r} within {timeout_s:.0f} s ({err}); is "
                    "`ray start --head` running there and the port open? (--ray-timeout sets the limit)"
                ) from None
            time.sleep(1.0)


def _init_within(ray: Any, kwargs: dict[str, Any], timeout_s: float, address: str) -> None:
    """ray.init(**kwargs) joining a cluster, or a clear error when it does not answer within
    `timeout_s` (only for clusters: a local Ray's processes die with the thread that starts them)."""
    box: dict[str, BaseException] = {}

    def target() -> None:
        try:
            ray.init(**kwargs)
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = err

    t = threading.Thread(target=target, name="ray-init", daemon=True)
    t.start()
    t.join(timeout_s)
    where = f"the Ray cluster at {address!r}"
    if t.is_alive():
        raise ValueError(f"could not connect to {where} within {timeout_s:.0f} s "
                         "(--ray-timeout sets the limit)")
    err = box.get("error")
    if err is not None:
        raise ValueError(f"cannot start or join {where}: {type(err).__name__}: {err}") from None


class _ItemsLost(Exception):
    """An ended Ray job whose streamed items never arrived: handled like a dead worker."""


class RayExecutor(Executor):
    """Run jobs as Ray tasks with per-job resources, retries and time limits.

    Args:
        fn: the job function (or "module:function"); it must be importable on the workers.
        workers: most jobs in flight at once (the driver keeps this many busy).
        cpus, gpus: resources each job asks for; fractional GPUs share a device.
        timeout_s: a job whose own work runs longer (worker start-up not counted) is cancelled
            and reported as "timeout": first gently (the worker survives, stays warm), then,
            after `cancel_grace_s`, by killing its worker.
        max_retries: a job whose worker process or node died is run again, at most this many
            times (max_retries=1: one re-run); then it is reported as "crashed".
        address: join an existing cluster ("auto" or "HOST:PORT") within `connect_timeout_s`;
            None starts a local Ray sized for `workers` jobs, without the dashboard.
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
        connect_timeout_s: float = 30.0,
        cancel_grace_s: float = 10.0,
        item_wait_s: float = 30.0,
    ) -> None:
        import ray

        self.fn = resolve_function(fn)
        self.workers = int(workers)
        self.timeout_s = timeout_s
        self.max_retries = int(max_retries)
        self.cancel_grace_s = float(cancel_grace_s)
        self.item_wait_s = float(item_wait_s)
        self._owns_ray = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=True,
                                          configure_logging=False)
            if address:
                _probe_address(address, connect_timeout_s)
                kwargs["address"] = address
            else:
                # Enough logical CPUs for `workers` jobs even on a small machine: Ray's CPU
                # counts are for scheduling; the study's `workers` is the real parallelism.
                # GPUs are Ray's own count of the machine's devices (none: checked below).
                kwargs["num_cpus"] = max(int(workers * cpus + 0.999), 1)
                kwargs["object_store_memory"] = 256 * 1024**2
            kwargs.update(ray_init_kwargs or {})
            if address:
                _init_within(ray, kwargs, connect_timeout_s, address)
            else:  # in this thread: Ray's local processes die with the thread that started them
                try:
                    ray.init(**kwargs)
                except (ConnectionError, RuntimeError) as err:
                    raise ValueError(f"cannot start a local Ray: {err}") from None
            self._owns_ray = True
        self._ray = ray
        have = ray.cluster_resources().get("GPU", 0.0)
        if gpus and have < gpus:
            if self._owns_ray:
                self.shutdown()
            where = f"the Ray cluster at {address!r}" if address else "this machine"
            raise ValueError(f"each trial asks for {gpus:g} GPU (resources.gpus), but {where} has "
                             f"{have:g}: set resources.gpus: 0, or run where GPUs are")
        _ship_by_value(self.fn)
        # The job function itself is the Ray task (exported once per session, not per job).
        self._remote = ray.remote(_streaming(self.fn)).options(
            num_cpus=cpus, num_gpus=gpus, max_retries=0, retry_exceptions=False,
            resources=resources or None, num_returns="streaming",
        )
        self._running: dict[Any, _Running] = {}  # ObjectRefGenerator (a streaming task) -> job

    def in_flight(self) -> int:
        return len(self._running)

    def submit(self, key: Hashable, payload: Any) -> None:
        self._start(_Running(key, payload, time.time()))

    def _start(self, job: _Running) -> None:
        job.started_at, job.early_error = None, None
        self._running[self._remote.remote(job.payload)] = job

    def poll(self, timeout: float = 1.0) -> list[Outcome]:
        """Outcomes of jobs that finished within `timeout` seconds (and of expired ones)."""
        if not self._running:
            time.sleep(min(timeout, 0.05))
            return []
        self._mark_started()
        self._expire()
        wait = timeout
        deadlines = [self._deadline(j) for j in self._running.values()]
        deadlines = [d for d in deadlines if d is not None]
        if deadlines:
            wait = max(0.0, min(timeout, min(deadlines) - time.time()))
        # A job's `completed()` ref is ready when its task ends, and raises when its worker or
        # node died: waiting on it never blocks on a stream whose producer is gone.
        done = {gen.completed(): gen for gen in self._running}
        ready, _ = self._ray.wait(list(done), num_returns=len(done), timeout=wait, fetch_local=False)
        out: list[Outcome] = []
        for ref in ready:
            out.extend(self._step(done[ref], ref))
        self._mark_started()
        return out

    def _mark_started(self) -> None:
        """Note the start of jobs whose start marker has arrived (never blocks)."""
        for gen, job in self._running.items():
            if job.started_at is None and job.early_error is None and gen.next_ready():
                try:
                    self._ray.get(next(gen))
                    job.started_at = time.time()
                except (self._ray.exceptions.RayError, StopIteration) as err:  # died before starting
                    job.early_error = err  # classified with the job's end, in _step

    def _deadline(self, job: _Running) -> float | None:
        if job.cancelled_for is not None:
            return None if job.forced else job.cancel_sent_at + self.cancel_grace_s
        if self.timeout_s and job.started_at is not None:
            return job.started_at + self.timeout_s
        return None

    def _expire(self) -> None:
        now = time.time()
        for gen, job in self._running.items():
            if job.cancelled_for is None:
                if self.timeout_s and job.started_at is not None and now - job.started_at > self.timeout_s:
                    job.cancelled_for, job.cancel_sent_at = "timeout", now
                    self._cancel(gen, force=False)  # KeyboardInterrupt in the job: its worker lives on
            elif not job.forced and now - job.cancel_sent_at > self.cancel_grace_s:
                job.forced = True
                self._cancel(gen, force=True)  # it did not stop: kill its worker

    def _cancel(self, gen: Any, force: bool) -> None:
        try:
            self._ray.cancel(gen, force=force)
        except Exception:  # noqa: BLE001 - already finished, or its node is gone
            pass

    def _step(self, gen: Any, completed: Any) -> list[Outcome]:
        """The outcome of a job whose task has ended (its `completed()` ref is ready)."""
        ray = self._ray
        job = self._running[gen]
        try:
            if job.early_error is not None:
                raise job.early_error
            ray.get(completed)  # raises when the worker or node died
            # The task has ended: its items exist (a result, or the error it raised) unless they
            # were lost with its node, so reading them waits a bounded time, never forever.
            if job.started_at is None:
                self._next_item(gen)  # the start marker
                job.started_at = time.time()
            return self._done(gen, "ok", value=self._next_item(gen))
        except StopIteration:
            return self._done(gen, "crashed", error="the job ended without a result")
        except ray.exceptions.TaskCancelledError:
            return self._cancelled(gen)
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                ray.exceptions.LocalRayletDiedError, ray.exceptions.ObjectLostError, _ItemsLost) as err:
            if job.cancelled_for is not None:
                return self._cancelled(gen)
            job.deaths.append(f"{type(err).__name__}")
            if len(job.deaths) <= self.max_retries:  # run it again (elsewhere, if its node died)
                del self._running[gen]
                job.attempts += 1
                self._start(job)
                return []
            return self._done(gen, "crashed", error=(
                f"its worker died on all {job.attempts} attempt(s) (max_retries: {self.max_retries} "
                f"re-run(s)): {_first_line(err)}"))
        except ray.exceptions.RayTaskError as err:
            if job.cancelled_for is not None:
                return self._cancelled(gen)
            cause = err.cause if getattr(err, "cause", None) is not None else err
            return self._done(gen, "failed", error=f"{type(cause).__name__}: {cause}\n{err}")
        except ray.exceptions.RayError as err:
            if job.cancelled_for is not None:
                return self._cancelled(gen)
            return self._done(gen, "crashed", error=f"{type(err).__name__}: {_first_line(err)}")

    def _next_item(self, gen: Any) -> Any:
        """The next item of an ended job's stream; `_ItemsLost` when it does not arrive within
        `item_wait_s` (a node that died right as the task ended takes its items with it)."""
        deadline = time.time() + self.item_wait_s
        while not gen.next_ready():
            if time.time() > deadline:
                raise _ItemsLost(f"its results did not arrive within {self.item_wait_s:.0f} s of its end "
                                 "(lost with its node)")
            time.sleep(0.05)
        return self._ray.get(next(gen))

    def _done(self, gen: Any, status: str, value: Any = None, error: str | None = None) -> list[Outcome]:
        job = self._running.pop(gen)
        return [Outcome(job.key, status, value, error, job.attempts, job.submitted_at, time.time(),
                        job.started_at)]

    def _cancelled(self, gen: Any) -> list[Outcome]:
        job = self._running[gen]
        if job.cancelled_for == "timeout":
            ran = job.cancel_sent_at - (job.started_at or job.submitted_at)
            how = "its worker was killed" if job.forced else "its worker lives on"
            return self._done(gen, "timeout", error=f"stopped after {ran:.0f} s of work: over the "
                              f"{self.timeout_s:.0f} s time limit per trial ({how})")
        return self._done(gen, "cancelled", error="cancelled by the driver")

    def cancel_all(self) -> list[Outcome]:
        """Force-stop every job in flight (Ctrl-C); returns their "cancelled" outcomes."""
        now = time.time()
        out = []
        for gen, job in list(self._running.items()):
            self._cancel(gen, force=True)
            out.append(Outcome(job.key, "cancelled", error="cancelled by the driver", attempts=job.attempts,
                               submitted_at=job.submitted_at, finished_at=now, started_at=job.started_at))
        self._running.clear()
        return out

    def shutdown(self) -> None:
        if self._running:
            self.cancel_all()
        if self._owns_ray and self._ray.is_initialized():
            self._ray.shutdown()
            self._owns_ray = False


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


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
