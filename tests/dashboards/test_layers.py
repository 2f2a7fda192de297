"""`resolve_layers`: a recorded LayerConfig dict is expanded by `automix.config.layers`, and an old
or odd record never fails a report (unknown patterns and unreadable values are skipped)."""

from __future__ import annotations

from automix.dashboards.data import resolve_layers

NAMES = [f"model.layers.{b}.{n}" for b in range(2) for n in ("self_attn.q_proj", "mlp.down_proj")]
FULL = {"bits": 4, "group_size": 64, "prune": 0.0, "rank": 8}


def settings(bits: float, rank: float = 8.0, prune: float = 0.0) -> dict[str, float]:
    return {"bits": bits, "group_size": 64.0, "prune": prune, "rank": rank}


def test_layer_config_records_resolve_as_the_trial_did() -> None:
    rec = {"default": FULL, "layers": {"model.layers.*": {"bits": 2}, "model.layers.0.*": {"bits": 8},
                                       "model.layers.1.self_attn.q_proj": {"rank": 16, "prune": 0.25}}}
    assert resolve_layers(rec, NAMES) == {
        "model.layers.0.self_attn.q_proj": settings(8.0), "model.layers.0.mlp.down_proj": settings(8.0),
        "model.layers.1.self_attn.q_proj": settings(2.0, 16.0, 0.25), "model.layers.1.mlp.down_proj": settings(2.0)}
    # settings a record leaves out are LayerSettings' defaults (no adapter: rank 0)
    assert resolve_layers({"default": {"bits": 4}}, NAMES[:1]) == {NAMES[0]: settings(4.0, 0.0)}
    assert resolve_layers({"default": FULL}, []) == {"(all layers)": settings(4.0)}


def test_odd_records_are_resolved_leniently() -> None:
    rec = {"default": FULL, "layers": {"nope.*": {"bits": 8}, "model.layers.9.x": {"bits": 2},
                                       "model.layers.1.*": {"bits": 5, "foo": 1}, "model.layers.0.*": 3}}
    out = resolve_layers(rec, NAMES)  # LayerConfig rejects it: no match, bits 5, a key and a non-mapping
    assert out == {"model.layers.0.self_attn.q_proj": settings(4.0), "model.layers.0.mlp.down_proj": settings(4.0),
                   "model.layers.1.self_attn.q_proj": settings(5.0), "model.layers.1.mlp.down_proj": settings(5.0)}
    assert resolve_layers({"default": {"bits": "four", "rank": 8}, "layers": [1]}, NAMES[:1]) == {
        NAMES[0]: settings(16.0)}
    # an already per-layer record is kept as recorded
    assert resolve_layers({"a": {"bits": 4, "x": 1}, "b": 3}, NAMES) == {"a": {"bits": 4.0}}
    assert resolve_layers(None, NAMES) == {} and resolve_layers({}, NAMES) == {}
