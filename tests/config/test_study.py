"""Study files: every mistake a user can make is a clear error naming file, line and key, raised
before any trial runs."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from automix.config.study import StudyConfigError, format_size, load_study, parse_size

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


GOOD = """\
name: t1
model: builtin:tiny
task: boolq
methods: [qlora, lora]
search_space:
  path: search_spaces/quickstart.yaml
memory_budget: 6GiB
n_trials: 4
"""


@pytest.mark.parametrize("text,expected", [
    ("6GiB", 6 * 1024**3), ("512 MB", 512 * 10**6), ("1.5gib", int(1.5 * 1024**3)),
    (1000, 1000), ("2e9", 2 * 10**9), ("100KiB", 102400),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["6 parsecs", "-1GB", "", "GiB", 0, True])
def test_parse_size_rejects(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


def test_unitless_small_size_is_refused_not_read_as_bytes():
    with pytest.raises(ValueError, match=r"'10.5' has no unit: write e.g. '10.5GiB'"):
        parse_size("10.5")
    assert parse_size("2048") == 2048  # a unitless byte count stays one


def test_format_size():
    assert format_size(6 * 1024**3) == "6.00 GiB" and format_size(512) == "512 B"


def test_good_study_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_study(write(tmp_path, GOOD))
    assert cfg.memory_budget == 6 * 1024**3 and cfg.methods == ["qlora", "lora"]
    assert cfg.directions == ["maximize", "minimize"]
    # default stores: SQLite files in the working directory
    assert cfg.storage_url == f"sqlite:///{tmp_path.resolve()}/automix-optuna.db"
    assert cfg.tracking == f"sqlite:///{tmp_path.resolve()}/automix-mlflow.db"
    assert load_study(write(tmp_path, GOOD), workers=3).workers == 3


def test_unknown_key_names_file_line_and_key(tmp_path):
    p = write(tmp_path, GOOD + "trial:\n  steps: 5\n  stpes: 3\n")
    with pytest.raises(StudyConfigError) as e:
        load_study(p)
    assert f"{p}:11: trial.stpes: unknown key; did you mean 'steps'?" in str(e.value)


def test_bad_values_and_missing_keys(tmp_path):
    text = GOOD.replace("memory_budget: 6GiB", "memory_budget: six gigs").replace("n_trials: 4\n", "")
    text += "resources: {cpus: 1, gpus: 1.5}\nobjectives: {quality: bleu}\n"
    p = write(tmp_path, text)
    with pytest.raises(StudyConfigError) as e:
        load_study(p)
    msg = str(e.value)
    assert f"{p}:7: memory_budget:" in msg and "6GiB" in msg
    assert "n_trials: required key is missing" in msg
    assert f"{p}:8: resources.gpus" in msg and "whole number" in msg
    assert f"{p}:9: objectives.quality" in msg and "bleu" in msg


def test_quality_must_fit_the_task(tmp_path):
    p = write(tmp_path, GOOD.replace("task: boolq", "task: lm"))
    with pytest.raises(StudyConfigError, match="task 'lm' is scored by perplexity"):
        load_study(p)


def test_not_yaml_and_missing_file(tmp_path):
    with pytest.raises(StudyConfigError, match="not found"):
        load_study(tmp_path / "nope.yaml")
    with pytest.raises(StudyConfigError, match="not valid YAML"):
        load_study(write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(StudyConfigError, match="mapping"):
        load_study(write(tmp_path, "- a\n- b\n"))


def test_shipped_studies_validate():
    files = sorted((REPO / "studies").glob("*.yaml"))
    assert {"quickstart.yaml", "llama2-7b-boolq.yaml"} <= {f.name for f in files}
    for f in files:
        cfg = load_study(f)
        assert cfg.resolve_path(cfg.search_space.path).is_file(), f


def test_unknown_method_and_missing_model(tmp_path):
    from automix.study.backend import AutomixBackend

    cfg = load_study(write(tmp_path, GOOD.replace("[qlora, lora]", "[qlora, qlorra]")))
    with pytest.raises(StudyConfigError, match=r"methods: unknown method\(s\) \['qlorra'\].*available: lora"):
        AutomixBackend(cfg)
    cfg = load_study(write(tmp_path, GOOD.replace("builtin:tiny", "/no/such/llama")))
    with pytest.raises(StudyConfigError, match="model: .*'/no/such/llama' does not exist"):
        AutomixBackend(cfg)


def test_unreachable_tracking_and_storage(tmp_path):
    from automix.study.backend import preflight

    class NoSpace:  # preflight's budget check is tested with the real space below
        pass

    cfg = load_study(write(tmp_path, GOOD + "tracking_uri: http://127.0.0.1:9\n"))
    with pytest.raises(StudyConfigError, match="tracking_uri: MLflow tracking server .* cannot be reached"):
        preflight(cfg, NoSpace())
    cfg = load_study(write(tmp_path, GOOD + "tracking_uri: sqlite:////no/such/dir/m.db\n"))
    with pytest.raises(StudyConfigError, match="tracking_uri: .*does not exist"):
        preflight(cfg, NoSpace())
    cfg = load_study(write(tmp_path, GOOD + f"tracking_uri: sqlite:///{tmp_path}/m.db\n"
                                              "storage: sqlite:////no/such/dir/o.db\n"))
    with pytest.raises(StudyConfigError, match="storage: directory /no/such/dir does not exist"):
        preflight(cfg, NoSpace())


def test_sampler_options_are_checked(tmp_path):
    from automix.testing import SyntheticBackend
    from automix.study.backend import make_sampler

    cfg = load_study(write(tmp_path, GOOD + "sampler: tpe\nsampler_options: {n_startup_trials: 3}\n"))
    assert make_sampler(cfg, SyntheticBackend(cfg.methods))._n_startup_trials == 3
    cfg = load_study(write(tmp_path, GOOD + "sampler_options: {n_candidatez: 10}\n"))
    with pytest.raises(StudyConfigError, match="sampler_options: .*n_candidatez"):
        make_sampler(cfg, SyntheticBackend(cfg.methods))


def test_sensitivity_profile_feeds_the_sampler_features(tmp_path, monkeypatch):
    # The predictor's features use the model's measured per-layer sensitivity when asked for;
    # "off" falls back to the bits-only proxy.
    import numpy as np

    from automix.study.backend import AutomixBackend, make_sampler

    monkeypatch.setenv("AUTOMIX_CACHE_DIR", str(tmp_path / "cache"))
    text = GOOD.replace("search_spaces/quickstart.yaml", str(REPO / "search_spaces/quickstart.yaml"))
    on = AutomixBackend(load_study(write(tmp_path, text + "sensitivity: on\n")))
    scores = on.sensitivity_scores()
    assert set(scores) == set(on.layer_names)
    assert all(s[2] > s[4] > s[8] >= 0 for s in scores.values())  # fewer bits, more damage
    assert list((tmp_path / "cache" / "sensitivity").glob("*.json"))  # cached for later studies
    off = AutomixBackend(load_study(write(tmp_path, text + "sensitivity: off\n")))
    assert off.sensitivity_scores() is None
    params = {name: dist.choices[0] for name, dist in on.distributions.items()}
    f_on = make_sampler(on.cfg, on)._features(params)
    f_off = make_sampler(off.cfg, off)._features(params)
    assert f_on.shape == f_off.shape and not np.allclose(f_on, f_off)


def test_search_space_overrides_are_merged_in_memory_and_errors_name_their_file(tmp_path, monkeypatch):
    # The overrides merge into the space file without writing a file; an error in a key they set
    # names the study file's line of search_space.overrides.<key>, one in a key of the space file
    # the space file's line.
    import tempfile

    from automix.study.backend import AutomixBackend

    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    space = tmp_path / "space.yaml"
    space.write_text("fixed: {bits: 16, group_size: 32, prune: 0.0, rank: 8}\n"
                     "choices:\n  bits: [2, 4]\n  rank: [4, 8]\ngroups: per_kind\n")

    def study(overrides: str) -> Path:
        text = GOOD.replace("  path: search_spaces/quickstart.yaml\n",
                            f"  path: {space}\n  overrides:\n{textwrap.indent(overrides, '    ')}")
        return write(tmp_path, text)

    ok = AutomixBackend(load_study(study("choices:\n  bits: [2, 3, 8]\ngroups: global\n")))
    assert set(ok.space.distributions) == {"bits.all", "rank.all"}
    assert list(ok.space.distributions["bits.all"].choices) == [2, 3, 8]  # replaced, order kept
    assert list(ok.space.distributions["rank.all"].choices) == [4, 8]     # kept from the file

    p = study("choices:\n  bits: [2, 5]\n")  # lines 7-9: overrides: / choices: / bits: [2, 5]
    with pytest.raises(StudyConfigError) as e:
        AutomixBackend(load_study(p))
    assert f"{p}:9: search_space.overrides.choices.bits.1: bits must be one of [2, 3, 4, 8, 16], got 5" \
        in str(e.value)
    p = study("groups: per_layer\n")
    with pytest.raises(StudyConfigError, match=re.escape(f"{p}:8: search_space.overrides.groups: a grouping is one")):
        AutomixBackend(load_study(p))

    space.write_text(space.read_text().replace("rank: [4, 8]", "rank: [4, -8]"))
    p = study("choices:\n  bits: [2, 8]\n")
    with pytest.raises(StudyConfigError) as e:
        AutomixBackend(load_study(p))
    assert f"{space}:4: choices.rank.1: rank must be an integer >= 0, got -8" in str(e.value)
    assert not list(temp.rglob("*.yaml"))  # no merged file written (torch may cache there)
