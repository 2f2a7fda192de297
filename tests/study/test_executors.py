"""The Ray executor: results come back, failures are data, dead workers are retried exactly
`max_retries` times, slow jobs are stopped at their time limit (counted from the job's own start,
not from its submission; the worker survives a gentle stop, also in a Ray started with SIGINT
ignored, and a job that ignores the stop is killed), and jobs run in parallel up to `workers`.

The tests wait on what the jobs did (files they write, outcomes they return), never on how long
something takes on this machine: HUNG only ends a test whose executor hangs."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from automix.study.executors import LocalExecutor, RayExecutor, resolve_function  # noqa: E402


HUNG = 120.0  # seconds


def square_job(payload: dict) -> dict:
    """A job that leaves evidence: `<dir>/<name>.started` when its work begins, `<name>.ended`
    when it returns; with `hold` it works until that file exists (bounded by HUNG), with `ticks`
    it works in 0.1 s Python steps (interruptible, like training)."""
    t_start = time.time()
    where = Path(payload["dir"]) if payload.get("dir") else None
    name = payload.get("name", payload["x"])
    if where is not None:
        (where / f"{name}.started").write_text(str(os.getpid()))
    if payload.get("raise"):
        raise RuntimeError(f"bad input {payload['x']}")
    if payload.get("sleep"):
        time.sleep(payload["sleep"])
    stubborn = payload.get("stubborn")
    for _ in range(int(payload.get("ticks", 0))):
        try:
            time.sleep(0.1)
        except KeyboardInterrupt:  # a gentle stop arrives as KeyboardInterrupt
            if not stubborn:
                raise
    hold, met = payload.get("hold"), True
    if hold:
        until = time.time() + HUNG
        while not Path(hold).exists() and time.time() < until:
            time.sleep(0.05)
        met = Path(hold).exists()
    if payload.get("crash_always"):
        with open(payload["crash_always"], "a") as f:
            f.write("run\n")
        os._exit(1)
    marker = payload.get("crash_once")
    if marker and not Path(marker).exists():
        Path(marker).write_text("crashed")
        os._exit(1)  # the worker process dies mid-job
    if where is not None:
        (where / f"{name}.ended").write_text("")
    return {"x": payload["x"], "y": payload["x"] ** 2, "pid": os.getpid(), "start": t_start,
            "end": time.time(), "met": met}


def drain(ex, n: int, limit: float = HUNG) -> dict:
    out, t0 = {}, time.time()
    while len(out) < n and time.time() - t0 < limit:
        for o in ex.poll(0.5):
            out[o.key] = o
    assert len(out) >= n, f"only {sorted(out, key=str)} of {n} job(s) ended within {limit:.0f} s"
    return out


def run_until(ex, done, what: str, got: dict | None = None) -> dict:
    """Poll `ex` (collecting outcomes into `got`) until `done()` holds; HUNG ends a hung test."""
    got = {} if got is None else got
    t0 = time.time()
    while not done():
        assert time.time() - t0 < HUNG, f"still waiting for {what} after {HUNG:.0f} s"
        for o in ex.poll(0.2):
            got[o.key] = o
    return got


@pytest.fixture(scope="module")
def ex():
    """Two workers, no time limit: the limit tests below make their own (sharing this Ray)."""
    executor = RayExecutor(square_job, workers=2, cpus=1, max_retries=1)
    yield executor
    executor.shutdown()
    assert not ray.is_initialized()


@contextlib.contextmanager
def limited(ex, **kw):
    """An executor with its own time limit on the module's Ray (it does not own that Ray)."""
    lx = RayExecutor(square_job, workers=2, cpus=1, max_retries=1, **kw)
    try:
        yield lx
    finally:
        lx.shutdown()
    assert ray.is_initialized()  # the module's Ray is not this executor's to stop


def test_results_failures_and_parallelism(ex, tmp_path):
    # each job works until the other has started: they end only if both run at once
    ex.submit(0, {"x": 3, "dir": str(tmp_path), "name": "a", "hold": str(tmp_path / "b.started")})
    ex.submit(1, {"x": 5, "dir": str(tmp_path), "name": "b", "hold": str(tmp_path / "a.started")})
    assert ex.in_flight() == 2 and ex.free_slots() == 0
    got = drain(ex, 2)
    assert got[0].status == "ok" and got[0].value["y"] == 9
    assert got[1].value["y"] == 25
    # both ran at once on two different worker processes
    assert got[0].value["met"] and got[1].value["met"]
    assert got[0].value["pid"] != got[1].value["pid"]
    a, b = got[0].value, got[1].value
    assert max(a["start"], b["start"]) < min(a["end"], b["end"])  # their run times overlap

    ex.submit("bad", {"x": 7, "raise": True})
    bad = drain(ex, 1)["bad"]
    assert bad.status == "failed" and "bad input 7" in bad.error


def test_dead_worker_is_retried(ex, tmp_path):
    ex.submit("c", {"x": 4, "crash_once": str(tmp_path / "marker")})
    o = drain(ex, 1)["c"]
    assert (tmp_path / "marker").exists()  # the first attempt really died
    assert o.status == "ok" and o.value["y"] == 16


def test_max_retries_means_that_many_reruns(ex, tmp_path):
    log = tmp_path / "runs"
    ex.submit("dies", {"x": 1, "crash_always": str(log)})
    o = drain(ex, 1)["dies"]
    assert log.read_text().count("run") == 2  # max_retries: 1 -> the first run and one re-run
    assert o.status == "crashed" and o.attempts == 2
    assert "all 2 attempt(s)" in o.error and "max_retries: 1" in o.error


def test_time_limit_counts_the_work_not_the_wait(ex, tmp_path):
    # Two jobs fill both slots; the third waits for one, then works: longer than the limit after
    # its submission, shorter than it from its own start, so it is not stopped. The test holds
    # each job (files it waits for) instead of timing sleeps against the limit.
    limit = 12.0
    started = lambda name: (tmp_path / f"{name}.started").exists()  # noqa: E731
    go_ab, go_c = tmp_path / "go-ab", tmp_path / "go-c"
    with limited(ex, timeout_s=limit) as lx:
        lx.submit("a", {"x": 1, "dir": str(tmp_path), "name": "a", "hold": str(go_ab)})
        lx.submit("b", {"x": 2, "dir": str(tmp_path), "name": "b", "hold": str(go_ab)})
        submitted_c = time.time()
        lx.submit("c", {"x": 3, "dir": str(tmp_path), "name": "c", "hold": str(go_c)})
        got = run_until(lx, lambda: started("a") and started("b"), "a and b to start")
        # c waits for a slot for half the limit (a and b work that long: within the limit)
        run_until(lx, lambda: time.time() - submitted_c >= limit / 2, "c's wait", got)
        assert not started("c") and not got  # both slots busy, nothing ended: c still waits
        go_ab.touch()
        run_until(lx, lambda: started("c"), "c to start", got)
        # c ends once the time since its submission is over the limit
        run_until(lx, lambda: time.time() - submitted_c > limit + 0.5, "c's time", got)
        go_c.touch()
        run_until(lx, lambda: len(got) == 3, "a, b and c to end", got)
    assert [got[k].status for k in "abc"] == ["ok", "ok", "ok"], {k: o.error for k, o in got.items()}
    c = got["c"]
    assert c.finished_at - c.submitted_at > limit  # over the limit from its submission ...
    assert c.startup_seconds >= limit / 2 and c.seconds < limit  # ... but its own work is within it


def test_timeout_stops_the_job_gently(ex, tmp_path):
    # An interruptible job over its limit is stopped gently (its worker lives on); the grace
    # before a forced stop is long, so that a loaded machine's slow delivery of the gentle stop
    # cannot turn it into a kill.
    with limited(ex, timeout_s=3.0, cancel_grace_s=HUNG) as lx:
        lx.submit("slow", {"x": 1, "dir": str(tmp_path), "name": "slow", "ticks": 3000})  # 300 s unstopped
        o = drain(lx, 1)["slow"]
        assert o.status == "timeout" and "time limit" in o.error and "lives on" in o.error, o.error
        assert o.seconds >= 3.0  # its own work ran to the limit
        assert (tmp_path / "slow.started").exists() and not (tmp_path / "slow.ended").exists()
        # the executor keeps working after a stop
        lx.submit("after", {"x": 2})
        assert drain(lx, 1)["after"].value["y"] == 4


# A driver whose process starts with SIGINT ignored, as the background of a non-interactive
# shell starts it (`nohup automix search ... &` in a script): its local Ray's workers inherit that.
IGNORING_SIGINT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                   "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")
GENTLE_DRIVER = """
import json, signal, sys, time
from automix.study.executors import RayExecutor

def interruptible(payload):
    for _ in range(3000):  # 300 s unstopped
        time.sleep(0.1)

assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
ex = RayExecutor(interruptible, workers=1, timeout_s=2.0, cancel_grace_s=60)
ex.submit(0, {})
out, t0 = [], time.time()
while not out and time.time() - t0 < 240:
    out = ex.poll(0.5)
ex.shutdown()
print(json.dumps([dict(status=o.status, error=o.error) for o in out]))
"""


@pytest.mark.slow  # a local Ray of its own
def test_gentle_stop_reaches_a_job_of_a_ray_started_with_sigint_ignored(tmp_path):
    # Ray's gentle stop is a KeyboardInterrupt through the worker's SIGINT handler: with SIGINT
    # ignored it used to be lost, and the job ran on until its worker was killed.
    script = tmp_path / "driver.py"
    script.write_text(GENTLE_DRIVER)
    path = [str(Path(__file__).resolve().parents[2])]  # this checkout, importable
    path += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    done = subprocess.run([sys.executable, "-c", IGNORING_SIGINT, str(script)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=os.pathsep.join(path)))
    assert done.returncode == 0, done.stderr[-3000:]
    outcomes = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(outcomes) == 1, done.stderr[-3000:]
    assert outcomes[0]["status"] == "timeout" and "lives on" in outcomes[0]["error"], outcomes[0]


def test_timeout_kills_a_job_that_ignores_the_gentle_stop(ex, tmp_path):
    with limited(ex, timeout_s=2.0, cancel_grace_s=2.0) as lx:
        lx.submit("stubborn", {"x": 1, "dir": str(tmp_path), "name": "stubborn", "ticks": 3000,
                               "stubborn": True})
        o = drain(lx, 1)["stubborn"]
        assert o.status == "timeout" and "its worker was killed" in o.error, o.error
        assert (tmp_path / "stubborn.started").exists() and not (tmp_path / "stubborn.ended").exists()
        # the executor keeps working after a forced stop
        lx.submit("after", {"x": 2})
        assert drain(lx, 1)["after"].value["y"] == 4


def test_cancel_all(ex, tmp_path):
    ex.submit("a", {"x": 1, "dir": str(tmp_path), "name": "a", "hold": str(tmp_path / "never")})
    run_until(ex, lambda: (tmp_path / "a.started").exists(), "the job to start")
    outs = ex.cancel_all()
    assert [o.status for o in outs] == ["cancelled"] and ex.in_flight() == 0


def test_local_executor_and_resolve():
    lx = LocalExecutor("tests.study.test_executors:square_job")
    lx.submit("k", {"x": 6})
    lx.submit("e", {"x": 1, "raise": True})
    a, b = lx.poll()[0], lx.poll()[0]
    assert a.value["y"] == 36 and b.status == "failed" and "RuntimeError" in b.error
    with pytest.raises(ValueError, match="module:function"):
        resolve_function("nocolon")


def test_a_joined_cluster_is_given_time_to_autoscale_gpus(capsys, monkeypatch):
    """An autoscaling cluster that starts without GPUs is waited for (bounded), not refused."""
    import automix.study.executors as executors
    from automix.study.executors import _wait_for_gpus

    class Cluster:  # ray's view of a cluster whose autoscaler adds a GPU node on the third look
        looks = 0

        def cluster_resources(self):
            Cluster.looks += 1
            return {"CPU": 4.0, **({"GPU": 1.0} if Cluster.looks >= 3 else {})}

    assert _wait_for_gpus(Cluster(), gpus=1.0, wait_s=5.0, poll_s=0.01) == 1.0
    assert "waiting up to 5 s for its autoscaler" in capsys.readouterr().err

    class Fixed:  # no autoscaler: never any GPU; the wait is bounded
        looks = 0

        def cluster_resources(self):
            Fixed.looks += 1
            return {"CPU": 4.0}

    class Clock:  # the executor's clock, advanced only by its own sleeps: the bound is exact
        now = 0.0

        def monotonic(self):
            return self.now

        def sleep(self, s):
            assert s >= 0
            self.now += s

    clock = Clock()
    monkeypatch.setattr(executors, "time", clock)
    assert _wait_for_gpus(Fixed(), gpus=0.5, wait_s=0.2, poll_s=0.05) == 0.0
    assert clock.now == pytest.approx(0.2)  # it waited exactly wait_s, looking every poll_s
    assert Fixed.looks == 1 + 4
