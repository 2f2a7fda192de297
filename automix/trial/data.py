"""Tasks (training batches + metric) and calibration sets.

Two tasks, each with a built-in synthetic version (from `automix.builtin.corpus`) and user data:

* `lm`    - language modelling, perplexity on held-out text. Data: JSONL of `{"text": ...}`.
* `boolq` - BoolQ-style yes/no reading comprehension, accuracy. Data: JSONL with BoolQ's own
            fields `question`, `passage`, `answer`. Scored like lm-eval-harness: the answer with
            the higher log-likelihood of " yes" vs " no" after the prompt wins.

Every record of user data is checked by one rule (`check_record` with the task's `fields`):
`iter_jsonl` streams a JSONL file a line at a time, errors naming FILE:LINE and the field, and
`validate_data` runs the rule over all of a task's data in constant memory (the study preflight).
User data may also be a `datasets.save_to_disk` directory. With one file and no `eval_path`,
every 10th record is held out for evaluation (deterministic). Evaluation defaults are sized so
that one trial evaluates in seconds on a laptop CPU.

Named data sets (`BUILTIN_DATA`) stand in for a path: ``builtin:python-docs`` is real,
human-written English (CPython's own documentation, `automix.trial.pydocs`) for the lm task
and calibration, built offline into the cache with a fixed held-out split.
"""

from __future__ import annotations

import json
import math
import random
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import torch

from automix.builtin import corpus
from automix.trial import pydocs
from automix.trial.loss import continuation_logprobs, token_nll


class DataError(ValueError):
    """Unreadable or malformed task data; the message names the file (and line) at fault,
    `role` whether it is the data or, from `validate_data`, the "eval data"."""

    role: str = "data"


# ----------------------------------------------------------------------------- reading records


class FieldRule(NamedTuple):
    """What one field of a record must hold: `read` returns the value as a task uses it (raising
    TypeError / ValueError when it is not one), `expected` says what that is in error messages."""

    expected: str
    read: Callable[[Any], Any]


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(type(value).__name__)
    return value


def _yes_no(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "false", "no", "1", "0"):
        return value.strip().lower() in ("true", "yes", "1")
    raise ValueError(value)


TEXT = FieldRule("a string", _text)
YES_NO = FieldRule("a boolean (true/false/yes/no)", _yes_no)

# The fields a record must have: names (presence only) or name -> rule (presence and value).
Fields = Sequence[str] | Mapping[str, FieldRule]


def _shown(value: Any, limit: int = 60) -> str:
    """A value as its JSON (what the user wrote), cut to `limit` characters."""
    try:
        s = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        s = repr(value)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def check_record(rec: Any, required: Fields, where: str) -> dict[str, Any]:
    """One record checked against `required` (errors start with `where`, e.g. FILE:LINE): a JSON
    object with every field, each rule's field holding what the rule expects. Returns the record
    with the ruled fields as the rules read them (e.g. "yes" -> True)."""
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    missing = [k for k in required if k not in rec]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(map(repr, missing))} "
                        f"(required: {', '.join(required)})")
    if not isinstance(required, Mapping):
        return rec
    out = dict(rec)
    for key, rule in required.items():
        try:
            out[key] = rule.read(rec[key])
        except (TypeError, ValueError):
            raise DataError(f"{where}: {key!r} must be {rule.expected}, got {_shown(rec[key])}") from None
    return out


def iter_jsonl(path: str | Path, required: Fields) -> Iterator[dict[str, Any]]:
    """The records of a JSONL file, read one line at a time (a file of any size in constant
    memory) and each checked by `check_record`: an error names FILE:LINE (and the field). A
    missing file raises at once; bad lines, and a file without records, when reached."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file {str(p)!r} does not exist")
    return _jsonl_records(p, required)


def _jsonl_records(p: Path, required: Fields) -> Iterator[dict[str, Any]]:
    n = 0
    with open(p, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{p}:{lineno}: not UTF-8 text (byte {err.start + 1} of the line)") from None
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{p}:{lineno}: invalid JSON ({err.msg})") from None
            yield check_record(rec, required, f"{p}:{lineno}")
            n += 1
    if not n:
        raise DataError(f"data file {p} is empty (expected JSONL records with {', '.join(required)})")


def read_jsonl(path: str | Path, required: Fields) -> list[dict[str, Any]]:
    """Records of a JSONL file, each checked for the `required` fields (errors name file:line)."""
    return list(iter_jsonl(path, required))


def _open_saved_dataset(path: Path, required: Fields) -> tuple[Any, Any]:
    """(train, eval or None) splits of a datasets.save_to_disk directory (memory-mapped, not
    read), with the columns `required` names and at least one row each."""
    import datasets  # lazy: a heavy import only saved-dataset data needs

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as err:  # noqa: BLE001
        raise DataError(f"{path} is not a datasets.save_to_disk directory: {err}") from err
    if isinstance(ds, datasets.DatasetDict):
        train_split = "train" if "train" in ds else next(iter(ds))
        eval_split = next((s for s in ("validation", "test") if s in ds and s != train_split), None)
        train, evl = ds[train_split], (ds[eval_split] if eval_split else None)
    else:
        train, evl = ds, None
    for name, d in (("train", train), ("eval", evl)):
        if d is None:
            continue
        missing = [k for k in required if k not in d.column_names]
        if missing:
            raise DataError(f"{path} ({name} split): missing column(s) {', '.join(map(repr, missing))}; "
                            f"has {', '.join(d.column_names)}")
        if len(d) == 0:
            raise DataError(f"{path} ({name} split) is empty")
    return train, evl


def _dataset_records(d: Any, required: Fields, where: str) -> Iterator[dict[str, Any]]:
    for i, row in enumerate(d, 1):
        yield check_record(dict(row), required, f"{where} row {i}")


def _open_records(path: Path, required: Fields, what: str
                  ) -> tuple[Iterator[dict[str, Any]], Iterator[dict[str, Any]] | None]:
    """(records, the records of its own eval split or None) of a data path, read lazily."""
    if not path.exists():
        raise DataError(f"{what} path {str(path)!r} does not exist")
    if not path.is_dir():
        return iter_jsonl(path, required), None
    train, evl = _open_saved_dataset(path, required)
    return (_dataset_records(train, required, f"{path} (train split)"),
            _dataset_records(evl, required, f"{path} (eval split)") if evl is not None else None)


# Named data sets: name -> (the fields its records have, a function returning (train, eval) files).
BUILTIN_DATA: dict[str, tuple[tuple[str, ...], Callable[[], tuple[Path, Path]]]] = {
    f"builtin:{pydocs.NAME}": (("text",), pydocs.corpus_files),
}


def is_named_data(path: str | Path | None) -> bool:
    """Whether a data spec is a name ('builtin:...') rather than a path: a study file resolves
    paths against its own folder, names are left as they are."""
    return path is not None and str(path).startswith("builtin:")


def resolve_data(path: str | Path, required: Fields, eval_path: str | Path | None = None
                 ) -> tuple[Path, Path | None]:
    """A data spec -> (train path, eval path): a named data set gives its own two files (built
    on first use; an explicit `eval_path` still wins), a path is returned as it is."""
    if not is_named_data(path):
        return Path(path), (Path(eval_path) if eval_path is not None else None)
    name = str(path)
    if name not in BUILTIN_DATA:
        raise DataError(f"unknown data set {name!r}; named data sets: {', '.join(sorted(BUILTIN_DATA))} "
                        "(or give a JSONL file / datasets.save_to_disk directory)")
    fields, files = BUILTIN_DATA[name]
    missing = [k for k in required if k not in fields]
    if missing:
        raise DataError(f"data set {name!r} has records with {', '.join(fields)}; this task needs "
                        f"{', '.join(required)} (missing {', '.join(missing)})")
    train, evl = files()
    return train, (Path(eval_path) if eval_path is not None else evl)


def load_records(path: str | Path, required: Fields, eval_path: str | Path | None = None
                 ) -> tuple[list[dict], list[dict]]:
    """(train, eval) records from a JSONL file, a saved dataset directory or a named data set,
    each checked by `check_record` (with rules, the ruled fields come back as they read them)."""
    p, eval_path = resolve_data(path, required, eval_path)
    train_records, own_eval = _open_records(p, required, "data")
    train = list(train_records)
    evl = list(own_eval) if own_eval is not None else None
    if eval_path is not None:
        evl = list(_open_records(Path(eval_path), required, "eval data")[0])
    if evl is None:
        _check_holdout(p, len(train))
        evl = [r for i, r in enumerate(train) if i % 10 == 9] or train[-1:]
        train = [r for i, r in enumerate(train) if i % 10 != 9] or train[:-1]
    return train, evl


def _check_holdout(path: Path, n_records: int) -> None:
    if n_records < 2:
        raise DataError(f"{path}: need at least 2 records to hold one out for evaluation")


def validate_data(task: str, path: str | Path, eval_path: str | Path | None = None) -> tuple[int, int | None]:
    """Every record of a task's data checked as the task reads it (`load_records`' rule with the
    task's `fields`), streamed: each file is read once, a line at a time, in constant memory,
    however large. Raises DataError naming FILE:LINE, the field and what it must be (or the
    path, for a missing path or an empty file; `role` "eval data" for `eval_path`'s). Returns the number of records of the data and
    of its evaluation data (None: the evaluation records are held out of the data)."""
    fields = task_class(task).fields
    p, eval_path = resolve_data(path, fields, eval_path)
    train, own_eval = _open_records(p, fields, "data")
    n_train = sum(1 for _ in train)
    n_eval = sum(1 for _ in own_eval) if own_eval is not None else None
    if eval_path is not None:
        try:
            n_eval = sum(1 for _ in _open_records(Path(eval_path), fields, "eval data")[0])
        except DataError as err:
            err.role = "eval data"
            raise
    if n_eval is None:
        _check_holdout(p, n_train)
    return n_train, n_eval


# ----------------------------------------------------------------------------- packing helpers


def encode_documents(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text with the tokenizer's specials (BOS) and a trailing EOS."""
    eos = tokenizer.eos_token_id
    out = tokenizer(list(texts))["input_ids"]
    return [ids + [eos] if eos is not None else ids for ids in out]


def pack_rows(token_lists: Sequence[list[int]], seq_len: int) -> list[list[int]]:
    """Whole documents packed greedily into rows of at most `seq_len`; long ones split."""
    rows: list[list[int]] = []
    row: list[int] = []
    for ids in token_lists:
        pieces = [ids[i:i + seq_len] for i in range(0, len(ids), seq_len)] or [[]]
        for piece in pieces:
            if len(row) + len(piece) > seq_len:
                rows.append(row)
                row = []
            row.extend(piece)
    if row:
        rows.append(row)
    return [r for r in rows if len(r) > 1]


def _collate(rows: Sequence[list[int]], pad_id: int, label_masks: Sequence[list[bool]] | None = None
             ) -> dict[str, torch.Tensor]:
    """Right-padded batch; labels are -100 on padding (and where `label_masks` is False)."""
    n, L = len(rows), max(len(r) for r in rows)
    ids = torch.full((n, L), pad_id, dtype=torch.long)
    mask = torch.zeros((n, L), dtype=torch.long)
    labels = torch.full((n, L), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        t = torch.tensor(r, dtype=torch.long)
        ids[i, : len(r)] = t
        mask[i, : len(r)] = 1
        if label_masks is None:
            labels[i, : len(r)] = t
        else:
            keep = torch.tensor(label_masks[i], dtype=torch.bool)
            labels[i, : len(r)] = torch.where(keep, t, torch.full_like(t, -100))
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def is_padded(batch: Mapping[str, torch.Tensor]) -> bool:
    """Whether a batch carries padding (then attention keeps an explicit mask: more memory)."""
    mask = batch.get("attention_mask")
    return mask is not None and not bool(mask.all())


def eval_seq_len(task: "Task | None", default: int) -> int:
    """Tokens per row of a task's evaluation forwards, at most (``default`` when unknown)."""
    return int(getattr(task, "eval_seq_len", None) or getattr(task, "eval_max_len", None) or default)


def training_padded(task: "Task", tokenizer: Any, batch_size: int, seq_len: int, seed: int, steps: int) -> bool:
    """Whether any of the ``steps`` training batches a trial reads carries padding: the memory
    model then counts attention's explicit mask, for every step (the peak must bound them all)."""
    batches = task.train_batches(tokenizer, batch_size, seq_len, seed)
    return any(is_padded(next(batches)) for _ in range(max(1, steps)))


def _pad_id(tokenizer: Any) -> int:
    pid = tokenizer.pad_token_id
    if pid is None:
        pid = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    return int(pid)


def _device(model: Any) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


# ----------------------------------------------------------------------------- tasks


class Task(ABC):
    """A fine-tuning task: endless training batches and an evaluation metric."""

    name: str = ""
    metric: str = ""  # the headline metric key in evaluate()'s result
    higher_is_better: bool = True
    fields: Mapping[str, FieldRule] = {}  # what each record of user data must hold

    @abstractmethod
    def train_texts(self, seed: int) -> Iterator[str]:
        """Endless training texts (shuffled per pass for finite data); also feeds calibration."""

    @abstractmethod
    def train_batches(self, tokenizer: Any, batch_size: int = 8, seq_len: int = 128, seed: int = 0
                      ) -> Iterator[dict[str, torch.Tensor]]:
        """Endless batches of input_ids, attention_mask, labels (-100 = not trained on)."""

    @abstractmethod
    def evaluate(self, model: Any, tokenizer: Any, **kw: Any) -> dict[str, float]:
        """Metrics of `model` on the held-out split."""


def _cycle_shuffled(items: Sequence[Any], seed: int) -> Iterator[Any]:
    rng = random.Random(seed)
    order = list(range(len(items)))
    while True:
        rng.shuffle(order)
        for i in order:
            yield items[i]


class LMTask(Task):
    """Perplexity on held-out text; trains on all tokens.

    The built-in version trains and evaluates on the same mixture (`corpus.LM_TASK_MIX`): the
    pretraining kinds whose tokens the blocks can predict (copies, recalled values, sums,
    memorized facts), so perplexity is not diluted by text that is random by construction.
    """

    name, metric, higher_is_better = "lm", "perplexity", False
    fields = {"text": TEXT}

    def __init__(self, path: str | None = None, eval_path: str | None = None, eval_rows: int = 64,
                 eval_seq_len: int = 128) -> None:
        self.path = path
        self.eval_rows, self.eval_seq_len = eval_rows, eval_seq_len
        if path is None:
            self._train = None
            self._eval = corpus.sample_documents(eval_rows * 8, seed=corpus.HELDOUT_SEED, mix=corpus.LM_TASK_MIX)
        else:
            tr, ev = load_records(path, self.fields, eval_path)
            self._train = [r["text"] for r in tr]
            self._eval = [r["text"] for r in ev]

    def train_texts(self, seed: int) -> Iterator[str]:
        if self._train is None:
            return corpus.documents(corpus.HELDOUT_SEED + 101 + seed, corpus.LM_TASK_MIX)
        return _cycle_shuffled(self._train, seed)

    def train_batches(self, tokenizer: Any, batch_size: int = 8, seq_len: int = 128, seed: int = 0
                      ) -> Iterator[dict[str, torch.Tensor]]:
        texts = self.train_texts(seed)
        pad = _pad_id(tokenizer)
        buf: list[list[int]] = []
        while True:
            while len(buf) < batch_size:
                buf.extend(pack_rows(encode_documents(tokenizer, [next(texts) for _ in range(64)]), seq_len))
            rows, buf = buf[:batch_size], buf[batch_size:]
            yield _collate(rows, pad)

    def eval_rows_tokens(self, tokenizer: Any, n_rows: int | None = None, seq_len: int | None = None
                         ) -> list[list[int]]:
        rows = pack_rows(encode_documents(tokenizer, self._eval), seq_len or self.eval_seq_len)
        return rows[: (n_rows or self.eval_rows)]

    @torch.no_grad()
    def evaluate(self, model: Any, tokenizer: Any, n_rows: int | None = None, seq_len: int | None = None,
                 batch_size: int = 16, **_: Any) -> dict[str, float]:
        rows = self.eval_rows_tokens(tokenizer, n_rows, seq_len)
        pad, dev = _pad_id(tokenizer), _device(model)
        nll, count = 0.0, 0
        for i in range(0, len(rows), batch_size):  # the logits a chunk of tokens at a time (loss.token_nll)
            batch = _collate(rows[i:i + batch_size], pad)
            part, n = token_nll(model, batch["input_ids"].to(dev), batch["attention_mask"].to(dev), batch["labels"])
            nll += part
            count += n
        mean = nll / max(1, count)
        return {"perplexity": math.exp(min(mean, 50.0)), "loss": mean, "tokens": float(count)}


class BoolQTask(Task):
    """Yes/no reading comprehension scored by answer log-likelihood; trains on the answer only.

    The built-in version mixes plain questions (learned in pretraining) with negated ones ("is
    the owl not big", rare in pretraining), so a pretrained model is above chance but not
    saturated and fine-tuning has something to teach (measured by
    `automix bench boolq`; numbers in `benchmarks/tiny_model.md`).
    """

    name, metric, higher_is_better = "boolq", "accuracy", True
    fields = {"question": TEXT, "passage": TEXT, "answer": YES_NO}
    ANSWERS = (" yes", " no")
    eval_max_len = 256  # tokens of a scored row, at most (prompt and answer)

    def __init__(self, path: str | None = None, eval_path: str | None = None, eval_size: int = 200,
                 negation_rate: float = 0.5) -> None:
        self.path = path
        self.eval_size = eval_size
        self.negation_rate = negation_rate
        if path is None:
            self._train = None
            rng = random.Random(corpus.BOOLQ_EVAL_SEED)
            self._eval = [self._from_example(corpus.passage_example(rng, negation_rate)) for _ in range(eval_size)]
        else:
            tr, ev = load_records(path, self.fields, eval_path)
            self._train = [self._from_record(r) for r in tr]
            self._eval = [self._from_record(r) for r in ev][:eval_size]

    @staticmethod
    def _from_example(ex: corpus.PassageExample) -> tuple[str, bool]:
        return corpus.boolq_prompt(ex.passage, ex.question), ex.answer

    @staticmethod
    def _from_record(rec: dict) -> tuple[str, bool]:
        """A record `check_record` has read with `fields` (the answer already a bool)."""
        return corpus.boolq_prompt(rec["passage"], rec["question"]), rec["answer"]

    def _train_examples(self, seed: int) -> Iterator[tuple[str, bool]]:
        if self._train is None:
            rng = random.Random(corpus.BOOLQ_TRAIN_SEED + seed)
            while True:
                yield self._from_example(corpus.passage_example(rng, self.negation_rate))
        yield from _cycle_shuffled(self._train, seed)

    def train_texts(self, seed: int) -> Iterator[str]:
        for prompt, ans in self._train_examples(seed):
            yield prompt + self.ANSWERS[0 if ans else 1]

    def train_batches(self, tokenizer: Any, batch_size: int = 8, seq_len: int = 256, seed: int = 0
                      ) -> Iterator[dict[str, torch.Tensor]]:
        examples = self._train_examples(seed)
        pad, eos = _pad_id(tokenizer), tokenizer.eos_token_id
        answer_ids = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in self.ANSWERS]
        while True:
            rows, masks = [], []
            for _ in range(batch_size):
                prompt, ans = next(examples)
                p = tokenizer(prompt)["input_ids"]
                a = answer_ids[0 if ans else 1] + ([eos] if eos is not None else [])
                p = p[-max(1, seq_len - len(a)):]  # keep the end of an over-long prompt
                rows.append(p + a)
                masks.append([False] * len(p) + [True] * len(a))
            yield _collate(rows, pad, masks)

    @torch.no_grad()
    def evaluate(self, model: Any, tokenizer: Any, n: int | None = None, batch_size: int = 32,
                 max_len: int | None = None, **_: Any) -> dict[str, float]:
        max_len = max_len or self.eval_max_len
        examples = self._eval[: (n or self.eval_size)]
        pad = _pad_id(tokenizer)
        cont = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in self.ANSWERS]
        correct, nll, yes = 0, 0.0, 0
        dev = _device(model)
        for i in range(0, len(examples), batch_size):
            chunk = examples[i:i + batch_size]
            prompts = [tokenizer(p)["input_ids"] for p, _ in chunk]
            scores = torch.zeros(len(chunk), 2)
            for j, c in enumerate(cont):
                rows = [(p[-(max_len - len(c)):] + c) for p in prompts]
                batch = _collate(rows, pad)
                # the answer's tokens, read at the positions before each (only those logits are made)
                pos = torch.tensor([[len(row) - len(c) - 1 + k for k in range(len(c))] for row in rows])
                logp = continuation_logprobs(model, batch["input_ids"].to(dev), batch["attention_mask"].to(dev),
                                             pos, torch.tensor(c).expand(len(rows), -1))
                scores[:, j] = logp.sum(1).cpu()
            pred_yes = scores[:, 0] > scores[:, 1]
            truth = torch.tensor([a for _, a in chunk])
            correct += int((pred_yes == truth).sum())
            yes += int(pred_yes.sum())
            two_way = torch.log_softmax(scores, dim=-1)
            nll -= float(two_way[torch.arange(len(chunk)), (~truth).long()].sum())
        n_ex = max(1, len(examples))
        return {"accuracy": correct / n_ex, "answer_nll": nll / n_ex, "yes_rate": yes / n_ex, "n": float(len(examples))}


TASKS = {"lm": LMTask, "boolq": BoolQTask}


def available_tasks() -> list[str]:
    return sorted(TASKS)


def task_class(name: str) -> type[Task]:
    """The task class of a name (ValueError naming the tasks there are)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(available_tasks())}")
    return TASKS[name]


def get_task(name: str, path: str | None = None, **kw: Any) -> Task:
    """A task by name; `path` (JSONL, saved dataset or a named data set such as
    'builtin:python-docs') replaces the built-in synthetic data."""
    return task_class(name)(path=path, **kw)


def calibration_batches(tokenizer: Any, n_samples: int = 128, seq_len: int = 256, seed: int = 0,
                        task: Task | str | None = None) -> torch.Tensor:
    """`n_samples` full rows of `seq_len` tokens from the task's training text (default: lm).

    Texts are joined (BOS text EOS ...) into one stream and cut into rows, as calibration sets
    for GPTQ/ApiQ-style methods usually are.
    """
    if n_samples < 1 or seq_len < 2:
        raise ValueError(f"need n_samples >= 1 and seq_len >= 2, got {n_samples}, {seq_len}")
    t = get_task(task) if isinstance(task, str) else (task or LMTask())
    texts = t.train_texts(seed + 9_000)
    stream: list[int] = []
    need = n_samples * seq_len
    while len(stream) < need:
        stream.extend(tok for ids in encode_documents(tokenizer, [next(texts) for _ in range(64)]) for tok in ids)
    return torch.tensor(stream[:need], dtype=torch.long).view(n_samples, seq_len)
