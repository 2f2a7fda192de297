"""The Ray executor: results come back, failures are data, dead workers are retried exactly
`max_retries` times, slow jobs are stopped at their time limit (counted from the job's own start,
not from its submission; the worker survives a gentle stop), and jobs run in parallel up to
`workers`."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from automix.study.executors import LocalExecutor, RayExecutor, resolve_function  # noqa: E402


def square_job(payload: dict) -> dict:
    if payload.get("raise"):
        raise RuntimeError(f"bad input {payload['x']}")
    if payload.get("sleep"):
        time.sleep(payload["sleep"])
    for _ in range(int(payload.get("ticks", 0))):  # a Python loop: interruptible, like training
        time.sleep(0.1)
    if payload.get("crash_always"):
        with open(payload["crash_always"], "a") as f:
            f.write("run\n")
        os._exit(1)
    marker = payload.get("crash_once")
    if marker and not Path(marker).exists():
        Path(marker).write_text("crashed")
        os._exit(1)  # the worker process dies mid-job
    return {"x": payload["x"], "y": payload["x"] ** 2, "pid": os.getpid(), "t": time.time()}


def drain(ex, n: int, limit: float = 60.0) -> dict:
    out, t0 = {}, time.time()
    while len(out) < n and time.time() - t0 < limit:
        for o in ex.poll(0.5):
            out[o.key] = o
    return out


@pytest.fixture(scope="module")
def ex():
    executor = RayExecutor(square_job, workers=2, cpus=1, timeout_s=8.0, max_retries=1, cancel_grace_s=3.0)
    yield executor
    executor.shutdown()
    assert not ray.is_initialized()


def test_results_failures_and_parallelism(ex):
    ex.submit(0, {"x": 3, "sleep": 1.5})
    ex.submit(1, {"x": 5, "sleep": 1.5})
    assert ex.in_flight() == 2 and ex.free_slots() == 0
    got = drain(ex, 2)
    assert got[0].status == "ok" and got[0].value["y"] == 9
    assert got[1].value["y"] == 25
    # both ran at once on two different worker processes
    assert got[0].value["pid"] != got[1].value["pid"]
    assert abs(got[0].value["t"] - got[1].value["t"]) < 1.2

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


def test_time_limit_counts_the_work_not_the_wait(ex):
    # Two 5 s jobs fill both slots; the third waits ~5 s for one, then works 4 s: 9 s after its
    # submission, but 4 s of its own work, within the 8 s limit.
    ex.submit("a", {"x": 1, "sleep": 5})
    ex.submit("b", {"x": 2, "sleep": 5})
    ex.submit("c", {"x": 3, "sleep": 4})
    got = drain(ex, 3, limit=60)
    assert [got[k].status for k in "abc"] == ["ok", "ok", "ok"]
    assert got["c"].startup_seconds > 3.0 and got["c"].seconds < 7.0


def test_timeout_stops_the_job(ex):
    t0 = time.time()
    ex.submit("slow", {"x": 1, "ticks": 600})  # interruptible: stopped gently, its worker lives on
    o = drain(ex, 1, limit=40)["slow"]
    assert o.status == "timeout" and "time limit" in o.error and "lives on" in o.error
    assert time.time() - t0 < 16
    # the executor keeps working after a forced cancel
    ex.submit("after", {"x": 2})
    assert drain(ex, 1)["after"].value["y"] == 4


def test_cancel_all(ex):
    ex.submit("a", {"x": 1, "sleep": 30})
    time.sleep(0.5)
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


def test_a_joined_cluster_is_given_time_to_autoscale_gpus(capsys):
    """An autoscaling cluster that starts without GPUs is waited for (bounded), not refused."""
    from automix.study.executors import _wait_for_gpus

    class Cluster:  # ray's view of a cluster whose autoscaler adds a GPU node on the third look
        looks = 0

        def cluster_resources(self):
            Cluster.looks += 1
            return {"CPU": 4.0, **({"GPU": 1.0} if Cluster.looks >= 3 else {})}

    assert _wait_for_gpus(Cluster(), gpus=1.0, wait_s=5.0, poll_s=0.01) == 1.0
    assert "waiting up to 5 s for its autoscaler" in capsys.readouterr().err

    class Fixed:  # no autoscaler: never any GPU; the wait is bounded
        def cluster_resources(self):
            return {"CPU": 4.0}

    t0 = time.monotonic()
    assert _wait_for_gpus(Fixed(), gpus=0.5, wait_s=0.2, poll_s=0.05) == 0.0
    assert time.monotonic() - t0 < 5.0
