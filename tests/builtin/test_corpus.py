"""The built-in corpus: every document's deterministic part is right, so the model learns real skills."""

from __future__ import annotations

import random
import re

from automix.builtin import corpus


def test_recall_queries_repeat_the_digit_stored_for_the_key():
    for doc in corpus.sample_documents(200, seed=11, mix={"recall": 1.0}):
        facts, sep, queries = doc.removeprefix("recall: ").partition(" ; ")
        assert sep
        table = {f[:-1]: f[-1] for f in facts.split()}
        assert len(table) == len(facts.split()) >= 3  # distinct one-letter keys
        for q in queries.split():
            assert len(q) == 2 and q[-1].isdigit() and table[q[:-1]] == q[-1]


def test_add_documents_are_correct_sums():
    seen_two_digit = False
    for doc in corpus.sample_documents(200, seed=12, mix={"add": 1.0}):
        a, b, s = map(int, re.fullmatch(r"add: (\d+)\+(\d+)=(\d+)", doc).groups())
        assert a + b == s and b < 10
        seen_two_digit |= a >= 10
    assert seen_two_digit


def test_passage_documents_answer_every_question_from_the_passage():
    n_questions = 0
    for doc in corpus.sample_documents(200, seed=13, mix={"passage": 1.0}):
        passage = re.match(r"passage: (.*?) question:", doc).group(1)
        facts = dict(re.findall(r"the (\w+) is (\w+)\.", passage))
        qa = re.findall(r"question: is the (\w+) (not )?(\w+)\? answer: (yes|no)", doc)
        assert 1 <= len(qa) <= 3
        for noun, neg, value, answer in qa:
            truth = facts[noun] == value
            assert (answer == "yes") == (truth != bool(neg)), doc
        n_questions += len(qa)
    assert n_questions > 300  # several questions per passage on average


def test_boolq_examples_are_balanced_and_consistent():
    rng = random.Random(0)
    exs = [corpus.passage_example(rng, negation_rate=0.5) for _ in range(400)]
    assert 0.4 < sum(e.answer for e in exs) / len(exs) < 0.6
    for e in exs:
        facts = dict(re.findall(r"the (\w+) is (\w+)\.", e.passage))
        noun, neg, value = re.fullmatch(r"is the (\w+) (not )?(\w+)", e.question).groups()
        assert e.answer == ((facts[noun] == value) != bool(neg))


def test_no_answers_ask_values_the_passage_never_states_often_of_an_unmentioned_kind():
    """The learnable part of the BoolQ-style task: a "no" never hinges on which noun has a value
    (unless the kind has no value left), and a share of them ask about a kind never mentioned."""
    kind_of = {v: k for k, vs in corpus.ATTRIBUTES.items() for v in vs}
    rng = random.Random(5)
    n_no = other_kind = 0
    for _ in range(2000):
        e = corpus.passage_example(rng)
        stated = dict(re.findall(r"the (\w+) is (\w+)\.", e.passage))
        kinds = {kind_of[v] for v in stated.values()}
        assert 1 <= len(kinds) <= 2
        if e.answer:
            continue
        noun, value = re.fullmatch(r"is the (\w+) (\w+)", e.question).groups()
        n_no += 1
        if kind_of[value] not in kinds:
            other_kind += 1
        elif value in stated.values():  # only when every other value of the kind is stated
            assert set(corpus.ATTRIBUTES[kind_of[value]]) - {stated[noun]} <= set(stated.values())
    assert abs(other_kind / n_no - corpus.OTHER_KIND_WHEN_FALSE) < 0.05
