"""Write a tiny Llama as a GGUF file (llama.cpp's tensor names and layout), for the GGUF tests.

`write_tiny_llama_gguf` returns the reference Hugging Face model whose logits the converted
file must reproduce: its MLP weights are replaced by their Q8_0 round trip (they are stored
quantized, as in a real GGUF), everything else is stored as float32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import transformers as tf
from transformers.convert_slow_tokenizer import bytes_to_unicode

import gguf

# A byte-level BPE vocabulary: the 256 byte symbols, two merges and an end-of-text token.
_BYTES = list(bytes_to_unicode().values())
MERGES = ["Ġ t", "h e"]
TOKENS = _BYTES + ["Ġt", "he", "<|endoftext|>"]
EOS_ID = len(TOKENS) - 1


def tiny_llama_config() -> tf.LlamaConfig:
    return tf.LlamaConfig(vocab_size=len(TOKENS), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                          rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
                          bos_token_id=EOS_ID, eos_token_id=EOS_ID)


def _rotary_interleave(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's order of Q/K rows: within each head, the two rotary halves interleaved."""
    rows = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, rows // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _q8_round_trip(w: np.ndarray) -> np.ndarray:
    q = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
    return gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0).reshape(w.shape)


def write_tiny_llama_gguf(path: Path, arch: str = "llama", tokenizer: bool = True,
                          seed: int = 0) -> tf.LlamaForCausalLM:
    """Write the file; returns the reference model (eval mode, float32)."""
    torch.manual_seed(seed)
    cfg = tiny_llama_config()
    model = tf.LlamaForCausalLM(cfg).eval()
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny test llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(cfg.hidden_size // n_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    if tokenizer:
        w.add_tokenizer_model("gpt2")
        w.add_token_list(TOKENS)
        w.add_token_merges(MERGES)
        w.add_token_types([int(gguf.TokenType.NORMAL)] * (len(TOKENS) - 1) + [int(gguf.TokenType.CONTROL)])
        w.add_bos_token_id(EOS_ID)
        w.add_eos_token_id(EOS_ID)

    def f32(t: torch.Tensor) -> np.ndarray:
        return t.detach().float().numpy().copy()

    tensors = {"token_embd.weight": f32(model.model.embed_tokens.weight),
               "output_norm.weight": f32(model.model.norm.weight),
               "output.weight": f32(model.lm_head.weight)}
    quantized = set()
    with torch.no_grad():
        for i, block in enumerate(model.model.layers):
            att, mlp = block.self_attn, block.mlp
            tensors[f"blk.{i}.attn_norm.weight"] = f32(block.input_layernorm.weight)
            tensors[f"blk.{i}.ffn_norm.weight"] = f32(block.post_attention_layernorm.weight)
            tensors[f"blk.{i}.attn_q.weight"] = _rotary_interleave(f32(att.q_proj.weight), n_heads)
            tensors[f"blk.{i}.attn_k.weight"] = _rotary_interleave(f32(att.k_proj.weight), n_kv)
            tensors[f"blk.{i}.attn_v.weight"] = f32(att.v_proj.weight)
            tensors[f"blk.{i}.attn_output.weight"] = f32(att.o_proj.weight)
            for gname, lin in (("ffn_gate", mlp.gate_proj), ("ffn_up", mlp.up_proj), ("ffn_down", mlp.down_proj)):
                lin.weight.copy_(torch.from_numpy(_q8_round_trip(f32(lin.weight))))
                tensors[f"blk.{i}.{gname}.weight"] = f32(lin.weight)
                quantized.add(f"blk.{i}.{gname}.weight")
    for name, arr in tensors.items():
        if name in quantized:
            q = gguf.quants.quantize(arr, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model
