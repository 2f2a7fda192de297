"""`automix bench memory`: the analytic memory model against measurement, for every training set-up.

Sections (each on by default, ``--only NAME`` to run one):

* ``combos`` — one training step per method x dtype x gradient checkpointing x optimizer x
  accumulation on ``--model`` (the built-in tiny model by default; ``--model smollm2-135m`` for
  the real one), measured with the trial's own code (``prepare_model`` + ``train_step``, CPU
  accounting) against ``automix.trial.memory.estimate``.
* ``step-time`` — CPU step time with and without gradient checkpointing (QLoRA 4-bit).
* ``studies`` — the memory range (cheapest / dearest configuration) of the built-in studies.
* ``published`` — the model's prediction for published LoRA / QLoRA measurements (Llama-2-7B,
  TinyLlama-1.1B; see ``benchmarks/memory_model.md`` for the sources).
* ``trials`` — whole trials (``run_trial``) per method and checkpointing on ``--model``: the
  allocator's peak of each phase (load, prune, prepare, every step, evaluation; the
  ``AllocatorMeter``) against the memory model's phases, and the phase that sets the peak.
* ``overhead`` — wall and CPU time of one trial with the allocator meter on and off.
* ``study-trials`` — configurations along a study's memory axis, run as its backend sends them:
  predicted and allocator-counted peaks, and the front by each.

``--out FILE.md`` writes the tables with the command, date and machine.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import itertools
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from automix.config.layers import LayerConfig
from automix.arch import arch_info, target_layer_names
from automix.methods import get_method
from automix.trial import checkpoint, memory, meter, run_trial
from automix.trial.data import is_padded
from automix.trial.run import grad_scaler, make_optimizer, prepare_model, train_step
from automix.trial.spec import TrialSpec

METHODS = ("lora", "qlora", "loftq", "quailora", "apiq", "apiq-lw", "qst", "qeft")
DTYPES = ("float32", "bfloat16", "float16")
OPTIMIZERS = ("adamw", "sgd", "adamw-8bit", "paged-adamw")


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _mib(n: float) -> str:
    return f"{n / 2**20:.3f}"


def _machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, load {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


def _has_bnb() -> bool:
    try:
        import bitsandbytes  # noqa: F401  # lazy: optional extra, only to decide which rows run
    except Exception:
        return False
    return True


# ----------------------------------------------------------------------------- combos


def _step(prepared: Any, spec: TrialSpec, batch: dict) -> tuple[memory.MemoryBreakdown, memory.MemoryBreakdown, float]:
    """One measured step on a copy of the prepared model, and the estimate run_trial would make."""
    model = copy.deepcopy(prepared.model)
    params = [p for _, p in prepared.method.trainable_parameters(model)]
    if spec.gradient_checkpointing:
        checkpoint.enable(model)
    model.train()
    opt = make_optimizer(spec.optimizer, params, spec.lr, spec.weight_decay)
    meters: list = []
    t0 = time.perf_counter()
    train_step(model, batch, params, opt, grad_scaler(spec, "cpu"), spec, meters)
    seconds = time.perf_counter() - t0
    got = meter.measured_breakdown(model, params, opt, max(m.total for m in meters))
    profile = prepared.method.memory_profile(prepared.arch, prepared.layer_settings, prepared.settings)
    est = memory.estimate(prepared.arch, prepared.memory_layer_settings, profile, batch_size=spec.batch_size,
                          seq_len=spec.seq_len, dtype=spec.dtype, config=model.config,
                          padded=is_padded(batch),
                          gradient_checkpointing=spec.gradient_checkpointing, optimizer=spec.optimizer,
                          grad_accum_steps=spec.grad_accum_steps)
    return est, got, seconds


def combos(emit: Callable[[str], None], model: str, methods: list[str], dtypes: list[str], optimizers: list[str],
           accums: list[int], batch_size: int, seq_len: int, bits: int, rank: int) -> list[float]:
    """Predicted vs measured per combination; returns the relative errors."""
    bnb = _has_bnb()
    emit(f"## Predicted vs measured, one step on `{model}` ({bits}-bit, rank {rank}, group 64, batch "
         f"{batch_size} x {seq_len}), MiB")
    emit()
    emit(_row(["method", "dtype", "checkpointing", "optimizer", "micro-batch", "measured", "predicted", "error",
               "activations meas / pred", "params, grads, optimizer exact"]))
    emit(_row(["---"] * 10))
    errors: list[float] = []
    for method, dtype in itertools.product(methods, dtypes):
        base = TrialSpec(model=model, method=method, dtype=dtype, batch_size=batch_size, seq_len=seq_len,
                         method_settings={"calib_samples": 16, "calib_seq_len": 64},
                         layers={"default": {"bits": bits, "group_size": 64, "rank": rank}})
        try:
            prepared = prepare_model(base)
        except Exception as err:  # noqa: BLE001 - a row per failure, the table goes on
            emit(_row([method, dtype, "-", "-", "-", "failed", "-", "-", "-", f"{type(err).__name__}: {err}"[:80]]))
            continue
        batch = next(prepared.task.train_batches(prepared.tokenizer, batch_size, seq_len, 0))
        for ckpt, opt, accum in itertools.product((False, True), optimizers, accums):
            if opt not in ("adamw", "sgd") and not bnb:
                continue
            spec = base.model_copy(update={"gradient_checkpointing": ckpt, "optimizer": opt, "grad_accum_steps": accum})
            torch.manual_seed(0)
            est, got, _ = _step(prepared, spec, batch)
            err = (est.accounted - got.total) / got.total
            errors.append(err)
            exact = all(getattr(est, k) == getattr(got, k)
                        for k in ("weights", "quant_metadata", "adapters", "gradients", "optimizer_states"))
            emit(_row([method, dtype, "on" if ckpt else "off", opt, batch_size // accum, _mib(got.total),
                       _mib(est.accounted), f"{100 * err:+.2f}%", f"{_mib(got.activations)} / {_mib(est.activations)}",
                       "yes" if exact else "NO"]))
    emit()
    if errors:
        worst = max(errors, key=abs)
        within = sum(abs(e) <= 0.02 for e in errors)
        emit(f"{within} of {len(errors)} combinations within 2% (worst {100 * worst:+.2f}%)."
             + ("" if bnb else " bitsandbytes is not installed: its optimizers were skipped."))
    emit()
    return errors


# ----------------------------------------------------------------------------- step time


def step_time(emit: Callable[[str], None], model: str, batch_size: int, seq_len: int, steps: int) -> None:
    """Median step time with and without checkpointing, the two interleaved step by step (a shared
    machine's load then hits both alike), on one thread (OpenMP threads spin when a core is taken)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    emit(f"## CPU step time with and without gradient checkpointing (`{model}`, QLoRA 4-bit rank 8, "
         f"batch {batch_size} x {seq_len}, 1 thread, {steps} steps each, interleaved, after one warm-up)")
    emit()
    emit(_row(["checkpointing", "median step s", "median step CPU s", "activations MiB (measured)", "peak MiB"]))
    emit(_row(["---"] * 5))
    spec = TrialSpec(model=model, method="qlora", batch_size=batch_size, seq_len=seq_len,
                     layers={"default": {"bits": 4, "group_size": 64, "rank": 8}})
    prepared = prepare_model(spec)
    batches = prepared.task.train_batches(prepared.tokenizer, batch_size, seq_len, 0)
    batch_list = [next(batches) for _ in range(steps + 1)]
    runs = {}
    for ckpt in (False, True):
        s = spec.model_copy(update={"gradient_checkpointing": ckpt})
        model_ = copy.deepcopy(prepared.model)
        params = [p for _, p in prepared.method.trainable_parameters(model_)]
        if ckpt:
            checkpoint.enable(model_)
        model_.train()
        runs[ckpt] = dict(spec=s, model=model_, params=params, opt=make_optimizer("adamw", params, 1e-4, 0.0),
                          scaler=grad_scaler(s, "cpu"), walls=[], cpus=[], got=None)
    try:
        for i, batch in enumerate(batch_list):
            for ckpt in ((False, True) if i % 2 == 0 else (True, False)):
                r = runs[ckpt]
                meters: list | None = [] if i == 0 else None
                t0, c0 = time.perf_counter(), time.process_time()
                train_step(r["model"], batch, r["params"], r["opt"], r["scaler"], r["spec"], meters)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                if i == 0:
                    r["got"] = meter.measured_breakdown(r["model"], r["params"], r["opt"],
                                                         max(m.total for m in meters or []))
                else:
                    r["walls"].append(wall)
                    r["cpus"].append(cpu)
                r["opt"].zero_grad(set_to_none=True)
    finally:
        torch.set_num_threads(threads)
    med = {k: (statistics.median(r["walls"]), statistics.median(r["cpus"])) for k, r in runs.items()}
    for ckpt, r in runs.items():
        emit(_row(["on" if ckpt else "off", f"{med[ckpt][0]:.3f}", f"{med[ckpt][1]:.3f}",
                   _mib(r["got"].activations), _mib(r["got"].total)]))
    emit()
    emit(f"Checkpointing costs {100 * (med[True][0] / med[False][0] - 1):+.0f}% wall time and "
         f"{100 * (med[True][1] / med[False][1] - 1):+.0f}% CPU time per step here.")
    emit()


# ----------------------------------------------------------------------------- studies


def study_range(path: str, model: str | None = None, **trial_overrides: Any) -> tuple[float, float, dict, dict]:
    """(cheapest, dearest) predicted bytes over a study's space (coordinate-wise, per method);
    ``model`` replaces the study's model (e.g. a config-only directory of the same architecture)."""
    from automix.config.study import load_study  # lazy: only this section reads studies
    from automix.study.backend import AutomixBackend, _choices  # lazy: ditto

    cfg = load_study(path)
    if model is not None:
        cfg.model = model
    for k, v in trial_overrides.items():
        setattr(cfg.trial, k, v)
    backend = AutomixBackend(cfg)
    out = []
    for pick in (min, max):
        best, best_params = None, {}
        for method in cfg.methods:
            params: dict[str, Any] = {"method": method}
            for name, dist in backend.space.distributions.items():
                params[name] = _choices(dist)[0]
            for _ in range(1 if len(backend.space.distributions) > 50 else 2):  # coordinate sweeps
                for name, dist in backend.space.distributions.items():
                    params[name] = pick(_choices(dist), key=lambda v: backend.predicted_memory({**params, name: v}))
            mem = backend.predicted_memory(params)
            if best is None or pick(mem, best) == mem:
                best, best_params = mem, dict(params)
        out.append((best, best_params))
    return out[0][0], out[1][0], out[0][1], out[1][1]


def studies(emit: Callable[[str], None], paths: list[str]) -> None:
    emit("## Memory range of the built-in studies (predicted, the search's memory objective)")
    emit()
    emit(_row(["study", "set-up", "cheapest MiB", "dearest MiB", "span", "budget MiB", "budget position"]))
    emit(_row(["---"] * 7))
    from automix.config.study import load_study  # lazy: only this section reads studies

    tmp = Path(tempfile.mkdtemp(prefix="automix-bench-"))
    for path in paths:
        cfg = load_study(path)
        model = None
        if Path(path).stem == "llama2-7b-boolq":  # the user's checkpoint: its architecture, config only
            model = str(tmp / "llama-2-7b-config")
            _llama(**LLAMA2_7B).save_pretrained(model)
        for ckpt in (False, True):
            lo, hi, _, _ = study_range(path, model, gradient_checkpointing=ckpt)
            t = cfg.trial
            setup = (f"{t.dtype}, {t.optimizer}, batch {t.batch_size} x {t.seq_len}, checkpointing "
                     f"{'on' if ckpt else 'off'}")
            pos = (cfg.memory_budget - lo) / (hi - lo) if hi > lo else float("nan")
            emit(_row([Path(path).stem, setup, _mib(lo), _mib(hi), f"{100 * (hi / lo - 1):.0f}%",
                       _mib(cfg.memory_budget), f"{100 * pos:.0f}% of the range"]))
    shutil.rmtree(tmp, ignore_errors=True)
    emit()


# ----------------------------------------------------------------------------- published


def _llama(**kw: Any) -> Any:
    from transformers import LlamaConfig  # lazy: only this section builds configs

    return LlamaConfig(**kw)


LLAMA2_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
TINYLLAMA_1B = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                    num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048)

# (label, config, method, bits, rank, micro-batch, tokens, published GB (1e9 bytes), source key)
PUBLISHED = [
    ("Llama-2-7B LoRA r8 q,v, bf16, micro-batch 1, longest Alpaca sample 1304 tok", LLAMA2_7B, "lora", 16, 8, 1,
     1304, 21.30, "litgpt-resource-tables"),
    ("Llama-2-7B QLoRA nf4 r8 q,v, bf16, micro-batch 1, 1304 tok", LLAMA2_7B, "qlora", 4, 8, 1, 1304, 14.14,
     "litgpt-resource-tables"),
    ("Llama-2-7B LoRA r32 q,v, bf16, micro-batch 2 x 512", LLAMA2_7B, "lora", 16, 32, 2, 512, 19.77,
     "litgpt-config-hub"),
    ("Llama-2-7B QLoRA nf4 r32 q,v, bf16, micro-batch 2 x 512", LLAMA2_7B, "qlora", 4, 32, 2, 512, 13.68,
     "litgpt-config-hub"),
    ("TinyLlama-1.1B LoRA r32 q,v, bf16, micro-batch 8 x 512", TINYLLAMA_1B, "lora", 16, 32, 8, 512, 10.54,
     "litgpt-1113"),
    ("TinyLlama-1.1B QLoRA nf4 r32 q,v, bf16, micro-batch 8 x 512", TINYLLAMA_1B, "qlora", 4, 32, 8, 512, 13.32,
     "litgpt-1113"),
]


def published(emit: Callable[[str], None]) -> None:
    emit("## Published LoRA / QLoRA peak memory vs this model (CUDA estimate, no checkpointing, AdamW "
         "in bf16 as `bf16-true` keeps it, LoRA dropout 0.05, group 64 for NF4's block 64)")
    emit()
    emit("Predicted: their step, with the fp32 logits and their gradient that LitGPT materialises "
         "(2 x tokens x vocabulary x 4 bytes; automix's own chunked loss never holds them); a whole bf16 load: "
         "the weights of a loader that reads the whole model before quantizing it.")
    emit()
    emit(_row(["set-up", "published GB", "predicted step GB", "error", "weights+meta GB", "activations GB",
               "a whole bf16 load GB", "max(step, load) error", "source"]))
    emit(_row(["---"] * 9))
    for label, kw, method, bits, rank, micro, tokens, gb, src in PUBLISHED:
        cfg = _llama(**kw)
        names = target_layer_names(cfg)
        ls = LayerConfig({"bits": bits, "group_size": 64, "rank": 0},
                         {"*.self_attn.q_proj": {"rank": rank}, "*.self_attn.v_proj": {"rank": rank}}).resolve(names)
        est = memory.estimate(arch_info(cfg), ls, method, batch_size=micro, seq_len=tokens, dtype="bfloat16",
                              device="cuda", config=cfg, settings={"lora_dropout": 0.05})
        # what a loader that reads the whole model before quantizing it holds (LitGPT's)
        whole = memory.estimate(arch_info(cfg), LayerConfig({"bits": 16, "group_size": 64, "rank": 0}).resolve(names),
                                "lora", dtype="bfloat16", device="cuda", config=cfg).weights
        step = (est.accounted + 2 * micro * tokens * cfg.vocab_size * 4) / 1e9
        either = max(step, whole / 1e9)
        emit(_row([label, f"{gb:.2f}", f"{step:.2f}", f"{100 * (step - gb) / gb:+.0f}%",
                   f"{(est.weights + est.quant_metadata) / 1e9:.2f}", f"{est.activations / 1e9:.2f}",
                   f"{whole / 1e9:.2f}", f"{100 * (either - gb) / gb:+.0f}%", src]))
    emit()
    emit("What our realistic set-up predicts for the same models (checkpointing on, bf16, paged AdamW; "
         "the whole trial's peak: loading streamed, the loss and the evaluation chunked):")
    emit()
    emit(_row(["model", "set-up", "predicted GB", "weights+meta", "adapters+grads+optimizer", "activations"]))
    emit(_row(["---"] * 6))
    for name, kw in (("Llama-2-7B", LLAMA2_7B), ("TinyLlama-1.1B", TINYLLAMA_1B)):
        cfg = _llama(**kw)
        ls = LayerConfig({"bits": 4, "group_size": 64, "rank": 16}).resolve(target_layer_names(cfg))
        est = memory.estimate(arch_info(cfg), ls, "qlora", batch_size=4, seq_len=512, dtype="bfloat16",
                              device="cuda", config=cfg, gradient_checkpointing=True, optimizer="paged-adamw")
        emit(_row([name, "QLoRA 4-bit, r16 on all linears, batch 4 x 512", f"{est.peak / 1e9:.2f} ({est.peak_phase})",
                   f"{(est.weights + est.quant_metadata) / 1e9:.2f}",
                   f"{(est.adapters + est.gradients + est.optimizer_states) / 1e9:.2f}",
                   f"{est.activations / 1e9:.2f}"]))
    emit()


# ----------------------------------------------------------------------------- whole trials


TRIAL_METHODS = ("qlora", "loftq", "quailora", "apiq", "qst", "qeft")


def _kind(phase: str) -> str:
    """The predicted phase a measured one is compared with (each step with the step)."""
    return "train" if phase.startswith("step") else "evaluate" if phase.startswith("evaluate") else phase


def trials(emit: Callable[[str], None], model: str, methods: list[str], batch_size: int, seq_len: int, steps: int,
           eval_batches: int, layers: dict, calib: tuple[int, int] | None, data: str | None) -> list[float]:
    """Whole trials (``run_trial``, the allocator meter on) per method and checkpointing: the
    allocator's peak of each phase against the memory model's; returns the peak errors."""
    emit(f"## Whole trials on `{model}`: the allocator's peak per phase vs the prediction, MiB")
    emit()
    emit(f"Layers {layers}, batch {batch_size} x {seq_len}, {steps} steps, {eval_batches} evaluation batch(es)"
         + (f", calibration {calib[0]} x {calib[1]} for the methods that calibrate" if calib else "") + ".")
    emit("Each cell: allocator / predicted; train is the largest step; error = (allocator - predicted) / predicted.")
    emit()
    emit(_row(["method", "checkpointing", "peak phase (allocator)", "allocator peak", "predicted peak (phase)",
               "error", "load", "prune", "prepare", "train", "evaluate", "perplexity"]))
    emit(_row(["---"] * 12))
    errors = []
    for method, ckpt in itertools.product(methods, (False, True)):
        spec = {"model": model, "method": method, "steps": steps, "batch_size": batch_size, "seq_len": seq_len,
                "eval_batches": eval_batches, "gradient_checkpointing": ckpt, "layers": layers, "device": "cpu"}
        if data:
            spec["data"] = data
        if calib and get_method(method).needs_calibration:
            spec["method_settings"] = {"calib_samples": calib[0], "calib_seq_len": calib[1]}
        r = run_trial(spec)
        if r.status != "ok":
            emit(_row([method, "on" if ckpt else "off", "failed", "-", "-", "-", "-", "-", "-", "-", "-",
                       str(r.failure_reason)[:80]]))
            continue
        pred = r.memory_phases_predicted
        got: dict[str, int] = {}
        for phase, n in r.memory_phases.items():
            got[_kind(phase)] = max(got.get(_kind(phase), 0), n)
        err = (r.allocator_peak_bytes - r.predicted_memory_bytes) / r.predicted_memory_bytes
        errors.append(err)
        best = max(pred, key=lambda k: pred[k])
        cells = [f"{_mib(got[k])} / {_mib(pred[k])}" if k in got else "-"
                 for k in ("load", "prune", "prepare", "train", "evaluate")]
        emit(_row([method, "on" if ckpt else "off", _kind(r.peak_phase), _mib(r.allocator_peak_bytes),
                   f"{_mib(r.predicted_memory_bytes)} ({best})", f"{100 * err:+.1f}%", *cells,
                   f"{r.perplexity:.10g}"]))
    emit()
    if errors:
        emit(f"{sum(abs(e) <= 0.10 for e in errors)} of {len(errors)} trials within 10% of the prediction "
             f"(worst {100 * max(errors, key=abs):+.1f}%; allocator above the prediction at most "
             f"{100 * max(errors):+.1f}%).")
        emit()
    return errors


def overhead(emit: Callable[[str], None], model: str, batch_size: int, seq_len: int, steps: int, repeats: int,
             data: str | None) -> None:
    """Wall and CPU time of the same trial with the allocator meter on and off, interleaved."""
    spec = {"model": model, "method": "qlora", "steps": steps, "batch_size": batch_size, "seq_len": seq_len,
            "eval_batches": 1, "gradient_checkpointing": True, "device": "cpu",
            "layers": {"default": {"bits": 4, "group_size": 64, "rank": 8}}}
    if data:
        spec["data"] = data
    run_trial({**spec, "steps": 1})  # warm-up (imports, caches, the profiler's first start)
    times: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for i in range(repeats):
        for on in ((True, False) if i % 2 == 0 else (False, True)):
            t0, c0 = time.perf_counter(), time.process_time()
            r = run_trial({**spec, "allocator_meter": on})
            assert r.status == "ok", r.failure_reason
            times[on].append((time.perf_counter() - t0, time.process_time() - c0))
    med = {on: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for on, v in times.items()}
    emit(f"## Overhead of the allocator meter (`{model}`, QLoRA 4-bit r8, batch {batch_size} x {seq_len}, "
         f"{steps} steps and one evaluation batch, checkpointing, {repeats} runs each, interleaved)")
    emit()
    emit(_row(["allocator meter", "median trial s", "median trial CPU s"]))
    emit(_row(["---"] * 3))
    for on in (False, True):
        emit(_row(["on" if on else "off", f"{med[on][0]:.2f}", f"{med[on][1]:.2f}"]))
    emit()
    emit(f"The meter costs {100 * (med[True][0] / med[False][0] - 1):+.0f}% wall time and "
         f"{100 * (med[True][1] / med[False][1] - 1):+.0f}% CPU time per trial here.")
    emit()


# ----------------------------------------------------------------------------- a study's trials

# (label, bits of attention layers, bits of MLP layers, prune ratio, rank): configurations along a
# study's memory axis, from its cheapest corner to its dearest
STUDY_POINTS = [("2/2-bit r4", 2, 2, 0.0, 4), ("3/3-bit r4 pruned 20%", 3, 3, 0.2, 4), ("4/3-bit r8", 4, 3, 0.0, 8),
                ("4/4-bit r8", 4, 4, 0.0, 8), ("8/4-bit r8", 8, 4, 0.0, 8), ("8/8-bit r16", 8, 8, 0.0, 16)]


def study_trials(emit: Callable[[str], None], path: str, methods: list[str] | None) -> None:
    """Configurations spanning a study's memory axis run as the study runs them (its backend's
    payloads): predicted and allocator-counted peaks, perplexity, and the front by each."""
    from automix.config.study import load_study  # lazy: only this section reads studies
    from automix.study.backend import AutomixBackend  # lazy: ditto

    cfg = load_study(path)
    backend = AutomixBackend(cfg)
    names = list(backend.space.distributions)
    rows = []
    emit(f"## The `{Path(path).stem}` study's trials: predicted vs allocator-counted peak memory")
    emit()
    emit("Each configuration as the study's backend sends it to `run_trial` (the study's trial settings); "
         "bits per kind of layer (attention / MLP), prune ratio and LoRA rank of every block.")
    emit()
    emit(_row(["configuration", "method", "predicted peak MiB (phase)", "allocator peak MiB (phase)", "error",
               "within budget (predicted / allocator)", "perplexity", "trial s"]))
    emit(_row(["---"] * 8))
    for (label, attn, mlp, prune, rank), method in itertools.product(STUDY_POINTS, methods or cfg.methods):
        params: dict[str, Any] = {"method": method}
        for name in names:
            kind, _, layer = name.partition(".")
            choices = list(backend.space.distributions[name].choices)
            want = {"bits": mlp if ".mlp." in layer else attn, "prune": prune, "rank": rank}.get(kind)
            params[name] = want if want in choices else choices[0]
        t0 = time.perf_counter()
        r = run_trial(backend.payload(params))
        seconds = time.perf_counter() - t0
        if r.status != "ok":
            emit(_row([label, method, "-", "-", "-", "-", f"failed: {r.failure_reason}"[:80], f"{seconds:.0f}"]))
            continue
        pred = r.memory_phases_predicted
        phase = max(pred, key=lambda k: pred[k])
        err = (r.allocator_peak_bytes - r.predicted_memory_bytes) / r.predicted_memory_bytes
        budget = cfg.memory_budget
        rows.append((label, method, r.predicted_memory_bytes, r.allocator_peak_bytes, r.perplexity))
        emit(_row([label, method, f"{_mib(r.predicted_memory_bytes)} ({phase})",
                   f"{_mib(r.allocator_peak_bytes)} ({_kind(r.peak_phase)})", f"{100 * err:+.1f}%",
                   f"{'yes' if r.predicted_memory_bytes <= budget else 'no'} / "
                   f"{'yes' if r.allocator_peak_bytes <= budget else 'no'}", f"{r.perplexity:.4f}", f"{seconds:.0f}"]))
    emit()
    for which, col in (("predicted", 2), ("allocator-counted", 3)):
        front = [r for r in rows if not any(o[col] <= r[col] and o[4] <= r[4] and (o[col], o[4]) != (r[col], r[4])
                                            for o in rows)]
        front.sort(key=lambda r: r[col])
        emit(f"Front by {which} memory: " + "; ".join(f"{r[0]} {r[1]} ({_mib(r[col])} MiB, ppl {r[4]:.2f})"
                                                       for r in front) + ".")
        emit()


# ----------------------------------------------------------------------------- main


SECTIONS = ("combos", "step-time", "studies", "published", "trials", "overhead", "study-trials")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="automix bench memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=SECTIONS, action="append", help="run only these sections (repeatable)")
    p.add_argument("--model", default="builtin:tiny")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES))
    p.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS))
    p.add_argument("--accum", nargs="+", type=int, default=[1, 2])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="timed steps per setting (step-time)")
    p.add_argument("--studies", nargs="+", default=["studies/quickstart.yaml", "studies/tiny-methods.yaml",
                                                    "studies/llama2-7b-boolq.yaml"])
    p.add_argument("--trial-methods", nargs="+", default=list(TRIAL_METHODS), help="methods of the trials section")
    p.add_argument("--trial-steps", type=int, default=2, help="training steps of each whole trial")
    p.add_argument("--mixed", action="store_true", help="trials: MLP layers 3-bit, the others 4-bit (rank 8)")
    p.add_argument("--calib", type=int, nargs=2, metavar=("SAMPLES", "SEQ_LEN"),
                   help="trials: the calibration set of the methods that calibrate (default: theirs)")
    p.add_argument("--data", help="the task's data (e.g. builtin:python-docs)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each setting (overhead)")
    p.add_argument("--study", default="studies/smollm2-135m.yaml", help="the study of the study-trials section")
    p.add_argument("--out", help="write the tables to this markdown file")
    args = p.parse_args(argv)
    sections = args.only or list(SECTIONS)
    lines: list[str] = []

    def emit(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    if "combos" in sections:
        combos(emit, args.model, args.methods, args.dtypes, args.optimizers, args.accum, args.batch_size,
               args.seq_len, args.bits, args.rank)
    if "step-time" in sections:
        step_time(emit, args.model, args.batch_size, args.seq_len, args.steps)
    if "studies" in sections:
        studies(emit, args.studies)
    if "published" in sections:
        published(emit)
    if "trials" in sections:
        layers: dict = {"default": {"bits": args.bits, "group_size": 64, "rank": args.rank}}
        if args.mixed:
            layers["layers"] = {"*mlp*": {"bits": 3}}
        trials(emit, args.model, args.trial_methods, args.batch_size, args.seq_len, args.trial_steps, 1, layers,
               tuple(args.calib) if args.calib else None, args.data)
    if "overhead" in sections:
        overhead(emit, args.model, args.batch_size, args.seq_len, args.trial_steps, args.repeats, args.data)
    if "study-trials" in sections:
        study_trials(emit, args.study, None)
    if args.out:
        cmd = "automix bench memory " + " ".join(argv if argv is not None else sys.argv[1:])
        head = [f"Command: `{cmd.strip()}`  ", f"Date: {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC  ",
                f"Machine: {_machine()}", ""]
        Path(args.out).write_text("\n".join(head + lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
