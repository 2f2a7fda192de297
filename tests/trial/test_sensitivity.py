"""Sensitivity profiles: the proxies order bits, the cheap estimate tracks the exact KL, and the
cache follows the model and the data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from scipy.stats import kendalltau

from automix.arch import target_layers
from automix.trial.sensitivity import (METRICS, SensitivityProfile, data_identity, load_or_profile, profile_job,
                                       profile_model)


def _tiny_model_dir(path: Path, seed: int = 0) -> Path:
    """A random 2-block Llama with a word-level tokenizer, saved like a real model."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = "the a of and to in is was for on that with as by it at from this be are".split()
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>"] + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="</s>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    LlamaForCausalLM(cfg).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def test_profile_orders_bits_and_restores_weights(tmp_path: Path) -> None:
    from automix.trial.models import load_model

    model, _ = load_model(_tiny_model_dir(tmp_path / "m"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calib = torch.randint(3, 64, (2, 16))
    prof = profile_model(model, calib, bits=(2, 4, 8), group_size=32, metrics=METRICS, chunk_rows=1)
    assert len(prof.layers) == 14
    for name, m in prof.layers.items():
        we, kl, fk = m["weighted_error"], m["kl"], m["fisher_kl"]
        assert we[2] > we[4] > we[8] >= 0, name
        assert kl[2] >= kl[8] >= 0 and fk[2] >= fk[8] >= 0, name
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in model.parameters())  # switched off only while profiling
    # JSON round trip keeps int bits keys; the default metric is the cheap one
    again = SensitivityProfile.from_dict(prof.to_dict())
    assert again.scores()[name][2] == pytest.approx(fk[2])
    assert again.scores("kl")[name][2] == pytest.approx(kl[2])
    with pytest.raises(ValueError, match="metric"):
        prof.scores("fisher")


def _trained_like(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give a random model the uneven layer scales a trained one has: some layers matter more."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, layer in target_layers(model).items():
            layer.weight.mul_(float(torch.empty(1).uniform_(0.3, 3.0, generator=gen)))
        model.get_input_embeddings().weight.mul_(4.0)
    return model


def test_fisher_estimate_tracks_the_exact_single_layer_kl(tmp_path: Path) -> None:
    # The cheap estimate is a second-order approximation of the exact KL: same order of
    # magnitude per layer and the same ranking across layers and bits.
    from automix.trial.models import load_model

    model, _ = load_model(_tiny_model_dir(tmp_path / "m", seed=3))
    _trained_like(model)
    calib = torch.randint(3, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    prof = profile_model(model, calib, bits=(2, 3, 4), group_size=32, metrics=("fisher_kl", "kl"), n_draws=16)
    pairs = [(m["kl"][b], m["fisher_kl"][b]) for m in prof.layers.values() for b in (2, 3, 4)]
    exact, est = zip(*pairs)
    assert kendalltau(exact, est).statistic > 0.8
    big = [(k, f) for k, f in pairs if k > 1e-6]  # well above rounding noise
    assert len(big) > 10 and all(0.4 < f / k < 2.5 for k, f in big)


def test_profile_reads_the_tasks_own_data(tmp_path: Path) -> None:
    # Two data files give two profiles (both cached, keyed by the data's content); the
    # calibration text is the file's, not the built-in corpus.
    mdir = _tiny_model_dir(tmp_path / "m")
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("\n".join(json.dumps({"text": "the a of and to in is was for on " * 3}) for _ in range(20)))
    b.write_text("\n".join(json.dumps({"text": "that with as by it at from this be are " * 3}) for _ in range(20)))
    kw = dict(bits=(2, 4), group_size=32, n_samples=2, seq_len=16, n_draws=2, cache=tmp_path / "cache")
    pa, path_a, _ = load_or_profile(str(mdir), data=str(a), **kw)
    pb, path_b, _ = load_or_profile(str(mdir), data=str(b), **kw)
    assert path_a != path_b and pa.data != pb.data and pa.data.startswith("sha256:")
    assert pa.layers != pb.layers
    assert data_identity(None) == "builtin" and data_identity(str(a)) == pa.data
    _, path_a2, computed = load_or_profile(str(mdir), data=str(a), **kw)
    assert path_a2 == path_a and not computed
    _, path_q, _ = load_or_profile(str(mdir), task="boolq", **kw)  # BoolQ prompts calibrate boolq
    assert path_q not in (path_a, path_b)
    with pytest.raises(ValueError, match="does not exist|not found|no such"):
        load_or_profile(str(mdir), data=str(tmp_path / "missing.jsonl"), **kw)


def test_profile_job_returns_the_profile_and_prints_progress(tmp_path: Path, capsys) -> None:
    mdir = _tiny_model_dir(tmp_path / "m")
    out = profile_job({"model_spec": str(mdir), "bits": [2, 4], "group_size": 32, "n_samples": 2,
                       "seq_len": 16, "n_draws": 1, "cache": str(tmp_path / "cache"), "threads": 1})
    prof = SensitivityProfile.from_dict(out)
    assert len(prof.scores()) == 14
    assert "14/14 layers" in capsys.readouterr().out


def test_cache_reused_and_invalidated_when_model_changes(tmp_path: Path) -> None:
    mdir = _tiny_model_dir(tmp_path / "m", seed=0)
    kw = dict(bits=(2, 4), group_size=32, n_samples=2, seq_len=16, n_draws=2, cache=tmp_path / "cache")
    p1, path1, computed1 = load_or_profile(str(mdir), **kw)
    p2, path2, computed2 = load_or_profile(str(mdir), **kw)
    assert computed1 and not computed2 and path1 == path2
    assert p2.layers == p1.layers
    _tiny_model_dir(mdir, seed=1)  # new weights in the same directory
    p3, path3, computed3 = load_or_profile(str(mdir), **kw)
    assert computed3 and path3 != path1 and p3.fingerprint != p1.fingerprint
    assert p3.layers != p1.layers
