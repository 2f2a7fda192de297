"""Bad input is stopped before any trial runs and before anything is written: data files (every
line), resources, the storage's database driver, an unreachable Ray cluster; a study whose every
trial failed exits non-zero."""

from __future__ import annotations

import importlib.util
import socket
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("mlflow")

import optuna  # noqa: E402

from automix.cli import main  # noqa: E402
from automix.config.study import StudyConfigError, load_study  # noqa: E402
from automix.study.backend import AutomixBackend, preflight  # noqa: E402

STUDY = """\
name: pre
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
REPO = Path(__file__).resolve().parents[2]
GOOD = '{"question": "is it?", "passage": "it is.", "answer": true}\n'


def study(tmp_path: Path, extra: str = "") -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(textwrap.dedent(STUDY.format(repo=REPO, d=tmp_path)) + extra)
    return p


@pytest.mark.parametrize("content,message", [
    (GOOD * 3 + "{not json\n" + GOOD, r"data\.jsonl:4: invalid JSON"),
    (GOOD + '{"question": "q", "answer": false}\n', r"data\.jsonl:2: missing field\(s\) 'passage'"),
    ("", r"data\.jsonl is empty"),
    (None, r"does not exist"),
])
def test_bad_data_is_stopped_naming_the_file_and_line(tmp_path, content, message):
    if content is not None:
        (tmp_path / "data.jsonl").write_text(content)
    cfg = load_study(study(tmp_path, f"data: {tmp_path}/data.jsonl\n"))
    with pytest.raises(StudyConfigError, match=r"s\.yaml:\d+: data: .*" + message):
        preflight(cfg, AutomixBackend(cfg))


def test_good_data_passes(tmp_path):
    (tmp_path / "data.jsonl").write_text(GOOD * 4)
    cfg = load_study(study(tmp_path, f"data: {tmp_path}/data.jsonl\n"))
    preflight(cfg, AutomixBackend(cfg))


def _big(tmp_path: Path, n: int, bad_line: int | None = None, bad: str = "") -> Path:
    """A JSONL file of `n` good BoolQ records, line `bad_line` replaced by `bad`."""
    p = tmp_path / "data.jsonl"
    with open(p, "w") as f:
        for i in range(1, n + 1):
            f.write(bad + "\n" if i == bad_line else GOOD)
    return p


@pytest.mark.parametrize("bad,message", [
    ('{"question": "q", "passage": "p", "answer": "perhaps"}',
     r"'answer' must be a boolean \(true/false/yes/no\), got \"perhaps\""),
    ('{"question": 3, "passage": "p", "answer": true}', r"'question' must be a string, got 3"),
    ('{"question": "q", "answer": true}', r"missing field\(s\) 'passage'"),
    ('{"question": "q", "passage": "p", "answer": tru', r"invalid JSON"),
])
def test_a_bad_line_near_the_end_of_a_large_file_is_named(tmp_path, monkeypatch, bad, message):
    # every line is checked, not a sample, and streamed: the data is never loaded whole
    import automix.trial.data as trial_data

    def loaded_whole(*a, **kw):
        raise AssertionError("preflight loaded the data whole")

    monkeypatch.setattr(trial_data, "load_records", loaded_whole)
    n = 20_000
    _big(tmp_path, n, n - 5, bad)
    cfg = load_study(study(tmp_path, f"data: {tmp_path}/data.jsonl\n"))
    with pytest.raises(StudyConfigError, match=rf"s\.yaml:\d+: data: .*data\.jsonl:{n - 5}: " + message):
        preflight(cfg, AutomixBackend(cfg))


def test_eval_data_is_checked_and_named(tmp_path):
    (tmp_path / "data.jsonl").write_text(GOOD * 4)
    (tmp_path / "eval.jsonl").write_text(GOOD * 2 + '{"question": "q", "passage": "p", "answer": 2}\n')
    extra = f"data: {tmp_path}/data.jsonl\n"
    trial = "trial: {{steps: 1, batch_size: 2, seq_len: 32, extra: {{eval_data: {e}}}}}"
    text = study(tmp_path, extra).read_text().replace("trial: {steps: 1, batch_size: 2, seq_len: 32}", trial)

    def with_eval(e: str):
        (tmp_path / "s.yaml").write_text(text.format(e=e))
        return load_study(tmp_path / "s.yaml")

    cfg = with_eval(f"{tmp_path}/eval.jsonl")
    with pytest.raises(StudyConfigError, match=r"s\.yaml:\d+: trial\.extra\.eval_data: .*eval\.jsonl:3: "
                                               r"'answer' must be a boolean .*, got 2"):
        preflight(cfg, AutomixBackend(cfg))
    cfg = with_eval(f"{tmp_path}/no-eval.jsonl")
    with pytest.raises(StudyConfigError, match=r"trial\.extra\.eval_data: eval data path .*no-eval\.jsonl' "
                                               "does not exist"):
        preflight(cfg, AutomixBackend(cfg))
    (tmp_path / "empty.jsonl").write_text("\n")
    cfg = with_eval(f"{tmp_path}/empty.jsonl")
    with pytest.raises(StudyConfigError, match=r"trial\.extra\.eval_data: .*empty\.jsonl is empty"):
        preflight(cfg, AutomixBackend(cfg))
    (tmp_path / "eval.jsonl").write_text(GOOD)
    preflight(with_eval(f"{tmp_path}/eval.jsonl"), AutomixBackend(with_eval(f"{tmp_path}/eval.jsonl")))
    # eval data without data: a trial would ignore it (the built-in data has its own split)
    text = text.replace(extra, "")
    cfg = with_eval(f"{tmp_path}/eval.jsonl")
    with pytest.raises(StudyConfigError, match=r"trial\.extra\.eval_data: evaluation data is set without `data`"):
        preflight(cfg, AutomixBackend(cfg))


def test_named_data_still_passes(tmp_path):
    cfg = load_study(_named(tmp_path))  # lm: the named data's own files, train and held-out
    preflight(cfg, AutomixBackend(cfg))
    cfg = load_study(study(tmp_path, "data: builtin:python-docs\n"))  # boolq: records have only text
    with pytest.raises(StudyConfigError, match=r"s\.yaml:\d+: data: data set 'builtin:python-docs' has records with "
                                               "text; this task needs question, passage, answer"):
        preflight(cfg, AutomixBackend(cfg))


def _named(tmp_path: Path) -> Path:
    p = study(tmp_path, "data: builtin:python-docs\nobjectives: {quality: perplexity}\n")
    p.write_text(p.read_text().replace("task: boolq", "task: lm"))
    return p


def test_gpus_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = load_study(study(tmp_path, "resources: {cpus: 1, gpus: 0.5}\n"))
    with pytest.raises(StudyConfigError, match=r"s\.yaml:\d+: resources\.gpus: each trial asks for 0\.5 GPU, "
                                               "but this machine has no CUDA device"):
        preflight(cfg, AutomixBackend(cfg))
    preflight(cfg, AutomixBackend(cfg), cluster=True)  # a cluster's GPUs are checked when joining it


def test_missing_postgres_driver_says_what_to_install(tmp_path):
    if importlib.util.find_spec("psycopg") is not None:
        pytest.skip("psycopg (3) is installed: postgresql:// has a driver")
    cfg = load_study(_rewrite(tmp_path, f"sqlite:///{tmp_path}/optuna.db", "postgresql://u:p@127.0.0.1:9/optuna"))
    with pytest.raises(StudyConfigError, match=r"storage: no database driver .*automix\[postgres\].*"
                                               r"postgresql\+psycopg2://"):
        preflight(cfg, AutomixBackend(cfg))


def _rewrite(tmp_path: Path, old: str, new: str) -> Path:
    p = study(tmp_path)
    p.write_text(p.read_text().replace(old, new))
    return p


def test_broken_input_leaves_an_existing_study_untouched(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/optuna.db"
    stored = optuna.create_study(study_name="pre", storage=url, directions=["maximize", "minimize"])
    stored.set_user_attr("config", {"stored": "before"})
    (tmp_path / "data.jsonl").write_text(GOOD + "[1, 2]\n")
    assert main(["search", str(study(tmp_path, f"data: {tmp_path}/data.jsonl\n")), "--local", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "data.jsonl:2: expected a JSON object" in err and "Traceback" not in err
    assert optuna.load_study(study_name="pre", storage=url).user_attrs["config"] == {"stored": "before"}
    assert not (tmp_path / "mlflow.db").exists()


def test_every_trial_failed_exits_non_zero(tmp_path, monkeypatch, capsys):
    import automix.commands.status as status
    import automix.study.loop as loop

    def all_failed(cfg, backend, **kw):
        return loop.StudyRun(cfg.name, 2, done=2, failed=2)

    monkeypatch.setattr(loop, "run_study", all_failed)
    monkeypatch.setattr(status, "print_status", lambda cfg, console=None, show_all=False: None)
    assert main(["search", str(study(tmp_path)), "--local", "--no-progress"]) == 1
    assert "every trial of study 'pre' failed (2 of 2)" in capsys.readouterr().out


def test_unreachable_ray_address_fails_in_bounded_time_writing_nothing(tmp_path):
    import ray

    from automix.study.loop import run_study
    from automix.testing import SyntheticBackend

    if ray.is_initialized():
        pytest.skip("Ray is already initialised in this process")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = load_study(study(tmp_path))
    backend = SyntheticBackend(["qlora"], n_blocks=2, cols=16)
    t0 = time.time()
    # the error is the probe's, which gives up after --ray-timeout (ray.init itself would hang)
    with pytest.raises(ValueError, match=rf"cannot reach the Ray cluster at '127.0.0.1:{port}' within 3 s"):
        run_study(cfg, backend, ray_address=f"127.0.0.1:{port}", ray_timeout_s=3, progress=False)
    assert time.time() - t0 < 60  # (ends a hung test only)
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()
