"""A real two-node Ray cluster on this machine (`ray start --head` + a second `ray start
--address` with its own resources): trials run on both nodes, and killing the second node in the
middle of a trial loses no trial (it is retried on the head)."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import pytest

ray = pytest.importorskip("ray")

from automix.study.executors import RayExecutor  # noqa: E402

pytestmark = pytest.mark.slow


def node_job(payload: dict) -> dict:
    import ray as _ray

    node = _ray.get_runtime_context().get_node_id()
    Path(payload["dir"], f"start-{payload['key']}-{node}").write_text("")
    time.sleep(payload.get("sleep", 0.5))
    return {"key": payload["key"], "node": node}


def node_ip() -> str:
    """The address Ray binds to here (its GCS does not accept token-authenticated joins on 127.0.0.1)."""
    from ray._private.services import get_node_ip_address

    return get_node_ip_address()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], log: Path) -> subprocess.Popen:
    # A throw-away cluster on this machine only: no token authentication, so this test process
    # (whose Ray configuration is fixed when ray is imported) can join it. Real clusters keep
    # Ray's token authentication (see docs/running.md).
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    # the `ray` of this test's environment (not found on PATH when its venv is not activated)
    ray_cli = Path(sys.executable).with_name("ray")
    return subprocess.Popen([str(ray_cli) if ray_cli.exists() else "ray", "start", "--block", "--disable-usage-stats",
                             *args],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, env=env)


def stop_group(pid: int, ended: Callable[[float], bool]) -> None:
    """Stop one node: its `ray start --block` process group (never `ray stop`, which would end
    every Ray process on the machine, other users' included): SIGTERM, then SIGKILL;
    `ended(seconds)` waits up to that long and says whether the node is gone."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        if ended(wait):
            return


def stop(proc: subprocess.Popen) -> None:
    """Stop a node this process started (and reap it)."""

    def ended(wait: float) -> bool:
        try:
            proc.wait(timeout=wait)
            return True
        except subprocess.TimeoutExpired:
            return False

    stop_group(proc.pid, ended)


@pytest.fixture()
def cluster():
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="amx-ray-"))  # short: Ray's socket paths have a length limit
    head = start(["--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                  f"--temp-dir={tmp / 'head'}"], tmp / "head.log")
    nodes = [head]
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (tmp / "head").exists():
            time.sleep(0.5)
        time.sleep(3)
        address = f"{node_ip()}:{port}"
        node2 = start([f"--address={address}", "--num-cpus=1", '--resources={"node2": 1}'],
                      tmp / "node2.log")
        nodes.append(node2)
        yield {"address": address, "head": head, "node2": node2, "tmp": tmp}
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for p in reversed(nodes):
            stop(p)
        shutil.rmtree(tmp, ignore_errors=True)


def drain(ex, n, limit=120.0):
    out, t0 = {}, time.time()
    while len(out) < n and time.time() - t0 < limit:
        for o in ex.poll(0.5):
            out[o.key] = o
    return out


def _drive_two_nodes(address: str, node2_pid: int, tmp_path: Path) -> None:
    """The driver's side, in a fresh process (see the test)."""
    ray.init(address=address)
    deadline = time.time() + 60
    while time.time() < deadline and len([n for n in ray.nodes() if n["Alive"]]) < 2:
        time.sleep(1)
    alive = [n for n in ray.nodes() if n["Alive"]]
    assert len(alive) == 2, "node 2 did not join"
    node2_id = next(n["NodeID"] for n in alive if "node2" in n["Resources"])
    head_id = next(n["NodeID"] for n in alive if "node2" not in n["Resources"])

    ex = RayExecutor(node_job, workers=2, cpus=1, timeout_s=180, max_retries=2, address=address)
    for k in range(4):
        ex.submit(k, {"key": k, "dir": str(tmp_path), "sleep": 1.0})
        if ex.free_slots() == 0:
            for o in drain(ex, 1).values():
                assert o.status == "ok", o.error
    first = drain(ex, ex.in_flight())
    assert all(o.status == "ok" for o in first.values()), {k: o.error for k, o in first.items()}
    nodes_used = {p.name.split("-", 2)[2] for p in tmp_path.glob("start-*")}
    assert nodes_used == {head_id, node2_id}  # trials ran on both nodes

    # two long trials, one per node; kill node 2 while its trial runs
    for p in tmp_path.glob("start-*"):
        p.unlink()
    ex.submit("a", {"key": "a", "dir": str(tmp_path), "sleep": 8.0})
    ex.submit("b", {"key": "b", "dir": str(tmp_path), "sleep": 8.0})
    t0 = time.time()
    while time.time() - t0 < 30 and not list(tmp_path.glob(f"start-*-{node2_id}")):
        time.sleep(0.2)
    on_node2 = list(tmp_path.glob(f"start-*-{node2_id}"))
    assert on_node2, "one of the two trials should have started on node 2"
    victim = on_node2[0].name.split("-")[1]
    stop_group(node2_pid, lambda wait: _group_ended(node2_pid, wait))
    got = drain(ex, 2, limit=150)
    assert set(got) == {"a", "b"}, got
    assert all(o.status == "ok" for o in got.values()), {k: o.error for k, o in got.items()}
    assert got[victim].value["node"] == head_id  # the lost trial re-ran on the surviving node
    ex.shutdown()


def _group_ended(pid: int, wait: float) -> bool:
    """Whether process group `pid` (started by another process: we cannot reap it) is gone."""
    deadline = time.time() + wait
    while time.time() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def test_trials_on_both_nodes_and_node_death(cluster, tmp_path, monkeypatch):
    # The driver runs in a fresh process, as `automix search --ray-address` does, with the
    # cluster's authentication mode. A local ray.init earlier in this process (the other tests)
    # leaves RAY_AUTH_MODE=token in os.environ; a driver joining this unauthenticated cluster with
    # it has its owner RPCs refused: the cluster takes it for dead, drops the actors it owns and
    # its results from the second node never arrive.
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_drive_two_nodes, args=(cluster["address"], cluster["node2"].pid, tmp_path))
    proc.start()
    proc.join(400)
    if proc.is_alive():
        proc.kill()
    assert proc.exitcode == 0, (cluster["tmp"] / "node2.log").read_text()[-2000:]
