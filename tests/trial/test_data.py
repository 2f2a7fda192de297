"""Tasks, their data loading (JSONL, saved datasets, built-in) and error messages."""

from __future__ import annotations

import json
import math

import pytest
import torch

from automix.trial import data
from automix.trial.pretrain import build_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(256, n_docs=3000)


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


class _Uniform(torch.nn.Module):
    """A 'model' with uniform next-token logits: perplexity must equal the vocabulary size."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.p = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask=None):
        class Out:
            pass

        o = Out()
        o.logits = torch.zeros(*input_ids.shape, self.vocab) + self.p
        return o


class _Biased(_Uniform):
    """Prefers one token everywhere (by its id), e.g. always ' yes'."""

    def __init__(self, vocab, token_ids):
        super().__init__(vocab)
        self.token_ids = token_ids

    def forward(self, input_ids, attention_mask=None):
        o = super().forward(input_ids)
        o.logits[..., self.token_ids] += 8.0
        return o


def test_lm_task_from_jsonl_batches_and_uniform_perplexity(tmp_path, tok):
    p = _write_jsonl(tmp_path / "t.jsonl", [{"text": f"the fox sees the owl {i}."} for i in range(30)])
    task = data.get_task("lm", str(p))
    assert len(task._eval) == 3 and len(task._train) == 27  # every 10th record held out
    b = next(task.train_batches(tok, batch_size=4, seq_len=32, seed=0))
    assert b["input_ids"].shape == (4, 32) or b["input_ids"].shape[0] == 4
    assert ((b["labels"] == -100) == (b["attention_mask"] == 0)).all()
    r = task.evaluate(_Uniform(len(tok)), tok)
    assert math.isclose(r["perplexity"], len(tok), rel_tol=1e-4)
    assert r["tokens"] > 0


def test_train_batches_are_deterministic_per_seed(tok):
    task = data.get_task("lm")
    a = next(task.train_batches(tok, 4, 64, seed=3))["input_ids"]
    b = next(task.train_batches(tok, 4, 64, seed=3))["input_ids"]
    c = next(task.train_batches(tok, 4, 64, seed=4))["input_ids"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_boolq_scoring_follows_answer_likelihood(tmp_path, tok):
    recs = [{"question": f"is the fox red {i}", "passage": "the fox is red.", "answer": i % 3 == 0}
            for i in range(40)]
    task = data.get_task("boolq", str(_write_jsonl(tmp_path / "b.jsonl", recs)))
    yes_ids = tok(" yes", add_special_tokens=False)["input_ids"]
    no_ids = tok(" no", add_special_tokens=False)["input_ids"]
    truth = [a for _, a in task._eval]
    r_yes = task.evaluate(_Biased(len(tok), yes_ids), tok)
    r_no = task.evaluate(_Biased(len(tok), no_ids), tok)
    assert r_yes["yes_rate"] == 1.0 and r_no["yes_rate"] == 0.0
    assert r_yes["accuracy"] == pytest.approx(sum(truth) / len(truth))
    assert r_no["accuracy"] == pytest.approx(1 - sum(truth) / len(truth))
    # training batches carry labels on the answer (+EOS) only
    b = next(task.train_batches(tok, batch_size=3, seq_len=128, seed=0))
    for row in range(3):
        lab = b["labels"][row][b["labels"][row] != -100].tolist()
        assert lab in (yes_ids + [tok.eos_token_id], no_ids + [tok.eos_token_id])


def test_builtin_tasks_have_data(tok):
    bq = data.get_task("boolq")
    assert len(bq._eval) == 200 and 0.3 < sum(a for _, a in bq._eval) / 200 < 0.7
    assert any(" not " in p for p, _ in bq._eval)  # the harder negated variant is in the eval set
    lm = data.get_task("lm")
    rows = lm.eval_rows_tokens(tok)
    assert len(rows) == 64 and all(len(r) <= 128 for r in rows)


def test_calibration_batches_shape_and_seed(tok):
    c = data.calibration_batches(tok, n_samples=5, seq_len=40, seed=1)
    assert c.shape == (5, 40) and c.dtype == torch.long
    assert torch.equal(c, data.calibration_batches(tok, 5, 40, seed=1))
    assert not torch.equal(c, data.calibration_batches(tok, 5, 40, seed=2))
    cb = data.calibration_batches(tok, 2, 30, task="boolq")
    assert "passage" in tok.decode(cb[0])
    with pytest.raises(ValueError):
        data.calibration_batches(tok, 0, 10)


def test_saved_dataset_directory(tmp_path, tok):
    import datasets

    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"question": ["is the fox red"] * 4, "passage": ["the fox is red."] * 4,
                                             "answer": [True, False, True, True]}),
        "validation": datasets.Dataset.from_dict({"question": ["is the owl big"], "passage": ["the owl is big."],
                                                  "answer": [True]}),
    })
    dd.save_to_disk(str(tmp_path / "bq"))
    task = data.get_task("boolq", str(tmp_path / "bq"))
    assert len(task._train) == 4 and len(task._eval) == 1
    datasets.Dataset.from_dict({"txt": ["a"]}).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="missing column.*'text'"):
        data.get_task("lm", str(tmp_path / "bad"))


def test_data_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        data.get_task("lm", str(tmp_path / "missing.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="empty.jsonl is empty"):
        data.get_task("lm", str(tmp_path / "empty.jsonl"))
    p = tmp_path / "bq.jsonl"
    p.write_text(json.dumps({"question": "q", "passage": "p", "answer": True}) + "\n"
                 + json.dumps({"question": "q", "answer": False}) + "\n")
    with pytest.raises(ValueError, match=r"bq\.jsonl:2: missing field\(s\) 'passage'"):
        data.get_task("boolq", str(p))
    p.write_text(json.dumps({"question": "q", "passage": "p", "answer": "maybe"}) + "\n" * 2
                 + json.dumps({"question": "q", "passage": "p", "answer": True}) + "\n")
    with pytest.raises(ValueError, match="'answer' must be a boolean"):
        data.get_task("boolq", str(p))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: invalid JSON"):
        data.get_task("lm", str(tmp_path / "bad.jsonl"))
    with pytest.raises(ValueError, match="unknown task 'mmlu'; available: boolq, lm"):
        data.get_task("mmlu")
