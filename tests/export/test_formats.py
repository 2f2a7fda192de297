"""Exports other tools read: a merged checkpoint transformers loads, a PEFT adapter PeftModel
loads, llama.cpp per-tensor overrides; each scores what `automix.load` scores, or says why not."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoModelForCausalLM

from automix.export import load, save_weights
from automix.export.dense import ExportFormatError
from automix.export.formats import GGUF_TYPES, llama_cpp_overrides, write_hf, write_llama_cpp, write_peft

MIXED = {"default": {"bits": 4, "group_size": 32, "rank": 4},
         "layers": {"model.layers.0.mlp.*": {"bits": 2, "rank": 8},
                    "model.layers.1.self_attn.q_proj": {"bits": 8, "rank": 2},
                    "model.layers.1.self_attn.v_proj": {"bits": 16, "rank": 0}}}


def exported(tmp_path: Path, method: str, layers: dict, **spec_kw) -> object:
    spec = {"model": "builtin:tiny", "method": method, "steps": 2, "layers": layers, "eval_batches": 1,
            "lr": 5e-3, **spec_kw}
    out = tmp_path / method
    files = save_weights(spec, out)
    (out / "manifest.json").write_text(json.dumps({"spec": spec, "files": files}))
    return load(out)


def perplexity(ex, model) -> float:
    return replace(ex, model=model).evaluate()["perplexity"]


def test_hf_and_peft_reload_score_the_same(tmp_path):
    ex = exported(tmp_path, "qlora", MIXED)
    reference = ex.evaluate()["perplexity"]

    hf = write_hf(ex, tmp_path / "hf")
    merged = AutoModelForCausalLM.from_pretrained(hf)
    assert perplexity(ex, merged) == pytest.approx(reference, rel=5e-3)
    assert not hasattr(AutoConfig.from_pretrained(hf), "quantization_config")

    from peft import PeftConfig, PeftModel

    base_dir, adapter_dir = write_peft(ex, tmp_path / "peft")
    config = PeftConfig.from_pretrained(adapter_dir)
    assert config.r == 4 and config.rank_pattern == {f"model.layers.0.mlp.{p}_proj": 8 for p in ("gate", "up", "down")} | {
        "model.layers.1.self_attn.q_proj": 2}
    assert "model.layers.1.self_attn.v_proj" not in config.target_modules  # rank 0: no adapter
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)
    assert perplexity(ex, peft_model) == pytest.approx(reference, rel=5e-3)
    # the base alone is the quantized model without the trained adapters: a different model
    assert perplexity(ex, AutoModelForCausalLM.from_pretrained(base_dir)) != pytest.approx(reference, rel=1e-4)


def test_uniform_structured_pruning_exports_and_uneven_says_why(tmp_path):
    even = {"default": {"bits": 4, "group_size": 32, "rank": 4, "prune": 0.5}}
    ex = exported(tmp_path / "even", "qlora", even)
    hf = write_hf(ex, tmp_path / "hf")
    cfg = AutoConfig.from_pretrained(hf)
    original = AutoConfig.from_pretrained(ex.model.config._name_or_path) if ex.model.config._name_or_path else None
    assert cfg.intermediate_size == ex.model.model.layers[0].mlp.gate_proj.out_features
    if original is not None:
        assert cfg.intermediate_size < original.intermediate_size
    assert perplexity(ex, AutoModelForCausalLM.from_pretrained(hf)) == pytest.approx(ex.evaluate()["perplexity"], rel=5e-3)

    uneven = {"default": {"bits": 4, "group_size": 32, "rank": 4},
              "layers": {"model.layers.0.mlp.*": {"prune": 0.5}}}
    ex = exported(tmp_path / "uneven", "qlora", uneven)
    with pytest.raises(ExportFormatError, match="blocks of different widths.*automix.load"):
        write_hf(ex, tmp_path / "hf2")


def test_non_lora_methods(tmp_path):
    layers = {"default": {"bits": 4, "group_size": 32, "rank": 4}}
    ex = exported(tmp_path, "qeft", layers)
    hf = write_hf(ex, tmp_path / "hf")  # weak columns merge into a dense weight
    assert perplexity(ex, AutoModelForCausalLM.from_pretrained(hf)) == pytest.approx(ex.evaluate()["perplexity"], rel=5e-3)
    with pytest.raises(ExportFormatError, match="qeft.*no LoRA adapters"):
        write_peft(ex, tmp_path / "peft")
    ex = exported(tmp_path, "qst", layers)
    with pytest.raises(ExportFormatError, match="'qst' has no dense Hugging Face form"):
        write_hf(ex, tmp_path / "hf-qst")


def test_llama_cpp_overrides_name_gguf_tensors(tmp_path):
    layers = {"model.layers.0.self_attn.q_proj": {"bits": 2}, "model.layers.0.self_attn.o_proj": {"bits": 3},
              "model.layers.11.mlp.gate_proj": {"bits": 4}, "model.layers.11.mlp.down_proj": {"bits": 16},
              "model.layers.1.mlp.up_proj": {"bits": 4}}
    assert llama_cpp_overrides(layers) == {
        "blk.0.attn_q.weight": "q2_k", "blk.0.attn_output.weight": "q3_k", "blk.11.ffn_gate.weight": "q4_k",
        "blk.11.ffn_down.weight": "f16", "blk.1.ffn_up.weight": "q4_k"}
    assert llama_cpp_overrides({"transformer.h.2.attn.c_attn": {"bits": 8}}) == {"blk.2.attn_qkv.weight": "q8_0"}
    out = write_llama_cpp(layers, tmp_path / "lc")
    lines = (out / "tensor-types.txt").read_text().splitlines()
    assert lines[0] == r"blk\.0\.attn_q\.weight=q2_k" and len(lines) == 5
    script = (out / "quantize.sh").read_text()
    assert script.count("--tensor-type '") == 5 and "model-f16.gguf model-automix.gguf Q4_K" in script
    with pytest.raises(ExportFormatError, match="model.layers.0.mlp.up_proj: 7-bit"):
        llama_cpp_overrides({"model.layers.0.mlp.up_proj": {"bits": 7}})
    assert set(GGUF_TYPES) >= {2, 3, 4, 8, 16}


def test_export_trial_writes_llama_cpp_from_the_study(tmp_path, capsys):
    from automix.export import ExportError, export_trial, select_trial
    from tests.export.test_select import make

    cfg, study = make(tmp_path)
    trial = select_trial(study, cfg)
    out = export_trial(study, cfg, trial, tmp_path / "out", formats=["automix", "llama-cpp"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"]["llama-cpp"] == "llama-cpp"
    types = (out / "llama-cpp" / "tensor-types.txt").read_text().splitlines()
    assert types == [rf"blk\.{i}\.ffn_down\.weight={'q8_0' if i == 0 else 'q2_k'}" for i in range(3)]
    with pytest.raises(ExportError, match="unknown export format.*onnx"):
        export_trial(study, cfg, trial, tmp_path / "x", formats=["onnx"])
