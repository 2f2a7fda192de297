"""`automix export STUDY --max-memory 6GiB`: write the chosen front configuration."""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

from automix.commands import Subparsers, add_study_argument, output_console, rerun_command, study_argument, trial_threads
from automix.config.registry import EXPORT_FORMATS


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("export", help="export the best configuration of a study under a memory limit")
    add_study_argument(p)
    p.add_argument("--max-memory", default=None,
                   help="memory limit with a unit, e.g. 6GiB or 800MiB (default: the study budget)")
    p.add_argument("--trial", type=int, default=None, metavar="N",
                   help="export completed trial N instead of a pick from the front (see `automix status`)")
    p.add_argument("--pick", choices=["best", "memory", "knee", "accuracy"], default="best",
                   help="best: the best quality objective (highest accuracy, lowest perplexity); "
                        "memory: the least memory; knee: where the front bends (all under the limit; "
                        "'accuracy' is the old name of best)")
    p.add_argument("--out", default=None, help="output directory (default: exported/<study>-trial<N>)")
    p.add_argument("--with-weights", action="store_true",
                   help="also save the quantized checkpoint and trained adapters: re-runs the trial "
                        "(about as long as it took in the study), showing its progress")
    p.add_argument("--format", dest="formats", action="append", metavar="FORMAT", choices=list(EXPORT_FORMATS),
                   help=f"also write, repeatable: {', '.join(EXPORT_FORMATS)} (hf: merged checkpoint for "
                        "transformers; peft: dense base + PEFT LoRA adapter; llama-cpp: GGUF + per-tensor "
                        "llama-quantize types). Formats with weights re-run the trial and re-score what they "
                        "write; a trial a format cannot hold is refused before any re-run")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: the working dir's)")
    p.set_defaults(func=run)


class RebuildProgress:
    """What `export` is doing while it rebuilds a trial's weights, read from the files it has
    written so far: a spinner with the step and the elapsed time on a terminal, a line per step
    elsewhere."""

    def __init__(self, console: Any, out: Path, trial: Any, formats: list[str]) -> None:
        # `out`: where the files appear while they are written (the export's staging directory)
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
        rescored = [f for f in self.formats if f != "automix"]
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
    from automix.config.study import format_size, parse_size  # lazy: CLI start-up (a command loads only what it runs)

    console = output_console(highlight=False)
    limit = parse_size(args.max_memory) if args.max_memory else None  # checked before the slow imports
    from automix.study.storage import open_study, study_from_ref  # lazy: CLI start-up (a command loads only what it runs)
    from automix.export import (ExportFormatError, export_trial, exportable, get_format, select_trial,  # lazy: CLI start-up
                                staging_dir, trial_by_number)

    cfg = study_from_ref(study_argument(args), args.storage)
    study = open_study(cfg, create=False)
    if args.trial is not None:
        if args.max_memory or args.pick != "best":
            raise ValueError("--trial N names the trial itself: drop --max-memory / --pick")
        trial = trial_by_number(study, cfg, args.trial)
    else:
        trial = select_trial(study, cfg, limit, args.pick)
    out = Path(args.out or f"exported/{cfg.name}-trial{trial.number}")
    formats = list(dict.fromkeys(args.formats or ["automix"]))
    rebuild = args.with_weights or any(get_format(f).needs_weights for f in formats)
    try:
        if rebuild:
            from automix.export import refusals, trial_facts  # lazy: CLI start-up

            refused = refusals(trial_facts(trial, cfg), formats)  # before saying it re-runs anything
            if not refused:
                console.print(f"trial {trial.number} chosen; studies keep no weights: re-running it to rebuild "
                              "them (about as long as the trial took)", markup=False, soft_wrap=True)
                with trial_threads(cfg), RebuildProgress(console, staging_dir(out), trial, formats):
                    path = export_trial(study, cfg, trial, out, with_weights=args.with_weights, formats=formats)
            else:
                path = export_trial(study, cfg, trial, out, with_weights=args.with_weights, formats=formats)
        else:
            path = export_trial(study, cfg, trial, out, with_weights=args.with_weights, formats=formats)
    except ExportFormatError as err:
        can = exportable(study, cfg, formats, limit)
        others = [n for n in can if n != trial.number]
        hint = (f"front trials that can: {', '.join(map(str, others))} (`automix export {cfg.name} --trial N`)"
                if others else "no front trial within the limit can be written in these formats")
        raise ValueError(f"{err}\n{hint}; nothing was re-run or written") from None
    q = cfg.objectives.quality
    print(f"trial {trial.number} ({trial.user_attrs.get('method')}): {q} {trial.values[0]:.4g}, "
          f"memory {format_size(trial.values[1])} -> {path}/layers.yaml")
    manifest = json.loads((path / "manifest.json").read_text())
    for fmt, info in manifest.get("formats", {}).items():
        _print_format(fmt, info, path)
    print(f"run it again with: {rerun_command(f'{path}/layers.yaml')}   (the file carries the method and the "
          "trial's settings)")
    return 0


def _print_format(fmt: str, info: dict, path: Path) -> None:
    """One format's lines: where it is, its score beside automix.load's, how to load it."""
    metric = next((k for k in info if k.startswith("automix_")), "")[len("automix_"):]
    where = path / info.get("path", fmt)
    if metric and metric in info:
        print(f"{fmt}: {where} ({metric} {info[metric]:.4g}; automix.load gives {info['automix_' + metric]:.4g})")
    elif metric and f"f16_{metric}" in info:
        read = [f"{info['gguf']} {info['f16_' + metric]:.4g}"]
        if f"gguf_{metric}" in info:
            read.append(f"{info['quantized']} (llama.cpp's types) {info['gguf_' + metric]:.4g}")
        print(f"{fmt}: {where} ({metric} read back by transformers: {'; '.join(read)}; automix.load gives "
              f"{info['automix_' + metric]:.4g})")
    else:
        print(f"{fmt}: {where}")
    if info.get("note"):
        print(f"  note: {info['note']}")
    if fmt == "llama-cpp":
        types = ", ".join(f"{n} {t}" for t, n in sorted(info.get("types", {}).items()))
        print(f"  tensor types: {types} (tensor-types.txt); {where}/quantize.sh runs llama-quantize on "
              f"{info.get('gguf')}")
    lines = [line.format(dir=path.resolve()) for line in info.get("load", [])]
    if lines:
        print("  load it with:")
        print("\n".join(f"    {line}" for line in lines))
