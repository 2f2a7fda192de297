"""Search space files: loading, grouping, params <-> layers, and errors naming file and key."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from automix.config.layers import LayerSettings
from automix.search.space import SearchSpaceError, load_space

ROOT = Path(__file__).resolve().parents[2]
KINDS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
LAYERS = [f"model.layers.{i}.{k}" for i in range(3) for k in KINDS]


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("path", sorted((ROOT / "search_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_spaces_load_and_round_trip(path: Path) -> None:
    space = load_space(path, LAYERS)
    assert space.distributions
    params = {n: d.choices[-1] for n, d in space.distributions.items()}
    layers = space.params_to_layers(params)
    assert list(layers) == LAYERS and all(isinstance(s, LayerSettings) for s in layers.values())
    assert space.layers_to_params(layers) == params


def test_groupings(tmp_path: Path) -> None:
    base = "choices: {bits: [2, 4, 8]}\ngroups: %s\n"
    n = {g: len(load_space(_write(tmp_path, base % g), LAYERS).distributions)
         for g in ("per_linear", "per_block", "per_kind", "global")}
    assert n == {"per_linear": 21, "per_block": 3, "per_kind": 7, "global": 1}
    space = load_space(_write(tmp_path, base % "per_block"), LAYERS)
    layers = space.params_to_layers({"bits.model.layers.0": 2, "bits.model.layers.1": 4,
                                     "bits.model.layers.2": 8})
    assert {s.bits for n, s in layers.items() if ".1." in n} == {4}


def test_custom_glob_groups_and_field_grouping(tmp_path: Path) -> None:
    text = """
fixed: {bits: 16, group_size: 64, prune: 0.0, rank: 8}
choices: {bits: [2, 4], rank: [4, 8, 16]}
groups:
  - name: attn
    layers: ["*.self_attn.*"]
    choices: {bits: [4, 8]}
  - name: down
    layers: ["*.down_proj"]
group_by: {rank: global}
"""
    space = load_space(_write(tmp_path, text), LAYERS)
    assert set(space.distributions) == {"bits.attn", "bits.down", "rank.all"}
    assert list(space.distributions["bits.attn"].choices) == [4, 8]
    layers = space.params_to_layers({"bits.attn": 8, "bits.down": 2, "rank.all": 16})
    assert layers["model.layers.1.self_attn.v_proj"].bits == 8
    assert layers["model.layers.2.mlp.down_proj"].bits == 2
    assert layers["model.layers.2.mlp.up_proj"].bits == 16  # matched no group: fixed
    assert all(s.rank == 16 for s in layers.values())


def test_suggest_through_optuna() -> None:
    space = load_space(ROOT / "search_spaces" / "per_block.yaml", LAYERS)
    study = optuna.create_study()
    trial = study.ask()
    layers = space.suggest(trial)
    assert set(trial.params) == set(space.distributions)
    assert layers == space.params_to_layers(trial.params)


@pytest.mark.parametrize(
    "text, key, line",
    [
        ("choices:\n  bits: [2, 5]\n", "choices.bits", 2),
        ("choices:\n  bitz: [2, 4]\n", "choices.bitz", 2),
        ("choices: {bits: [2]}\ngroups: per_layer\n", "groups", 2),
        ("fixed: {bits: 16, rank: -1}\n", "fixed", 1),
        ("choices: {bits: [2, 4]}\ngroups:\n  - name: x\n    layers: ['*.nothing']\n",
         "groups.0.layers", 4),
        ("chioces: {bits: [2]}\n", "chioces", 1),
    ],
)
def test_errors_name_file_key_and_line(tmp_path: Path, text: str, key: str, line: int) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(SearchSpaceError) as err:
        load_space(path, LAYERS)
    assert f"{path}:{line}: {key}" in str(err.value)


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "choices: {bits: [2, 4]\n")
    with pytest.raises(SearchSpaceError, match="not valid YAML"):
        load_space(path, LAYERS)
    with pytest.raises(SearchSpaceError, match="does not exist"):
        load_space(tmp_path / "nope.yaml", LAYERS)


def test_params_errors() -> None:
    space = load_space(ROOT / "search_spaces" / "per_block.yaml", LAYERS)
    with pytest.raises(SearchSpaceError, match="missing"):
        space.params_to_layers({})
    params = {n: d.choices[0] for n, d in space.distributions.items()}
    params["bits.model.layers.0"] = 5
    with pytest.raises(SearchSpaceError, match="not one of"):
        space.params_to_layers(params)


def test_feature_fn_uses_sensitivity() -> None:
    space = load_space(ROOT / "search_spaces" / "per_block.yaml", LAYERS)
    params = {n: d.choices[0] for n, d in space.distributions.items()}
    plain = space.feature_fn()(params)
    sens = {n: {2: 10.0, 3: 1.0, 4: 0.1, 8: 0.0} for n in LAYERS}
    weighted = space.feature_fn(sens)(params)
    assert plain.shape == weighted.shape == (4,)  # 3 blocks + total
    assert weighted[-1] == pytest.approx(10.0 * len(LAYERS))


def test_feature_scores_never_fall_with_fewer_bits() -> None:
    """A few-sample profile can score a layer lower at 2 bits than at 3; an allocator would put 2
    bits exactly there. The features take the larger score of the bits at or above."""
    space = load_space(ROOT / "search_spaces" / "per_block.yaml", LAYERS)
    sens = {n: {2: 0.029, 3: 0.035, 4: 0.0076, 8: 0.0} for n in LAYERS}
    features = space.feature_fn(sens)
    totals = [features({n: b for n in space.distributions})[-1] for b in (2, 3, 4, 8)]
    assert totals[0] == pytest.approx(totals[1]) == pytest.approx(0.035 * len(LAYERS))
    assert totals == sorted(totals, reverse=True)


@pytest.mark.parametrize("name", ["llama-7b.yaml", "per_block.yaml"])
def test_feature_batch_matches_per_configuration(name: str) -> None:
    """The vectorised features: a sampler's columns (looked up by level) and plain value
    columns give the per-configuration features, to the bit."""
    import numpy as np

    from automix.search._codec import Codec

    space = load_space(ROOT / "search_spaces" / name, LAYERS)
    sens = {n: {2: 10.0 + k, 3: 1.0 / (k + 1), 4: 0.1, 8: 0.0} for k, n in enumerate(LAYERS)}
    features = space.feature_fn(sens)
    codec = Codec(dict(space.distributions))
    G = codec.from_unit(np.random.default_rng(0).random((40, codec.dim)))
    by_level = features.batch(codec.columns(G))
    by_value = features.batch({k: np.asarray(v) for k, v in codec.columns(G).items()})
    each = np.array([features(codec.decode(g)) for g in G])
    assert np.array_equal(by_level, each) and np.array_equal(by_value, each)
