"""kill -9 of a driver that started its own local Ray leaves nothing of that Ray behind for
long: its GCS and raylet die with the driver (Ray's own fate sharing), and the executor's
watchdog stops the rest (the dashboard and runtime-env agents would otherwise wait 60 s for the
dead GCS, ~200 MB). Only the processes of the test's own driver are looked at and cleaned up."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the watchdog reads /proc")

ROOT = Path(__file__).resolve().parents[2]

DRIVER = textwrap.dedent("""
    import json, sys, time
    import psutil
    from automix.study.executors import RayExecutor

    def job(payload):
        return payload

    ex = RayExecutor(job, workers=1)
    ex.submit(0, 1)
    while not ex.poll(0.5):
        pass
    procs = []
    for p in psutil.Process().children(recursive=True):
        try:
            procs.append(dict(pid=p.pid, name=p.name(), created=p.create_time(), cmdline=p.cmdline()))
        except psutil.Error:  # gone meanwhile
            pass
    print(json.dumps(dict(session_dir=ex.session_dir, procs=procs)), flush=True)
    time.sleep(600)
""")
HUNG = 120.0  # seconds: only ends a hung test


def _env() -> dict[str, str]:
    """The environment of a driver script: this checkout importable."""
    path = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(path))


def _read_report(driver: subprocess.Popen) -> dict:
    """The driver's JSON line (HUNG ends a driver that never writes it)."""
    ready, _, _ = select.select([driver.stdout], [], [], HUNG)
    line = driver.stdout.readline() if ready else ""
    assert line, "the driver did not report its processes"
    return json.loads(line)


def _reaper_of(procs: list[dict]) -> dict:
    (reaper,) = [p for p in procs if any("_session_reaper" in part for part in p["cmdline"])]
    return reaper


def _wait_for_a_fresh_scan(reaper: dict) -> None:
    """Until the watchdog has noted the processes anew since this call. It scans /proc (its only
    reads) at start and then every 2 s: a burst of reads after a quiet second began after this
    call; two such bursts leave no doubt."""
    p = psutil.Process(reaper["pid"])
    reads, t0 = p.io_counters().read_chars, time.monotonic()
    last_change, bursts = t0, 0
    while bursts < 2:
        assert time.monotonic() - t0 < HUNG, "the watchdog stopped scanning"
        time.sleep(0.02)
        now, t = p.io_counters().read_chars, time.monotonic()
        if now != reads:
            bursts += t - last_change >= 1.0
            reads, last_change = now, t


def _alive(proc: dict) -> bool:
    try:
        p = psutil.Process(proc["pid"])
        return p.create_time() == proc["created"] and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.mark.slow  # ~20 s on 2 busy cores: a local Ray's start-up
def test_nothing_of_a_killed_drivers_local_ray_lingers(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = _env()
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, env=env, cwd=tmp_path, start_new_session=True)
    procs: list[dict] = []
    try:
        report = _read_report(driver)
        procs = report["procs"]
        names = {p["name"] for p in procs}
        assert {"gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names, names
        _wait_for_a_fresh_scan(_reaper_of(procs))  # the watchdog knows every process listed

        driver.send_signal(signal.SIGKILL)
        driver.wait()
        # Without the watchdog the agents outlive the driver by ~62 s (their own give-up on the
        # dead GCS); with it they get SIGTERM, then SIGKILL a second later. How soon they go is
        # the point here, so this bound stays well below Ray's own linger, with a wide margin
        # for a loaded machine.
        t0 = time.monotonic()
        while any(map(_alive, procs)) and time.monotonic() - t0 < 30:
            time.sleep(0.2)
        left = [p["name"] for p in procs if _alive(p)]
        assert not left, f"still running {time.monotonic() - t0:.0f} s after kill -9 of the driver: {left}"
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        for p in procs:  # what is left of this test's own session, if it failed
            if _alive(p):
                try:
                    os.kill(p["pid"], signal.SIGKILL)
                except OSError:
                    pass


FAKE_DRIVER = textwrap.dedent("""
    import json, subprocess, sys, time
    import psutil
    from automix.study.executors import _start_reaper

    marker = sys.argv[1]
    sleep = [sys.executable, "-c", "import time; time.sleep(600)"]
    spawn_grandchild = ("import subprocess, sys, time; "
                        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); time.sleep(600)")
    ours = subprocess.Popen([sys.executable, "-c", spawn_grandchild, marker])  # names the session: noted
    stranger = subprocess.Popen(sleep)  # the driver's child outside the session: left alone
    until = time.time() + 120
    while not psutil.Process(ours.pid).children() and time.time() < until:  # the grandchild is up
        time.sleep(0.05)
    reaper = _start_reaper(marker)
    info = lambda p: dict(pid=p.pid, name=p.name(), created=p.create_time(), cmdline=p.cmdline())
    ours = [psutil.Process(ours.pid)] + psutil.Process(ours.pid).children()
    print(json.dumps(dict(ours=[info(p) for p in ours], stranger=info(psutil.Process(stranger.pid)),
                          reaper=info(psutil.Process(reaper.pid)))), flush=True)
    time.sleep(600)
""")


def test_watchdog_stops_the_session_and_nothing_else(tmp_path):
    """The watchdog alone, without Ray (fast): after kill -9 of its driver it stops the processes
    that name the session (and their children) and leaves the driver's other children alone."""
    script = tmp_path / "driver.py"
    script.write_text(FAKE_DRIVER)
    marker = str(tmp_path / "session_fake")
    env = _env()
    driver = subprocess.Popen([sys.executable, str(script), marker], stdout=subprocess.PIPE, text=True, env=env,
                              cwd=tmp_path, start_new_session=True)
    procs: list[dict] = []
    try:
        report = _read_report(driver)
        ours, stranger, reaper = report["ours"], report["stranger"], report["reaper"]
        procs = ours + [stranger, reaper]
        assert len(ours) == 2 and all(map(_alive, procs))
        _wait_for_a_fresh_scan(reaper)  # it has noted the session's processes
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        t0 = time.monotonic()  # (they would all sleep for 10 minutes)
        while (any(map(_alive, ours)) or _alive(reaper)) and time.monotonic() - t0 < HUNG:
            time.sleep(0.1)
        assert not [p for p in ours if _alive(p)], "the session's processes outlived the driver"
        assert not _alive(reaper), "the watchdog did not exit"
        assert _alive(stranger), "the watchdog stopped a process outside the session"
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        for p in procs:
            if _alive(p):
                try:
                    os.kill(p["pid"], signal.SIGKILL)
                except OSError:
                    pass
