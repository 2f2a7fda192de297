"""Train the built-in Llama-architecture model on the synthetic corpus (`automix pretrain`).

(It lives in `trial/`, not `builtin/`, because it trains with the trial layer's BoolQ task:
`builtin` stays a leaf that `trial` reads.)

The model must really learn the corpus' in-context tasks (see `automix.builtin.corpus`), otherwise its
quantization sensitivity is fake. What makes that happen in a few CPU minutes: a tiny BPE
vocabulary (digits split, so arithmetic is per digit), documents packed whole into short
sequences, a high peak learning rate with warm-up and cosine decay, and enough width and depth
for induction heads to form.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from automix.builtin import cached_model_dir, corpus
from automix.trial._torch_compat import cpu_has_bf16
from automix.trial.data import BoolQTask

PAD, BOS, EOS = "<pad>", "<s>", "</s>"


@dataclass(frozen=True)
class PretrainConfig:
    """Model shape and training schedule of one built-in size."""

    hidden_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    intermediate_size: int
    vocab_size: int
    seq_len: int
    batch_size: int
    steps: int
    lr: float
    warmup_frac: float = 0.06
    min_lr_frac: float = 0.05
    weight_decay: float = 0.01
    tie_embeddings: bool = True
    bf16_autocast: bool = False  # bf16 matmuls on CPUs with AVX512-BF16: ~1.4x more steps per minute


SIZES: dict[str, PretrainConfig] = {
    "tiny": PretrainConfig(hidden_size=128, n_layers=4, n_heads=4, n_kv_heads=4, intermediate_size=384,
                           vocab_size=384, seq_len=128, batch_size=32, steps=1950, lr=4e-3,
                           weight_decay=0.0, bf16_autocast=True),
    "small": PretrainConfig(hidden_size=256, n_layers=6, n_heads=8, n_kv_heads=4, intermediate_size=768,
                            vocab_size=512, seq_len=128, batch_size=32, steps=3000, lr=2e-3),
}


# ----------------------------------------------------------------------------- tokenizer


def build_tokenizer(vocab_size: int, seed: int = 0, n_docs: int = 20_000) -> Any:
    """A byte-level BPE trained on the corpus, digits split one per token, saved as HF fast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus.sample_documents(n_docs, seed=seed + 17), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                       special_tokens=[(BOS, bos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD)


# ----------------------------------------------------------------------------- data


def packed_batches(tokenizer: Any, docs: Iterator[str], batch_size: int, seq_len: int
                   ) -> Iterator[dict[str, torch.Tensor]]:
    """Whole documents (BOS doc EOS) packed greedily into fixed-length rows; padding is unlabeled."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    pending: list[list[int]] = []
    while True:
        rows: list[list[int]] = []
        while len(rows) < batch_size:
            row: list[int] = []
            while True:
                if not pending:
                    texts = [next(docs) for _ in range(256)]
                    pending = [ids + [eos] for ids in tokenizer(texts)["input_ids"]]
                    pending.reverse()
                nxt = pending[-1]
                if len(nxt) > seq_len:
                    pending.pop()
                    continue
                if len(row) + len(nxt) > seq_len:
                    break
                row.extend(pending.pop())
            rows.append(row)
        ids = torch.full((batch_size, seq_len), pad, dtype=torch.long)
        mask = torch.zeros((batch_size, seq_len), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        labels = ids.masked_fill(mask == 0, -100)
        yield {"input_ids": ids, "attention_mask": mask, "labels": labels}


# ----------------------------------------------------------------------------- training


def build_model(cfg: PretrainConfig, tokenizer: Any) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    mc = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        max_position_embeddings=max(256, cfg.seq_len), rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=cfg.tie_embeddings, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.02,
    )
    return LlamaForCausalLM(mc)


def lr_at(step: int, cfg: PretrainConfig, steps: int) -> float:
    """Linear warm-up then cosine decay to `min_lr_frac` of the peak."""
    warm = max(1, int(cfg.warmup_frac * steps))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def pretrain(size: str = "tiny", out: str | Path | None = None, steps: int | None = None, seed: int = 0,
             log: Callable[[str], None] | None = print, overrides: dict[str, Any] | None = None) -> Path:
    """Train a built-in model and save model + tokenizer to `out` (default: the user cache dir).

    Returns the output directory. `overrides` replaces PretrainConfig fields (experiments).
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    cfg = SIZES[size]
    if overrides:
        cfg = PretrainConfig(**{**asdict(cfg), **overrides})
    n_steps = cfg.steps if steps is None else int(steps)
    if n_steps < 1:
        raise ValueError(f"steps must be >= 1, got {n_steps}")
    out_dir = Path(out) if out is not None else cached_model_dir(size)
    random.seed(seed)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    tokenizer = build_tokenizer(cfg.vocab_size, seed=seed)
    model = build_model(cfg, tokenizer)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    bf16 = cfg.bf16_autocast and cpu_has_bf16()
    batches = packed_batches(tokenizer, corpus.documents(corpus.TRAIN_SEED_BASE + seed), cfg.batch_size,
                             cfg.seq_len)
    history: list[tuple[int, float]] = []
    ema = None
    for step in range(n_steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg, n_steps)
        batch = next(batches)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if log and (step % 100 == 0 or step == n_steps - 1):
            log(f"step {step:5d}  loss {loss.item():.4f}  ema {ema:.4f}  lr {opt.param_groups[0]['lr']:.2e}"
                f"  {time.perf_counter() - t0:6.1f}s")
            history.append((step, float(ema)))
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    meta = {"size": size, "seed": seed, "steps": n_steps, "config": asdict(cfg), "final_loss_ema": ema,
            "train_seconds": round(time.perf_counter() - t0, 1), "torch_threads": torch.get_num_threads(),
            "bf16_autocast": bf16,
            "loss_history": history}
    (out_dir / "automix_pretrain.json").write_text(json.dumps(meta, indent=2))
    if log:
        log(f"saved {size} model to {out_dir} in {meta['train_seconds']} s (final loss ema {ema:.4f})")
    return out_dir


# ----------------------------------------------------------------------------- quality probes


def _probe_items(kind: str, n: int, seed: int) -> list[tuple[str, str]]:
    """(prompt, answer) pairs whose answer is fully determined by the prompt."""
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        if kind == "copy":  # the first word is given (a copy may start at any word): the rest is determined
            words = [corpus._syllable_word(rng) for _ in range(rng.randint(3, 6))]
            items.append((f"copy: {' '.join(words)} > {words[0]}", " " + " ".join(words[1:])))
        elif kind == "recall":
            doc = corpus.recall_doc(rng)
            facts, _, queries = doc.partition(" ; ")
            q = queries.split(" ")[0]  # "<key><digit>": the key is asked, the digit is the answer
            items.append((f"{facts} ; {q[:-1]}", q[-1]))
        elif kind == "facts":
            ent, val = rng.choice(corpus.knowledge_table())
            items.append((f"facts: {ent} has", f" {val}"))
        elif kind == "add":
            doc = corpus.add_doc(rng)
            head, _, tail = doc.partition("=")
            items.append((head + "=", tail))
        else:
            raise ValueError(kind)
    return items


@torch.no_grad()
def exact_match(model: Any, tokenizer: Any, items: list[tuple[str, str]], batch_size: int = 64) -> float:
    """Share of items whose every answer token is the model's argmax (teacher-forced = greedy)."""
    hits = 0
    pad = tokenizer.pad_token_id
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        rows, spans = [], []
        for prompt, ans in chunk:
            p = tokenizer(prompt)["input_ids"]
            a = tokenizer(ans, add_special_tokens=False)["input_ids"]
            rows.append(p + a)
            spans.append((len(p), len(p) + len(a)))
        L = max(len(r) for r in rows)
        ids = torch.full((len(rows), L), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, r in enumerate(rows):
            ids[j, : len(r)] = torch.tensor(r)
            mask[j, : len(r)] = 1
        pred = model(input_ids=ids, attention_mask=mask).logits.argmax(-1)
        for j, (s, e) in enumerate(spans):
            hits += bool((pred[j, s - 1:e - 1] == ids[j, s:e]).all())
    return hits / max(1, len(items))


def probe_accuracies(model: Any, tokenizer: Any, n: int = 200) -> dict[str, float]:
    """Accuracy on each skill of the corpus (copy, recall, memorized facts, add, BoolQ plain/negated)."""
    out = {k: exact_match(model, tokenizer, _probe_items(k, n, corpus.PROBE_SEED + i))
           for i, k in enumerate(("copy", "recall", "facts", "add"))}
    out["boolq_plain"] = BoolQTask(eval_size=n, negation_rate=0.0).evaluate(model, tokenizer)["accuracy"]
    out["boolq_negated"] = BoolQTask(eval_size=n, negation_rate=1.0).evaluate(model, tokenizer)["accuracy"]
    return out
