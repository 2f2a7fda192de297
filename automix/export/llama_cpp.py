"""``llama-cpp``: the trial as a GGUF file and the per-tensor quantization types for llama.cpp.

Written in ``llama-cpp/``:

* ``model-f16.gguf``: the trial's dense weights (quantized weights dequantized, adapters merged,
  as ``hf``), 16-bit, with its tokenizer (:mod:`automix.export.gguf_file`);
* ``tensor-types.txt``: one ``^NAME$=TYPE`` per 2-D tensor (``llama-quantize
  --tensor-type-file``), and ``quantize.sh``: the ``llama-quantize`` command that applies them
  to ``model-f16.gguf`` (run it where llama.cpp is installed; it needs nothing else);
* ``model-automix.gguf``, directly, when every chosen type is one the `gguf` package writes
  (the legacy 32-weight block types); it is read back and re-scored.

**Types llama.cpp really uses.** A k-quant (``q2_K`` ... ``q6_K``) splits each row into 256-weight
super-blocks, so llama.cpp applies one only to tensors whose column count (row length) divides
by 256; for any other tensor ``llama-quantize`` silently substitutes another type
(``tensor_type_fallback`` in ``src/llama-quant.cpp``). :func:`llama_cpp_type` makes that choice
here, explicitly, with llama.cpp's own substitutes: 2 and 3 bits -> ``q4_0``, 4 -> ``q5_0``,
8 -> ``q8_0`` (32-weight blocks), ``f16`` when even 32 does not divide the row, and ``f16`` for
layers the trial kept in 16 bits. The token embedding and output head, which automix never
quantizes, are set to ``f16`` explicitly (``--token-embedding-type``, ``--output-tensor-type``):
left to the base type they would be requantized too. Group sizes are not carried over: llama.cpp's
blocks are its own.
"""

from __future__ import annotations

import shlex
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

from automix.arch import block_index, layer_kind, target_layer_names
from automix.export.dense import NOT_MERGEABLE, ExportFormatError
from automix.export.format import ExportContext, ExportFormat, TrialFacts
from automix.export.gguf_file import WRITABLE_TYPES, gguf_names, read_types, unsupported, write_gguf
from automix.export.hf import layout_entry
from automix.trial.models import quiet_loading, resolve_model_dir

__all__ = ["K_QUANTS", "FALLBACK", "BLOCK", "GGUF_TENSOR_KINDS", "llama_cpp_type", "tensor_types",
           "quantize_script", "FORMAT"]

K_QUANTS = {2: "q2_K", 3: "q3_K", 4: "q4_K", 5: "q5_K", 6: "q6_K"}
# llama.cpp's substitute for a k-quant on a row that does not split into 256-weight blocks
FALLBACK = {2: "q4_0", 3: "q4_0", 4: "q5_0", 5: "q5_1", 6: "q8_0", 8: "q8_0"}
BLOCK = {**{t: 256 for t in K_QUANTS.values()}, "q4_0": 32, "q4_1": 32, "q5_0": 32, "q5_1": 32, "q8_0": 32,
         "iq4_nl": 32, "f16": 1, "f32": 1}
# automix layer kind (automix.arch) -> GGUF tensor name inside block N ("blk.N.<name>.weight").
GGUF_TENSOR_KINDS = {"attn_q": "attn_q", "attn_k": "attn_k", "attn_v": "attn_v", "attn_qkv": "attn_qkv",
                     "attn_o": "attn_output", "mlp_gate": "ffn_gate", "mlp_up": "ffn_up", "mlp_down": "ffn_down"}
EMBEDDING_TYPE = "f16"  # token embedding and output head: automix keeps them unquantized


def llama_cpp_type(bits: int, ncols: int) -> str:
    """The llama.cpp type for a ``bits``-bit layer whose rows have ``ncols`` weights: the
    k-quant of that width where the row splits into 256-weight super-blocks, llama.cpp's own
    32-weight-block substitute where it does not, ``f16`` where neither fits or for 16 bits."""
    bits = int(bits)
    if bits >= 16:
        return "f16"
    if bits not in FALLBACK:
        raise ExportFormatError(f"{bits}-bit has no llama.cpp type (known: {', '.join(map(str, sorted(FALLBACK)))}, 16)")
    if bits in K_QUANTS and ncols % BLOCK[K_QUANTS[bits]] == 0:
        return K_QUANTS[bits]
    return FALLBACK[bits] if ncols % BLOCK[FALLBACK[bits]] == 0 else "f16"


def gguf_linear_name(layer: str) -> str:
    kind = layer_kind(layer)
    if kind not in GGUF_TENSOR_KINDS:
        raise ExportFormatError(f"layer {layer}: no GGUF tensor name for layer kind {kind!r}")
    return f"blk.{block_index(layer)}.{GGUF_TENSOR_KINDS[kind]}.weight"


def tensor_types(layers: Mapping[str, Mapping[str, Any]], columns: Mapping[str, int],
                 tied_embeddings: bool = True) -> dict[str, str]:
    """GGUF tensor name -> llama.cpp type for every 2-D tensor: each target layer's by its bits and
    column count (``columns``: layer name -> row length as written), the embedding and output f16."""
    out = {"token_embd.weight": EMBEDDING_TYPE}
    if not tied_embeddings:
        out["output.weight"] = EMBEDDING_TYPE
    for name, settings in layers.items():
        out[gguf_linear_name(name)] = llama_cpp_type(int(settings["bits"]), int(columns[name]))
    return out


def _pattern(name: str) -> str:
    return "^" + name.replace(".", "\\.") + "$"


def _base_type(types: Mapping[str, str]) -> str:
    """llama-quantize's positional type: must be a quantized one, or it ignores every
    --tensor-type; with every tensor typed explicitly it only labels the file."""
    quantized = [t for t in types.values() if t not in ("f16", "f32")]
    common = Counter(quantized).most_common(1)[0][0] if quantized else "q8_0"
    return {"q4_K": "Q4_K_M", "q3_K": "Q3_K_M", "q5_K": "Q5_K_M"}.get(common, common.upper())


def quantize_script(types: Mapping[str, str], source: str = "model-f16.gguf",
                    target: str = "model-automix.gguf") -> str:
    """``quantize.sh``: llama-quantize with every tensor's type explicit."""
    special = {"token_embd.weight": "--token-embedding-type", "output.weight": "--output-tensor-type"}
    args = [f"{flag} {types[name]}" for name, flag in special.items() if name in types]
    args += [f"--tensor-type {shlex.quote(_pattern(n) + '=' + t)}" for n, t in types.items() if n not in special]
    counts = ", ".join(f"{n} {t}" for t, n in sorted(Counter(types.values()).items()))
    lines = [
        "#!/bin/sh",
        "# The per-tensor quantization types automix chose, applied with llama.cpp's llama-quantize",
        f"# to {source} (the trial's dense weights, adapters merged, written by automix export).",
        "# Every type is one llama.cpp keeps for its tensor's shape (k-quants only where a row splits",
        "# into 256-weight super-blocks), so none is substituted; the token embedding and output head",
        "# stay f16 as in the trial. LLAMA_QUANTIZE=/path/to/llama-quantize to use another binary.",
        f"# types: {counts}",
        "set -e",
        'cd "$(dirname "$0")"',
        f'"${{LLAMA_QUANTIZE:-llama-quantize}}" {" ".join(args)} {source} {target} {_base_type(types)}',
    ]
    return "\n".join(lines) + "\n"


def _check(facts: TrialFacts) -> str | None:
    if facts.method in NOT_MERGEABLE:
        return f"method {facts.method!r} has no dense form to quantize: {NOT_MERGEABLE[facts.method]}"
    bad = sorted({int(s["bits"]) for s in facts.layers.values()} - set(FALLBACK) - {16})
    if bad:
        return f"{', '.join(map(str, bad))}-bit layers have no llama.cpp type"
    model_dir = resolve_model_dir(facts.spec.get("model", "builtin:tiny"))
    return unsupported(facts.model_config, model_dir / "tokenizer.json")


def _write(ctx: ExportContext) -> dict[str, Any]:
    out = ctx.out / "llama-cpp"
    out.mkdir(parents=True, exist_ok=True)
    model = ctx.dense(merge_adapters=True)
    columns = {n: int(model.get_submodule(n).weight.shape[1]) for n in target_layer_names(model.config)}
    types = tensor_types(ctx.facts.layers, columns, bool(getattr(model.config, "tie_word_embeddings", False)))
    f16 = write_gguf(model, ctx.exported.tokenizer, out / "model-f16.gguf", name=f"automix-trial{ctx.facts.number}")
    _expect(read_types(out / "model-f16.gguf"), f16, model, "model-f16.gguf")
    (out / "tensor-types.txt").write_text("".join(f"{_pattern(k)}={v}\n" for k, v in types.items()))
    (out / "quantize.sh").write_text(quantize_script(types))
    (out / "quantize.sh").chmod(0o755)
    entry: dict[str, Any] = {"path": "llama-cpp", "gguf": "model-f16.gguf", "types": dict(Counter(types.values())),
                             **layout_entry(model), **_rescore(ctx, out / "model-f16.gguf", "f16_")}
    if all(t in WRITABLE_TYPES for t in types.values()):
        written = write_gguf(model, ctx.exported.tokenizer, out / "model-automix.gguf", types,
                             name=f"automix-trial{ctx.facts.number}")
        _expect(read_types(out / "model-automix.gguf"), written, model, "model-automix.gguf")
        entry["quantized"] = "model-automix.gguf"
        entry.update(_rescore(ctx, out / "model-automix.gguf", "gguf_"))
    else:
        entry["quantized"] = None
        entry["why_not_quantized"] = ("k-quants are made by llama.cpp (quantize.sh); the gguf package only "
                                      "dequantizes them")
    return entry


def _expect(found: Mapping[str, tuple[str, tuple[int, ...]]], written: Mapping[str, str], model: Any,
            what: str) -> None:
    """The file read back holds every tensor with the type and shape it was written with."""
    state = model.state_dict()
    shapes = {g: tuple(state[k].shape) for k, g in gguf_names(model).items()}
    wrong = [f"{n}: {found.get(n)} (wrote {t}, {shapes[n]})" for n, t in written.items()
             if n not in found or found[n][0] != t or found[n][1] != shapes[n]]
    extra = sorted(set(found) - set(written))
    if wrong or extra:
        raise ExportFormatError(f"{what} read back differs from what was written: {wrong[:3]} {extra[:3]}")


def _rescore(ctx: ExportContext, path: Path, prefix: str) -> dict[str, Any]:
    """A written GGUF file read back by transformers' own GGUF reader (a second implementation:
    it undoes the q/k permutation, dequantizes and rebuilds the tokenizer), then scored."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with quiet_loading():
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as err:  # noqa: BLE001 - recorded: the file was written and read back by gguf either way
        return {f"{prefix}rescored": f"transformers could not read {path.name}: {type(err).__name__}: {err}"}
    finally:
        hf_logging.set_verbosity(level)
    return {f"{prefix}{k}" if not k.startswith("automix_") else k: v for k, v in ctx.scores(model).items()}


FORMAT = ExportFormat("llama-cpp", "GGUF + llama-quantize per-tensor types", needs_weights=True,
                      check=_check, write=_write)
