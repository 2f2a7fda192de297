"""What a user gets from each way of choosing under a budget, on real trials: the search's pick
against the one-shot allocation and the uniform configuration (``automix bench search
--problem builtin|smollm2 --budgets ...``, with :mod:`automix.bench.search_real`).

* **one-shot**: the profile's scores and an exact integer program under the budget
  (:class:`automix.search.oneshot.OneShotAllocator`, as a study builds it: prune ratios and
  ranks held at the search space's ``fixed`` values), one trial per method; its pick is the better
  of them (what a user who tries each method once gets). **oneshot-bracketed**: the same with the
  bit widths limited to the two around the budget (3 and 4 bits between the all-3-bit and
  all-4-bit memory). **oneshot-lowest**: the unscored parameters at their first choices (no
  pruning, the smallest rank) instead of the space's fixed values: not the baseline the target is
  set against (a one-shot has no score that says a smaller rank is harmless), shown to say how
  much of a search's lead is that trade. A search's lead is over the best of the one-shot and the
  bracketed one.
* **uniform**: every linear at the same bit width, the highest that fits the budget (prune and
  rank as above), one trial per method.
* **a search's pick**: its trial with the lowest perplexity on the study's held-out split among
  the feasible ones, after n trials.

Every pick is then judged on a second held-out set that no trial evaluated
(:func:`disjoint_eval_file`): documents of the CPython docs' held-out split from source units
(topics, modules) other than those the study's evaluation rows come from; the pick's trial is
run again with that evaluation data (same seed: the same fine-tuned model).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from automix.config.study import format_size
from automix.search.oneshot import OneShotAllocator
from automix.trial import load_tokenizer
from automix.trial.data import encode_documents, pack_rows
from automix.trial.pydocs import corpus_files

__all__ = ["uniform_configs", "oneshot_configs", "disjoint_eval_file", "pick", "memory_at", "picks_section",
           "cost_section"]


def _held(backend: Any) -> dict[str, Any]:
    return backend.space.held_values()


def oneshot_configs(backend: Any, budget: float, bracketed: bool = False, lowest: bool = False) -> list[dict[str, Any]]:
    """The one-shot allocation within ``budget`` for each of the study's methods (``bracketed``:
    with the profile trusted only between the two bit widths around the budget; ``lowest``: the
    parameters the profile cannot score held at their first choices -- no pruning, the smallest
    rank -- instead of the space's fixed values)."""
    scores = backend.sensitivity_scores()
    alloc = OneShotAllocator(score=backend.space.feature_fn(scores), cost=backend.memory_function(),
                             search_space=dict(backend.distributions), hold=None if lowest else _held(backend))
    out = []
    for method in backend.cfg.methods:
        p = alloc.allocate(budget, (method,), bracketed=bracketed)
        if p is not None:
            out.append(p)
    return out


def uniform_configs(backend: Any, budget: float) -> list[dict[str, Any]]:
    """Per method: all linears at the highest bit width whose configuration fits ``budget``
    (the other parameters at their held values, else their first choice)."""
    held = _held(backend)
    bits_params = [n for n in backend.space.distributions if n.startswith("bits.")]
    levels = sorted({b for n in bits_params for b in backend.space.distributions[n].choices}, reverse=True)
    out = []
    for method in backend.cfg.methods:
        for b in levels:
            p: dict[str, Any] = {"method": method}
            for n, d in backend.space.distributions.items():
                p[n] = b if n in bits_params else held.get(n, d.choices[0])
            if backend.predicted_memory(p) <= budget:
                out.append(p)
                break
    return out


def memory_at(backend: Any, bits: int, method: str) -> float:
    """Predicted memory with every linear at ``bits`` (the rest held): the budget axis' marks."""
    held = _held(backend)
    p: dict[str, Any] = {"method": method}
    for n, d in backend.space.distributions.items():
        p[n] = bits if n.startswith("bits.") else held.get(n, d.choices[0])
    return float(backend.predicted_memory(p))


def pick(run: list[dict], budget: float, n: int | None = None) -> dict | None:
    """The trial a user picks among the first ``n``: the lowest perplexity within the budget."""
    ok = [t for t in run[:n] if t.get("perplexity") is not None and t["memory"] <= budget]
    return min(ok, key=lambda t: t["perplexity"]) if ok else None


def disjoint_eval_file(model_dir: Path, n_rows: int, seq_len: int, out_dir: Path) -> tuple[Path, dict]:
    """A JSONL evaluation set of held-out documents that share no source unit with the first
    ``n_rows`` evaluation rows (what every trial of the study is scored on): its path and what
    it holds. Built once per model tokenizer and row count."""
    _, eval_path = corpus_files()
    records = [json.loads(line) for line in eval_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    tok = load_tokenizer(model_dir)
    ids = encode_documents(tok, [r["text"] for r in records])
    # the smallest prefix of documents whose packing fills the study's rows (packing is greedy
    # and in order, so the rows of a prefix are the first rows of the whole)
    lo, hi = 1, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(pack_rows(ids[:mid], seq_len)) > n_rows:
            hi = mid
        else:
            lo = mid + 1
    used = {r["source"] for r in records[:lo]}
    rest = [r for r in records if r["source"] not in used]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"python-docs-disjoint-{len(used)}units-{n_rows}x{seq_len}.jsonl"
    path.write_text("".join(json.dumps({"text": r["text"]}, ensure_ascii=False) + "\n" for r in rest),
                    encoding="utf-8")
    info = {"study_units": sorted(used), "documents": len(rest), "units": len({r["source"] for r in rest}),
            "tokens": int(sum(len(x) for x, r in zip(ids, records) if r["source"] not in used))}
    return path, info


def median_worst(values: list[float], higher_is_better: bool = True) -> tuple[float, float]:
    """(median, worst) of leads."""
    v = np.asarray(values, dtype=float)
    return float(np.median(v)), float(v.min() if higher_is_better else v.max())


def lead(ours: float, baseline: float) -> float:
    """How much lower our perplexity is, as a fraction of the baseline's (0.03 = 3% lower)."""
    return (baseline - ours) / baseline


def fmt_params(p: Mapping[str, Any]) -> str:
    """A short description of a configuration: method, bits histogram, ranks and prune ratios used."""
    bits = [v for k, v in p.items() if k.startswith("bits.")]
    ranks = sorted({v for k, v in p.items() if k.startswith("rank.")})
    prunes = sorted({v for k, v in p.items() if k.startswith("prune.")})
    hist = ", ".join(f"{b}-bit {bits.count(b)}" for b in sorted(set(bits)))
    return f"{p.get('method')}: {hist}; rank {ranks}; prune {prunes}"


def picks_section(runs: dict, budgets: list[float], samplers: list[str], args: Any, backend: Any,
                  cache: Any, baselines: Sequence[str]) -> list[str]:
    """Each way of choosing under each budget: the pick's perplexity on the study's held-out split
    and on the disjoint held-out set, and the search's lead over the one-shot."""
    disjoint = None
    if args.disjoint_batches and args.data == "builtin:python-docs":
        n_rows = (args.eval_batches or 4) * 16
        disjoint, info = disjoint_eval_file(backend.model_dir, n_rows, args.seq_len,
                                            (args.cache or Path("benchmarks")).parent / "bench-data")
    ns = sorted({n for n in (8, args.trials) if n <= args.trials})

    def second(p: dict) -> float | None:
        if disjoint is None:
            return None
        spec = {**backend.payload(p), "eval_data": str(disjoint), "eval_batches": args.disjoint_batches}
        r = cache.result(spec)
        return r.get("perplexity") if r.get("status") == "ok" else None

    lines = ["## The pick under each budget against the one-shot and uniform baselines", "",
             "Pick: a search's feasible trial with the lowest perplexity on the study's held-out split after n "
             "trials; the one-shot and uniform rows are one trial per method, and their pick the better of "
             "them. *held-out*: the study's split (what every trial is scored on and the pick chosen by); "
             + (f"*disjoint*: {args.disjoint_batches} x 16 rows of {args.seq_len} tokens of held-out documents from "
                f"{info['units']} source units that share none with the study's evaluation rows "
                f"({info['documents']} documents, {info['tokens']} tokens; the pick's trial run again with that "
                "evaluation data). " if disjoint is not None else "")
             + "Lead: how much lower the pick's perplexity is than the best one-shot's, full or bracketed "
               "(positive: better).", "",
             "| budget | sampler | trials | seed | held-out | disjoint | lead held-out | lead disjoint | pick |",
             "|---|---|---|---|---|---|---|---|---|"]
    leads: dict[tuple[str, int], list[tuple[float, float | None]]] = {}
    for budget in budgets:
        base = pick(runs.get((budget, "oneshot", 0), []) + runs.get((budget, "oneshot-bracketed", 0), []), budget)
        b1 = base["perplexity"] if base else None
        b2 = second(base["params"]) if base else None
        for s in samplers:
            seeds = [0] if s in baselines else list(range(args.seeds))
            for n in ([None] if s in baselines else ns):
                for seed in seeds:
                    t = pick(runs.get((budget, s, seed), []), budget, n)
                    if s in baselines and not runs.get((budget, s, seed)):
                        lines.append(f"| {format_size(budget)} | {s} | 0 | - | does not apply here | | | | |")
                        continue
                    if t is None:
                        lines.append(f"| {format_size(budget)} | {s} | {n or '-'} | {seed} | none feasible | | | | |")
                        continue
                    d = second(t["params"])
                    l1 = lead(t["perplexity"], b1) if b1 else None
                    l2 = lead(d, b2) if d and b2 else None
                    if s not in baselines:
                        leads.setdefault((s, n), []).append((l1, l2))
                    trials = len(runs[(budget, s, seed)]) if s in baselines else n
                    lines.append(f"| {format_size(budget)} | {s} | {trials} | {seed if s not in baselines else '-'} | "
                                 f"{t['perplexity']:.2f} | {'-' if d is None else f'{d:.2f}'} | "
                                 f"{'-' if l1 is None else f'{l1:+.1%}'} | {'-' if l2 is None else f'{l2:+.1%}'} | "
                                 f"{fmt_params(t['params'])} |")
    lines += ["", "Lead over the one-shot pick, over budgets and seeds (median; worst):", "",
              "| sampler | trials | held-out | disjoint |", "|---|---|---|---|"]
    for (s, n), vals in sorted(leads.items()):
        a = [v for v, _ in vals if v is not None]
        b = [v for _, v in vals if v is not None]
        cell = lambda v: f"{np.median(v):+.1%} ({min(v):+.1%})" if v else "-"  # noqa: E731
        lines.append(f"| {s} | {n} | {cell(a)} | {cell(b)} |")
    return lines + [""]


def cost_section(runs: dict, samplers: list[str], backend: Any, trial_s: Any) -> list[str]:
    """What each way of choosing costs: trials, their minutes, and the profile."""
    path, _ = backend.profile_file()
    profile = json.loads(path.read_text()) if path is not None and path.is_file() else {}
    lines = ["## Cost", "",
             f"Sensitivity profile (once per model and data, cached): {profile.get('seconds', 0) / 60:.1f} min wall, "
             f"{profile.get('cpu_seconds', 0) / 60:.1f} CPU min. Per study: trials trained (configurations over "
             "the budget that TPE, NSGA-II or random proposed are not counted: not trained here), and the minutes "
             "of preparation, fine-tuning and evaluation they took (median over seeds and budgets; this "
             "machine, shared).", "",
             "| sampler | trials trained | trial minutes | needs the profile |", "|---|---|---|---|"]
    for s in samplers:
        counts, minutes = [], []
        for (b, ss, seed), r in runs.items():
            if ss != s:
                continue
            trained = [t for t in r if not t.get("skipped")]
            counts.append(len(trained))
            minutes.append(sum(trial_s(t) for t in trained) / 60)
        if counts:
            lines.append(f"| {s} | {statistics.median(counts):g} | {statistics.median(minutes):.1f} | "
                         f"{'yes' if s == 'automix' or s.startswith('oneshot') else 'no'} |")
    return lines + [""]
