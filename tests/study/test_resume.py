"""Kill the driver mid-study (SIGKILL, Ray trials in flight) and resume: every finished trial is
kept, nothing is duplicated, the interrupted configurations re-run and the study completes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytest.importorskip("ray")

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from automix.study.results import finished_trials  # noqa: E402
from automix.study.loop import run_study  # noqa: E402
from automix.study.executors import LocalExecutor  # noqa: E402
from automix.testing import SyntheticBackend  # noqa: E402
from automix.config.study import StudyConfig  # noqa: E402
from automix.study.tracking import Tracker  # noqa: E402

DRIVER = """
import sys
from automix.study.loop import run_study
from automix.testing import SyntheticBackend
from automix.config.study import StudyConfig
cfg = StudyConfig(name="killme", methods=["lora", "qlora"], task="boolq", search_space={{"path": "synthetic"}},
                  memory_budget=5000, n_trials=10, workers=2, sampler="random",
                  storage="sqlite:///{d}/optuna.db", tracking_uri="sqlite:///{d}/mlflow.db")
run_study(cfg, SyntheticBackend(cfg.methods, n_blocks=3, cols=32, sleep=1.5), progress=False)
"""


def count_done(db) -> int:
    """Finished trials, read with plain sqlite3 so the test never races the driver's schema set-up."""
    import sqlite3

    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return con.execute("SELECT count(*) FROM trials WHERE state IN ('COMPLETE', 'FAIL')").fetchone()[0]
    except sqlite3.Error:  # tables not created yet
        return 0


@pytest.mark.slow
def test_sigkill_driver_then_resume(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER.format(d=tmp_path)))
    proc = subprocess.Popen([sys.executable, str(script)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        t0 = time.time()
        while count_done(tmp_path / "optuna.db") < 3 and time.time() - t0 < 120:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)  # the driver dies with trials in flight
        proc.wait(timeout=30)
    finally:
        time.sleep(1.0)
        try:  # Ray's processes share the driver's fate; clean up any straggler of our group
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    study = optuna.load_study(study_name="killme", storage=url)
    before = {t.number: t.values for t in finished_trials(study)}
    assert 3 <= len(before) < 10
    running = [t.number for t in study.get_trials() if t.state == TrialState.RUNNING]
    assert running, "the kill should leave trials in flight"

    cfg = StudyConfig(name="killme", methods=["lora", "qlora"], task="boolq", search_space={"path": "synthetic"},
                      memory_budget=5000, n_trials=10, workers=1, sampler="random", storage=url,
                      tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    backend = SyntheticBackend(cfg.methods, n_blocks=3, cols=32)
    run = run_study(cfg, backend, executor=LocalExecutor(backend.function), progress=False,
                    write_artifacts=False)
    assert sorted(run.requeued) == sorted(running)

    study = optuna.load_study(study_name="killme", storage=url)
    done = finished_trials(study)
    assert len(done) == 10
    after = {t.number: t.values for t in done}
    assert all(after[n] == v for n, v in before.items())  # finished trials kept as they were
    # each interrupted configuration ran again exactly once
    requeued = [t.user_attrs["requeued_from"] for t in done if "requeued_from" in t.user_attrs]
    assert sorted(requeued) == sorted(running)
    for t in done:
        if "requeued_from" in t.user_attrs:
            assert t.params == study.trials[t.user_attrs["requeued_from"]].params
    # MLflow holds exactly one run per finished trial, none for the stale ones
    assert sorted(Tracker(cfg.tracking, cfg.name).logged_trials()) == sorted(after)


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_requeues(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER.format(d=tmp_path)).replace("sleep=1.5", "sleep=20"))
    proc = subprocess.Popen([sys.executable, str(script)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        import sqlite3

        t0 = time.time()
        while time.time() - t0 < 120:  # wait until two trials are in flight
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            try:
                with sqlite3.connect(f"file:{tmp_path}/optuna.db?mode=ro", uri=True, timeout=5) as con:
                    if con.execute("SELECT count(*) FROM trials WHERE state = 'RUNNING'").fetchone()[0] >= 2:
                        break
            except sqlite3.Error:
                pass
            time.sleep(0.3)
        time.sleep(1.0)
        os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C sends
        proc.wait(timeout=60)  # stops promptly, without waiting for the 20 s trials
        assert time.time() - t0 < 100
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    study = optuna.load_study(study_name="killme", storage=url)
    states = [t.state for t in study.get_trials()]
    assert TrialState.RUNNING not in states
    stopped = [t for t in study.get_trials() if t.user_attrs.get("interrupted")]
    assert len(stopped) == 2 and all(t.user_attrs["stale"] and t.state == TrialState.FAIL for t in stopped)
    queued = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert sorted(t.user_attrs["requeued_from"] for t in queued) == sorted(t.number for t in stopped)
    assert finished_trials(study) == []  # interrupted trials do not count as finished
