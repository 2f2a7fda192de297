"""`python -m automix.bench.reliability`: fault injection on a small study, counted.

Three parts, each on the synthetic objective of `automix.testing` (real Optuna SQLite storage,
MLflow SQLite tracking, the real driver):

1. Driver kills: a study driven by a subprocess that is SIGKILLed `--driver-kills` times, each at
   a random moment chosen among "right after a trial completes" (as soon as the storage shows a
   new finished trial: the driver is between Optuna and MLflow), "with trials in flight" (a
   random delay after one starts) and "at start-up" (while the driver opens its stores), then
   resumed to the end. Counted: finished trials lost (seen finished before a kill, missing or
   changed after), duplicated (a stale trial's configuration finished twice, or trials beyond
   the target), orphaned MLflow runs (runs of unfinished trials, second runs, runs left open),
   finished trials without a run, the parent run's final status, and how long the killed
   driver's Ray processes (its session) outlive it.
2. Worker kills: one driver on a local Ray; `--worker-kills` times a Ray worker that is running a
   trial is SIGKILLed. Counted: trials lost or failed, and re-runs recorded versus kills.
3. Bad inputs: `automix search` on study files with broken data, resources or stores, fresh
   and on an existing study. Counted: how many were stopped (non-zero exit, a one-line error)
   before any trial ran, with nothing written (no new file, the stored study unchanged).

Results go to stdout as markdown (benchmarks/reliability.md records a run).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import optuna
from mlflow.tracking import MlflowClient

from automix.cli import main as cli_main
from automix.config.study import StudyConfig
from automix.study.executors import LocalExecutor, RayExecutor
from automix.study.loop import run_study
from automix.study.results import finished_trials
from automix.testing import SyntheticBackend

__all__ = ["main"]

REPO = Path(__file__).resolve().parents[2]


def _config(workdir: Path, name: str, n_trials: int, workers: int, max_retries: int = 2) -> StudyConfig:
    return StudyConfig(name=name, methods=["lora", "qlora"], task="boolq", search_space={"path": "synthetic"},
                       memory_budget=5000, n_trials=n_trials, workers=workers, sampler="random",
                       timeout_per_trial=120, max_retries=max_retries,
                       storage=f"sqlite:///{workdir}/optuna.db", tracking_uri=f"sqlite:///{workdir}/mlflow.db")


def _drive(workdir: Path, name: str, n_trials: int, workers: int, sleep: float, executor: str) -> int:
    """One driver (what the subprocesses of part 1 run)."""
    cfg = _config(workdir, name, n_trials, workers)
    backend = SyntheticBackend(cfg.methods, n_blocks=3, cols=32, sleep=sleep)
    ex = LocalExecutor(backend.function) if executor == "local" else None
    run_study(cfg, backend, executor=ex, progress=False, write_artifacts=False)
    return 0


# -- reading the stores without racing the driver ---------------------------------------------

def _query(db: Path, sql: str) -> list[tuple]:
    """Rows of a read-only query with plain sqlite3 (never creates or migrates anything; [] while
    the driver has not created its tables)."""
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return con.execute(sql).fetchall()
    except sqlite3.Error:
        return []


def _done(db: Path) -> int:
    """Finished trials that are not stale (a requeued trial is FAIL but did not finish)."""
    rows = _query(db, "SELECT count(*) FROM trials t WHERE state IN ('COMPLETE', 'FAIL') AND NOT EXISTS "
                      "(SELECT 1 FROM trial_user_attributes a WHERE a.trial_id = t.trial_id AND a.key = 'stale')")
    return rows[0][0] if rows else 0


def _running(db: Path) -> set[int]:
    return {r[0] for r in _query(db, "SELECT trial_id FROM trials WHERE state = 'RUNNING'")}


def _finished(cfg: StudyConfig) -> dict[int, tuple]:
    study = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url)
    return {t.number: (t.state.name, tuple(t.values or ())) for t in finished_trials(study)}


def _session_alive(sid: int) -> int:
    """Processes still alive in session `sid` (the killed driver's Ray processes)."""
    n = 0
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            n += 1
    return n


def _kill_session(sid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(sid, signal.SIGKILL)


def bench_driver_kills(n_kills: int, n_trials: int, executor: str, seed: int, linger_wait: float = 15.0
                       ) -> dict[str, Any]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as d:
        workdir = Path(d)
        cfg = _config(workdir, "kills", n_trials, workers=2)
        db = workdir / "optuna.db"
        seen: dict[int, tuple] = {}
        moments: list[str] = []
        lingering: list[float] = []
        cmd = [sys.executable, "-m", "automix.bench.reliability", "--drive", str(workdir),
               "--trials", str(n_trials), "--executor", executor]
        plan = (["after-complete", "in-flight", "after-complete", "start-up"] * n_kills)[:n_kills]
        rng.shuffle(plan)
        for moment in plan:
            done0, running0 = _done(db), _running(db)
            if done0 >= n_trials - 1:
                break
            proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True)
            t0 = time.time()
            if moment == "start-up":
                time.sleep(rng.uniform(0.5, 8.0))
            else:
                while time.time() - t0 < 180 and proc.poll() is None:
                    if moment == "after-complete" and _done(db) > done0:
                        break  # a trial of this driver was just told: MLflow is next
                    if moment == "in-flight" and _running(db) - running0:
                        time.sleep(rng.uniform(0.0, 1.5))
                        break
                    time.sleep(0.02)
            if proc.poll() is not None:  # finished (or failed) before the kill
                err = proc.stderr.read()
                if proc.returncode:
                    raise RuntimeError(f"driver exited {proc.returncode}: {err[-2000:]}")
                break
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            moments.append(moment)
            t_kill = time.time()
            while _session_alive(proc.pid) and time.time() - t_kill < linger_wait:
                time.sleep(0.25)
            lingering.append(round(time.time() - t_kill, 1))  # until Ray's processes followed the driver
            _kill_session(proc.pid)
            if db.exists():
                with contextlib.suppress(KeyError):
                    seen.update(_finished(cfg))
        final = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if final.returncode:
            raise RuntimeError(f"the resuming driver failed: {final.stderr[-3000:]}")
        study = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url)
        after = _finished(cfg)
        lost = sum(1 for n, v in seen.items() if after.get(n) != v)
        reruns: dict[int, int] = {}
        for t in finished_trials(study):
            src = t.user_attrs.get("requeued_from")
            if src is not None:
                reruns[src] = reruns.get(src, 0) + 1
        duplicated = sum(c - 1 for c in reruns.values() if c > 1) + max(0, len(after) - n_trials)
        client = MlflowClient(cfg.tracking)
        exp = client.get_experiment_by_name(cfg.name).experiment_id
        runs = client.search_runs([exp], filter_string="tags.`automix.role` = 'trial'", max_results=10000)
        per: dict[int, int] = {}
        orphaned = 0
        for r in runs:
            n = int(r.data.tags["automix.trial"])
            per[n] = per.get(n, 0) + 1
            if n not in after or per[n] > 1 or r.info.status not in ("FINISHED", "FAILED"):
                orphaned += 1
        parents = [r.info.status for r in client.search_runs([exp], filter_string="tags.`automix.role` = 'study'")]
    return {"kills": len(moments), "moments": moments, "finished": len(after), "target": n_trials,
            "seen_before_kills": len(seen), "lost": lost, "duplicated": duplicated, "orphaned_runs": orphaned,
            "missing_runs": sum(1 for n in after if n not in per), "requeued": sum(reruns.values()),
            "parent_runs": parents,
            "lingering_max": max(lingering or [0]), "lingering": lingering}


def _ray_workers_running(name: str) -> list[int]:
    """PIDs of Ray workers executing task `name` (Ray titles them ray::NAME)."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmd = (p / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            if cmd.startswith(f"ray::{name}"):
                out.append(int(p.name))
    return out


def bench_worker_kills(n_kills: int, n_trials: int, seed: int) -> dict[str, Any]:
    import threading

    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as d:
        workdir = Path(d)
        cfg = _config(workdir, "workers", n_trials, workers=2, max_retries=n_kills)
        backend = SyntheticBackend(cfg.methods, n_blocks=3, cols=32, sleep=2.0)
        ex = RayExecutor(backend.function, workers=2, cpus=1, timeout_s=120, max_retries=n_kills)
        killed: list[int] = []
        stop = threading.Event()

        def killer() -> None:
            while len(killed) < n_kills and not stop.is_set():
                time.sleep(rng.uniform(1.0, 3.0))
                pids = _ray_workers_running("synthetic_trial")
                if pids:
                    pid = rng.choice(pids)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)

        th = threading.Thread(target=killer, daemon=True)
        th.start()
        try:
            run = run_study(cfg, backend, executor=ex, progress=False, write_artifacts=False)
        finally:
            stop.set()
            th.join(timeout=10)
            ex.shutdown()
        study = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url)
        done = finished_trials(study)
        reruns = sum(int(t.user_attrs.get("attempts", 1)) - 1 for t in done)
        crashed = sum(1 for t in done if "crashed" in str(t.user_attrs.get("failure_reason", "")))
    return {"kills": len(killed), "finished": len(done), "target": n_trials, "lost": n_trials - run.done,
            "crashed": crashed, "reruns_recorded": reruns}


# -- part 3: bad inputs ----------------------------------------------------------------------------

GOOD_ROW = '{"question": "is it?", "passage": "it is.", "answer": true}\n'
STUDY = """\
name: bad
model: builtin:tiny
task: boolq
methods: [qlora]
search_space:
  path: {repo}/search_spaces/quickstart.yaml
memory_budget: 6GiB
n_trials: 2
trial: {{steps: 1, batch_size: 2, seq_len: 32}}
storage: sqlite:///{d}/optuna.db
tracking_uri: sqlite:///{d}/mlflow.db
"""


def _bad_inputs(d: Path) -> list[tuple[str, str, dict[str, str], list[str]]]:
    """(label, extra study YAML, files to write, extra CLI arguments)."""
    data = f"data: {d}/data.jsonl\n"
    cases = [
        ("bad JSON line", data, {"data.jsonl": GOOD_ROW * 5 + "{oops\n"}, []),
        ("missing field", data, {"data.jsonl": GOOD_ROW + '{"question": "q", "answer": 1}\n'}, []),
        ("not an object", data, {"data.jsonl": GOOD_ROW + "[1, 2]\n"}, []),
        ("bad answer value", data, {"data.jsonl": GOOD_ROW + '{"question": "q", "passage": "p", "answer": "maybe"}\n'}, []),
        ("empty data file", data, {"data.jsonl": ""}, []),
        ("missing data path", f"data: {d}/nope.jsonl\n", {}, []),
        ("unknown key", "colour: blue\n", {}, []),
        ("bad memory budget", "", {}, []),
        ("unknown method", "", {}, []),
        ("unreachable tracking server", "tracking_uri: http://127.0.0.1:9\n", {}, []),
        ("postgres without its driver", "", {}, []),
        ("unreachable --ray-address", "", {}, ["--ray-address", "127.0.0.1:9", "--ray-timeout", "3"]),
    ]
    import torch

    if not torch.cuda.is_available():
        cases.append(("gpus without CUDA", "resources: {cpus: 1, gpus: 0.5}\n", {}, []))
    return cases


def _study_text(d: Path, label: str, extra: str) -> str:
    text = textwrap.dedent(STUDY.format(repo=REPO, d=d))
    if label == "bad memory budget":
        text = text.replace("memory_budget: 6GiB", "memory_budget: 6 potatoes")
    if label == "unknown method":
        text = text.replace("methods: [qlora]", "methods: [qlora, sparkle]")
    if label == "postgres without its driver":
        text = text.replace(f"sqlite:///{d}/optuna.db", "postgresql://u:p@127.0.0.1:9/optuna")
    return text + extra


def bench_bad_inputs() -> dict[str, Any]:
    rows = []
    for existing in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            for label, extra, files, argv in _bad_inputs(d):
                for p in list(d.iterdir()):
                    if p.is_file():
                        p.unlink()
                if existing:
                    s = optuna.create_study(study_name="bad", storage=f"sqlite:///{d}/optuna.db",
                                            directions=["maximize", "minimize"])
                    s.set_user_attr("config", {"stored": "before"})
                for name, content in files.items():
                    (d / name).write_text(content)
                (d / "s.yaml").write_text(_study_text(d, label, extra))
                before = {p.name: p.stat().st_mtime_ns for p in d.iterdir()}
                err = io.StringIO()
                t0 = time.time()
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    try:
                        code = cli_main(["search", str(d / "s.yaml"), "--no-progress"] + argv)
                    except SystemExit as e:
                        code = e.code if isinstance(e.code, int) else 2
                after = {p.name: p.stat().st_mtime_ns for p in d.iterdir()}
                untouched = before == after
                if existing:
                    s = optuna.load_study(study_name="bad", storage=f"sqlite:///{d}/optuna.db")
                    untouched = untouched and s.user_attrs.get("config") == {"stored": "before"} and not s.trials
                message = err.getvalue().strip()
                rows.append({"input": label + (" (existing study)" if existing else ""), "exit": code,
                             "stopped": bool(code) and untouched and "Traceback" not in message,
                             "seconds": time.time() - t0, "message": message.splitlines()[0][:110] if message else ""})
    return {"rows": rows, "stopped": sum(r["stopped"] for r in rows), "total": len(rows)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m automix.bench.reliability", description=__doc__.split("\n")[0])
    p.add_argument("--driver-kills", type=int, default=6)
    p.add_argument("--worker-kills", type=int, default=3)
    p.add_argument("--trials", type=int, default=12, help="trials of the killed study")
    p.add_argument("--executor", choices=["ray", "local"], default="ray", help="how the killed driver runs trials")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--linger-wait", type=float, default=15.0,
                   help="seconds to wait for a killed driver's Ray processes to go before the next start")
    p.add_argument("--skip", nargs="*", default=[], choices=["drivers", "workers", "inputs"])
    p.add_argument("--drive", default=None, help=argparse.SUPPRESS)  # internal: be one driver of part 1
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.drive:
        return _drive(Path(args.drive), "kills", args.trials, 2, 0.6, args.executor)
    out: dict[str, Any] = {}
    if "drivers" not in args.skip:
        r = bench_driver_kills(args.driver_kills, args.trials, args.executor, args.seed, args.linger_wait)
        out["drivers"] = r
        print(f"\n## Driver kills (SIGKILL; {args.executor} executor, 2 workers, {r['target']} trials)\n")
        print("| kills | moments | finished / target | seen finished before a kill | lost | duplicated "
              "| orphaned MLflow runs | finished without a run | requeued | parent run(s) at the end "
              f"| s until the killed driver's Ray processes were gone (max; {args.linger_wait:g} = still there) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        print(f"| {r['kills']} | {', '.join(r['moments'])} | {r['finished']} / {r['target']} | {r['seen_before_kills']} "
              f"| {r['lost']} | {r['duplicated']} | {r['orphaned_runs']} | {r['missing_runs']} | {r['requeued']} "
              f"| {', '.join(r['parent_runs'])} | {r['lingering_max']} |")
    if "workers" not in args.skip:
        r = bench_worker_kills(args.worker_kills, max(6, args.trials // 2), args.seed)
        out["workers"] = r
        print("\n## Ray worker kills (SIGKILL of a worker running a trial; max_retries = kills)\n")
        print("| kills | finished / target | lost | crashed | re-runs recorded |")
        print("|---|---|---|---|---|")
        print(f"| {r['kills']} | {r['finished']} / {r['target']} | {r['lost']} | {r['crashed']} | {r['reruns_recorded']} |")
    if "inputs" not in args.skip:
        r = bench_bad_inputs()
        out["inputs"] = {"stopped": r["stopped"], "total": r["total"]}
        print(f"\n## Bad inputs: {r['stopped']} of {r['total']} stopped before any trial with nothing written\n")
        print("| input | exit | stopped, nothing written | s | message |")
        print("|---|---|---|---|---|")
        for row in r["rows"]:
            print(f"| {row['input']} | {row['exit']} | {'yes' if row['stopped'] else 'NO'} | {row['seconds']:.1f} "
                  f"| {row['message'].replace('|', '/')} |")
    print("\n" + json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "rows"} for k, v in out.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
