"""A quiet, consistent command line: `automix search` says what it does from its first second,
shows no library noise (Ray's token notice, MLflow's INFO lines, transformers' loading bars from
the Ray workers) and ends with the commands to run next; library warnings still show; argparse
errors are one line."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from automix.cli import QUIET_NOTICES, build_parser, main, quiet_libraries
from automix.commands import rerun_command
from automix.commands.export import RebuildProgress
from automix.commands.search import next_commands, study_ref
from automix.commands.trial import METHODS
from automix.study.progress import StudyProgress, describe

REPO = Path(__file__).resolve().parents[1]

# what the libraries print unless automix quiets them
NOISE = ["Token authentication is enabled", "INFO mlflow", "alembic", "Creating initial MLflow database",
         "Loading weights", "decompose:", "it/s]"]


def clean_env(**over: str) -> dict:
    """This environment without the variables automix sets itself (the test sees its defaults)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_LOGGING_LEVEL", "HF_HUB_DISABLE_PROGRESS_BARS")}
    return {**env, **over}


def automix(*argv: str, cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "automix", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=clean_env(**(env or {})))


def test_unknown_method_is_one_line(tmp_path):
    r = automix("trial", "--method", "qlorra", cwd=tmp_path)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr  # no usage block
    assert "invalid choice: 'qlorra'" in r.stderr and all(f"'{m}'" in r.stderr for m in METHODS)
    assert "automix trial --help" in r.stderr


def test_library_notices_are_dropped_warnings_kept(tmp_path):
    """MLflow's INFO lines and Ray's token-auth notice go; their warnings stay."""
    code = textwrap.dedent("""\
        import logging
        from automix.cli import quiet_libraries
        quiet_libraries()
        import mlflow  # configures its loggers from MLFLOW_LOGGING_LEVEL
        logging.getLogger("mlflow.store.db.utils").info("Creating initial MLflow database tables...")
        logging.getLogger("mlflow.store.db.utils").warning("MLFLOW-WARNING-KEPT")
        ray_auth = logging.getLogger("ray._private.authentication.authentication_token_setup")
        ray_auth.warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled")
        ray_auth.warning("Token authentication is disabled for this Ray cluster. Anyone with network access")
        """)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       env=clean_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Creating initial MLflow database tables" not in r.stderr
    assert "MLFLOW-WARNING-KEPT" in r.stderr
    assert "Token authentication is enabled" not in r.stderr
    assert "Token authentication is disabled" in r.stderr  # a real (security) warning


def test_quiet_libraries_keeps_what_the_user_set(monkeypatch):
    monkeypatch.setattr(os, "environ", clean_env(MLFLOW_LOGGING_LEVEL="DEBUG"))
    quiet_libraries()
    quiet_libraries()  # idempotent: one filter per logger
    assert os.environ["MLFLOW_LOGGING_LEVEL"] == "DEBUG"
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    for name in QUIET_NOTICES:
        assert len(logging.getLogger(name).filters) == 1


def run_state(**over):
    r = dict(name="q", target=16, done=3, failed=1, running=2, front=[0, 2], best_quality=2.109,
             hypervolume=0.5123)
    r.update(over)
    return SimpleNamespace(**r)


def test_progress_lines_off_a_terminal_with_pruned(capsys):
    from rich.console import Console

    run = run_state()
    with StudyProgress(run, console=Console(file=sys.stdout, force_terminal=False)) as p:
        p.update()
        p.update()  # nothing new: no second line
        run.done, run.pruned = 4, 1
        p.update()
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("q: 3/16 done · running 2 · failed 1 · best in budget 2.109 · front 2 · HV 0.512")
    assert "pruned" not in lines[0] and "4/16 done · running 2 · failed 1 · pruned 1 · " in lines[1]
    assert describe(run_state(best_quality=None)).startswith("running 2 · failed 1 · best in budget — ·")


def test_next_commands_name_real_commands(tmp_path, monkeypatch):
    from automix.config.study import default_storage_url, default_tracking_uri

    monkeypatch.chdir(tmp_path)
    cfg = SimpleNamespace(name="quickstart", memory_budget=5 * 2**20, task="lm", storage_url=default_storage_url(),
                          tracking=default_tracking_uri())
    ref = study_ref(cfg, "studies/quickstart.yaml")
    assert ref == "quickstart"
    lines = [line.split("  #")[0].strip() for line in next_commands(cfg, ref)]
    assert lines == ["automix status quickstart", "automix report quickstart",
                     "automix export quickstart --max-memory 5MiB --out exported/quickstart", "automix ui"]
    # another store: the study file (it names the store); another tracking store: --tracking-uri
    cfg.storage_url, cfg.tracking = "sqlite:////elsewhere/o.db", "sqlite:////elsewhere/m.db"
    ref = study_ref(cfg, "my studies/q.yaml")
    lines = [line.split("  #")[0].strip() for line in
             next_commands(cfg, ref, rerun=rerun_command("exported/q/layers.yaml"))]
    assert lines == ["automix status 'my studies/q.yaml'", "automix report 'my studies/q.yaml'",
                     "automix trial --layers exported/q/layers.yaml",
                     "automix ui --tracking-uri sqlite:////elsewhere/m.db"]
    # each is a command line the CLI parses
    parser = build_parser()
    for line in lines:
        args = parser.parse_args(shlex.split(line)[1:])
        assert args.command in ("status", "report", "trial", "ui")


def test_rerun_command_trains_and_scores_as_the_study_did(tmp_path):
    """The exported layers.yaml carries the recorded spec: `automix trial --layers FILE` alone
    trains and scores as the study did; a flag on the command line wins over the file."""
    import yaml

    from automix.commands.trial import spec_from_args
    from automix.config.layers import layer_file

    recorded = {"model": "smollm2-135m", "task": "lm", "data": "builtin:python-docs", "steps": 12, "seed": 0,
                "lr": 0.0005, "batch_size": 4, "seq_len": 128, "dtype": "float32", "gradient_checkpointing": True,
                "optimizer": "adamw", "grad_accum_steps": 1, "device": "cpu", "eval_batches": 2,
                "method": "loftq", "quantizer": "hqq", "prune_mode": "wanda",
                "method_settings": {"options": {"loftq_iters": 2}, "lora_alpha": 32.0}}
    f = tmp_path / "layers.yaml"
    f.write_text(yaml.safe_dump(layer_file({"default": {"bits": 4, "rank": 8}}, recorded), sort_keys=False))
    line = rerun_command(str(f))
    rerun = spec_from_args(build_parser().parse_args(shlex.split(line)[1:]))
    for key in ("model", "task", "data", "steps", "seed", "lr", "batch_size", "seq_len", "dtype", "prune_mode",
                "gradient_checkpointing", "optimizer", "grad_accum_steps", "eval_batches", "method", "quantizer"):
        assert rerun[key] == recorded[key], key
    assert rerun["method_settings"] == {"options": {"loftq_iters": 2}, "lora_alpha": 32.0}
    assert rerun["layers"] == str(f)
    over = spec_from_args(build_parser().parse_args(["trial", "--layers", str(f), "--steps", "3", "--no-gradient-checkpointing"]))
    assert (over["steps"], over["gradient_checkpointing"], over["method"]) == (3, False, "loftq")
    plain = spec_from_args(build_parser().parse_args(["trial", "--bits", "4"]))  # no file: the defaults
    assert (plain["method"], plain["steps"], plain["batch_size"], plain["gradient_checkpointing"]) == ("qlora", 50, 8, False)


def test_export_rebuild_steps(tmp_path, capsys):
    from rich.console import Console

    trial = SimpleNamespace(number=7, user_attrs={"method": "qlora", "spec": {"steps": 40},
                                                  "result": {"prepare_seconds": 2, "train_seconds": 9,
                                                             "eval_seconds": 1}})
    old = tmp_path / "weights"
    old.mkdir()
    (old / "adapters.safetensors").write_bytes(b"")  # left by an earlier export
    os.utime(old / "adapters.safetensors", (0, 0))
    p = RebuildProgress(Console(file=sys.stdout), tmp_path, trial, ["automix", "hf"])
    assert p.step() == "re-running trial 7 (qlora, 40 steps; it took 12 s in the study)"
    (old / "adapters.safetensors").write_bytes(b"x")
    assert p.step() == "writing the quantized checkpoint"
    (old / "model.safetensors").write_bytes(b"x")
    assert p.step() == "writing and re-scoring hf"


def test_search_help_and_export_help_say_what_runs(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "re-runs the trial" in out and "showing its progress" in out


@pytest.mark.slow
def test_search_is_quiet_shows_progress_and_ends_with_next_commands(tmp_path):
    """The real thing: a local Ray, a sensitivity profile and two trials on Ray workers."""
    study = tmp_path / "quiet.yaml"
    study.write_text(textwrap.dedent(f"""\
        name: quiet
        model: builtin:tiny
        task: lm
        methods: [qlora]
        search_space: {{path: {REPO / 'search_spaces' / 'quickstart.yaml'}}}
        objectives: {{quality: perplexity}}
        memory_budget: 64MiB
        n_trials: 2
        trial: {{steps: 3, batch_size: 2, seq_len: 32, eval_batches: 2}}
        resources: {{cpus: 1}}
        workers: 2
        storage: sqlite:///{tmp_path}/optuna.db
        tracking_uri: sqlite:///{tmp_path}/mlflow.db
        """))
    # a fresh cache: the sensitivity profile is computed (as a Ray task) and says so
    r = automix("search", str(study), cwd=tmp_path, env={"AUTOMIX_CACHE_DIR": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stdout + r.stderr
    for noise in NOISE:
        assert noise not in r.stdout + r.stderr, noise
    assert r.stderr.strip() == "", r.stderr
    out = r.stdout.splitlines()
    assert out[0] == f"checking {study}: model, search space, data and stores ..."
    steps = [next(i for i, line in enumerate(out) if line.startswith(s)) for s in (
        "study quiet:", "starting a local Ray for 2 trial(s) at a time ...", "profiling the sensitivity",
        "quiet: 0/2 done", "quiet: 2/2 done", "next:")]
    assert steps == sorted(steps), out
    nxt = [line.split("  #")[0].strip() for line in out[steps[-1] + 1:]]
    assert nxt == [f"automix status {study}", f"automix report {study}",
                   f"automix export {study} --max-memory 64MiB --out exported/quiet",
                   f"automix ui --tracking-uri sqlite:///{tmp_path}/mlflow.db"]
    # the commands it names work as written
    assert main(shlex.split(nxt[0])[1:]) == 0
    assert main([*shlex.split(nxt[3])[1:], "--dry-run"]) == 0


def test_resume_says_when_the_store_cannot_be_read(tmp_path):
    """--resume on a storage that is not an Optuna database names it and stops; it is not taken
    for 'no such study' (or a new one)."""
    (tmp_path / "optuna.db").write_text("this is not a database\n" * 100)
    study = (REPO / "studies" / "quickstart.yaml").read_text()
    space = REPO / "search_spaces" / "quickstart.yaml"
    (tmp_path / "s.yaml").write_text(study.replace("search_spaces/quickstart.yaml", str(space))
                                     + f"storage: sqlite:///{tmp_path}/optuna.db\n")
    r = automix("search", "s.yaml", "--resume", cwd=tmp_path)
    assert r.returncode != 0
    assert "--resume: cannot read the studies of sqlite:///" in r.stderr and "optuna.db" in r.stderr
