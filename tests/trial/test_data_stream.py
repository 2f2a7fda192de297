"""Task data is checked by one rule, line by line and streamed: `iter_jsonl` reads a JSONL file
lazily (errors name FILE:LINE and the field), `read_jsonl` and the tasks use it, and
`validate_data` checks every record of a task's data (and eval data) in constant memory."""

from __future__ import annotations

import inspect
import json
import tracemalloc

import pytest

from automix.trial import data

BOOLQ = {"question": "is the fox red", "passage": "the fox is red.", "answer": True}


def _write(path, lines):
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return path


def test_iter_jsonl_is_lazy(tmp_path):
    # a generator: the first records come out before a bad line further on is read
    p = _write(tmp_path / "d.jsonl", [{"text": "a"}, {"text": "b"}, "{not json"])
    it = data.iter_jsonl(p, ("text",))
    assert inspect.isgenerator(it)
    assert next(it) == {"text": "a"} and next(it) == {"text": "b"}
    with pytest.raises(data.DataError, match=r"d\.jsonl:3: invalid JSON"):
        next(it)
    # a missing file is refused at the call, not on the first record
    with pytest.raises(data.DataError, match=r"data file '.*nope\.jsonl' does not exist"):
        data.iter_jsonl(tmp_path / "nope.jsonl", ("text",))


@pytest.mark.parametrize("line,fields,message", [
    ('{"text": 5}', data.LMTask.fields, r"d\.jsonl:4: 'text' must be a string, got 5$"),
    ('{"text": null}', data.LMTask.fields, r"d\.jsonl:4: 'text' must be a string, got null$"),
    (json.dumps({**BOOLQ, "answer": "maybe"}), data.BoolQTask.fields,
     r"d\.jsonl:4: 'answer' must be a boolean \(true/false/yes/no\), got \"maybe\"$"),
    (json.dumps({**BOOLQ, "passage": ["a", "list"]}), data.BoolQTask.fields,
     r"d\.jsonl:4: 'passage' must be a string, got \[\"a\", \"list\"\]$"),
    ('{"question": "q"}', data.BoolQTask.fields, r"d\.jsonl:4: missing field\(s\) 'passage', 'answer'"),
    ("[1, 2]", ("text",), r"d\.jsonl:4: expected a JSON object, got list"),
])
def test_errors_name_file_line_field_and_what_was_expected(tmp_path, line, fields, message):
    good = {"text": "ok"} if "text" in fields else BOOLQ
    p = _write(tmp_path / "d.jsonl", [good, "", good, line, good])  # line 2 is blank: still counted
    with pytest.raises(data.DataError, match=message):
        list(data.iter_jsonl(p, fields))


def test_rules_read_values_as_the_task_uses_them(tmp_path):
    p = _write(tmp_path / "b.jsonl", [{**BOOLQ, "answer": "Yes"}, {**BOOLQ, "answer": 0, "extra": 1}])
    recs = list(data.iter_jsonl(p, data.BoolQTask.fields))
    assert [r["answer"] for r in recs] == [True, False] and recs[1]["extra"] == 1
    assert [r["answer"] for r in data.read_jsonl(p, ("answer",))] == ["Yes", 0]  # names only: as written


def test_not_utf8_and_bom(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"text": "bom"}\n{"text": "caf\xe9"}\n')
    it = data.iter_jsonl(p, ("text",))
    assert next(it) == {"text": "bom"}  # a byte-order mark on the first line is allowed
    with pytest.raises(data.DataError, match=r"d\.jsonl:2: not UTF-8 text"):
        next(it)


def test_empty_file(tmp_path):
    p = _write(tmp_path / "e.jsonl", ["", "  "])
    with pytest.raises(data.DataError, match=r"e\.jsonl is empty \(expected JSONL records with text\)"):
        list(data.iter_jsonl(p, ("text",)))


def test_read_jsonl_and_the_tasks_use_iter_jsonl(tmp_path, monkeypatch):
    p = _write(tmp_path / "t.jsonl", [{"text": f"doc {i}"} for i in range(12)])
    calls = []
    real = data.iter_jsonl

    def spy(path, required):
        calls.append(str(path))
        return real(path, required)

    monkeypatch.setattr(data, "iter_jsonl", spy)
    assert len(data.read_jsonl(p, ("text",))) == 12
    task = data.get_task("lm", str(p))
    assert len(task._train) + len(task._eval) == 12
    assert calls == [str(p), str(p)]


def test_task_errors_name_the_line_not_a_record_index(tmp_path):
    # the tasks check types with the same rule: a wrong type names FILE:LINE
    p = _write(tmp_path / "t.jsonl", [{"text": "a"}, "", {"text": "b"}, {"text": 7}])
    with pytest.raises(ValueError, match=r"t\.jsonl:4: 'text' must be a string, got 7"):
        data.get_task("lm", str(p))
    ev = _write(tmp_path / "ev.jsonl", [{"text": "a"}, {"text": False}])
    with pytest.raises(ValueError, match=r"ev\.jsonl:2: 'text' must be a string"):
        data.get_task("lm", str(_write(tmp_path / "ok.jsonl", [{"text": "a"}])), eval_path=str(ev))


def test_validate_data_checks_every_line_and_the_eval_data(tmp_path):
    n = 5000
    lines = [dict(BOOLQ, question=f"is it {i}") for i in range(n)]
    p = _write(tmp_path / "big.jsonl", lines)
    assert data.validate_data("boolq", p) == (n, None)
    lines[n - 3] = {**BOOLQ, "answer": "perhaps"}  # near the end, past any sample
    _write(p, lines)
    with pytest.raises(data.DataError, match=rf"big\.jsonl:{n - 2}: 'answer' must be a boolean") as err:
        data.validate_data("boolq", p)
    assert err.value.role == "data"

    good = _write(tmp_path / "good.jsonl", [BOOLQ] * 3)
    ev = _write(tmp_path / "ev.jsonl", [BOOLQ, BOOLQ, {"question": "q", "answer": True}])
    with pytest.raises(data.DataError, match=r"ev\.jsonl:3: missing field\(s\) 'passage'") as err:
        data.validate_data("boolq", good, ev)
    assert err.value.role == "eval data"
    with pytest.raises(data.DataError, match=r"eval data path '.*none\.jsonl' does not exist") as err:
        data.validate_data("boolq", good, tmp_path / "none.jsonl")
    assert err.value.role == "eval data"
    assert data.validate_data("boolq", good, _write(tmp_path / "ev2.jsonl", [BOOLQ])) == (3, 1)
    with pytest.raises(data.DataError, match="need at least 2 records"):
        data.validate_data("boolq", _write(tmp_path / "one.jsonl", [BOOLQ]))
    with pytest.raises(data.DataError, match=r"data path '.*missing' does not exist"):
        data.validate_data("lm", tmp_path / "missing")
    with pytest.raises(ValueError, match="unknown task 'mmlu'"):
        data.validate_data("mmlu", good)


def test_validate_data_memory_does_not_grow_with_the_file(tmp_path):
    text = "the quick brown fox jumps over the lazy dog " * 4
    p = tmp_path / "big.jsonl"
    with open(p, "w") as f:
        for i in range(40_000):
            f.write(json.dumps({"text": f"{i} {text}"}) + "\n")
    size = p.stat().st_size
    assert size > 6_000_000

    def peak(fn):
        tracemalloc.start()
        try:
            fn()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    streamed = peak(lambda: data.validate_data("lm", p))
    assert streamed < 512 * 1024, f"validating a {size} B file took {streamed} B"
    assert peak(lambda: data.read_jsonl(p, ("text",))) > size  # what loading it all would take


def test_saved_dataset_rows_are_checked_with_the_same_rule(tmp_path):
    datasets = pytest.importorskip("datasets")

    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"question": ["q"] * 3, "passage": ["p"] * 3,
                                             "answer": ["yes", "no", "maybe"]}),
    }).save_to_disk(str(tmp_path / "bq"))
    with pytest.raises(data.DataError, match=r"bq \(train split\) row 3: 'answer' must be a boolean"):
        data.validate_data("boolq", tmp_path / "bq")
    with pytest.raises(data.DataError, match=r"bq \(train split\) row 3: 'answer' must be a boolean"):
        data.get_task("boolq", str(tmp_path / "bq"))
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": ["a", "b"]}),
        "validation": datasets.Dataset.from_dict({"text": ["c"]}),
    }).save_to_disk(str(tmp_path / "lm"))
    assert data.validate_data("lm", tmp_path / "lm") == (2, 1)


def test_named_data_is_validated_from_its_files(tmp_path):
    n_train, n_eval = data.validate_data("lm", "builtin:python-docs")
    assert n_train > 100 and n_eval > 10
    with pytest.raises(data.DataError, match="this task needs question, passage, answer"):
        data.validate_data("boolq", "builtin:python-docs")
    with pytest.raises(data.DataError, match="unknown data set 'builtin:nope'"):
        data.validate_data("lm", "builtin:nope")
