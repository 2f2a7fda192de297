"""Real, human-written English text on every machine: the documentation CPython ships with.

``builtin:python-docs`` is built from two parts of the running interpreter's standard library,
read as text (nothing is imported or executed):

* the Language Reference topics in ``pydoc_data/topics.py`` (what ``help("assert")`` shows):
  ~80 topics, ~450 KB of prose, cut into section-level documents at their headings;
* the docstrings (module, class, function) of the standard library's ``.py`` files, parsed with
  `ast`, without the test suites and other folders listed in `_SKIP_PARTS`.

Both come with the interpreter, so every machine with the same CPython version builds the same
corpus, byte for byte, with no network and no extra package (Debian's python3-doc is not
installed everywhere). Documents shorter than `MIN_CHARS` are dropped, exact duplicates (after
whitespace normalisation) keep their first occurrence, the order is fixed (topics by name, then
modules by path, docstrings in source order). The held-out split is fixed per source unit (a
topic or a module): a unit is held out when the sha256 of its name is 0 mod `HELDOUT_EVERY`, so
no module has text on both sides and adding a module never moves another one.

`corpus_files()` builds ``train.jsonl`` / ``eval.jsonl`` (records ``{"text", "source"}``) and
``manifest.json`` once into ``<cache_root>/data/python-docs-v<BUILD>-py<X.Y.Z>/``.
"""

from __future__ import annotations

import ast
import hashlib
import json
import platform
import re
import sys
import sysconfig
import warnings
from pathlib import Path
from typing import Iterator

from automix.config.locations import cache_root
from automix.trial.cache import atomic_dir

__all__ = ["NAME", "MIN_CHARS", "HELDOUT_EVERY", "documents", "split_of", "build_corpus", "corpus_dir",
           "corpus_files"]

NAME = "python-docs"
BUILD = 1  # bump when the rules below change: a new cache folder is built
MIN_CHARS = 200
HELDOUT_EVERY = 10
_SKIP_PARTS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "lib2to3", "turtledemo",
               "pydoc_data", "__pycache__", "ensurepip"}
_UNDERLINE = re.compile(r"^([*=\-~^+#])\1{2,}$")


def _norm(text: str) -> str:
    return " ".join(text.split())


def _topic_sections(text: str) -> Iterator[str]:
    """Section-level pieces of one topic: a heading (a line underlined by ***, ===, ---, ...)
    starts a new piece once the current one has `MIN_CHARS`; shorter pieces join the next."""
    lines = text.strip("\n").splitlines()
    cur: list[str] = []
    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        is_heading = bool(line.strip()) and bool(_UNDERLINE.match(nxt.strip())) and len(nxt.strip()) >= len(line.strip())
        if is_heading and len("\n".join(cur).strip()) >= MIN_CHARS:
            yield "\n".join(cur).strip()
            cur = []
        cur.append(line)
    if cur:
        yield "\n".join(cur).strip()


def _topic_documents() -> Iterator[tuple[str, str]]:
    from pydoc_data.topics import topics  # lazy: 500 KB of text, read only when the corpus is built

    for key in sorted(topics):
        for piece in _topic_sections(topics[key]):
            yield f"topic:{key}", piece


def _stdlib_files(root: Path) -> list[Path]:
    out = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).parts
        if rel[0].startswith("config-") or _SKIP_PARTS.intersection(rel):
            continue
        out.append(p)
    return out


def _docstrings(tree: ast.AST) -> Iterator[str]:
    """Docstrings of a module and of its classes and functions, in source order."""
    if isinstance(tree, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(tree, clean=True)
        if doc:
            yield doc
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _docstrings(child)


def _docstring_documents(root: Path) -> Iterator[tuple[str, str]]:
    for path in _stdlib_files(root):
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # invalid escape sequences in old modules
                tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError):
            continue  # a file of another Python version's syntax: not part of this corpus
        for doc in _docstrings(tree):
            yield f"module:{module}", doc.strip()


def documents(stdlib: str | Path | None = None) -> list[tuple[str, str]]:
    """(source unit, text) of every document, deduplicated, in the fixed order."""
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    out = []
    for unit, text in (*_topic_documents(), *_docstring_documents(root)):
        key = _norm(text)
        if len(text) < MIN_CHARS or key in seen:
            continue
        seen.add(key)
        out.append((unit, text))
    return out


def split_of(unit: str) -> str:
    """'eval' for held-out source units, else 'train' (fixed by the unit's name)."""
    h = int.from_bytes(hashlib.sha256(unit.encode()).digest()[:8], "big")
    return "eval" if h % HELDOUT_EVERY == 0 else "train"


def build_corpus(dest: Path, stdlib: str | Path | None = None) -> dict:
    """Write train.jsonl, eval.jsonl and manifest.json into `dest`; returns the manifest."""
    docs = documents(stdlib)
    manifest: dict = {"name": NAME, "build": BUILD, "python": platform.python_version(),
                      "implementation": sys.implementation.name, "min_chars": MIN_CHARS,
                      "heldout_every": HELDOUT_EVERY, "splits": {}}
    for split in ("train", "eval"):
        rows = [{"text": t, "source": u} for u, t in docs if split_of(u) == split]
        blob = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
        (dest / f"{split}.jsonl").write_bytes(blob)
        manifest["splits"][split] = {"documents": len(rows), "chars": sum(len(r["text"]) for r in rows),
                                     "units": len({r["source"] for r in rows}),
                                     "sha256": hashlib.sha256(blob).hexdigest()}
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def corpus_dir() -> Path:
    return cache_root() / "data" / f"{NAME}-v{BUILD}-py{platform.python_version()}"


def corpus_files() -> tuple[Path, Path]:
    """(train.jsonl, eval.jsonl) of the corpus, built into the cache on first use (~5 s)."""
    d = corpus_dir()
    files = (d / "train.jsonl", d / "eval.jsonl")
    if not (d / "manifest.json").is_file():
        with atomic_dir(d) as tmp:
            build_corpus(tmp)
    return files
