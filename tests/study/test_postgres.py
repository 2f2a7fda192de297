"""The Optuna storage on a real PostgreSQL server, started by this test (initdb + pg_ctl in a
temporary directory, trust authentication on 127.0.0.1 and a free port): a study runs, the lease
is exclusive, a driver's left-over trial is requeued on resume. Skipped where no PostgreSQL server
binaries or no psycopg2 are installed (`make setup` installs both)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("mlflow")
pytest.importorskip("psycopg2")

import optuna  # noqa: E402
import sqlalchemy  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from automix.config.study import StudyConfig  # noqa: E402
from automix.study.backend import preflight  # noqa: E402
from automix.study.executors import LocalExecutor  # noqa: E402
from automix.study.loop import run_study  # noqa: E402
from automix.study.results import finished_trials  # noqa: E402
from automix.study.storage import StudyBusyError, StudyLease  # noqa: E402
from automix.testing import SyntheticBackend  # noqa: E402

pytestmark = pytest.mark.slow


def _bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(versions[-1]) if versions else None


@pytest.fixture(scope="module")
def pg_url():
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("no PostgreSQL server binaries (Debian: apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="automix-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: use the server's own account
        if not shutil.which("runuser") or subprocess.run(["id", "postgres"], capture_output=True).returncode:
            pytest.skip("running as root without a 'postgres' account to run the server")
        shutil.chown(root, "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    try:
        subprocess.run([*run_as, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                       check=True, capture_output=True, timeout=120)
        subprocess.run([*run_as, pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w", "-t", "60", "-o",
                        f"-c listen_addresses=127.0.0.1 -p {port} -k {root}", "start"],
                       check=True, capture_output=True, timeout=90)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"cannot start a PostgreSQL server here: {err}")
    admin = sqlalchemy.create_engine(f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres",
                                     isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sqlalchemy.text("CREATE DATABASE optuna"))
    admin.dispose()
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run([*run_as, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True,
                       timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_study_lease_and_resume_on_postgresql(tmp_path, pg_url):
    cfg = StudyConfig(name="pg", methods=["lora", "qlora"], task="boolq", search_space={"path": "synthetic"},
                      memory_budget=5000, n_trials=3, workers=1, sampler="random", storage=pg_url,
                      tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    backend = SyntheticBackend(cfg.methods, n_blocks=2, cols=16)
    preflight(cfg, backend)
    run = run_study(cfg, backend, executor=LocalExecutor(backend.function), progress=False, write_artifacts=False)
    assert run.done == 3

    # the lease is exclusive on PostgreSQL too
    holder = StudyLease(pg_url, "pg")
    holder.acquire()
    try:
        with pytest.raises(StudyBusyError, match="is being run by PID"):
            run_study(cfg, backend, executor=LocalExecutor(backend.function), n_trials=4, progress=False)
    finally:
        holder.release()

    # a trial a dead driver left RUNNING is requeued by the next one
    study = optuna.load_study(study_name="pg", storage=pg_url)
    orphan = study.ask(dict(backend.distributions))
    run = run_study(cfg, backend, executor=LocalExecutor(backend.function), n_trials=5, progress=False,
                    write_artifacts=False)
    assert run.requeued == [orphan.number] and run.reran == [orphan.number]
    study = optuna.load_study(study_name="pg", storage=pg_url)
    assert len(finished_trials(study)) == 5
    assert not [t for t in study.get_trials() if t.state == TrialState.RUNNING]
    assert StudyLease(pg_url, "pg").holder() is None
