"""The built-in model: a pretrain smoke run, the shipped model's quality, the CLI command."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from automix import arch
from automix.builtin import corpus
from automix.trial import pretrain

from automix.trial import models


def test_pretrain_smoke_produces_loadable_model(tmp_path):
    out = pretrain.pretrain("tiny", out=tmp_path / "m", steps=3, log=None,
                            overrides={"batch_size": 4, "seq_len": 64, "n_layers": 1, "hidden_size": 64,
                                       "intermediate_size": 128, "n_heads": 2, "n_kv_heads": 2})
    model, tok = models.load_model(str(out))
    assert type(model).__name__ == "LlamaForCausalLM" and tok is not None
    assert len(arch.target_layers(model)) == 7
    meta = json.loads((out / "automix_pretrain.json").read_text())
    assert meta["steps"] == 3
    ids = tok("add: 12+30=42", return_tensors="pt")["input_ids"]
    assert ids[0, 0].item() == tok.bos_token_id
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


def test_packed_batches_keep_documents_whole():
    tok = pretrain.build_tokenizer(256, n_docs=2000)
    b = next(pretrain.packed_batches(tok, corpus.documents(5), batch_size=3, seq_len=64))
    assert b["input_ids"].shape == (3, 64)
    for row, mask in zip(b["input_ids"], b["attention_mask"]):
        real = row[mask.bool()].tolist()
        assert real[0] == tok.bos_token_id and real[-1] == tok.eos_token_id
        assert real.count(tok.bos_token_id) == real.count(tok.eos_token_id)


def test_facts_docs_are_runs_of_the_fixed_table():
    """Every facts document is consecutive table entries, so all but its first name and number
    are determined by memory; the built-in lm task draws only on the kinds the blocks predict."""
    table = corpus.knowledge_table()
    assert len(table) == corpus.KNOWLEDGE_SIZE and len({e for e, _ in table}) == len(table)
    index = {e: i for i, (e, _) in enumerate(table)}
    for doc in corpus.sample_documents(50, seed=3, mix={"facts": 1.0}):
        pairs = [f.strip().split(" has ") for f in doc.removeprefix("facts: ").rstrip(".").split(".")]
        assert 2 <= len(pairs) <= 4
        first = index[pairs[0][0]]
        for j, (ent, val) in enumerate(pairs):
            assert table[(first + j) % len(table)] == (ent, val)
    from automix.trial.data import get_task

    texts = get_task("lm")._eval
    assert {t.split(":")[0] for t in texts} == set(corpus.LM_TASK_MIX)


def test_lr_schedule_warms_up_and_decays():
    cfg = pretrain.SIZES["tiny"]
    lrs = [pretrain.lr_at(s, cfg, 1000) for s in range(1000)]
    peak = max(lrs)
    assert peak == pytest.approx(cfg.lr) and lrs[0] < 0.1 * peak
    assert lrs[-1] == pytest.approx(cfg.min_lr_frac * cfg.lr, rel=0.05)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown size"):
        pretrain.pretrain("huge")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        pretrain.pretrain("tiny", steps=0)


def test_builtin_model_has_learned_its_tasks():
    """The shipped tiny model must have learned skills that need its blocks (copying, in-context
    key-value recall, memorized facts, addition, BoolQ-style reading), or quantizing it is
    meaningless. Chance: recall 0.1 (ten digits), copy/facts/add exact match ~0, BoolQ 0.5."""
    model, tok = models.load_model("builtin:tiny")
    acc = pretrain.probe_accuracies(model, tok, n=100)
    assert acc["copy"] > 0.8
    assert acc["recall"] > 0.9
    assert acc["facts"] > 0.9
    assert acc["add"] > 0.6
    assert acc["boolq_plain"] > 0.75
    from automix.trial.data import get_task

    assert get_task("lm").evaluate(model, tok)["perplexity"] < 3.0


def test_builtin_model_is_sensitive_to_2bit_quantization():
    """All-layer 2-bit round-to-nearest must hurt perplexity a lot, 8-bit barely at all."""
    from automix.trial.data import get_task
    from automix.quant import quantize

    model, tok = models.load_model("builtin:tiny")
    lm = get_task("lm", eval_rows=32)
    layers = arch.target_layers(model)
    orig = {n: arch.linear_weight(m).detach().clone() for n, m in layers.items()}
    base = lm.evaluate(model, tok)["perplexity"]
    ppl = {}
    for bits in (8, 2):
        with torch.no_grad():
            for n, m in layers.items():
                arch.linear_weight(m).copy_(quantize(orig[n], bits, group_size=64).dequantize(torch.float32))
        ppl[bits] = lm.evaluate(model, tok)["perplexity"]
    assert ppl[8] / base < 1.01
    assert ppl[2] / base > 2.0  # the target: 2-bit at least doubles perplexity


def test_cli_parser_registers_pretrain(tmp_path, capsys):
    from automix.commands import pretrain as cmd

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    cmd.add_parser(sub)
    args = parser.parse_args(["pretrain", "--out", str(tmp_path), "--steps", "0"])
    with pytest.raises(SystemExit, match="--steps must be >= 1"):
        args.func(args)
