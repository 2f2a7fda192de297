"""builtin:python-docs: real English from CPython's own documentation, built offline, fixed split."""

from __future__ import annotations

import json
import textwrap

import pytest

from automix.builtin import builtin_model_dir
from automix.trial import pydocs
from automix.trial.data import DataError, LMTask, calibration_batches, get_task, is_named_data, load_records
from automix.trial.models import load_tokenizer

LONG = ("This function explains, in plain English and at some length, what it does with its "
        "arguments, why it exists and what a caller should expect from it in return. ") * 3


@pytest.fixture
def fake_stdlib(tmp_path):
    root = tmp_path / "lib"
    (root / "pkg").mkdir(parents=True)
    (root / "test").mkdir()
    (root / "pkg" / "tests").mkdir()
    (root / "alpha.py").write_text(textwrap.dedent(f'''
        """Alpha module. {LONG}"""

        def first():
            """First function. {LONG}"""

        class Thing:
            """Short."""

            def method(self):
                """Method docstring. {LONG}"""

        def copy():
            """First function. {LONG}"""
        '''))
    (root / "pkg" / "beta.py").write_text(f'"""Beta module. {LONG}"""\n')
    (root / "test" / "test_alpha.py").write_text(f'"""A test suite. {LONG}"""\n')
    (root / "pkg" / "tests" / "t.py").write_text(f'"""Tests of pkg. {LONG}"""\n')
    (root / "broken.py").write_text('"""Python 2 syntax. ' + LONG + '"""\nprint "hello"\n')
    return root


def test_documents_follow_the_rules(fake_stdlib):
    docs = pydocs.documents(fake_stdlib)
    units = [u for u, _ in docs]
    module_docs = [(u, t) for u, t in docs if u.startswith("module:")]
    # source order inside a module, modules by path; the duplicate and the short docstring are
    # dropped; test suites and files that do not parse are not read
    assert [(u, t.split(".")[0]) for u, t in module_docs] == [
        ("module:alpha", "Alpha module"), ("module:alpha", "First function"),
        ("module:alpha", "Method docstring"), ("module:pkg.beta", "Beta module")]
    # the Language Reference topics come first, cut at headings, sorted by topic
    topics = [u for u in units if u.startswith("topic:")]
    assert topics and topics == sorted(topics) and units[: len(topics)] == topics
    assert all(len(t) >= pydocs.MIN_CHARS for _, t in docs)
    assert len({" ".join(t.split()) for _, t in docs}) == len(docs)
    assert any(t.startswith('The "assert" statement') for u, t in docs if u == "topic:assert")


def test_build_is_deterministic_with_a_fixed_split(fake_stdlib, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    ma, mb = pydocs.build_corpus(a, fake_stdlib), pydocs.build_corpus(b, fake_stdlib)
    assert ma == mb
    for f in ("train.jsonl", "eval.jsonl", "manifest.json"):
        assert (a / f).read_bytes() == (b / f).read_bytes()
    train = [json.loads(line) for line in (a / "train.jsonl").read_text().splitlines()]
    evl = [json.loads(line) for line in (a / "eval.jsonl").read_text().splitlines()]
    assert ma["splits"]["train"]["documents"] == len(train) and ma["splits"]["eval"]["documents"] == len(evl)
    assert {r["source"] for r in train}.isdisjoint({r["source"] for r in evl})  # whole units per side
    assert all(pydocs.split_of(r["source"]) == "eval" for r in evl)
    assert all(pydocs.split_of(r["source"]) == "train" for r in train)


def test_split_of_is_fixed_and_about_one_in_ten():
    units = [f"module:m{i}" for i in range(2000)]
    held = sum(pydocs.split_of(u) == "eval" for u in units)
    assert 150 < held < 250
    assert pydocs.split_of("topic:assert") == pydocs.split_of("topic:assert")


def test_the_real_corpus_as_lm_task_data():
    train_file, eval_file = pydocs.corpus_files()  # built into the test session's cache
    manifest = json.loads((train_file.parent / "manifest.json").read_text())
    tr, ev = manifest["splits"]["train"], manifest["splits"]["eval"]
    assert tr["documents"] > 1000 and tr["chars"] > 1_000_000  # CPython 3.11: 2279 docs, 1.55 MB
    assert 0.05 < ev["documents"] / (tr["documents"] + ev["documents"]) < 0.2
    stamp = train_file.stat().st_mtime_ns
    assert pydocs.corpus_files() == (train_file, eval_file) and train_file.stat().st_mtime_ns == stamp

    assert is_named_data("builtin:python-docs") and not is_named_data("data/x.jsonl")
    task = get_task("lm", path="builtin:python-docs")
    train, evl = load_records("builtin:python-docs", ("text",))
    assert len(train) == tr["documents"] and len(evl) == ev["documents"]
    tok = load_tokenizer(builtin_model_dir("tiny"))
    batch = next(task.train_batches(tok, batch_size=2, seq_len=32))
    assert batch["input_ids"].shape == (2, 32)
    assert len(task.eval_rows_tokens(tok, n_rows=4, seq_len=32)) == 4
    calib = calibration_batches(tok, n_samples=3, seq_len=16, task=task)
    assert calib.shape == (3, 16)
    # an explicit eval file still wins over the named set's own split
    assert LMTask(path="builtin:python-docs", eval_path=str(train_file))._eval[0] == train[0]["text"]


def test_named_data_errors():
    with pytest.raises(DataError, match=r"unknown data set 'builtin:nope'; named data sets: builtin:python-docs"):
        get_task("lm", path="builtin:nope")
    with pytest.raises(DataError, match=r"'builtin:python-docs' has records with text; this task needs "
                                        r"question, passage, answer"):
        get_task("boolq", path="builtin:python-docs")
