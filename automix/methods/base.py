"""The `Method` interface every fine-tuning method implements, and what it tells the memory model.

A method turns a (possibly pruned) Hugging Face causal LM plus per-layer settings into a model
ready to fine-tune: it may quantize layers (``automix.quant.QuantLinear``), inject adapters
(``automix.methods.adapters``), or wrap the whole model (QST's side network, QEFT's weak-column
layers). The trial then trains ``method.trainable_parameters(model)`` with AdamW, evaluates the
returned module, and asks ``method.memory_profile(...)`` what the method adds so that
``automix.trial.memory.estimate`` can predict the peak without building anything.

Writing a new method (e.g. ``automix/methods/qst.py``)::

    class QST(Method):
        name = "qst"
        needs_calibration = False          # True: prepare() receives calib [n, L] token ids
        option_defaults = {"reduction": 16, "downsample_rank": 16}

        def prepare(self, model, layer_settings, settings=None, calib=None):
            settings = self.check_settings(settings)     # MethodSettings with options resolved
            opts = settings.options                      # e.g. opts["reduction"]
            freeze(model)
            quantize_layers(model, layer_settings, method=settings.quantizer)
            ...                                          # build and attach the side network
            return wrapped                               # forward(input_ids, attention_mask=None,
                                                         #         labels=None) -> .loss, .logits
        def memory_profile(self, arch, layer_settings, settings=None):
            return MemoryProfile(adapter_params=..., trainable_params=..., trainable_tensors=...,
                                 backprop_through_backbone=False,
                                 extra_activations=...)

then add nothing else: the registry in ``automix/methods/__init__.py`` already maps the name to
``"automix.methods.qst:QST"``. Defaults of ``trainable_parameters`` / ``state_dict`` /
``load_state_dict`` / ``save`` / ``load`` work for any method whose trained state is exactly its
parameters with ``requires_grad``; override ``extra_state`` when something else must be saved
(e.g. QEFT's permutation, ApiQ's baked clipping is already inside the QuantLinear buffers).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import torch
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import nn

from automix.config.layers import LayerSettings
from automix.arch import layer_shapes
from automix.quant import DEFAULT_METHOD as DEFAULT_QUANT_METHOD
from automix.quant import METHODS as QUANT_METHODS


class MethodError(ValueError):
    """A method cannot prepare this model / these settings; the message says why."""


class MethodSettings(BaseModel):
    """Settings shared by all methods; method-specific ones go in ``options``.

    ``lora_alpha``: LoRA scaling is ``lora_alpha / rank`` per layer (rank from the layer settings).
    ``quantizer``: the ``automix.quant.quantize`` method for quantized layers: "rtn" (the default,
    ``automix.quant.DEFAULT_METHOD``), "minmax", "hqq" or any other registered one (files written
    before it had this name say ``quant_method``, which is read the same).
    ``calib_samples`` / ``calib_seq_len``: calibration set size for methods with
    ``needs_calibration`` (the trial samples it with ``automix.trial.data.calibration_batches``).
    ``options``: per-method knobs, validated against the method's ``option_defaults``.

    Validated by pydantic on construction (immutable); an invalid value or an unknown key raises
    :class:`MethodError` naming the key (and, for an unknown one, the valid keys).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    lora_alpha: float = Field(16.0, gt=0)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    quantizer: str = Field(DEFAULT_QUANT_METHOD, validation_alias=AliasChoices("quantizer", "quant_method"))
    calib_samples: int = Field(128, ge=1)
    calib_seq_len: int = Field(256, ge=2)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("quantizer")
    @classmethod
    def _quantizer(cls, v: str) -> str:
        if v not in QUANT_METHODS:
            raise ValueError(f"quantizer must be one of {', '.join(QUANT_METHODS)}")
        return v

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise MethodError(_settings_errors(err)) from None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "MethodSettings":
        """Build from a plain dict; unknown keys are errors naming the valid ones."""
        return cls(**dict(d or {}))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


def _settings_errors(err: ValidationError) -> str:
    unknown = sorted(str(e["loc"][-1]) for e in err.errors() if e["type"] == "extra_forbidden")
    if unknown:
        return f"unknown method settings {unknown}; valid: {sorted(MethodSettings.model_fields)}"
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}, got {e['input']!r}" for e in err.errors())


@dataclass(frozen=True)
class InitMemory:
    """What a method's initialisation holds beyond the model it builds, for the memory model's
    "prepare" phase (``automix.trial.memory``): plain quantization (``qlora``, ``qst``) needs
    none of it; the memory model bounds its chunked quantization by the training step.

    * ``layer_factor``: while one layer is initialised, bytes held per fp32 byte of that layer
      (LoftQ's residual and SVD, QuAILoRA's float64 least squares, QEFT's GPTQ); the largest
      target layer counts.
    * ``calib_tokens``: tokens of one calibration forward through the full-precision model
      (``calib_batch_size`` x ``calib_seq_len``), which runs before any layer is quantized.
    * ``hessians``: X^T X (fp32) of every input group of the target layers is summed over the
      calibration set and held until its layers are initialised (QuAILoRA, QEFT).
    * ``states``: copies of the whole calibration set's hidden states held while the blocks are
      fitted one by one (ApiQ: the full-precision stream and the quantized one; its layer-wise
      variant also the block's outputs and each layer's inputs), ``calib_rows`` x
      ``calib_seq_len`` tokens of hidden size each.
    * ``fit_tokens``: tokens of one fitting step through one block with gradients (ApiQ).
    """

    layer_factor: float = 0.0
    calib_tokens: int = 0
    hessians: bool = False
    states: float = 0.0
    calib_rows: int = 0
    calib_seq_len: int = 0
    fit_tokens: int = 0


@dataclass(frozen=True)
class MemoryProfile:
    """What a method adds to the memory of a fine-tuning step, analytically (no model built).

    ``automix.trial.memory.estimate`` combines it with the architecture, the per-layer settings (bits,
    group size, pruning) and batch/sequence/dtype:

    * ``quantize_base``: target layers with bits < 16 are stored as QuantLinear (False: the base
      stays dense whatever the bits say, as in plain ``lora``).
    * ``dense_columns``: per layer name, input columns kept dense next to the quantized part
      (QEFT's weak columns); those columns are not quantized and are counted as dense weights.
    * ``adapter_params``: parameters the method *adds* (LoRA A/B, side network, gates). The
      breakdown's ``adapters`` field reports all trainable bytes, so trainable parts of base
      layers (``trainable_params - adapter_params``) move there from ``weights``.
    * ``trainable_params`` / ``trainable_tensors``: everything the optimizer updates (adapters and
      any trainable base parts such as QEFT's weak block); AdamW keeps two states per element and
      a 4-byte step per tensor.
    * ``extra_frozen_bytes``: frozen parameters/buffers the method adds (index tensors, ...).
    * ``backprop_through_backbone``: False when no gradient flows through the frozen backbone
      (QST), so the backbone saves no activations for backward.
    * ``extra_activations``: what the method's own modules (a side network) save for backward in
      one micro-batch, in bytes: called as ``extra_activations(batch_size, seq_len, elem, autocast)``
      with ``elem`` the bytes of an activation element (the model dtype's: 4, or 2 in bf16 and
      under fp16 autocast) and ``autocast`` True under fp16 autocast with fp32 trainable weights
      (None: nothing). The one rule for the dtype: the method counts its tensors in ``elem`` bytes
      unless they are fp32 whatever the dtype (norm statistics, log-sum-exp), and adds the fp16
      weight casts autocast keeps. Must be picklable (a ``functools.partial`` of a module-level
      function).
    * ``lora`` / ``lora_dropout``: layers with ``rank > 0`` carry LoRALinear adapters; the
      memory model then counts their inputs and rank-r intermediates itself (sharing with what
      the backbone saves), so do not add them to ``extra_activations``.
    * ``grad_layers``: names of layers whose own weights (or a part, e.g. QEFT's weak block)
      train; gradients then flow from there on like from an adapter, so the backbone saves its
      activations from the first such layer on (None: none). Without it (and without ``lora``)
      the memory model assumes nothing in the backbone needs gradients.
    * Frozen quantized layers are assumed to save nothing for backward: run them as
      ``QuantLinear`` / ``automix.kernels.quant_matmul``, whose backward re-dequantizes the weight
      rather than keeping a dense copy alive.
    * ``param_bytes``: bytes per element of trainable parameters; None (default) means the
      model's dtype (LoRALinear creates A and B in its base layer's dtype). Under fp16 autocast
      every trainable parameter is fp32.
    * ``fp32_sizes``: elements of the trainable tensors that stay fp32 in every dtype (QST's gate
      scalars); they are part of ``trainable_params`` / ``trainable_tensors`` (and of
      ``trainable_sizes`` when given), with fp32 gradients and optimizer states.
    * ``trainable_sizes``: elements of each trainable tensor (optimizers with per-tensor rules,
      e.g. bitsandbytes' 8-bit states only above 4096 elements, need them); None: the memory
      model assumes ``trainable_tensors`` equal parts.
    * ``init``: what the method's initialisation holds beyond the model (:class:`InitMemory`);
      None for a method that only quantizes and adds parameters.
    * ``extra_forward``: what the method's own forward holds beyond the backbone's when nothing
      is trained (an evaluation), in bytes, called as ``extra_forward(tokens, elem)`` (QST keeps
      every block's hidden state for its side network); None: nothing. Picklable, like
      ``extra_activations``.
    """

    quantize_base: bool = True
    dense_columns: Mapping[str, int] = field(default_factory=dict)
    adapter_params: int = 0
    trainable_params: int = 0
    trainable_tensors: int = 0
    extra_frozen_bytes: int = 0
    backprop_through_backbone: bool = True
    extra_activations: Callable[[int, int, int, bool], float] | None = None
    param_bytes: int | None = None
    lora: bool = False
    lora_dropout: float = 0.0
    grad_layers: frozenset[str] | None = None
    trainable_sizes: tuple[int, ...] | None = None
    fp32_sizes: tuple[int, ...] = ()
    init: InitMemory | None = None
    extra_forward: Callable[[int, int], float] | None = None


class Method:
    """Base class: prepare a model for fine-tuning and describe what it trains and costs.

    Subclasses set ``name``, ``needs_calibration``, ``option_defaults`` and implement
    ``prepare`` and ``memory_profile``. Instances are stateless (safe to share); everything a
    prepared model needs lives in the model.
    """

    name: ClassVar[str] = ""
    needs_calibration: ClassVar[bool] = False
    option_defaults: ClassVar[dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    # ------------------------------------------------------------------ settings
    def check_settings(self, settings: MethodSettings | Mapping[str, Any] | None) -> MethodSettings:
        """Validate ``settings`` and fill method options from ``option_defaults``.

        Unknown option names are errors listing this method's options; option values take the
        type of their default (int/float/bool/str), so YAML/JSON strings like "16" still work.
        """
        if settings is None:
            settings = MethodSettings()
        elif not isinstance(settings, MethodSettings):
            settings = MethodSettings.from_dict(settings)
        given = dict(settings.options or {})
        unknown = sorted(set(given) - set(self.option_defaults))
        if unknown:
            raise MethodError(f"method {self.name!r} has no option(s) {unknown}; "
                              f"its options: {sorted(self.option_defaults) or 'none'}")
        opts = copy.deepcopy(dict(self.option_defaults))
        for k, v in given.items():
            default = self.option_defaults[k]
            try:
                if isinstance(default, bool):
                    v = v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes")
                elif isinstance(default, (int, float, str)) and default is not None:
                    v = type(default)(v)
            except (TypeError, ValueError) as err:
                raise MethodError(f"method {self.name!r} option {k!r}: expected "
                                  f"{type(default).__name__}, got {v!r}") from err
            opts[k] = v
        return settings.model_copy(update={"options": opts})

    # ------------------------------------------------------------------ the hook
    def prepare(self, model: nn.Module, layer_settings: Mapping[str, LayerSettings],
                settings: MethodSettings | Mapping[str, Any] | None = None,
                calib: torch.Tensor | None = None) -> nn.Module:
        """Quantize / inject / wrap ``model`` (in place where possible) and return the module to
        train and evaluate; its ``forward(input_ids, attention_mask=None, labels=None)`` returns an
        HF-style output with ``.loss`` and ``.logits``. Everything not trained must be frozen."""
        raise NotImplementedError

    def memory_profile(self, arch: Any, layer_settings: Mapping[str, LayerSettings],
                       settings: MethodSettings | Mapping[str, Any] | None = None) -> MemoryProfile:
        """Analytic memory profile (see :class:`MemoryProfile`). ``arch`` is an
        ``automix.arch.ArchInfo``; ``layer_settings`` are the per-layer settings *after*
        pruning is decided (use ``automix.arch.layer_shapes(arch, layer_settings)`` for the
        pruned (out, in) of each layer). Must be cheap: the search calls it thousands of times."""
        raise NotImplementedError

    # ------------------------------------------------------------------ trained state
    def trainable_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """The parameters the optimizer updates, by name, in a deterministic order."""
        return [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def extra_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Non-parameter tensors that belong to the trained state (default: none)."""
        return {}

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Trained state only (detached copies): trainable parameters plus ``extra_state``."""
        state = {n: p.detach().clone() for n, p in self.trainable_parameters(model)}
        for n, t in self.extra_state(model).items():
            state[f"__extra__.{n}"] = t.detach().clone()
        return state

    def load_state_dict(self, model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
        """Copy a ``state_dict`` back bit-exactly; names and shapes must match exactly."""
        params = dict(self.trainable_parameters(model))
        extra = self.extra_state(model)
        expected = set(params) | {f"__extra__.{n}" for n in extra}
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise MethodError(f"{self.name}: state does not match the prepared model: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        with torch.no_grad():
            for n, t in state.items():
                dst = params[n] if n in params else extra[n[len("__extra__."):]]
                if dst.shape != t.shape:
                    raise MethodError(f"{self.name}: {n}: shape {tuple(t.shape)} != {tuple(dst.shape)}")
                dst.copy_(t.to(dtype=dst.dtype, device=dst.device))

    def save(self, model: nn.Module, path: str | Path) -> Path:
        """Write the trained state to a safetensors file (tensors stored bit-exactly)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous().cpu() for k, v in self.state_dict(model).items()}, str(path),
                  metadata={"automix_method": self.name})
        return path

    def load(self, model: nn.Module, path: str | Path) -> None:
        """Load a file written by :meth:`save` into a model prepared the same way."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise MethodError(f"no saved method state at {path}")
        with safe_open(str(path), "pt") as f:
            saved_by = (f.metadata() or {}).get("automix_method")
        if saved_by and saved_by != self.name:
            raise MethodError(f"{path} holds state of method {saved_by!r}, not {self.name!r}")
        self.load_state_dict(model, load_file(str(path)))


def causal_lm(model: nn.Module) -> nn.Module:
    """The Hugging Face causal LM a wrapper holds: a PEFT model's ``get_base_model()`` (its LoRA
    layers are injected in that model's modules), else ``model`` itself."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def has_backbone(model: nn.Module) -> bool:
    """Whether :func:`backbone_hidden` can run ``model`` without its LM head: a Hugging Face
    causal LM (or a PEFT wrapper of one) whose ``base_model`` is a separate backbone."""
    lm = causal_lm(model)
    base = getattr(lm, "base_model", None)
    return base is not None and base is not lm and callable(getattr(lm, "get_output_embeddings", None))


def backbone_hidden(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """The last hidden states of a Hugging Face causal LM's backbone (a PEFT model's too: the
    model it wraps): its forward without the LM head (no logits) and without a KV cache, for
    calibration passes and the chunked loss."""
    if not has_backbone(model):
        raise MethodError(f"{type(model).__name__} has no backbone (base_model) to run without its head")
    out = causal_lm(model).base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    hidden = getattr(out, "last_hidden_state", None)
    if hidden is None:
        raise MethodError(f"the backbone of {type(model).__name__} gave no last_hidden_state "
                          f"({type(out).__name__}); it cannot be run without its head")
    return hidden


def freeze(model: nn.Module) -> None:
    """Turn off gradients for every parameter (methods then enable only what they train)."""
    for p in model.parameters():
        p.requires_grad_(False)


def lora_memory_profile(arch: Any, layer_settings: Mapping[str, LayerSettings], settings: MethodSettings,
                        quantize_base: bool = True) -> MemoryProfile:
    """Profile of any "LoRA on a (quantized) frozen base" method: ``lora``, ``qlora``, ``loftq``,
    ``quailora``, ``apiq`` (their initialisations differ, their memory does not)."""
    shapes = layer_shapes(arch, layer_settings)
    params = tensors = 0
    sizes: list[int] = []
    for name, s in layer_settings.items():
        if s.rank > 0:
            out_f, in_f = shapes[name]
            params += s.rank * (out_f + in_f)
            tensors += 2
            sizes += [s.rank * in_f, out_f * s.rank]
    return MemoryProfile(quantize_base=quantize_base, adapter_params=params, trainable_params=params,
                         trainable_tensors=tensors, lora=True, lora_dropout=settings.lora_dropout,
                         trainable_sizes=tuple(sizes))
