"""Study files: the YAML a user writes to launch a search, validated before any trial runs.

A study names the model, the task, the methods to compare, the search space, the objectives,
the memory budget and how trials run (steps, resources, parallelism, time limit), plus where the
Optuna storage and the MLflow tracking live. Errors name the file, the line and the key, because
the user fixes them in an editor, not in Python.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from automix.config._yaml import Lines, format_errors, read_yaml
from automix.config.locations import resolve_store
from automix.config.registry import SAMPLER_ALIASES, SAMPLERS
from automix.config.training import (DTYPES, OPTIMIZERS, QUANTIZERS, STUDY_DEFAULTS, TrainingSettings,
                                      micro_batch_size, with_defaults)

__all__ = [
    "StudyConfigError",
    "StudyConfig",
    "TrialSettings",
    "OPTIMIZERS",
    "QUANTIZERS",
    "DTYPES",
    "TASKS",
    "micro_batch_size",
    "Resources",
    "Objectives",
    "SearchSpaceRef",
    "parse_size",
    "format_size",
    "load_study",
    "default_storage_url",
    "default_tracking_uri",
]


class StudyConfigError(ValueError):
    """A study file that cannot run: the message names the file, the line and the key."""


_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")


def parse_size(value: str | int | float) -> int:
    """Bytes from a human size ("6GiB", "512 MB", "1.5e9", 1024). Units are case-insensitive."""
    if isinstance(value, bool):
        raise ValueError(f"expected a memory size like '6GiB', got {value!r}")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError(f"memory size must be positive, got {value!r}")
        return int(value)
    m = _SIZE_RE.match(str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(
            f"expected a memory size like '6GiB', '800MB' or a byte count, got {value!r}"
        )
    n = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if n <= 0:
        raise ValueError(f"memory size must be positive, got {value!r}")
    if not m.group(2) and n < 1024:  # '10.5' meant as GiB or MiB would silently be 10 bytes
        raise ValueError(f"memory size {value!r} has no unit: write e.g. '{m.group(1)}GiB' or "
                         f"'{m.group(1)}MiB' (a number without a unit is read as bytes, and counts "
                         "below 1024 are refused as a likely missing unit)")
    return int(n)


def format_size(n: float) -> str:
    """Short binary size for messages and tables ("5.87 GiB")."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def default_storage_url(workdir: str | os.PathLike | None = None) -> str:
    """Optuna storage used when the study file names none: a SQLite file in the working dir."""
    return f"sqlite:///{(Path(workdir or os.getcwd()) / 'automix-optuna.db').resolve()}"


def default_tracking_uri(workdir: str | os.PathLike | None = None) -> str:
    """MLflow tracking used when the study file names none: a SQLite file in the working dir."""
    return f"sqlite:///{(Path(workdir or os.getcwd()) / 'automix-mlflow.db').resolve()}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SearchSpaceRef(_Strict):
    """Which search space to use (a `search_spaces/*.yaml` file) and study-local overrides."""

    path: str
    overrides: dict[str, Any] = Field(default_factory=dict)


class Objectives(_Strict):
    """What the search optimises: a quality metric, memory, and optionally throughput."""

    quality: Literal["accuracy", "perplexity"] = "accuracy"
    memory: Literal["predicted", "measured"] = "predicted"
    throughput: bool = False


TASKS = ("boolq", "lm")  # automix.trial.data's tasks (tests/config checks they agree)


class TrialSettings(with_defaults("StudyTrainingSettings", STUDY_DEFAULTS, "")):
    """How every trial of the study fine-tunes and evaluates: the
    :class:`automix.config.training.TrainingSettings` keys (the same names and values as
    ``automix trial``'s flags and ``automix.trial.TrialSpec``), with a study's defaults
    (:data:`automix.config.training.STUDY_DEFAULTS`: fewer, shorter steps and gradient checkpointing
    on; the reason is written there). Both the trials and the memory objective the search
    optimises follow them. ``extra``: further ``TrialSpec`` keys every trial gets (not a training
    setting: those are keys of this section).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    extra: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _settings_out_of_extra(cls, v: Any) -> Any:
        """A training setting given under ``extra`` (where study files put the keys the section
        did not have before it embedded them all) is that setting; given in both places, they
        must agree."""
        if not isinstance(v, dict) or not isinstance(v.get("extra"), dict):
            return v
        moved = {k: x for k, x in v["extra"].items() if k in TrainingSettings.model_fields}
        if not moved:
            return v
        clash = sorted(k for k, x in moved.items() if k in v and v[k] != x)
        if clash:
            raise ValueError(f"{', '.join(clash)}: given both in trial and in trial.extra, with different values")
        return {**v, **moved, "extra": {k: x for k, x in v["extra"].items() if k not in moved}}

    def spec_fields(self) -> dict[str, Any]:
        """The ``TrialSpec`` training fields of every trial of the study: each setting, except
        ``eval_batches`` and ``quantizer`` when unset (the task's size, the default quantizer) and
        the pruning settings when left at their defaults."""
        out = self.model_dump(include=set(TrainingSettings.model_fields), exclude_none=True)
        for k in ("prune_mode", "prune_calib_samples", "weight_decay", "grad_clip", "eval_batch_size"):
            if k not in self.model_fields_set:
                out.pop(k, None)
        return out


PRUNERS = ("none", "pareto", "median", "percentile", "successive-halving", "hyperband")


class PrunerSettings(_Strict):
    """Multi-fidelity: stop trials that their intermediate results show to be hopeless.

    With a pruner, every trial evaluates a held-out subset (``eval_batches`` batches) right
    after initialisation (step 0) and every ``eval_every`` training steps (default: a quarter
    of the study's steps); the driver hands those values to the pruner, which may stop the trial.
    ``pareto`` (automix's own, `automix.search.pruners.ParetoPruner`) stops a trial whose value
    at a step is dominated — worse quality and no less memory — by trials already seen at that
    step, so it keeps the low-memory end of a memory/quality front alive, and one predicted to
    add less than ``min_gain`` (default 0.001) to the front's hypervolume, whose memory axis
    ends at ``memory_budget``; the others are
    Optuna's own pruners on the quality alone (``median``, ``percentile``,
    ``successive-halving``, ``hyperband``), with ``options`` as their keyword arguments.
    ``pruner: median`` is short for ``pruner: {name: median}``.
    """

    name: Literal[PRUNERS] = "none"  # type: ignore[valid-type]
    eval_every: int | None = Field(None, ge=1)
    eval_batches: int = Field(1, ge=1)
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @property
    def enabled(self) -> bool:
        return self.name != "none"

    def report_every(self, steps: int) -> int:
        """Training steps between the intermediate evaluations of a trial of ``steps`` steps."""
        return self.eval_every or max(1, steps // 4)


class Resources(_Strict):
    """Resources one trial asks Ray for; fractional GPUs let several trials share a device."""

    cpus: float = Field(1.0, gt=0)
    gpus: float = Field(0.0, ge=0)
    # On a joined cluster (--ray-address) with fewer GPUs than a trial asks for, how long to wait
    # for its autoscaler to add them before giving up (0: refuse at once).
    gpu_wait_s: float = Field(600.0, ge=0)

    @field_validator("gpus")
    @classmethod
    def _fractional(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError("more than one GPU must be a whole number")
        return v


class StudyConfig(_Strict):
    """A validated study file (see `studies/*.yaml`)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    model: str = "builtin:tiny"
    task: Literal[TASKS] = "lm"  # type: ignore[valid-type]
    data: str | None = None
    methods: list[str] = Field(min_length=1)
    search_space: SearchSpaceRef
    objectives: Objectives = Field(default_factory=Objectives, validate_default=True)
    memory_budget: int
    n_trials: int = Field(ge=1)
    # a name of automix.config.registry.SAMPLERS ("knapsack": the old name of "oneshot")
    sampler: str = "automix"
    sampler_seed: int = 0
    sampler_options: dict[str, Any] = Field(default_factory=dict)  # extra sampler keyword arguments
    # Per-layer sensitivity profile as predictor features (AutoMixSampler), calibrated on the
    # study's task and data: "on" and "auto" load the profile cached for the model and data or
    # compute it as a Ray task where the trials run ("auto" goes on without one if that fails,
    # "on" stops the study); "off" never.
    sensitivity: Literal["auto", "on", "off"] = "auto"
    trial: TrialSettings = Field(default_factory=TrialSettings)
    pruner: PrunerSettings = Field(default_factory=PrunerSettings)
    resources: Resources = Field(default_factory=Resources)
    workers: int = Field(1, ge=1)
    timeout_per_trial: float = Field(1800.0, gt=0)
    max_retries: int = Field(2, ge=0)
    storage: str | None = None
    tracking_uri: str | None = None
    # Set by load_study: where the file lives (relative paths are resolved against it) and the
    # line of each of its keys (errors found later, e.g. in search_space.overrides, name them).
    source: str | None = Field(None, exclude=True)
    _lines: Lines | None = PrivateAttr(None)

    @field_validator("sensitivity", mode="before")
    @classmethod
    def _on_off(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare on / off as a boolean
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

    @field_validator("memory_budget", mode="before")
    @classmethod
    def _size(cls, v: Any) -> int:
        return parse_size(v)

    @field_validator("objectives")
    @classmethod
    def _quality_fits_task(cls, v: Objectives, info: ValidationInfo) -> Objectives:
        # a field validator (not a model one) so the error points at the objectives line
        if info.data.get("task") == "lm" and v.quality == "accuracy":
            raise ValueError("task 'lm' is scored by perplexity: set objectives.quality: perplexity "
                             "(or use task: boolq for accuracy)")
        return v

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, v: str) -> str:
        if v not in SAMPLERS and v not in SAMPLER_ALIASES:
            raise ValueError(f"unknown sampler {v!r}; available: {', '.join(SAMPLERS)}")
        return v

    @field_validator("methods")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"methods are listed twice: {v}")
        return v

    def file_lines(self, *key: str) -> Lines:
        """Where the keys under ``key`` are in the study file (no lines without a file)."""
        lines = self._lines or Lines(self.source or "<study>")
        return lines.sub(*key)

    # -- resolved settings -------------------------------------------------------------
    @property
    def base_dir(self) -> Path:
        return Path(self.source).resolve().parent if self.source else Path.cwd()

    def resolve_path(self, p: str) -> Path:
        """A path from the study file, relative to the file's directory (or the cwd)."""
        path = Path(os.path.expanduser(p))
        if path.is_absolute():
            return path
        for base in (self.base_dir, self.base_dir.parent, Path.cwd()):
            if (base / path).exists():
                return (base / path).resolve()
        return (self.base_dir / path).resolve()

    @property
    def storage_url(self) -> str:
        """The Optuna storage: as the file gives it (a relative SQLite path from the study file's
        directory), else the working directory's."""
        return resolve_store(self.storage, self.base_dir) if self.storage else default_storage_url()

    @property
    def tracking(self) -> str:
        """The MLflow tracking store, resolved as `storage_url`."""
        return resolve_store(self.tracking_uri, self.base_dir) if self.tracking_uri else default_tracking_uri()

    @property
    def directions(self) -> list[str]:
        q = "maximize" if self.objectives.quality == "accuracy" else "minimize"
        out = [q, "minimize"]
        if self.objectives.throughput:
            out.append("maximize")
        return out

    @property
    def objective_names(self) -> list[str]:
        names = [self.objectives.quality, "memory"]
        if self.objectives.throughput:
            names.append("throughput")
        return names


def load_study(path: str | os.PathLike, **overrides: Any) -> StudyConfig:
    """Read and validate a study file; `overrides` (e.g. workers=2) replace top-level keys.

    Only the schema is checked here; `automix.study.backend.preflight` checks what needs the model, the
    search space and the tracking server, before any trial runs.
    """
    p = Path(path)
    if not p.is_file():
        raise StudyConfigError(f"{p}: study file not found")
    doc = read_yaml(p, StudyConfigError)
    if not isinstance(doc.data, dict):
        raise StudyConfigError(f"{p}:1: a study file is a mapping of keys (name, model, ...)")
    data = {**doc.data, **{k: v for k, v in overrides.items() if v is not None}}
    data["source"] = str(p.resolve())
    try:
        cfg = StudyConfig.model_validate(data)
    except ValidationError as err:
        raise StudyConfigError("invalid study file:\n  " + "\n  ".join(
            format_errors(err, data, doc.lines, StudyConfig))) from None
    cfg._lines = doc.lines
    return cfg
