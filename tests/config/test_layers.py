"""Layer configuration YAML: defaults, glob/exact overrides, validation errors that name things."""

import dataclasses

import pytest

from automix.config.layers import LayerConfig, LayerConfigError, LayerSettings, resolved_from_dict

NAMES = [f"model.layers.{i}.{rel}" for i in range(3) for rel in (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]


def write(tmp_path, text):
    p = tmp_path / "layers.yaml"
    p.write_text(text)
    return p


def test_default_then_overrides_later_entries_win(tmp_path):
    p = write(tmp_path, """
default: {bits: 4, group_size: 64, prune: 0.0, rank: 8}
layers:
  "model.layers.*.mlp.*": {bits: 8}
  "model.layers.1.mlp.down_proj": {bits: 2, rank: 0}
  "model.layers.[02].self_attn.q_proj": {prune: 0.25}
""")
    res = LayerConfig.from_yaml(p).resolve(NAMES)
    assert list(res) == NAMES
    assert res["model.layers.0.self_attn.k_proj"] == LayerSettings(4, 64, 0.0, 8)
    assert res["model.layers.2.mlp.up_proj"] == LayerSettings(8, 64, 0.0, 8)
    assert res["model.layers.1.mlp.down_proj"] == LayerSettings(2, 64, 0.0, 0)
    assert res["model.layers.2.self_attn.q_proj"].prune == 0.25
    assert res["model.layers.1.self_attn.q_proj"].prune == 0.0


def test_name_matching_no_layer_lists_close_matches(tmp_path):
    p = write(tmp_path, "default: {bits: 4}\nlayers:\n  model.layers.1.mlp.down_prj: {bits: 8}\n")
    with pytest.raises(LayerConfigError) as err:
        LayerConfig.from_yaml(p).resolve(NAMES)
    msg = str(err.value)
    assert str(p) in msg and "down_prj" in msg and "model.layers.1.mlp.down_proj" in msg
    with pytest.raises(LayerConfigError, match="matches no layer"):
        LayerConfig.from_dict({"layers": {"model.blocks.*": {"bits": 8}}}).resolve(NAMES)


@pytest.mark.parametrize("text, needle", [
    ("default: {bits: 5}", ":1: default.bits: bits must be one of [2, 3, 4, 8, 16], got 5"),
    ("default: {prune: 1.2}", ":1: default.prune: prune must be a fraction in [0, 1), got 1.2"),
    ("default: {rank: -1}", ":1: default.rank: rank must be an integer >= 0, got -1"),
    ("default: {group_size: 0}", ":1: default.group_size: group_size must be a positive multiple of 8"),
    ("default: {bitz: 4}", ":1: default.bitz: unknown key; did you mean 'bits'? (expected one of ['bits', "
                           "'group_size', 'prune', 'rank'])"),
    ("layers:\n  'model.layers.0.mlp.up_proj': {prune: -0.1}",
     ":2: layers.model.layers.0.mlp.up_proj.prune: prune must be a fraction in [0, 1), got -0.1"),
    ("extra: 1", ":1: extra: unknown key; expected one of ['model', 'task', 'data', 'eval_data', 'method', "
                 "'method_settings', 'trial', 'default', 'layers']"),
    ("defualt: {bits: 4}", ":1: defualt: unknown key; did you mean 'default'?"),
    ("trial: {step: 3}", ":1: trial.step: unknown key; did you mean 'steps'?"),
    ("default: [1, 2", ":1: not valid YAML"),
])
def test_bad_values_name_file_line_and_key(tmp_path, text, needle):
    p = write(tmp_path, text)
    with pytest.raises(LayerConfigError) as err:
        LayerConfig.from_yaml(p).resolve(NAMES)
    assert f"{p}{needle}" in str(err.value)


def test_settings_are_validated_on_construction():
    assert LayerSettings(4, 64, 0, 8) == LayerSettings(4, 64, 0.0, 8)
    assert hash(LayerSettings(4, 64, 0, 8)) == hash(LayerSettings(4, 64, 0.0, 8))
    with pytest.raises(LayerConfigError, match=r"bits must be one of \[2, 3, 4, 8, 16\], got 5"):
        LayerSettings(5, 64, 0.0, 8)
    for bad in [(4.0,), (True,), ("4",), (4, 64, 0.0, 1.0), (4, 60)]:  # no silent conversion
        with pytest.raises(LayerConfigError):
            LayerSettings(*bad)
    with pytest.raises(LayerConfigError, match="unknown key 'bitz'"):
        LayerSettings(bitz=4)
    s = LayerSettings(4, 64, 0.25, 8)
    assert dataclasses.replace(s, bits=16) == LayerSettings(16, 64, 0.25, 8)
    assert dataclasses.asdict(s) == s.to_dict() == {"bits": 4, "group_size": 64, "prune": 0.25, "rank": 8}
    with pytest.raises(LayerConfigError, match="rank must be an integer >= 0"):
        dataclasses.replace(s, rank=-1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.bits = 2


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(LayerConfigError, match="does not exist"):
        LayerConfig.from_yaml(tmp_path / "nope.yaml")


def test_resolved_dict_form_and_round_trip():
    res = LayerConfig.uniform(bits=3, rank=4).resolve(NAMES)
    flat = {n: s.to_dict() for n, s in res.items()}
    assert resolved_from_dict(flat, NAMES) == res
    with pytest.raises(LayerConfigError, match="miss 1 layer"):
        resolved_from_dict(dict(list(flat.items())[1:]), NAMES)
    cfg = LayerConfig.from_dict({"default": {"bits": 2}, "layers": {"*.q_proj": {"rank": 2}}})
    assert LayerConfig.from_dict(cfg.to_dict()).resolve(NAMES) == cfg.resolve(NAMES)
