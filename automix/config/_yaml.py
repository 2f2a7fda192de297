"""YAML read once with the line of every key, and pydantic errors as ``FILE:LINE: key: message``.

Every file a user writes (study, search space, layer configuration) goes through here:
``read_yaml`` parses it once into its data and a :class:`Lines` index (key path -> 1-based
line), and ``format_errors`` turns a pydantic ``ValidationError`` into one message per error
that names the file, the line and the dotted key, so the user can fix it in an editor.

A ``Lines`` can also describe part of a file (``lines.sub("search_space", "overrides")``: the
study's overrides, whose keys the messages then name in full) or a document merged from two
files (``base.overlaid(over_data, over_lines)``: keys the overrides set point into their file,
the others into the base file).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.dataclasses import is_pydantic_dataclass
from pydantic_core import core_schema
from typing_extensions import is_typeddict

Key = tuple[Union[str, int], ...]

EXPECTED = "automix_expected"  # error type of `Expect`: the message is completed with ", got X"


@dataclasses.dataclass(frozen=True)
class Expect:
    """``Annotated`` marker: any error of the annotated type reads ``<message>, got <input>``.

    ``Annotated[int, Field(ge=0), Expect("rank must be an integer >= 0")]`` keeps pydantic's
    constraints (checked in pydantic-core, fast) and replaces their wording with ours.
    """

    message: str

    def __get_pydantic_core_schema__(self, source: Any, handler: Callable[[Any], Any]) -> Any:
        return core_schema.custom_error_schema(handler(source), EXPECTED, custom_error_message=self.message)


class Lines:
    """Where the keys of one YAML document are: the file (as messages name it), a line index
    (key path -> 1-based line; ``()`` is the document's first line) and the key path of the
    document inside its file (``()`` for a whole file)."""

    def __init__(self, source: str, index: Mapping[Key, int] | None = None, prefix: Key = ()) -> None:
        self.source = source
        self.index = dict(index or {})
        self.prefix = tuple(prefix)

    def line(self, key: Key) -> int | None:
        """The line of ``key``, else of its longest prefix that has one."""
        for n in range(len(key), -1, -1):
            if key[:n] in self.index:
                return self.index[key[:n]]
        return None

    def locate(self, key: Key) -> tuple[str, Key]:
        """``("FILE:LINE", key path as named in that file)`` for a key path of this document."""
        line = self.line(tuple(key))
        return (f"{self.source}:{line}" if line else self.source), self.prefix + tuple(key)

    def where(self, key: Key) -> str:
        """``FILE:LINE: dotted.key`` for messages about ``key``."""
        where, full = self.locate(key)
        return f"{where}: {dotted(full)}"

    def sub(self, *key: str | int) -> "Lines":
        """The lines of the sub-document at ``key`` (its keys keep naming their full path)."""
        n = len(key)
        return Lines(self.source, {k[n:]: v for k, v in self.index.items() if k[:n] == key},
                     self.prefix + key)

    def overlaid(self, over_data: Any, over: "Lines") -> "Lines":
        """The lines of this document with ``over_data`` deep-merged over it (dicts merge key by
        key, anything else replaces): keys ``over_data`` sets are located by ``over``."""
        return _Overlay(self, over_data, over)


class _Overlay(Lines):
    def __init__(self, base: Lines, over_data: Any, over: Lines) -> None:
        super().__init__(base.source, base.index, base.prefix)
        self._base, self._over_data, self._over = base, over_data, over

    def locate(self, key: Key) -> tuple[str, Key]:
        node = self._over_data
        for part in key:
            if not isinstance(node, Mapping):
                return self._over.locate(key)  # the override replaced this whole value
            if part not in node:
                return self._base.locate(key)  # merged from the base document
            node = node[part]
        return (self._over if key else self._base).locate(key)


@dataclasses.dataclass
class Doc:
    """A parsed YAML document: its data and where its keys are."""

    data: Any
    lines: Lines


def parse_yaml(text: str, source: str, error: type[Exception] = ValueError) -> Doc:
    """Parse YAML text once; a syntax error raises ``error("SOURCE:LINE: not valid YAML: ...")``."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
        index: dict[Key, int] = {}
        if node is not None:
            index[()] = node.start_mark.line + 1
            _index(loader, node, (), index)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        what = ", ".join(filter(None, [getattr(err, "context", None), getattr(err, "problem", None)]))
        raise error(f"{where}: not valid YAML: {what or err}") from None
    finally:
        loader.dispose()
    return Doc(data, Lines(source, index))


def read_yaml(path: str | Path, error: type[Exception] = ValueError) -> Doc:
    """Read and parse a YAML file (messages name it as ``str(path)``)."""
    return parse_yaml(Path(path).read_text(), str(path), error)


def _index(loader: yaml.SafeLoader, node: yaml.Node, path: Key, out: dict[Key, int],
           above: frozenset[int] = frozenset()) -> None:
    # After construction: merge keys (<<) are already flattened into the mappings.
    if id(node) in above:  # an alias of one of its own parents
        return
    above = above | {id(node)}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode):
                key = path + (loader.construct_object(k),)  # the key as the data holds it (1, true, ...)
                out[key] = k.start_mark.line + 1
                _index(loader, v, key, out, above)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out[path + (i,)] = v.start_mark.line + 1
            _index(loader, v, path + (i,), out, above)


# -- pydantic errors as messages --------------------------------------------------------------

_MISSING = ("missing", "missing_keyword_argument", "missing_argument")


def dotted(key: Key) -> str:
    return ".".join(str(p) for p in key) or "(top level)"


def format_errors(err: ValidationError, data: Any, lines: Lines, schema: Any = None) -> list[str]:
    """One ``FILE:LINE: dotted.key: message`` per error of validating ``data`` against ``schema``
    (the model, used to list the valid keys next to an unknown one)."""
    out = []
    for e in err.errors():
        kind = e["type"]
        loc = _file_key(e["loc"], data, keep_last=kind in _MISSING)
        if kind in _MISSING:
            where, parent = lines.locate(loc[:-1])  # the mapping that lacks the key
            out.append(f"{where}: {dotted(parent + loc[-1:])}: required key is missing")
            continue
        where, key = lines.locate(loc)
        out.append(f"{where}: {dotted(key)}: {describe(e, schema)}")
    return out


def error_text(what: str, messages: list[str]) -> str:
    """One message, or ``what:`` and the messages one per line."""
    return messages[0] if len(messages) == 1 else f"{what}:\n  " + "\n  ".join(messages)


def describe(e: Mapping[str, Any], schema: Any = None) -> str:
    """The message of one pydantic error, in our words."""
    kind = e["type"]
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        valid = valid_keys(schema, e["loc"][:-1]) if schema is not None else None
        close = difflib.get_close_matches(str(e["loc"][-1]), valid or [], n=1, cutoff=0.7)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return "unknown key" + hint + (f" (expected one of {valid})" if close else f"; expected one of {valid}" if valid else "")
    if kind in _MISSING:
        return "required key is missing"
    if kind == EXPECTED:
        return f"{e['msg']}, got {e['input']!r}"
    msg = e["msg"]
    if kind == "value_error":  # raised by our own validators: their words, without pydantic's prefix
        msg = str(e["ctx"]["error"])
    if "input" in e and not isinstance(e["input"], dict) and not msg.endswith(f"got {e['input']!r}"):
        msg += f" (got {e['input']!r})"
    return msg


def _file_key(loc: tuple, data: Any, keep_last: bool) -> Key:
    """The key path in the file of a pydantic error location: the parts pydantic adds that are no
    key of the data (union tags, validator names) are left out, but for the last when
    ``keep_last`` (a missing key)."""
    out: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, Mapping) and any(str(k) == part for k in node):  # a non-string YAML key
            part = next(k for k in node if str(k) == part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif not (keep_last and i == len(loc) - 1):
            continue
        out.append(part)
    return tuple(out)


# -- the keys a schema accepts ----------------------------------------------------------------

def _fields(tp: Any) -> dict[str, Any] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return {n: f.annotation for n, f in tp.model_fields.items()}
    if isinstance(tp, type) and is_pydantic_dataclass(tp):
        return {n: f.annotation for n, f in tp.__pydantic_fields__.items()}
    if is_typeddict(tp):
        return typing.get_type_hints(tp)
    return None


def _members(tp: Any) -> list[Any]:
    """``tp`` without ``Annotated``, a union as its members."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _members(typing.get_args(tp)[0])
    if origin is Union or origin is types.UnionType:
        return [m for a in typing.get_args(tp) for m in _members(a)]
    return [tp]


def valid_keys(schema: Any, loc: tuple) -> list[str] | None:
    """The keys the mapping at ``loc`` (a pydantic error location) accepts under ``schema``."""
    types = [schema]
    for part in loc:
        step = []
        for tp in (m for t in types for m in _members(t)):
            fields = _fields(tp)
            origin = typing.get_origin(tp)
            if fields is not None:
                if part in fields:
                    step.append(fields[part])
            elif origin is list and isinstance(part, int):
                step.append(typing.get_args(tp)[0])
            elif origin in (dict, Mapping) and typing.get_args(tp):
                step.append(typing.get_args(tp)[1])
        if step:  # else: a union tag or validator name, not a key
            types = step
    for tp in (m for t in types for m in _members(t)):
        fields = _fields(tp)
        if fields:
            return list(fields)
    return None
