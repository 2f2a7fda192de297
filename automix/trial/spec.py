"""What a trial is asked (`TrialSpec`) and what it returns (`TrialResult`).

Plain JSON types only, so a spec crosses process boundaries to a Ray worker and a result comes back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, Mapping

from pydantic import ConfigDict, Field, field_validator, model_validator

from automix.config.training import TrainingSettings
from automix.methods import available_methods
from automix.quant import METHODS as QUANTIZERS
from automix.trial.data import available_tasks
from automix.trial.memory import OPTIMIZERS

__all__ = ["FailureKind", "OPTIMIZERS", "QUANTIZERS", "TrialSpec", "TrialResult", "TrialFailure"]

FailureKind = Literal["", "invalid_input", "nan", "oom", "error"]


class TrialSpec(TrainingSettings):
    """Everything a trial needs; plain JSON types only so it crosses process boundaries.

    What it runs on: ``model``, ``task``, ``data`` / ``eval_data``, ``method`` with its
    ``method_settings`` (:class:`automix.methods.MethodSettings` fields: ``lora_alpha``,
    ``lora_dropout``, ``calib_samples``, ``calib_seq_len``, ``options``), and ``layers``: a
    LayerConfig dict (``default`` / ``layers``), a resolved ``{layer: {bits, group_size, prune,
    rank}}`` dict, or the path of a layer YAML file.

    How it trains: the :class:`automix.config.training.TrainingSettings` fields (each also a study
    ``trial:`` key, an ``automix trial`` flag and a layer file ``trial:`` key), with a one-off
    trial's defaults (a study's are in ``automix.config.training.STUDY_DEFAULTS``). The quantizer
    is ``quantizer`` (``method_settings`` may name it too, as ``quantizer``, only if they agree).

    Intermediate reports (`automix.reporting`): the training loss after every step, and
    with ``report_every`` > 0 a held-out evaluation of ``report_eval_batches`` x
    ``eval_batch_size`` rows right after initialisation (step 0) and every ``report_every``
    steps before the last; a study's pruner judges the trial on them.
    """

    model_config = ConfigDict(extra="forbid")

    model: str = "builtin:tiny"
    task: str = "lm"
    data: str | None = None
    eval_data: str | None = None
    method: str = "qlora"
    method_settings: dict[str, Any] = Field(default_factory=dict)
    layers: dict[str, Any] | str = Field(default_factory=lambda: {"default": {"bits": 4, "rank": 8}})
    device: str = "auto"
    save_state: str | None = None
    report_every: int = Field(0, ge=0)
    report_eval_batches: int = Field(1, ge=1)
    # the allocator's count of every phase (automix.trial.allocator): None = on for CUDA (the
    # allocator's own statistics, free), off on CPU, where it is the profiler (benchmarks/memory_model.md:
    # +18% time and some GB of host memory for its records on SmolLM2); True / False force it
    allocator_meter: bool | None = None

    @model_validator(mode="after")
    def _one_quantizer(self) -> "TrialSpec":
        given = self.method_settings_dict().get("quantizer") if self.method_settings else None
        if self.quantizer is not None and given is not None and given != self.quantizer:
            raise ValueError(f"quantizer {self.quantizer!r} and method_settings.quantizer {given!r} disagree; "
                             "set one of them")
        return self

    def method_settings_dict(self) -> dict[str, Any]:
        """``method_settings`` with ``quantizer`` folded in (and its old name, ``quant_method``, read)."""
        out = dict(self.method_settings or {})
        if "quant_method" in out:
            out.setdefault("quantizer", out.pop("quant_method"))
        if self.quantizer is not None and "quantizer" not in out:
            out["quantizer"] = self.quantizer
        return out

    @field_validator("task")
    @classmethod
    def _task(cls, v: str) -> str:
        if v not in available_tasks():
            raise ValueError(f"unknown task {v!r}; available: {', '.join(available_tasks())}")
        return v

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        if v not in available_methods():
            raise ValueError(f"unknown method {v!r}; available methods: {', '.join(available_methods())}")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v != "auto" and v.split(":")[0] not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {v!r}")
        return v


@dataclass
class TrialResult:
    """Outcome of one trial (``to_dict`` gives snake_case JSON-ready keys)."""

    status: str = "ok"  # "ok" | "failed"
    method: str = ""
    task: str = ""
    accuracy: float | None = None
    perplexity: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    peak_memory_bytes: int | None = None
    predicted_memory_bytes: int | None = None  # the largest predicted phase peak (the budget's figure)
    allocator_peak_bytes: int | None = None  # the allocator's count, the largest phase peak (allocator_meter)
    peak_phase: str = ""  # the phase that set allocator_peak_bytes
    memory_phases: dict[str, int] = field(default_factory=dict)  # allocator peak per phase, in order
    memory_phases_predicted: dict[str, int] = field(default_factory=dict)  # the model's peak per phase
    memory_measured: dict[str, int] = field(default_factory=dict)
    memory_predicted: dict[str, int] = field(default_factory=dict)
    trainable_params: int | None = None
    avg_bits: float | None = None
    steps: int = 0
    first_loss: float | None = None
    last_loss: float | None = None
    losses: list[float] = field(default_factory=list)
    eval_curve: list[list[float]] = field(default_factory=list)  # [step, quality] of the intermediate evaluations
    prepare_seconds: float = 0.0
    train_seconds: float = 0.0
    train_cpu_seconds: float = 0.0  # process CPU time of training (robust to a contended machine)
    eval_seconds: float = 0.0
    tokens_per_second: float | None = None
    device: str = ""
    failure_kind: str = ""
    failure_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrialResult":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class TrialFailure(Exception):
    """Raised inside a trial to end it with a given failure kind."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
