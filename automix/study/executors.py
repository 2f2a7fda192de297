"""Run trial functions somewhere else and hand their outcomes back to the driver.

The driver submits jobs (a key and a JSON-serialisable payload) and polls for outcomes; the
executor decides where the function runs. `RayExecutor` runs each job as a Ray task with the
study's per-trial resources (fractional GPUs allowed), on a local Ray started on demand or on an
existing cluster (`address=`). It keeps at most `workers` jobs in flight, retries a job whose
worker or node died, and stops a job over its time limit. `LocalExecutor` runs jobs one at a time
in the driver's process (debugging, and machines without Ray).

Executors are generic over the function: the same machinery runs `automix.trial.run_trial` and
the trivial functions of the orchestration benchmark. A job's intermediate reports
(`automix.reporting.report`: its training loss, its evaluations at checkpoints) reach the
driver's `on_report` while it runs, and the driver may stop it there (a pruner's decision).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterator

from automix.reporting import TrialStopped, reporting_to
from automix.study import _session_reaper
from automix.study._ray_compat import loopback_node

__all__ = ["Outcome", "Executor", "RayExecutor", "LocalExecutor", "resolve_function"]


@dataclass
class Outcome:
    """What became of one submitted job.

    status: "ok" (the function returned `value`), "failed" (it raised), "timeout" (stopped over
    its time limit), "crashed" (its worker or node died on every attempt `max_retries` allows),
    "pruned" (stopped early because `on_report` said so), or "cancelled" (the driver stopped
    it, e.g. on Ctrl-C). `started_at` is when the job's own
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
    """Interface the driver uses: submit, poll, cancel, shutdown.

    `on_report(key, kind, step, value) -> bool`, when set, receives the job's intermediate
    reports (`automix.reporting.report`) during `poll`; True stops that job ("pruned").
    """

    workers: int = 1
    on_report: Callable[[Hashable, str, int, float], bool] | None = None

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

        def receive(kind: str, step: int, value: float) -> bool:
            return bool(self.on_report is not None and self.on_report(key, kind, step, value))

        try:
            with reporting_to(receive):
                value = self.fn(payload)
            return [Outcome(key, "ok", value=value, submitted_at=t0, finished_at=time.time(), started_at=started)]
        except TrialStopped:
            return [Outcome(key, "pruned", error="stopped early by the driver after a report", submitted_at=t0,
                            finished_at=time.time(), started_at=started)]
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
    token: str = ""
    started_at: float | None = None
    cancelled_for: str | None = None  # "timeout", or "pruned" (the driver stopped it after a report)
    cancel_sent_at: float = 0.0
    forced: bool = False
    deaths: list[str] = field(default_factory=list)


_STARTED = "started"  # the first report a job sends: its own work begins now


class _Channel:
    """The mailbox of a study's reports (a Ray actor on the driver's node): workers post, the
    driver drains. Plain object returns carry the results; only reports travel here."""

    def __init__(self) -> None:
        self._events: list[tuple[str, str, int, float]] = []

    def post(self, token: str, kind: str, step: int, value: float) -> None:
        self._events.append((token, kind, step, value))

    def drain(self) -> list[tuple[str, str, int, float]]:
        events, self._events = self._events, []
        return events


def _reporting_job(fn: Callable[[Any], Any]) -> Callable[..., Any]:
    """The Ray task around `fn`: posts a start marker, then runs fn with its `report` calls
    forwarded to the driver's channel (fire and forget: a report never waits for the driver)."""

    def job(token: str, payload: Any, channel: Any) -> Any:
        def send(kind: str, step: int, value: float) -> bool:
            channel.post.remote(token, kind, step, value)
            return False  # the driver stops a job by cancelling its task

        with _interruptible():  # in place before the start marker: no stop comes before it
            send(_STARTED, 0, 0.0)
            with reporting_to(send):
                return fn(payload)

    job.__name__ = job.__qualname__ = getattr(fn, "__name__", "job")
    return job


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """Let a gentle stop reach the job running in this block.

    Ray's gentle cancel (`ray.cancel(force=False)`) raises KeyboardInterrupt in a task through
    Python's SIGINT handler. A worker has none when its Ray was started with SIGINT ignored
    (a driver or `ray start` run in the background of a non-interactive shell, e.g. `nohup ... &`
    in a script, inherits that, and so do the Ray workers): the stop is then silently lost, and
    a job over its time limit or pruned runs on until `cancel_grace_s` has passed and its worker
    is killed. So the job runs with Python's default handler (as in a worker of a Ray started
    from a terminal), and the worker's own disposition is restored afterwards.
    """
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) not in (signal.SIG_IGN, signal.SIG_DFL):
        yield
        return
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


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
            None starts a local Ray sized for `workers` jobs, without the dashboard, listening
            on loopback only, and watched by a small process that stops its leftovers when the
            driver dies (even by kill -9; see `_start_reaper`).
        resources: extra custom resources per job, e.g. {"node2": 0.1}.
        gpu_wait_s: a joined cluster with fewer GPUs than one job asks for is given this long
            for its autoscaler to add GPU nodes (asked for with `request_resources`) before the
            executor refuses it; 0 refuses at once. A local Ray never waits (it has what it has).

    A job's `automix.reporting.report` calls reach `on_report(key, kind, step, value)` in
    the driver (through a small actor on the driver's node, read at every poll); when it answers
    True the job's task is cancelled the way a timeout is and the job ends "pruned".
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
        gpu_wait_s: float = 600.0,
    ) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.fn = resolve_function(fn)
        self.workers = int(workers)
        self.timeout_s = timeout_s
        self.max_retries = int(max_retries)
        self.cancel_grace_s = float(cancel_grace_s)
        self._owns_ray = False
        self._reaper: subprocess.Popen | None = None
        self.session_dir: str | None = None  # the local Ray's session directory (None: a cluster)
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
                    # Nobody asked for a cluster: its servers listen on loopback only.
                    with loopback_node(kwargs):
                        context = ray.init(**kwargs)
                except (ConnectionError, RuntimeError) as err:
                    raise ValueError(f"cannot start a local Ray: {err}") from None
                self.session_dir = context.address_info.get("session_dir")
                self._reaper = _start_reaper(self.session_dir)
            self._owns_ray = True
        self._ray = ray
        have = ray.cluster_resources().get("GPU", 0.0)
        if gpus and have < gpus and address and gpu_wait_s > 0:  # an autoscaler may add GPU nodes
            have = _wait_for_gpus(ray, gpus, gpu_wait_s)
        if gpus and have < gpus:
            if self._owns_ray:
                self.shutdown()
            where = (f"the Ray cluster at {address!r} has {have:g} after waiting {gpu_wait_s:g} s for its "
                     f"autoscaler (resources.gpu_wait_s)" if address and gpu_wait_s > 0 else
                     f"the Ray cluster at {address!r} has {have:g}" if address else f"this machine has {have:g}")
            raise ValueError(f"each trial asks for {gpus:g} GPU (resources.gpus), but {where}: "
                             f"set resources.gpus: 0, or run where GPUs are")
        _ship_by_value(self.fn)
        # The job function itself is the Ray task (exported once per session, not per job).
        self._remote = ray.remote(_reporting_job(self.fn)).options(
            num_cpus=cpus, num_gpus=gpus, max_retries=0, retry_exceptions=False,
            resources=resources or None,
        )
        # The channel lives on the driver's node (it dies with the driver, not with a worker's
        # node) and is up before the first job is submitted (its start-up is not a job's).
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        self._channel = ray.remote(_Channel).options(num_cpus=0, scheduling_strategy=here).remote()
        ray.get(self._channel.drain.remote(), timeout=connect_timeout_s + 120)
        self._running: dict[Any, _Running] = {}  # the task's ObjectRef -> job
        self._by_token: dict[str, Any] = {}      # an attempt's token -> its ObjectRef
        self._serial = 0

    def in_flight(self) -> int:
        return len(self._running)

    def submit(self, key: Hashable, payload: Any) -> None:
        self._start(_Running(key, payload, time.time()))

    def _start(self, job: _Running) -> None:
        self._serial += 1
        job.token, job.started_at = f"{self._serial}", None
        ref = self._remote.remote(job.token, job.payload, self._channel)
        self._running[ref] = job
        self._by_token[job.token] = ref

    def poll(self, timeout: float = 1.0) -> list[Outcome]:
        """Outcomes of jobs that finished within `timeout` seconds (and of expired ones)."""
        if not self._running:
            time.sleep(min(timeout, 0.05))
            return []
        self._read_reports()
        self._expire()
        wait = timeout
        deadlines = [self._deadline(j) for j in self._running.values()]
        deadlines = [d for d in deadlines if d is not None]
        if deadlines:
            wait = max(0.0, min(timeout, min(deadlines) - time.time()))
        # A task's ref is ready when it ends, and raises when its worker or node died.
        ready, _ = self._ray.wait(list(self._running), num_returns=len(self._running), timeout=wait,
                                  fetch_local=False)
        self._read_reports()  # what the ended jobs posted before they ended
        out: list[Outcome] = []
        for ref in ready:
            out.extend(self._step(ref))
        return out

    def _read_reports(self) -> None:
        """Note start markers and hand reports to `on_report` (cancelling jobs it stops)."""
        now = time.time()
        for token, kind, step, value in self._ray.get(self._channel.drain.remote(), timeout=60):
            ref = self._by_token.get(token)
            job = self._running.get(ref) if ref is not None else None
            if job is None:  # an earlier attempt's, or an ended job's, last words
                continue
            if kind == _STARTED:
                job.started_at = job.started_at or now
            elif job.cancelled_for is None and self.on_report is not None and \
                    self.on_report(job.key, kind, step, value):
                job.cancelled_for, job.cancel_sent_at = "pruned", now
                self._cancel(ref, force=False)

    def _deadline(self, job: _Running) -> float | None:
        if job.cancelled_for is not None:
            return None if job.forced else job.cancel_sent_at + self.cancel_grace_s
        if self.timeout_s and job.started_at is not None:
            return job.started_at + self.timeout_s
        return None

    def _expire(self) -> None:
        now = time.time()
        for ref, job in self._running.items():
            if job.cancelled_for is None:
                if self.timeout_s and job.started_at is not None and now - job.started_at > self.timeout_s:
                    job.cancelled_for, job.cancel_sent_at = "timeout", now
                    self._cancel(ref, force=False)  # KeyboardInterrupt in the job: its worker lives on
            elif not job.forced and now - job.cancel_sent_at > self.cancel_grace_s:
                job.forced = True
                self._cancel(ref, force=True)  # it did not stop: kill its worker

    def _cancel(self, ref: Any, force: bool) -> None:
        try:
            self._ray.cancel(ref, force=force)
        except Exception:  # noqa: BLE001 - already finished, or its node is gone
            pass

    def _step(self, ref: Any) -> list[Outcome]:
        """The outcome of a job whose task has ended (its ref is ready)."""
        ray = self._ray
        job = self._running[ref]
        try:
            value = ray.get(ref)  # raises when the job raised, or its worker or node died
            if job.started_at is None:  # its start marker was not read: it ran from its submission
                job.started_at = job.submitted_at
            return self._done(ref, "ok", value=value)
        except ray.exceptions.TaskCancelledError:
            return self._cancelled(ref)
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                ray.exceptions.LocalRayletDiedError, ray.exceptions.ObjectLostError) as err:
            if job.cancelled_for is not None:
                return self._cancelled(ref)
            job.deaths.append(f"{type(err).__name__}")
            if len(job.deaths) <= self.max_retries:  # run it again (elsewhere, if its node died)
                self._forget(ref)
                job.attempts += 1
                self._start(job)
                return []
            return self._done(ref, "crashed", error=(
                f"its worker died on all {job.attempts} attempt(s) (max_retries: {self.max_retries} "
                f"re-run(s)): {_first_line(err)}"))
        except ray.exceptions.RayTaskError as err:
            if job.cancelled_for is not None:
                return self._cancelled(ref)
            cause = err.cause if getattr(err, "cause", None) is not None else err
            return self._done(ref, "failed", error=f"{type(cause).__name__}: {cause}\n{err}")
        except ray.exceptions.RayError as err:
            if job.cancelled_for is not None:
                return self._cancelled(ref)
            return self._done(ref, "crashed", error=f"{type(err).__name__}: {_first_line(err)}")

    def _forget(self, ref: Any) -> _Running:
        job = self._running.pop(ref)
        self._by_token.pop(job.token, None)
        return job

    def _done(self, ref: Any, status: str, value: Any = None, error: str | None = None) -> list[Outcome]:
        job = self._forget(ref)
        return [Outcome(job.key, status, value, error, job.attempts, job.submitted_at, time.time(),
                        job.started_at)]

    def _cancelled(self, ref: Any) -> list[Outcome]:
        job = self._running[ref]
        if job.cancelled_for == "timeout":
            ran = job.cancel_sent_at - (job.started_at or job.submitted_at)
            how = "its worker was killed" if job.forced else "its worker lives on"
            return self._done(ref, "timeout", error=f"stopped after {ran:.0f} s of work: over the "
                              f"{self.timeout_s:.0f} s time limit per trial ({how})")
        if job.cancelled_for == "pruned":
            return self._done(ref, "pruned", error="stopped early by the driver after a report")
        return self._done(ref, "cancelled", error="cancelled by the driver")

    def cancel_all(self) -> list[Outcome]:
        """Force-stop every job in flight (Ctrl-C); returns their "cancelled" outcomes."""
        now = time.time()
        out = []
        for ref, job in list(self._running.items()):
            self._cancel(ref, force=True)
            out.append(Outcome(job.key, "cancelled", error="cancelled by the driver", attempts=job.attempts,
                               submitted_at=job.submitted_at, finished_at=now, started_at=job.started_at))
        self._running.clear()
        self._by_token.clear()
        return out

    def shutdown(self) -> None:
        if self._running:
            self.cancel_all()
        if self._owns_ray and self._ray.is_initialized():
            self._ray.shutdown()
            self._owns_ray = False
        _stop_reaper(self._reaper)
        self._reaper = None


def _wait_for_gpus(ray: Any, gpus: float, wait_s: float, poll_s: float = 5.0) -> float:
    """On a joined cluster that has fewer GPUs than one trial asks for: ask its autoscaler for a
    GPU node (`ray.autoscaler.sdk.request_resources`, public) and wait up to `wait_s` for one to
    join, saying so once; returns the cluster's GPU count at the end. A cluster without an
    autoscaler simply never gets one, and the caller refuses with the reason."""
    from ray.autoscaler.sdk import request_resources

    have = ray.cluster_resources().get("GPU", 0.0)
    print(f"the Ray cluster has {have:g} GPU and each trial asks for {gpus:g}: waiting up to "
          f"{wait_s:g} s for its autoscaler to add GPU nodes (resources.gpu_wait_s) ...", file=sys.stderr, flush=True)
    try:
        request_resources(bundles=[{"GPU": gpus}])
    except Exception:  # no autoscaler to ask (a fixed cluster): only the wait remains
        pass
    deadline = time.monotonic() + wait_s
    while have < gpus and time.monotonic() < deadline:
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
        have = ray.cluster_resources().get("GPU", 0.0)
    return have


def _start_reaper(session_dir: str | None) -> subprocess.Popen | None:
    """A small process that stops the local Ray session's processes when the driver dies.

    Ray kills its GCS and raylet with the driver (the kernel's parent-death signal), and the
    workers follow within seconds, but its dashboard and runtime-env agents (~200 MB) first
    try to report the raylet's death to the dead GCS and give up only after a fixed 60 s. Ray
    has no setting for that, so this watchdog (stdlib only, ~10 MB) notes the session's
    processes while the driver lives and, once the driver is gone (its end of our stdin closes:
    kill -9 included), sends them SIGTERM, then SIGKILL. Linux only (it reads /proc).
    """
    if not session_dir or not sys.platform.startswith("linux"):
        return None
    try:
        return subprocess.Popen(
            [sys.executable, "-I", "-S", _session_reaper.__file__, str(os.getpid()), session_dir],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,  # no Ctrl-C of the terminal's group
        )
    except OSError:  # no watchdog: only the agents' 60 s linger comes back
        return None


def _stop_reaper(reaper: subprocess.Popen | None) -> None:
    """After a normal shutdown: let the watchdog stop what is left (nothing, usually) and exit."""
    if reaper is None:
        return
    try:
        reaper.stdin.close()  # type: ignore[union-attr]
        reaper.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        pass


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
