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
import os, signal, sys, time
# Ctrl-C raises KeyboardInterrupt here, as in a terminal's foreground command, even when the
# tests run in the background of a non-interactive shell (which starts them with SIGINT ignored).
signal.signal(signal.SIGINT, signal.default_int_handler)
from automix.study.loop import run_study
from automix.testing import SyntheticBackend, synthetic_trial
from automix.config.study import StudyConfig

def trial(payload):
    # The first {free} jobs to start run to their end; every later one stays in flight (600 s at
    # most) until the driver stops: the test acts on trial states, never on a trial's duration.
    n = 0
    while True:  # this job's rank among the jobs started (claimed atomically)
        try:
            os.close(os.open(os.path.join({d!r}, f"job{{n}}"), os.O_CREAT | os.O_EXCL))
            break
        except FileExistsError:
            n += 1
    until = time.time() + 600
    while n >= {free} and time.time() < until:
        time.sleep(0.1)
    return synthetic_trial(payload)

class Backend(SyntheticBackend):
    function = staticmethod(trial)

cfg = StudyConfig(name="killme", methods=["lora", "qlora"], task="boolq", search_space={{"path": "synthetic"}},
                  memory_budget=5000, n_trials=10, workers=2, sampler="random",
                  storage="sqlite:///{d}/optuna.db", tracking_uri="sqlite:///{d}/mlflow.db")
run_study(cfg, Backend(cfg.methods, n_blocks=3, cols=32), progress=False)
"""
HUNG = 120.0  # seconds: only ends a hung test


def start_driver(tmp_path, free: int) -> subprocess.Popen:
    """A driver (2 workers, 10 trials) whose first `free` jobs end and the rest stay in flight."""
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER.format(d=str(tmp_path), free=free)))
    return subprocess.Popen([sys.executable, str(script)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def count_states(db) -> tuple[int, int]:
    """(finished, running) trials, read with plain sqlite3 so the test never races the driver's
    schema set-up."""
    import sqlite3

    if not db.exists():
        return 0, 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            done = con.execute("SELECT count(*) FROM trials WHERE state IN ('COMPLETE', 'FAIL')").fetchone()[0]
            running = con.execute("SELECT count(*) FROM trials WHERE state = 'RUNNING'").fetchone()[0]
            return done, running
    except sqlite3.Error:  # tables not created yet
        return 0, 0


def wait_for(proc: subprocess.Popen, tmp_path, done: int, running: int, jobs: int) -> None:
    """Until the driver has `done` finished and `running` RUNNING trials and `jobs` jobs have
    started on its workers (HUNG ends a hung test)."""
    t0 = time.time()
    while True:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        state = count_states(tmp_path / "optuna.db")
        if state == (done, running) and all((tmp_path / f"job{n}").exists() for n in range(jobs)):
            return
        assert time.time() - t0 < HUNG, f"(finished, running) trials: {state}, not ({done}, {running})"
        time.sleep(0.1)


@pytest.mark.slow
def test_sigkill_driver_then_resume(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    proc = start_driver(tmp_path, free=3)
    try:
        wait_for(proc, tmp_path, done=3, running=2, jobs=5)  # 3 finished, the next 2 in flight
        os.kill(proc.pid, signal.SIGKILL)  # the driver dies with trials in flight
        proc.wait(timeout=HUNG)
    finally:
        try:  # Ray's processes share the driver's fate; clean up any straggler of our group
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    study = optuna.load_study(study_name="killme", storage=url)
    before = {t.number: t.values for t in finished_trials(study)}
    assert len(before) == 3
    running = [t.number for t in study.get_trials() if t.state == TrialState.RUNNING]
    assert len(running) == 2, "the kill should leave trials in flight"

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
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_cleanly_and_requeues(tmp_path, sig):
    url = f"sqlite:///{tmp_path}/optuna.db"
    proc = start_driver(tmp_path, free=0)  # no trial ends by itself
    try:
        wait_for(proc, tmp_path, done=0, running=2, jobs=2)  # two trials at work on the workers
        os.kill(proc.pid, sig)  # what Ctrl-C sends, or a scheduler's stop
        # it stops without waiting for its trials (they would run for 10 minutes)
        try:
            proc.wait(timeout=HUNG)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the driver was still running {HUNG:.0f} s after {sig.name}") from None
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
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("killme").experiment_id
    parents = client.search_runs([exp], filter_string="tags.`automix.role` = 'study'")
    assert [p.info.status for p in parents] == ["KILLED"]
    from automix.study.storage import StudyLease

    assert StudyLease(url, "killme").holder() is None


def _closed_runs(cfg) -> dict[int, list]:
    """Trial runs by trial number (read with a plain client: a Tracker would reopen the parent)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.tracking)
    exp = client.get_experiment_by_name(cfg.name).experiment_id
    out: dict[int, list] = {}
    for r in client.search_runs([exp], filter_string="tags.`automix.role` = 'trial'"):
        out.setdefault(int(r.data.tags["automix.trial"]), []).append(r)
    return out


def test_resume_reconciles_mlflow_with_optuna(tmp_path):
    """A driver killed while logging leaves a run RUNNING (maybe tagged pareto, without metrics),
    or no run, and its parent run open: resume leaves exactly one closed run per finished trial,
    with its metrics and layers, and closes the parent."""
    cfg = StudyConfig(name="recon", methods=["lora", "qlora"], task="boolq", search_space={"path": "synthetic"},
                      memory_budget=5000, n_trials=4, workers=1, sampler="random",
                      storage=f"sqlite:///{tmp_path}/optuna.db", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    backend = SyntheticBackend(cfg.methods, n_blocks=2, cols=16)
    run_study(cfg, backend, executor=LocalExecutor(backend.function), progress=False, write_artifacts=False)
    t = Tracker(cfg.tracking, cfg.name)  # (reopens the parent: RUNNING, as a killed driver leaves it)
    runs = t.logged_trials()
    t.client.delete_run(runs[1])  # trial 1: the driver died between create_run and set_terminated
    t.client.create_run(t.experiment_id, run_name="trial-0001", tags={
        "mlflow.parentRunId": t.parent_id, "automix.role": "trial", "automix.config.study": cfg.name,
        "automix.trial": "1", "pareto": "true", "pareto_method": "true"})
    t.client.delete_run(runs[2])  # trial 2: told to Optuna, never logged
    t.client.create_run(t.experiment_id, tags={  # trial 9 does not exist in Optuna
        "mlflow.parentRunId": t.parent_id, "automix.role": "trial", "automix.trial": "9"})
    assert t.client.get_run(t.parent_id).info.status == "RUNNING"

    run_study(cfg, backend, executor=LocalExecutor(backend.function), n_trials=5, progress=False,
              write_artifacts=False)
    study = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url)
    done = {t.number: t for t in finished_trials(study)}
    got = _closed_runs(cfg)
    assert sorted(got) == sorted(done) and len(done) == 5
    for n, rs in got.items():
        assert len(rs) == 1, f"trial {n} has {len(rs)} runs"
        r = rs[0]
        assert r.info.status == ("FINISHED" if done[n].state == TrialState.COMPLETE else "FAILED")
        if done[n].state == TrialState.COMPLETE:
            assert r.data.metrics["accuracy"] == pytest.approx(done[n].values[0])
        assert ("avg_bits" in r.data.params) != ("avg_bits" in r.data.metrics)  # one of them, once
        assert sorted(a.path for a in t.client.list_artifacts(r.info.run_id)) == ["layers.json", "layers.yaml"]
    assert t.client.get_run(t.parent_id).info.status == "FINISHED"


class _Broken(LocalExecutor):
    def poll(self, timeout: float = 1.0):
        raise RuntimeError("the executor broke")


def test_parent_run_closed_and_lease_freed_when_the_driver_fails(tmp_path):
    cfg = StudyConfig(name="broken", methods=["lora"], task="boolq", search_space={"path": "synthetic"},
                      memory_budget=5000, n_trials=2, workers=1, sampler="random",
                      storage=f"sqlite:///{tmp_path}/optuna.db", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    backend = SyntheticBackend(cfg.methods, n_blocks=2, cols=16)
    with pytest.raises(RuntimeError, match="the executor broke"):
        run_study(cfg, backend, executor=_Broken(backend.function), progress=False)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.tracking)
    exp = client.get_experiment_by_name(cfg.name)
    parents = client.search_runs([exp.experiment_id], filter_string="tags.`automix.role` = 'study'")
    assert [p.info.status for p in parents] == ["FAILED"]
    study = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url)
    assert not [t for t in study.get_trials() if t.state == TrialState.RUNNING]  # in flight: requeued
    run = run_study(cfg, backend, executor=LocalExecutor(backend.function), progress=False,
                    write_artifacts=False)  # the lease was freed: no takeover needed
    assert run.done == 2
    assert client.get_run(parents[0].info.run_id).info.status == "FINISHED"
