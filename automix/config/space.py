"""Search-space files: the schema of ``search_spaces/*.yaml``, validated before any layer is named.

::

    fixed: {bits: 16, group_size: 64, prune: 0.0, rank: 0}   # layers / fields not searched
    choices:                                                # per-layer options
      bits: [2, 3, 4, 8, 16]
      rank: [0, 8, 16]
      group_size: [64]            # one choice: a constant, not a decision variable
    groups: per_linear            # per_linear | per_block | per_kind | global | custom list
    group_by: {rank: per_block}   # optional: another grouping for some fields
    methods: [qlora, loftq]       # optional: the fine-tuning methods to choose from

A custom grouping is a list of ``{name, layers: [globs], choices: {...}}``. What needs the model
(globs that match no layer) or the method registry is checked by ``automix.search.space.SearchSpace``,
which maps this schema onto a model's layers. Errors raise :class:`SearchSpaceError` naming the
file, the line and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator
from typing_extensions import TypedDict

from automix.config._yaml import Doc, Expect, Lines, error_text, format_errors, read_yaml
from automix.config.layers import Bits, GroupSize, LayerSettings, Prune, Rank

__all__ = ["SearchSpaceError", "SpaceFile", "CustomGroup", "GROUPINGS", "Lines", "read_space_file", "parse_space"]

GROUPINGS = ("per_linear", "per_block", "per_kind", "global")


class SearchSpaceError(ValueError):
    """An invalid search space; the message names the file, key and (if known) line."""


def _distinct(options: list) -> list:
    if len(set(options)) != len(options):
        raise ValueError("duplicate options")
    return options


# A non-empty list of distinct values of one setting.
BitsOptions = Annotated[list[Bits], Field(min_length=1), AfterValidator(_distinct)]
GroupSizeOptions = Annotated[list[GroupSize], Field(min_length=1), AfterValidator(_distinct)]
PruneOptions = Annotated[list[Prune], Field(min_length=1), AfterValidator(_distinct)]
RankOptions = Annotated[list[Rank], Field(min_length=1), AfterValidator(_distinct)]


class Choices(TypedDict, total=False):
    """Per-layer options of the searched settings (prune options read as floats)."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
    bits: BitsOptions
    group_size: GroupSizeOptions
    prune: PruneOptions
    rank: RankOptions


class CustomGroup(BaseModel):
    """Layers matching any of ``layers`` (globs) decide together, from ``choices`` over the
    space's own; the first group that matches a layer owns it."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    name: str
    layers: Annotated[list[str], Field(min_length=1)]
    choices: Choices = Field(default_factory=dict)

    @field_validator("layers", mode="before")
    @classmethod
    def _one_glob(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("choices", mode="before")
    @classmethod
    def _empty(cls, v: Any) -> Any:
        return {} if v is None else v


GroupingName = Annotated[Literal["per_linear", "per_block", "per_kind", "global"],
                         Expect(f"a grouping is one of {list(GROUPINGS)} or a list of custom groups")]
Grouping = Annotated[
    Union[Annotated[GroupingName, Tag("name")], Annotated[list[CustomGroup], Tag("custom")]],
    Discriminator(lambda v: "custom" if isinstance(v, (list, tuple)) else "name"),
]


class GroupBy(TypedDict, total=False):
    """Another grouping for some settings than the space's ``groups``."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
    bits: Grouping
    group_size: Grouping
    prune: Grouping
    rank: Grouping


class SpaceFile(BaseModel):
    """A search-space file (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    name: str | None = None
    description: str | None = None
    fixed: LayerSettings = LayerSettings()
    choices: Choices = Field(default_factory=dict)
    groups: Grouping = "per_linear"
    group_by: GroupBy = Field(default_factory=dict)
    methods: list[str] | None = None

    @field_validator("fixed", "choices", "group_by", mode="before")
    @classmethod
    def _empty(cls, v: Any) -> Any:  # `choices:` with nothing under it
        return {} if v is None else v


def parse_space(data: Any, lines: Lines | None = None) -> SpaceFile:
    """Validate a search space mapping; ``lines`` (where its keys are) points errors at lines."""
    lines = lines or Lines("<dict>")
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise SearchSpaceError(f"{lines.source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return SpaceFile.model_validate(data)
    except ValidationError as err:
        raise SearchSpaceError(error_text("invalid search space",
                                          format_errors(err, data, lines, SpaceFile))) from None


def read_space_file(path: str | Path) -> Doc:
    """A search-space file's data (a mapping, not validated yet) and where its keys are."""
    path = Path(path)
    if not path.is_file():
        raise SearchSpaceError(f"search space file {path} does not exist")
    doc = read_yaml(path, SearchSpaceError)
    if doc.data is None:
        doc.data = {}
    if not isinstance(doc.data, Mapping):
        raise SearchSpaceError(f"{path}: expected a mapping at the top level, got {type(doc.data).__name__}")
    return doc
