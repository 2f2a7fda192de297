"""How a trial fine-tunes and evaluates: the one declaration of the training settings.

`TrainingSettings` is embedded three times, so a study file, ``automix trial`` and a recorded or
exported trial cannot drift apart: a study's ``trial:`` section (:class:`automix.config.study.
TrialSettings`, the study defaults below), the trial spec a worker runs (:class:`automix.trial.
TrialSpec`, the one-off defaults) and a layer file's ``trial:`` section (:data:`RunSettings`,
every key optional: only those given apply).

The defaults of a one-off trial and of a study differ on purpose, and only here
(:data:`STUDY_DEFAULTS`): a study runs many short trials whose job is to rank configurations,
so each trains fewer steps, at a smaller batch and sequence length and a gentler learning rate,
and with gradient checkpointing on — that is how quantized models are fine-tuned in practice
(PEFT's ``prepare_model_for_kbit_training`` turns it on, as do the QLoRA recipes), and only then
do the quantized weights, not the activations, dominate memory, which is what searching bits per
layer is for (``benchmarks/memory_model.md`` measures its step time). A one-off ``automix trial``
is a single run a user reads the result of, so it trains longer on larger batches.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator
from pydantic.fields import FieldInfo

from automix.config.registry import QUANTIZERS as _REGISTERED_QUANTIZERS

__all__ = ["DTYPES", "OPTIMIZERS", "QUANTIZERS", "PRUNE_MODES", "STUDY_DEFAULTS", "RunSettings",
           "TrainingSettings", "micro_batch_size", "with_defaults"]

# The names a trial can be asked for; the same as automix.trial.memory.OPTIMIZERS (this layer
# imports no torch; tests/config checks they agree). Quantizers: the registry's names.
OPTIMIZERS = ("adamw", "adamw-8bit", "paged-adamw", "paged-adamw-8bit", "sgd")
QUANTIZERS = tuple(_REGISTERED_QUANTIZERS)
DTYPES = ("float32", "bfloat16", "float16")
PRUNE_MODES = ("structured", "magnitude", "wanda")


def micro_batch_size(batch_size: int, grad_accum_steps: int) -> int:
    """Rows per forward/backward when ``batch_size`` rows per optimizer step are accumulated over
    ``grad_accum_steps`` micro-batches; ValueError unless it divides (the one rule, used by the
    study file, the trial spec and the memory model)."""
    if isinstance(grad_accum_steps, bool) or not isinstance(grad_accum_steps, int) or grad_accum_steps < 1 \
            or batch_size % grad_accum_steps:
        raise ValueError(f"grad_accum_steps ({grad_accum_steps}) must divide batch_size ({batch_size}): each "
                         "optimizer step runs batch_size / grad_accum_steps rows per micro-batch")
    return batch_size // grad_accum_steps


class TrainingSettings(BaseModel):
    """How a trial fine-tunes and evaluates (defaults: a one-off trial's).

    * ``steps`` optimizer steps (0: evaluate only), ``seed`` (data order, initialisation,
      sampling), ``lr``, ``weight_decay``, ``grad_clip`` (max gradient norm; None: off).
    * ``batch_size`` rows of ``seq_len`` tokens per optimizer step, in micro-batches of
      ``batch_size / grad_accum_steps`` rows (must divide).
    * ``eval_batches`` x ``eval_batch_size`` held-out rows (lm) or examples (boolq) are scored;
      ``None`` uses the task's default size.
    * ``dtype``: float32; bfloat16 (pure bf16: weights, trainable parameters, optimizer states);
      float16 (fp16 autocast over fp16 frozen weights with fp32 trainable parameters and a
      gradient scaler — pure fp16 training diverges, so float16 always means mixed precision).
    * ``gradient_checkpointing``: keep only each decoder block's input and recompute the block in
      backward (``automix.trial.checkpoint``).
    * ``optimizer``: adamw (torch, states in the parameter dtype), sgd (momentum 0.9), or through
      bitsandbytes (``pip install 'automix[bnb]'``) adamw-8bit, paged-adamw, paged-adamw-8bit.
    * ``quantizer``: how base weights are quantized (``automix.config.registry.QUANTIZERS``;
      None: ``DEFAULT_QUANTIZER``).
    * ``prune_mode`` (structured, magnitude, wanda) and ``prune_calib_samples`` (wanda's
      calibration rows).
    """

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(50, ge=0)
    seed: int = 0
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    batch_size: int = Field(8, ge=1)
    seq_len: int = Field(128, ge=2)
    eval_batches: int | None = Field(None, ge=1)
    eval_batch_size: int = Field(16, ge=1)
    dtype: Literal[DTYPES] = "float32"  # type: ignore[valid-type]
    gradient_checkpointing: bool = False
    optimizer: Literal[OPTIMIZERS] = "adamw"  # type: ignore[valid-type]
    grad_accum_steps: int = Field(1, ge=1)
    quantizer: Literal[QUANTIZERS] | None = None  # type: ignore[valid-type]
    prune_mode: Literal[PRUNE_MODES] = "structured"  # type: ignore[valid-type]
    prune_calib_samples: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _accumulation_divides_batch(self) -> "TrainingSettings":
        micro_batch_size(self.batch_size, self.grad_accum_steps)
        return self

    def memory_options(self) -> dict[str, Any]:
        """The keywords ``automix.trial.estimate`` takes for this training set-up."""
        return {"gradient_checkpointing": self.gradient_checkpointing, "optimizer": self.optimizer,
                "grad_accum_steps": self.grad_accum_steps}


# A study's defaults where they differ from a one-off trial's (the reason: this module's docstring).
STUDY_DEFAULTS: dict[str, Any] = {"steps": 20, "lr": 2e-4, "batch_size": 4, "seq_len": 64,
                                  "gradient_checkpointing": True}


def with_defaults(name: str, defaults: dict[str, Any], doc: str) -> type[TrainingSettings]:
    """`TrainingSettings` with other defaults (same fields, types and bounds)."""
    fields = TrainingSettings.model_fields
    changed = {k: (fields[k].annotation, FieldInfo.merge_field_infos(fields[k], default=v))
               for k, v in defaults.items()}
    return create_model(name, __base__=TrainingSettings, __doc__=doc, __module__=__name__, **changed)


def _all_optional() -> type[BaseModel]:
    fields = {k: (f.annotation | None, FieldInfo.merge_field_infos(f, default=None))
              for k, f in TrainingSettings.model_fields.items()}
    return create_model("RunSettings", __config__=ConfigDict(extra="forbid"), __module__=__name__,
                        __doc__="A layer file's ``trial:`` section: `TrainingSettings` keys, each optional "
                                "(only the keys given apply).", **fields)


RunSettings = _all_optional()
