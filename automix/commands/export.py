"""`automix export STUDY --max-memory 6GiB`: write the chosen front configuration."""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

from automix.commands import add_study_argument, output_console, study_argument, trial_command, trial_threads


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export the best configuration of a study under a memory limit")
    add_study_argument(p)
    p.add_argument("--max-memory", default=None,
                   help="memory limit with a unit, e.g. 6GiB or 800MiB (default: the study budget)")
    p.add_argument("--pick", choices=["best", "memory", "knee", "accuracy"], default="best",
                   help="best: the best quality objective (highest accuracy, lowest perplexity); "
                        "memory: the least memory; knee: where the front bends (all under the limit; "
                        "'accuracy' is the old name of best)")
    p.add_argument("--out", default=None, help="output directory (default: exported/<study>-trial<N>)")
    p.add_argument("--with-weights", action="store_true",
                   help="also save the quantized checkpoint and trained adapters: re-runs the trial "
                        "(about as long as it took in the study), showing its progress")
    p.add_argument("--format", dest="formats", action="append", metavar="FORMAT",
                   choices=["automix", "hf", "peft", "llama-cpp"],
                   help="also write: hf (merged checkpoint for transformers), peft (dense base + PEFT "
                        "LoRA adapter), llama-cpp (llama-quantize --tensor-type overrides); repeatable. "
                        "hf and peft re-run the trial for its weights and re-score what they write")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: the working dir's)")
    p.set_defaults(func=run)


class RebuildProgress:
    """What `export` is doing while it rebuilds a trial's weights, read from the files it has
    written so far: a spinner with the step and the elapsed time on a terminal, a line per step
    elsewhere."""

    def __init__(self, console: Any, out: Path, trial: Any, formats: list[str]) -> None:
        self.console, self.out, self.trial, self.formats = console, out, trial, formats
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._status: Any = None
        self._t0, self._since = time.monotonic(), time.time()

    def _written(self, name: str) -> bool:
        """Whether this export wrote `name` (a file left by an earlier export to `out` is not)."""
        f = self.out / name
        return f.is_file() and f.stat().st_mtime >= self._since - 1.0

    def step(self) -> str:
        if not self._written("weights/adapters.safetensors"):
            t = self.trial
            spec, result = t.user_attrs.get("spec") or {}, t.user_attrs.get("result") or {}
            took = sum(float(result.get(k) or 0) for k in ("prepare_seconds", "train_seconds", "eval_seconds"))
            steps = f", {spec['steps']} steps" if spec.get("steps") is not None else ""
            before = f"; it took {took:.0f} s in the study" if took else ""
            return f"re-running trial {t.number} ({t.user_attrs.get('method')}{steps}{before})"
        if not self._written("weights/model.safetensors"):
            return "writing the quantized checkpoint"
        rescored = [f for f in ("hf", "peft") if f in self.formats]
        return f"writing and re-scoring {' and '.join(rescored)}" if rescored else "writing the manifest"

    def _watch(self, status: Any) -> None:
        last = None
        while True:
            step = self.step()
            if status is not None:
                status.update(f"{step} ... {time.monotonic() - self._t0:.0f} s")
            elif step != last:
                self.console.print(f"{step} ...", markup=False, soft_wrap=True)
            last = step
            if self._stop.wait(0.5):
                return

    def __enter__(self) -> "RebuildProgress":
        self._t0, self._since = time.monotonic(), time.time()
        self._status = self.console.status(self.step()) if self.console.is_terminal else None
        if self._status is not None:
            self._status.__enter__()
        self._thread = threading.Thread(target=self._watch, args=(self._status,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._status is not None:
            self._status.__exit__(*exc)
        if exc[0] is None:
            self.console.print(f"weights rebuilt in {time.monotonic() - self._t0:.0f} s", markup=False)


def run(args: argparse.Namespace) -> int:
    from automix.study.storage import open_study  # lazy: CLI start-up (a command loads only what it runs)
    from automix.export import export_trial, select_trial
    from automix.config.study import format_size, parse_size  # lazy: CLI start-up (a command loads only what it runs)
    from automix.study.storage import study_from_ref  # lazy: CLI start-up (a command loads only what it runs)

    console = output_console(highlight=False)
    cfg = study_from_ref(study_argument(args), args.storage)
    study = open_study(cfg, create=False)
    limit = parse_size(args.max_memory) if args.max_memory else None
    trial = select_trial(study, cfg, limit, args.pick)
    out = args.out or f"exported/{cfg.name}-trial{trial.number}"
    formats = args.formats or ["automix"]
    if {"hf", "peft"} & set(formats) or args.with_weights:
        console.print(f"trial {trial.number} chosen; studies keep no weights: re-running it to rebuild "
                      "them (about as long as the trial took)", markup=False, soft_wrap=True)
        with trial_threads(cfg), RebuildProgress(console, Path(out), trial, formats):
            path = export_trial(study, cfg, trial, out, with_weights=args.with_weights, formats=formats)
    else:
        path = export_trial(study, cfg, trial, out, with_weights=args.with_weights, formats=formats)
    q = cfg.objectives.quality
    print(f"trial {trial.number} ({trial.user_attrs.get('method')}): {q} {trial.values[0]:.4g}, "
          f"memory {format_size(trial.values[1])} -> {path}/layers.yaml")
    manifest = json.loads((path / "manifest.json").read_text())
    for fmt, info in manifest.get("formats", {}).items():
        metric = next(k for k in info if k not in ("path",) and not k.startswith("automix_"))
        print(f"{fmt}: {path / info['path']} ({metric} {info[metric]:.4g}; automix.load gives "
              f"{info['automix_' + metric]:.4g})")
    if "llama-cpp" in manifest.get("files", {}):
        print(f"llama-cpp: {path}/llama-cpp/quantize.sh (per-tensor types in tensor-types.txt)")
    spec = {"task": cfg.task, **(trial.user_attrs.get("spec") or {}), "method": trial.user_attrs.get("method")}
    print(f"run it again with: {trial_command(spec, f'{path}/layers.yaml', cfg.model)}")
    return 0
