"""The Ray executor: results come back, failures are data, dead workers are retried, slow jobs are
stopped at their time limit, and jobs run in parallel up to `workers`."""

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
    executor = RayExecutor(square_job, workers=2, cpus=1, timeout_s=8.0, max_retries=1)
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


def test_timeout_stops_the_job(ex):
    t0 = time.time()
    ex.submit("slow", {"x": 1, "sleep": 60})
    o = drain(ex, 1, limit=40)["slow"]
    assert o.status == "timeout" and "time limit" in o.error
    assert time.time() - t0 < 20
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
