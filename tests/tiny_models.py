"""Tiny Hugging Face configs of every supported family (random weights, built in milliseconds)."""

from __future__ import annotations

import transformers as tf


def tiny_config(kind: str) -> tf.PretrainedConfig:
    if kind == "llama":
        return tf.LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    if kind == "mistral":
        return tf.MistralConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64)
    if kind == "qwen2":
        return tf.Qwen2Config(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    if kind == "opt":
        return tf.OPTConfig(vocab_size=97, hidden_size=64, ffn_dim=96, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=64)
    if kind == "gpt2":
        return tf.GPT2Config(vocab_size=97, n_embd=64, n_inner=96, n_layer=2, n_head=4, n_positions=64)
    raise AssertionError(kind)
