"""Exports other tools read: every format from every kind of pick (unpruned, pruned to a head
count transformers refuses, pruned unevenly), loaded the way the export says, from another
directory after the export is moved, scoring what `automix.load` scores; llama.cpp types that
llama.cpp keeps for each tensor's shape; refusals before any re-run; no partial directories."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import create_trial
from transformers import AutoConfig

from automix.config.registry import EXPORT_FORMATS
from automix.config.study import StudyConfig
from automix.export import (ExportError, ExportFormatError, export_trial, exportable, get_format, refusals,
                            staging_dir, trial_by_number, trial_facts)
from automix.export.gguf_file import read_types
from automix.export.llama_cpp import BLOCK, K_QUANTS, llama_cpp_type, quantize_script, tensor_types

MIXED = {"default": {"bits": 4, "group_size": 32, "rank": 4},
         "layers": {"model.layers.0.mlp.*": {"bits": 2, "rank": 8},
                    "model.layers.1.self_attn.q_proj": {"bits": 8, "rank": 2},
                    "model.layers.1.self_attn.v_proj": {"bits": 16, "rank": 0}}}
# the built-in model has 4 heads over a hidden size of 128: 3 heads left is no standard config
THREE_HEADS = {"default": {"bits": 2, "group_size": 32, "rank": 4, "prune": 0.25}}
UNEVEN = {"default": {"bits": 4, "group_size": 32, "rank": 4},
          "layers": {"model.layers.0.mlp.*": {"prune": 0.5}, "model.layers.2.self_attn.*": {"prune": 0.5}}}
HALF = {"default": {"bits": 3, "group_size": 32, "rank": 4, "prune": 0.5}}  # 2 heads, 192 channels: standard


def spec(layers: dict, method: str = "qlora", model: str = "builtin:tiny") -> dict:
    return {"model": model, "task": "lm", "method": method, "layers": layers, "steps": 2, "eval_batches": 1,
            "lr": 5e-3, "seed": 0, "batch_size": 4, "seq_len": 32, "gradient_checkpointing": True}


def study_of(tmp_path: Path, specs: list[dict]) -> tuple[StudyConfig, optuna.Study]:
    """A study whose completed trials are ``specs``, every one on the front."""
    cfg = StudyConfig(name="fx", task="lm", methods=sorted({s["method"] for s in specs}), search_space={"path": "x"},
                      memory_budget=10**9, n_trials=len(specs), objectives={"quality": "perplexity"},
                      storage=f"sqlite:///{tmp_path}/o.db", tracking_uri=f"sqlite:///{tmp_path}/m.db")
    study = optuna.create_study(study_name="fx", storage=cfg.storage_url, directions=cfg.directions)
    for i, s in enumerate(specs):
        study.add_trial(create_trial(params={"i": i}, distributions={"i": IntDistribution(0, 99)},
                                     values=[10.0 - i, 1000.0 + i],
                                     user_attrs={"method": s["method"], "layers": s["layers"], "spec": s}))
    return cfg, study


LOADER = textwrap.dedent("""
    import contextlib, json, sys
    from dataclasses import replace
    from transformers import AutoModelForCausalLM
    from peft import AutoPeftModelForCausalLM, PeftModel
    import automix

    root = sys.argv[1]
    manifest = json.load(open(f"{root}/manifest.json"))
    ex = automix.load(root)  # only to score the way the trial did
    out = {"automix": ex.evaluate()["perplexity"]}
    for fmt in ("hf", "peft"):
        for i, line in enumerate(manifest["formats"][fmt]["load"]):  # the lines the export printed
            scope = {"AutoModelForCausalLM": AutoModelForCausalLM, "PeftModel": PeftModel,
                     "AutoPeftModelForCausalLM": AutoPeftModelForCausalLM, "contextlib": contextlib}
            exec(line.format(dir=root), scope)
            out[f"{fmt}{i}"] = replace(ex, model=scope["model"]).evaluate()["perplexity"]
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_every_pick_exports_to_every_format_and_loads_elsewhere(tmp_path):
    """Unpruned, 3 heads of 4 (transformers refuses the config) and uneven widths: hf, peft and
    llama-cpp are written; moved out of the project, hf and both PEFT lines load them from
    another working directory and score what automix.load scores."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    cfg, study = study_of(project, [spec(MIXED), spec(THREE_HEADS, "loftq"), spec(UNEVEN), spec(HALF)])
    assert exportable(study, cfg, ["hf", "peft", "llama-cpp"]) == [0, 1, 2, 3]
    layouts = {}
    for n, name in enumerate(["mixed", "three-heads", "uneven", "half"]):
        out = export_trial(study, cfg, trial_by_number(study, cfg, n), project / "exported" / name,
                           formats=["hf", "peft", "llama-cpp"])
        manifest = json.loads((out / "manifest.json").read_text())
        formats = manifest["formats"]
        layouts[name] = formats["hf"]["layout"]
        assert json.loads((out / "peft" / "adapter" / "adapter_config.json").read_text())[
            "base_model_name_or_path"] == "../base"
        reference = formats["hf"]["automix_perplexity"]
        assert formats["llama-cpp"]["f16_perplexity"] == pytest.approx(reference, rel=1e-3)  # GGUF read back
        moved = elsewhere / f"copy-{name}"
        shutil.copytree(out, moved)
        shutil.rmtree(out)  # nothing may still point into the project
        run = subprocess.run([sys.executable, "-c", LOADER, str(moved)], cwd=elsewhere, capture_output=True,
                             text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        scores = json.loads(run.stdout.strip().splitlines()[-1])
        assert scores["automix"] == pytest.approx(reference, rel=1e-6)
        for key in ("hf0", "peft0", "peft1"):
            assert scores[key] == pytest.approx(reference, rel=1e-4), (name, key, scores)
        if formats["hf"]["layout"] == "zero-padded":
            hf = AutoConfig.from_pretrained(moved / "hf")
            assert (hf.num_attention_heads, hf.intermediate_size) == (4, 384)  # the original sizes
            assert "no memory saving" in formats["hf"]["note"]
    assert layouts == {"mixed": "dense", "three-heads": "zero-padded", "uneven": "zero-padded", "half": "pruned"}
    assert not list((project / "exported").iterdir())  # no staging directory left behind


def test_refused_before_any_rerun_and_nothing_written(tmp_path, monkeypatch):
    """A format that cannot hold the trial is named with its reason before anything runs."""
    import automix.export as export

    cfg, study = study_of(tmp_path, [spec(MIXED, "qst"), spec(MIXED, "qeft"), spec(MIXED)])
    monkeypatch.setattr(export, "run_trial", lambda *a, **k: pytest.fail("re-ran a refused trial"))
    with pytest.raises(ExportFormatError, match=r"trial 0 \(qst\).*hf: method 'qst' has no dense.*side network"):
        export_trial(study, cfg, trial_by_number(study, cfg, 0), tmp_path / "out", formats=["hf", "peft"])
    with pytest.raises(ExportFormatError, match="peft: method 'qeft' has no LoRA adapter"):
        export_trial(study, cfg, trial_by_number(study, cfg, 1), tmp_path / "out", formats=["peft"])
    assert not (tmp_path / "out").exists() and not staging_dir(tmp_path / "out").exists()
    assert exportable(study, cfg, ["peft"]) == [2]
    assert exportable(study, cfg, ["hf"]) == [1, 2]
    assert refusals(trial_facts(trial_by_number(study, cfg, 2), cfg), list(EXPORT_FORMATS)) == {}
    with pytest.raises(ExportError, match="unknown export format.*onnx"):
        export_trial(study, cfg, trial_by_number(study, cfg, 2), tmp_path / "x", formats=["onnx"])
    with pytest.raises(ExportError, match=r"trial 7 .*cannot be exported.*completed trials: 0, 1, 2"):
        trial_by_number(study, cfg, 7)


def test_a_failed_export_leaves_no_partial_directory_and_keeps_the_old_one(tmp_path, monkeypatch):
    import automix.export as export

    cfg, study = study_of(tmp_path, [spec(MIXED)])
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("an earlier export")

    def broken(spec, out):
        (Path(out) / "weights").mkdir(parents=True)
        raise export.ExportError("re-running the trial to save its weights failed: boom")

    monkeypatch.setattr(export, "save_weights", broken)
    with pytest.raises(ExportError, match="boom"):
        export_trial(study, cfg, trial_by_number(study, cfg, 0), out, formats=["hf"])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".out", "out"))) == ["out"]
    assert (out / "old.txt").read_text() == "an earlier export"
    # a layer-file-only export replaces it whole
    export_trial(study, cfg, trial_by_number(study, cfg, 0), out)
    assert sorted(p.name for p in out.iterdir()) == ["layers.yaml", "manifest.json"]


def test_every_registered_format_is_one_module():
    for name in EXPORT_FORMATS:
        fmt = get_format(name)
        assert fmt.name == name and callable(fmt.check) and callable(fmt.write)


# -- llama.cpp ---------------------------------------------------------------------------------

def test_llama_cpp_types_follow_the_256_column_rule():
    for bits in (2, 3, 4):
        assert llama_cpp_type(bits, 1536) == K_QUANTS[bits]          # 1536 = 6 x 256
        assert llama_cpp_type(bits, 576) == ("q5_0" if bits == 4 else "q4_0")  # 576 = 18 x 32
        assert llama_cpp_type(bits, 100) == "f16"                    # not even 32 divides it
    assert (llama_cpp_type(8, 576), llama_cpp_type(8, 100), llama_cpp_type(16, 576)) == ("q8_0", "f16", "f16")
    with pytest.raises(ExportFormatError, match="7-bit has no llama.cpp type"):
        llama_cpp_type(7, 512)
    layers = {"model.layers.0.self_attn.q_proj": {"bits": 2}, "model.layers.11.mlp.down_proj": {"bits": 3}}
    types = tensor_types(layers, {"model.layers.0.self_attn.q_proj": 576, "model.layers.11.mlp.down_proj": 1536},
                         tied_embeddings=False)
    assert types == {"token_embd.weight": "f16", "output.weight": "f16", "blk.0.attn_q.weight": "q4_0",
                     "blk.11.ffn_down.weight": "q3_K"}
    script = quantize_script(types)
    assert "--token-embedding-type f16 --output-tensor-type f16" in script
    assert r"--tensor-type '^blk\.0\.attn_q\.weight$=q4_0'" in script
    assert script.rstrip().endswith("model-f16.gguf model-automix.gguf Q4_0")  # a quantized base type


SMOLLM2_SHAPES = dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
                      head_dim=64, rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def smollm2_shaped(tmp_path_factory) -> Path:
    """SmolLM2-135M's layer shapes (hidden 576, MLP 1536, 9 heads over 3 kv heads), 2 blocks, random
    weights, the built-in tokenizer: what llama.cpp's type rules see of the real model."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from automix.builtin import builtin_model_dir

    out = tmp_path_factory.mktemp("smollm2-shaped")
    tok = AutoTokenizer.from_pretrained(builtin_model_dir("tiny"))
    cfg = LlamaConfig(vocab_size=len(tok), num_hidden_layers=2, max_position_embeddings=256, bos_token_id=1,
                      eos_token_id=2, pad_token_id=0, **SMOLLM2_SHAPES)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_mixed_pick_on_smollm2_shapes_lists_only_types_llama_cpp_keeps(tmp_path, smollm2_shaped):
    mixed = {"default": {"bits": 4, "group_size": 64, "rank": 2},
             "layers": {"model.layers.0.self_attn.*": {"bits": 2}, "model.layers.0.mlp.*": {"bits": 3},
                        "model.layers.1.mlp.down_proj": {"bits": 8}, "model.layers.1.self_attn.o_proj": {"bits": 16}}}
    s = {**spec(mixed, model=str(smollm2_shaped)), "steps": 1}
    cfg, study = study_of(tmp_path, [s])
    out = export_trial(study, cfg, trial_by_number(study, cfg, 0), tmp_path / "exp", formats=["llama-cpp"])
    lc = out / "llama-cpp"
    listed = dict(line.strip().split("=") for line in (lc / "tensor-types.txt").read_text().splitlines())
    written = read_types(lc / "model-f16.gguf")
    for pattern, kind in listed.items():
        name = pattern.strip("^$").replace("\\.", ".")
        columns = written[name][1][1]
        assert columns % BLOCK[kind] == 0, (name, kind, columns)
        assert kind.endswith("_K") == (columns % 256 == 0 and kind != "q8_0" and kind != "f16"), (name, kind)
    assert listed[r"^blk\.0\.attn_q\.weight$"] == "q4_0"     # 2-bit on 576 columns
    assert listed[r"^blk\.0\.ffn_up\.weight$"] == "q4_0"     # 3-bit on 576 columns
    assert listed[r"^blk\.0\.ffn_down\.weight$"] == "q3_K"   # 3-bit on 1536 columns
    assert listed[r"^blk\.1\.ffn_down\.weight$"] == "q8_0"
    assert listed[r"^blk\.1\.attn_q\.weight$"] == "q5_0"     # 4-bit on 576 columns
    assert listed[r"^blk\.1\.ffn_gate\.weight$"] == "q5_0"
    assert listed[r"^blk\.1\.attn_output\.weight$"] == "f16"
    assert listed[r"^token_embd\.weight$"] == "f16"
    # the 16-bit GGUF holds every tensor, 2-D in f16 and norms in f32, at the model's shapes
    assert {k for k, _ in written.values()} == {"f16", "f32"}
    assert written["blk.0.attn_k.weight"][1] == (3 * 64, 576) and written["blk.1.ffn_down.weight"][1] == (576, 1536)
    manifest = json.loads((out / "manifest.json").read_text())["formats"]["llama-cpp"]
    assert manifest["quantized"] is None and "k-quants" in manifest["why_not_quantized"]  # llama-quantize makes them
    assert manifest["f16_perplexity"] == pytest.approx(manifest["automix_perplexity"], rel=1e-3)


def test_all_legacy_types_are_written_directly_and_read_back(tmp_path):
    """The built-in model's rows (128, 384 columns) never split into 256-weight super-blocks: every
    type is a 32-weight block type gguf writes itself; the quantized file reads back typed."""
    cfg, study = study_of(tmp_path, [spec(MIXED)])
    out = export_trial(study, cfg, trial_by_number(study, cfg, 0), tmp_path / "exp", formats=["llama-cpp"])
    lc = out / "llama-cpp"
    listed = {p.strip("^$").replace("\\.", "."): t for p, t in
              (line.split("=") for line in (lc / "tensor-types.txt").read_text().splitlines())}
    found = read_types(lc / "model-automix.gguf")
    assert {n: found[n][0] for n in listed} == listed
    assert listed["blk.0.ffn_down.weight"] == "q4_0" and listed["blk.1.attn_q.weight"] == "q8_0"
    assert listed["blk.1.attn_v.weight"] == "f16" and listed["blk.2.attn_q.weight"] == "q5_0"
    manifest = json.loads((out / "manifest.json").read_text())["formats"]["llama-cpp"]
    assert manifest["quantized"] == "model-automix.gguf" and manifest["gguf_perplexity"] > 0
    assert os.access(lc / "quantize.sh", os.X_OK)


def test_cli_refusal_names_the_reason_and_the_trials_that_can(tmp_path, capsys, monkeypatch):
    import automix.export as export
    from automix.cli import main

    cfg, study = study_of(tmp_path, [spec(MIXED, "qst"), spec(MIXED, "qeft"), spec(MIXED)])
    study.set_user_attr("config", {**cfg.model_dump(mode="json"), "storage": cfg.storage_url})
    monkeypatch.setattr(export, "run_trial", lambda *a, **k: pytest.fail("re-ran a refused trial"))
    monkeypatch.chdir(tmp_path)
    assert main(["export", "fx", "--storage", cfg.storage_url, "--trial", "0", "--format", "peft"]) == 2
    err = capsys.readouterr().err
    assert "trial 0 (qst) cannot be exported as peft: method 'qst' has no LoRA adapter" in err
    assert "front trials that can: 2 (`automix export fx --trial N`); nothing was re-run or written" in err
    assert not (tmp_path / "exported").exists()
    assert main(["export", "fx", "--storage", cfg.storage_url, "--trial", "1", "--pick", "memory"]) == 2
    assert "--trial N names the trial itself" in capsys.readouterr().err
