"""One driver per study: the lease in the Optuna database is taken atomically, a live holder's
lease only with takeover, a dead holder's automatically; a second driver stops with a clear error
before writing anything; a driver that was taken over stops without recording; stale trials are
requeued only by the lease's holder."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

pytest.importorskip("ray")
pytest.importorskip("mlflow")

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from automix.config.study import StudyConfig  # noqa: E402
from automix.study.executors import LocalExecutor  # noqa: E402
from automix.study.loop import run_study  # noqa: E402
from automix.study.results import finished_trials  # noqa: E402
from automix.study.storage import DRIVER_ATTR, StudyBusyError, StudyLease  # noqa: E402
from automix.testing import SyntheticBackend  # noqa: E402

# A driver in its own process: run_study on the synthetic objective, errors printed as the CLI does.
DRIVER = """
import os, sys, time
from automix.study.executors import LocalExecutor
from automix.study.loop import run_study
from automix.testing import SyntheticBackend
from automix.config.study import StudyConfig
cfg = StudyConfig(name="lease", methods=["lora", "qlora"], task="boolq", search_space={{"path": "synthetic"}},
                  memory_budget=5000, n_trials={n}, workers=1, sampler="random",
                  storage="sqlite:///{d}/optuna.db", tracking_uri="sqlite:///{d}/mlflow.db")
backend = SyntheticBackend(cfg.methods, n_blocks=2, cols=16, sleep={sleep})

def trial(payload):  # each trial first waits for the test's go-ahead (a file; bounded)
    until = time.time() + 300
    while not os.path.exists({go!r}) and time.time() < until:
        time.sleep(0.05)
    return backend.function(payload)

try:
    run_study(cfg, backend, executor=LocalExecutor(trial), progress=False, write_artifacts=False)
except ValueError as err:
    print(f"error: {{err}}", file=sys.stderr)
    sys.exit(2)
"""
HUNG = 240.0  # seconds: only ends a hung test


def make_cfg(tmp_path, **kw):
    base = dict(name="lease", methods=["lora", "qlora"], task="boolq", search_space={"path": "synthetic"},
                memory_budget=5000, n_trials=3, workers=1, sampler="random",
                storage=f"sqlite:///{tmp_path}/optuna.db", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    base.update(kw)
    return StudyConfig(**base)


def driver(tmp_path, n: int, sleep: float) -> subprocess.Popen:
    """A driver process whose trials start once the file `tmp_path/go` exists."""
    script = tmp_path / f"driver{time.time_ns()}.py"
    script.write_text(textwrap.dedent(DRIVER.format(d=tmp_path, n=n, sleep=sleep, go=str(tmp_path / "go"))))
    return subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def wait_for_trial(db, proc: subprocess.Popen, state: str = "RUNNING", limit: float = 90) -> None:
    """Until the driver has a trial in `state` (read with plain sqlite3: never races its set-up)."""
    import sqlite3

    t0 = time.time()
    while time.time() - t0 < limit:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
                if con.execute("SELECT count(*) FROM trials WHERE state = ?", (state,)).fetchone()[0]:
                    return
        except sqlite3.Error:  # not created yet
            pass
        time.sleep(0.2)
    raise AssertionError(f"the driver never had a {state} trial")


def test_lease_is_exclusive_until_released_or_taken_over(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    a, b = StudyLease(url, "s", heartbeat_s=0.2), StudyLease(url, "s")
    a.acquire()
    try:
        with pytest.raises(StudyBusyError, match=rf"study 's' is being run by PID {os.getpid()} on .+ since .+--takeover"):
            b.check_free()
        with pytest.raises(StudyBusyError):
            b.acquire()
        a.verify()
        beat = b.holder().heartbeat
        t0 = time.time()  # the holder's heartbeat runs: it moves (every 0.2 s; 60 s ends a hung test)
        while b.holder().heartbeat == beat:
            assert time.time() - t0 < 60, "the holder's heartbeat never moved"
            time.sleep(0.05)
        assert b.holder().heartbeat > beat
        b.acquire(takeover=True)
        assert b.previous.owner == a.token
        with pytest.raises(StudyBusyError, match="taken over"):
            a.verify()
    finally:
        a.release()  # releasing a lease that was taken over leaves the new holder's alone
    assert StudyLease(url, "s").holder().owner == b.token
    b.release()
    assert StudyLease(url, "s").holder() is None
    StudyLease(url, "other").check_free()  # per study


def test_dead_or_expired_holder_is_taken_over_without_asking(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = StudyLease(url, "s")
    dead.acquire()
    dead._stop.set()
    import sqlalchemy

    with dead._engine.begin() as c:  # the row a process that has exited left
        c.execute(sqlalchemy.text("UPDATE automix_study_lease SET pid = :p, proc_start = NULL"), {"p": gone.pid})
    assert not StudyLease(url, "s").holder().alive()
    new = StudyLease(url, "s")
    new.acquire()
    assert new.previous.pid == gone.pid
    # a holder on another host counts as alive while its heartbeat is fresh, dead once it expires
    with new._engine.begin() as c:
        c.execute(sqlalchemy.text("UPDATE automix_study_lease SET host = 'elsewhere', heartbeat = :t"),
                  {"t": time.time()})
    new._stop.set()
    with pytest.raises(StudyBusyError, match="on elsewhere"):
        StudyLease(url, "s").check_free()
    StudyLease(url, "s", expiry_s=0.0).check_free()


@pytest.mark.slow
def test_drivers_started_together_on_a_fresh_directory(tmp_path):
    procs = [driver(tmp_path, n=3, sleep=0.5) for _ in range(3)]
    try:
        # the lease's holder works only once the other two have stopped: they all contend for it
        t0 = time.time()
        while sum(p.poll() is not None for p in procs) < 2:
            assert time.time() - t0 < HUNG, "two of the three drivers should stop at the lease"
            time.sleep(0.1)
        (tmp_path / "go").touch()
        codes = [p.wait(timeout=HUNG) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    errors = [p.stderr.read() for p in procs]
    assert sorted(codes) == [0, 2, 2], errors
    for code, err in zip(codes, errors):
        if code == 2:
            assert "is being run by PID" in err and "Traceback" not in err
    study = optuna.load_study(study_name="lease", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert len(study.trials) == 3 and len(finished_trials(study)) == 3


@pytest.mark.slow
def test_second_driver_stops_before_writing_then_takeover(tmp_path):
    cfg = make_cfg(tmp_path, n_trials=6)
    backend = SyntheticBackend(cfg.methods, n_blocks=2, cols=16)
    first = driver(tmp_path, n=6, sleep=0.5)  # its trials wait for `go`: one stays in flight
    try:
        wait_for_trial(tmp_path / "optuna.db", first)
        first_token = StudyLease(cfg.storage_url, "lease").holder().owner
        study = optuna.load_study(study_name="lease", storage=cfg.storage_url)
        t0 = time.time()  # its trial in flight is marked as its own (just after it was asked)
        while not all(t.user_attrs.get(DRIVER_ATTR) for t in study.get_trials()):
            assert time.time() - t0 < HUNG, "the first driver's trial was never marked as its own"
            time.sleep(0.05)
        before = [(t.number, t.state, t.user_attrs[DRIVER_ATTR]) for t in study.get_trials()]
        assert {owner for _, _, owner in before} == {first_token}
        with pytest.raises(StudyBusyError, match="is being run by PID"):
            run_study(cfg, backend, executor=LocalExecutor(backend.function), progress=False)
        after = [(t.number, t.state, t.user_attrs[DRIVER_ATTR]) for t in study.get_trials()]
        assert after == before  # the second driver wrote nothing and retired no live trial
        # --takeover: this driver owns the study now; the first one stops at its next result,
        # which comes once the takeover has happened (the first driver's trial then goes on)
        went = threading.Thread(target=_go_once_taken_over, args=(cfg.storage_url, first_token, tmp_path / "go"),
                                daemon=True)
        went.start()
        run = run_study(cfg, backend, executor=LocalExecutor(backend.function), progress=False,
                        write_artifacts=False, takeover=True)
        went.join(timeout=HUNG)
        assert (tmp_path / "go").exists()
        assert first.wait(timeout=HUNG) == 2
        err = first.stderr.read()
        assert "was taken over by PID" in err and "Traceback" not in err, err
    finally:
        if first.poll() is None:
            first.kill()
    study = optuna.load_study(study_name="lease", storage=cfg.storage_url)
    done = finished_trials(study)
    assert len(done) == 6 and run.done == 6
    assert not [t for t in study.get_trials() if t.state == TrialState.RUNNING]
    assert StudyLease(cfg.storage_url, "lease").holder() is None


def _go_once_taken_over(url: str, old_owner: str, go) -> None:
    """Let the first driver's trials go on once another driver holds the study's lease."""
    lease, t0 = StudyLease(url, "lease"), time.time()
    while time.time() - t0 < HUNG:
        h = lease.holder()
        if h is not None and h.owner != old_owner:
            break
        time.sleep(0.05)
    go.touch()
