"""A dense transformers model as a GGUF file llama.cpp reads, written with the `gguf` package.

What llama.cpp's ``convert_hf_to_gguf.py`` writes for the Llama family (``llama``, ``mistral``:
GGUF architecture ``llama``, with q/k rows permuted for its rotary layout) and ``qwen2`` (no
permutation; q/k/v biases): the architecture's hyper-parameters, a byte-level BPE tokenizer
(``tokenizer.ggml.model = gpt2``: tokens, merges, token types, special ids; the pre-tokenizer is
named from ``tokenizer.json``), and every tensor under its GGUF name. 2-D weights are written in
16 bits (``F16``) or, given ``types``, quantized by `gguf`'s own quantizers from the 16-bit
values, which gives the bytes ``llama-quantize`` writes from the F16 file (``Q4_0``, ``Q4_1``,
``Q5_0``, ``Q5_1``, ``Q8_0``; checked against llama.cpp's build); norms and biases stay ``F32``,
as llama.cpp keeps them. :func:`read_types` reads a file back.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

__all__ = ["GGUF_ARCHS", "WRITABLE_TYPES", "unsupported", "gguf_names", "write_gguf", "read_types"]

# transformers model_type -> (GGUF architecture, whether q/k rows are permuted for llama.cpp's rope)
GGUF_ARCHS = {"llama": ("llama", True), "mistral": ("llama", True), "qwen2": ("qwen2", False)}
# llama.cpp type name -> whether `gguf` can write it (its numpy quantizers; the k-quants and IQ
# types it can only read)
WRITABLE_TYPES = ("f32", "f16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0")


def unsupported(config: Any, tokenizer_json: Path | None) -> str | None:
    """Why a model of this config and tokenizer cannot be written as GGUF here (None: it can)."""
    mt = getattr(config, "model_type", None)
    if mt not in GGUF_ARCHS:
        return (f"writing GGUF for {mt!r} models is not supported (llama, mistral, qwen2 are); "
                "convert the hf/ export with llama.cpp's convert_hf_to_gguf.py")
    rope = _rope(config)
    if rope.get("rope_type", "default") not in ("default", None):
        return f"rope scaling {rope.get('rope_type')!r} is not written to GGUF here"
    if tokenizer_json is not None and tokenizer_json.is_file():
        model_type = json.loads(tokenizer_json.read_text()).get("model", {}).get("type")
        if model_type != "BPE":
            return f"the tokenizer is {model_type!r}; GGUF is written here for byte-level BPE tokenizers only"
    return None


def _rope(config: Any) -> dict:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    out = dict(params) if isinstance(params, Mapping) else {}
    theta = out.get("rope_theta", getattr(config, "rope_theta", None))
    out["rope_theta"] = float(theta if theta is not None else 10000.0)
    return out


def _gguf() -> Any:
    import gguf  # lazy: only this format needs it

    return gguf


def _tensor_map(config: Any) -> Any:
    gguf = _gguf()
    arch = GGUF_ARCHS[config.model_type][0]
    return gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], int(config.num_hidden_layers))


def _head_dim(config: Any) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def gguf_names(model: Any) -> dict[str, str]:
    """transformers state-dict name -> GGUF tensor name, for the tensors a GGUF file holds (a tied
    output head is not written: llama.cpp reads token_embd for it)."""
    tmap = _tensor_map(model.config)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    out = {}
    for key in model.state_dict():
        if tied and key.startswith("lm_head."):
            continue
        name = tmap.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"no GGUF tensor name for {key}")
        out[key] = name
    return out


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf's q/k permutation: each head's two rotary halves interleaved."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _pre_tokenizer(tokenizer_json: dict) -> str:
    """llama.cpp's pre-tokenizer name for a tokenizer.json's pre_tokenizer ('default' when unknown)."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [(s.get("type"), s.get("individual_digits"), s.get("use_regex")) for s in steps]
    if kinds == [("Digits", True, None), ("ByteLevel", None, True)]:
        return "smollm"  # digits one by one, then GPT-2's byte-level split (SmolLM's tokenizer)
    if kinds == [("ByteLevel", None, True)]:
        return "gpt-2"
    return "default"


def _add_tokenizer(w: Any, tokenizer: Any, vocab_size: int) -> str:
    gguf = _gguf()
    log = logging.getLogger("gguf.vocab")  # its notes on post-processor templates llama.cpp ignores
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save_pretrained(tmp)
            doc = json.loads((Path(tmp) / "tokenizer.json").read_text())
            special = gguf.SpecialVocab(tmp, load_merges=True, n_vocab=vocab_size)
    finally:
        log.setLevel(level)
    vocab = tokenizer.get_vocab()
    added = {t.content: t for t in getattr(tokenizer, "added_tokens_decoder", {}).values()}
    by_id = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        tok = by_id.get(i)
        if tok is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif tok in added:
            tokens.append(tok)
            types.append(gguf.TokenType.CONTROL if added[tok].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(tok)
            types.append(gguf.TokenType.NORMAL)
    pre = _pre_tokenizer(doc)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    special.add_to_gguf(w, quiet=True)
    return pre


def _file_type(types: Mapping[str, str]) -> int:
    gguf = _gguf()
    names = {"f16": "MOSTLY_F16", "f32": "ALL_F32", "q4_0": "MOSTLY_Q4_0", "q4_1": "MOSTLY_Q4_1",
             "q5_0": "MOSTLY_Q5_0", "q5_1": "MOSTLY_Q5_1", "q8_0": "MOSTLY_Q8_0"}
    quantized = [t for t in types.values() if t not in ("f16", "f32")]
    common = max(set(quantized), key=quantized.count) if quantized else "f16"
    return int(getattr(gguf.LlamaFileType, names.get(common, "MOSTLY_F16")))


def write_gguf(model: Any, tokenizer: Any, path: str | Path, types: Mapping[str, str] | None = None,
               name: str = "automix") -> dict[str, str]:
    """Write ``model`` (a dense llama/mistral/qwen2 transformers model) and its tokenizer as GGUF.

    ``types``: GGUF tensor name -> llama.cpp type (one of ``WRITABLE_TYPES``) for 2-D weights;
    unlisted 2-D weights are ``f16``. Returns the type written for every tensor."""
    gguf = _gguf()
    cfg = model.config
    arch, permute = GGUF_ARCHS[cfg.model_type]
    types = dict(types or {})
    bad = sorted({t for t in types.values() if t not in WRITABLE_TYPES})
    if bad:
        raise ValueError(f"gguf cannot write {', '.join(bad)}; llama-quantize makes those")
    path = Path(path)
    w = gguf.GGUFWriter(str(path), arch)
    hd = _head_dim(cfg)
    w.add_name(name)
    w.add_context_length(int(cfg.max_position_embeddings))
    w.add_embedding_length(int(cfg.hidden_size))
    w.add_block_count(int(cfg.num_hidden_layers))
    w.add_feed_forward_length(int(cfg.intermediate_size))
    w.add_head_count(int(cfg.num_attention_heads))
    w.add_head_count_kv(int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads))
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(_rope(cfg)["rope_theta"])
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(int(cfg.vocab_size))
    _add_tokenizer(w, tokenizer, int(cfg.vocab_size))
    written: dict[str, str] = {}
    n_head, n_kv = int(cfg.num_attention_heads), int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    state = model.state_dict()
    for key, gname in gguf_names(model).items():
        data = state[key].detach().float().cpu().numpy()
        if permute and gname.endswith(("attn_q.weight", "attn_q.bias")):
            data = _permute(data, n_head)
        elif permute and gname.endswith(("attn_k.weight", "attn_k.bias")):
            data = _permute(data, n_kv)
        if data.ndim < 2:
            w.add_tensor(gname, data.astype(np.float32))
            written[gname] = "f32"
            continue
        kind = types.get(gname, "f16")
        if kind == "f16":
            w.add_tensor(gname, data.astype(np.float16))
        elif kind == "f32":
            w.add_tensor(gname, data.astype(np.float32))
        else:
            # from the 16-bit values, as llama-quantize reads them from the F16 file: the same bytes
            qtype = gguf.GGMLQuantizationType[kind.upper()]
            w.add_tensor(gname, gguf.quants.quantize(data.astype(np.float16).astype(np.float32), qtype),
                         raw_dtype=qtype)
        written[gname] = kind
    w.add_file_type(_file_type(written))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return written


def read_types(path: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """GGUF tensor name -> (llama.cpp type name, shape as ``[rows, columns]``) read back from a file."""
    gguf = _gguf()
    reader = gguf.GGUFReader(str(path), "r")
    out = {}
    for t in reader.tensors:
        kind = t.tensor_type.name.lower()
        kind = kind[:-2] + "_K" if kind.endswith("_k") else kind
        out[t.name] = (kind, tuple(int(n) for n in reversed(t.shape.tolist())))
    return out
