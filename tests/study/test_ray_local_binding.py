"""A local Ray started by the executor (no --ray-address) listens on loopback only: nothing of
its session (GCS, raylet, object manager, agents, workers, the driver's own gRPC server) may
accept connections from another machine. Other Ray clusters may run on the same machine; only
the processes of this test's own session are looked at."""

from __future__ import annotations

import ipaddress
import os
import socket
import time

import pytest

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from automix.study.executors import RayExecutor  # noqa: E402


def echo_job(payload):
    return payload


def _listening(proc: psutil.Process) -> set[tuple[str, int]]:
    try:
        return {(c.laddr.ip, c.laddr.port) for c in proc.net_connections(kind="inet")
                if c.status == psutil.CONN_LISTEN}
    except psutil.Error:  # gone meanwhile
        return set()


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.Error:  # gone meanwhile
        return "?"


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _session_processes(session_dir: str) -> list[psutil.Process]:
    """This driver's children that belong to the session (GCS, raylet, monitors) and all their
    descendants (agents, workers)."""
    roots = []
    for child in psutil.Process().children():
        try:
            if any(session_dir in part for part in child.cmdline()):
                roots.append(child)
        except psutil.Error:
            pass
    out = list(roots)
    for root in roots:
        try:
            out.extend(root.children(recursive=True))
        except psutil.Error:
            pass
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # ~20 s on 2 busy cores: a local Ray's start-up
def test_local_ray_listens_on_loopback_only(monkeypatch):
    if ray.is_initialized():  # another test module's connection: ours must be a fresh local Ray
        ray.shutdown()
    # The autoscaler's and the dashboard's metrics servers use fixed ports, which another Ray on
    # this machine may hold already: give ours free ones, so that they are looked at too.
    monkeypatch.setenv("AUTOSCALER_METRIC_PORT", str(_free_port()))
    monkeypatch.setenv("DASHBOARD_METRIC_PORT", str(_free_port()))
    driver = psutil.Process()
    before = _listening(driver)
    ex = RayExecutor(echo_job, workers=1)
    try:
        session_dir = ex.session_dir
        assert session_dir and os.path.isdir(session_dir)
        ex.submit(0, {"x": 1})  # a worker and the report channel's actor start and listen too
        got = {}
        t0 = time.time()
        while not got and time.time() - t0 < 120:
            got = {o.key: o for o in ex.poll(0.5)}
        assert got[0].status == "ok"

        found: dict[tuple[str, int], str] = {}
        servers = ("gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent")
        t0 = time.time()
        while True:  # the agents bind their ports while starting: look until every server listens
            for proc in _session_processes(session_dir):
                for addr in _listening(proc):
                    found[addr] = f"{proc.pid} {_name(proc)}"
            for addr in _listening(driver) - before:
                found[addr] = f"{driver.pid} (driver)"
            names = " ".join(found.values())
            if all(s in names for s in servers):
                break
            assert time.time() - t0 < 120, f"not every server of the session listens: {found}"  # not vacuous
            time.sleep(0.5)
        exposed = {f"{ip}:{port}": who for (ip, port), who in found.items() if not _is_loopback(ip)}
        assert not exposed, f"listening beyond loopback: {exposed}"
        assert _is_loopback(ray.util.get_node_ip_address())
    finally:
        ex.shutdown()
    assert not ray.is_initialized()


def test_loopback_only_while_a_local_ray_starts(monkeypatch):
    """The switch holds during a local start only; joining a cluster (--ray-address) keeps
    Ray's own choice of the node's IP."""
    outward = ray.util.get_node_ip_address()
    seen = []

    def fake_init(**kwargs):
        seen.append(ray.util.get_node_ip_address())
        raise ConnectionError("no Ray here")

    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(ValueError, match="cannot start a local Ray"):
        RayExecutor(echo_job, workers=1)
    assert _is_loopback(seen[-1])
    assert ray.util.get_node_ip_address() == outward  # restored
    with pytest.raises(ValueError, match="cannot start or join"):
        RayExecutor(echo_job, workers=1, address="auto", connect_timeout_s=5)
    assert seen[-1] == outward
