"""Sensitivity profiles: the proxies order bits correctly and the cache follows the model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from automix.trial.sensitivity import SensitivityProfile, load_or_profile, profile_model


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
    prof = profile_model(model, calib, bits=(2, 4, 8), group_size=32)
    assert len(prof.layers) == 14
    for name, m in prof.layers.items():
        we, kl = m["weighted_error"], m["kl"]
        assert we[2] > we[4] > we[8] >= 0, name
        assert kl[2] > kl[8] >= 0, name
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # JSON round trip keeps int bits keys
    again = SensitivityProfile.from_dict(prof.to_dict())
    assert again.scores("kl")[name][2] == pytest.approx(kl[2])
    with pytest.raises(ValueError, match="metric"):
        prof.scores("fisher")


def test_cache_reused_and_invalidated_when_model_changes(tmp_path: Path) -> None:
    mdir = _tiny_model_dir(tmp_path / "m", seed=0)
    kw = dict(bits=(2, 4), group_size=32, n_samples=2, seq_len=16, cache=tmp_path / "cache")
    p1, path1, computed1 = load_or_profile(str(mdir), **kw)
    p2, path2, computed2 = load_or_profile(str(mdir), **kw)
    assert computed1 and not computed2 and path1 == path2
    assert p2.layers == p1.layers
    _tiny_model_dir(mdir, seed=1)  # new weights in the same directory
    p3, path3, computed3 = load_or_profile(str(mdir), **kw)
    assert computed3 and path3 != path1 and p3.fingerprint != p1.fingerprint
    assert p3.layers != p1.layers
