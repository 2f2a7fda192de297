"""The built-in synthetic corpus: small, low-entropy tasks that need precise block weights.

A model that only learns token statistics lives in its embeddings, which automix never
quantizes, so quantizing it changes nothing and the search would have nothing to find. Every
document kind here has a deterministic part that can only be predicted by attending back into
the context (copying, key-value recall, reading a passage) or by computing (carrying digits), so
the trained model's low loss depends on its attention and MLP weights.

Document kinds (one line each):
  copy:    "copy: kep zor wib > kep zor wib" (70% of the time the copy starts at a random word:
           "copy: kep zor wib > zor wib")
  recall:  "recall: k3 m8 t1 ; m8 k3" (one-token keys right before their digit, so a lookup is
           the induction pattern: find the earlier key, copy the token after it)
  add:     "add: 4+9=13", "add: 47+8=55" (one or two digits plus one digit)
  facts:   "facts: zibo has 471. kuta has 120." - a run of consecutive entries of a fixed,
           ordered table of entities and numbers that is the same in every document, so
           everything after the first entity name can only be known from memory (MLP weights):
           the kind of knowledge quantization destroys first in real LLMs
  passage: BoolQ-style "passage: the fox is red. ... question: is the fox red? answer: yes",
           with 1-3 questions about the same passage (more answer tokens per document); a "no"
           asks a value the passage does not state, often of a kind it never mentions
  text:    template sentences ("the big fox sees a red owl.") for a bit of natural-ish text
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterator

LETTERS = "abcdefghijklmnopqrstuvwxyz"
CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
NOUNS = ["fox", "owl", "cat", "dog", "cup", "box", "hat", "car", "bee", "cow", "pig", "ant",
         "bat", "elk", "hen", "jar", "key", "map", "pen", "rug", "van", "yak", "bus", "toy"]
ATTRIBUTES = {
    "color": ["red", "blue", "green", "black", "white", "pink"],
    "size": ["big", "small", "tall", "short"],
    "mood": ["happy", "sad", "calm", "angry"],
}
VERBS = ["sees", "likes", "finds", "helps", "follows", "hears"]
PLACES = ["near the river", "in the park", "at home", "on the hill", "by the road"]


def _syllable_word(rng: random.Random) -> str:
    return rng.choice(CONSONANTS) + rng.choice(VOWELS) + rng.choice(CONSONANTS)


COPY_FROM_START = 0.3  # share of copies that start at the first word


def copy_doc(rng: random.Random) -> str:
    """A word string, then the string again, mostly from a random word onwards: a
    predictable copy whose offset varies, so only induction (find the current token earlier in
    the context, predict what followed it) solves it, not a fixed positional shift."""
    words = [_syllable_word(rng) for _ in range(rng.randint(2, 6))]
    start = 0 if rng.random() < COPY_FROM_START else rng.randrange(len(words))
    return f"copy: {' '.join(words)} > {' '.join(words[start:])}"


def recall_doc(rng: random.Random) -> str:
    keys = rng.sample(LETTERS, k=rng.randint(3, 6))
    vals = [str(rng.randint(0, 9)) for _ in keys]
    facts = " ".join(f"{k}{v}" for k, v in zip(keys, vals))
    q = rng.sample(range(len(keys)), k=rng.randint(2, len(keys)))
    queries = " ".join(f"{keys[i]}{vals[i]}" for i in q)
    return f"recall: {facts} ; {queries}"


def add_doc(rng: random.Random) -> str:
    a = rng.randint(0, 9) if rng.random() < 0.6 else rng.randint(10, 99)
    b = rng.randint(0, 9)
    return f"add: {a}+{b}={a + b}"


# Large enough to put the model under capacity pressure (measured: 256 entries were learned
# with room to spare and barely noticed 4-bit rounding; 1024 made facts fragile under 2/3-bit).
KNOWLEDGE_SIZE = 1024
_KNOWLEDGE_SEED = 20_241_125


def knowledge_table() -> list[tuple[str, str]]:
    """The fixed (entity, 3-digit number) table every `facts` document draws from."""
    rng = random.Random(_KNOWLEDGE_SEED)
    names: list[str] = []
    while len(names) < KNOWLEDGE_SIZE:
        n = rng.choice(CONSONANTS) + rng.choice(VOWELS) + rng.choice(CONSONANTS) + rng.choice(VOWELS)
        if n not in names:
            names.append(n)
    return [(n, str(rng.randint(100, 999))) for n in names]


_KNOWLEDGE = knowledge_table()


def facts_doc(rng: random.Random) -> str:
    """2-4 consecutive table entries from a random start: only the first name is unpredictable."""
    start, k = rng.randrange(len(_KNOWLEDGE)), rng.randint(2, 4)
    picks = [_KNOWLEDGE[(start + j) % len(_KNOWLEDGE)] for j in range(k)]
    return "facts: " + " ".join(f"{e} has {v}." for e, v in picks)


@dataclass(frozen=True)
class PassageExample:
    """One BoolQ-style example: BoolQ's own fields plus the formatted prompt."""

    passage: str
    question: str
    answer: bool


# How a "no" question is built. Measured (benchmarks/tiny_model.md): in a few hundred steps,
# even on passages alone, the tiny model cannot learn an exact token-identity check (is this
# value in the passage?), but it learns "does the passage say anything of this kind" in 200.
# So most "no"s ask about a kind the passage never mentions (the learnable part); the rest ask
# a same-kind value the passage does not state (the identity part). A value another noun has
# (which needs the noun-value binding, never learned in any recipe run) is asked only when
# every other value of the kind is stated.
OTHER_KIND_WHEN_FALSE = 0.6  # ask a value of a kind the passage does not mention at all
ABSENT_WHEN_FALSE = 1.0  # of the rest: a same-kind value stated for no noun of the passage


def _passage_facts(rng: random.Random) -> list[tuple[str, str, str]]:
    """2-4 (noun, attribute kind, value) facts about distinct nouns, of one or two kinds."""
    kinds = rng.sample(sorted(ATTRIBUTES), k=rng.randint(1, 2))
    facts = []
    for noun in rng.sample(NOUNS, k=rng.randint(2, 4)):
        kind = rng.choice(kinds)
        facts.append((noun, kind, rng.choice(ATTRIBUTES[kind])))
    return facts


def _passage_text(facts: list[tuple[str, str, str]]) -> str:
    return " ".join(f"the {n} is {v}." for n, _, v in facts)


def _false_value(rng: random.Random, facts: list[tuple[str, str, str]], kind: str, value: str) -> str:
    """A value the passage does not state for the asked noun (see OTHER_KIND_WHEN_FALSE)."""
    mentioned = {k for _, k, _ in facts}
    unmentioned = [k for k in sorted(ATTRIBUTES) if k not in mentioned]
    if unmentioned and rng.random() < OTHER_KIND_WHEN_FALSE:
        return rng.choice(ATTRIBUTES[rng.choice(unmentioned)])
    same_kind = [v for v in ATTRIBUTES[kind] if v != value]
    if rng.random() < ABSENT_WHEN_FALSE:
        stated = {v for _, _, v in facts}
        same_kind = [v for v in same_kind if v not in stated] or same_kind
    return rng.choice(same_kind)


def _question(rng: random.Random, facts: list[tuple[str, str, str]], negation_rate: float) -> tuple[str, bool]:
    """A yes/no question about one of the facts, and its answer."""
    noun, kind, value = rng.choice(facts)
    truth = rng.random() < 0.5
    asked = value if truth else _false_value(rng, facts, kind, value)
    negated = rng.random() < negation_rate
    question = f"is the {noun} not {asked}" if negated else f"is the {noun} {asked}"
    return question, truth != negated


def passage_example(rng: random.Random, negation_rate: float = 0.0) -> PassageExample:
    """Facts about 2-4 distinct things; a yes/no question about one of them.

    With probability `negation_rate` the question is negated ("is the owl not big"), which
    flips the answer: a harder variant that fine-tuning can teach.
    """
    facts = _passage_facts(rng)
    question, answer = _question(rng, facts, negation_rate)
    return PassageExample(_passage_text(facts), question, answer)


def boolq_prompt(passage: str, question: str) -> str:
    """The prompt both the corpus and the BoolQ task use; the answer follows as ' yes' / ' no'."""
    return f"passage: {passage.strip()} {_question_prompt(question)}"


def _question_prompt(question: str) -> str:
    q = question.strip()
    if not q.endswith("?"):
        q += "?"
    return f"question: {q} answer:"


def passage_doc(rng: random.Random, negation_rate: float = 0.05) -> str:
    """A BoolQ-style prompt and answer, then up to two more questions on the same passage."""
    facts = _passage_facts(rng)
    parts = [f"passage: {_passage_text(facts)}"]
    for _ in range(rng.randint(1, 3)):
        question, answer = _question(rng, facts, negation_rate)
        parts.append(_question_prompt(question) + (" yes" if answer else " no"))
    return " ".join(parts)


def text_doc(rng: random.Random) -> str:
    def np_() -> str:
        det = rng.choice(["the", "a"])
        if rng.random() < 0.5:
            cat = rng.choice(sorted(ATTRIBUTES))
            return f"{det} {rng.choice(ATTRIBUTES[cat])} {rng.choice(NOUNS)}"
        return f"{det} {rng.choice(NOUNS)}"

    sents = []
    for _ in range(rng.randint(1, 3)):
        s = f"{np_()} {rng.choice(VERBS)} {np_()}"
        if rng.random() < 0.4:
            s += " " + rng.choice(PLACES)
        sents.append(s + ".")
    return " ".join(sents)


DOC_KINDS: dict[str, Callable[[random.Random], str]] = {
    "copy": copy_doc,
    "recall": recall_doc,
    "add": add_doc,
    "facts": facts_doc,
    "passage": passage_doc,
    "text": text_doc,
}

# Mixture weights of the pretraining corpus.
DEFAULT_MIX: dict[str, float] = {"copy": 0.28, "recall": 0.14, "add": 0.10, "facts": 0.33, "passage": 0.10,
                                  "text": 0.05}


# Mixture of the built-in `lm` task (its fine-tuning stream and its held-out perplexity text):
# the kinds whose tokens are mostly determined by the context or by memory, so perplexity
# measures what the blocks know rather than the irreducible randomness of keys and names.
LM_TASK_MIX: dict[str, float] = {"copy": 0.25, "recall": 0.1, "add": 0.05, "facts": 0.6}


def documents(seed: int, mix: dict[str, float] | None = None) -> Iterator[str]:
    """An endless, seeded stream of documents drawn from the mixture."""
    mix = dict(DEFAULT_MIX if mix is None else mix)
    unknown = set(mix) - set(DOC_KINDS)
    if unknown:
        raise ValueError(f"unknown document kinds {sorted(unknown)}; known: {sorted(DOC_KINDS)}")
    rng = random.Random(seed)
    kinds, weights = list(mix), [mix[k] for k in mix]
    while True:
        yield DOC_KINDS[rng.choices(kinds, weights)[0]](rng)


def sample_documents(n: int, seed: int, mix: dict[str, float] | None = None) -> list[str]:
    """`n` documents from the stream for `seed`."""
    it = documents(seed, mix)
    return [next(it) for _ in range(n)]


# Seeds are split so that pretraining, held-out evaluation and task data never share a stream.
TRAIN_SEED_BASE = 1_000
HELDOUT_SEED = 7_777_001
BOOLQ_TRAIN_SEED = 7_777_002
BOOLQ_EVAL_SEED = 7_777_003
PROBE_SEED = 7_777_004
