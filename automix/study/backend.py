"""From a validated study to runnable trials: the sampler, the search space and the specs.

`AutomixBackend` is the driver's view of a real study: it reads the model's config (no
weights), loads the search space for the model's layer names, turns search parameters into
per-layer settings and `TrialSpec` dicts for `automix.trial.run_trial`, and knows the memory
of every proposal from `automix.trial.memory.estimate` (so the sampler treats memory as a known
objective and the budget as a known constraint). `preflight` checks, before any trial runs,
what the schema cannot: the budget against the smallest configuration, the stores.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import sqlalchemy
from optuna.distributions import CategoricalDistribution
from pydantic import ValidationError
from transformers import AutoConfig

from automix.arch import arch_info, block_index, layer_shapes, target_layer_names
from automix.config.layers import average_bits, compact_layers
from automix.config.space import read_space_file
from automix.config.study import StudyConfig, StudyConfigError, format_size
from automix.search.batch import DecomposedFunction, decompose
from automix.search.factory import SamplerInputs
from automix.search.factory import make_sampler as build_sampler
from automix.search.space import SearchSpace
from automix.study.tracking import TrackingError, check_tracking_uri
from automix.study.executors import LocalExecutor, RayExecutor
from automix.trial import (DEFAULT_METRIC, ModelLoadError, SensitivityProfile, TrialSpec, available_methods, estimate,
                           get_method, get_task, is_named_data, is_named_model, load_tokenizer, profile_path,
                           resolve_model_dir, training_padded, validate_data)

__all__ = ["make_sampler", "AutomixBackend", "preflight"]


def make_sampler(cfg: StudyConfig, backend: Any) -> Any:
    """The sampler the study names (`automix.search.factory`), given what the backend knows: the
    memory model (vectorised and tabulated when the backend can decompose it), the budget, the
    profile's features and the values the one-shot start holds unscored parameters at.

    TPE / NSGA-II read the memory constraint the driver sets on each trial when it is asked
    (`Trial.set_constraint("memory_budget", ...)`); AutoMixSampler and the one-shot also get it
    as a known constraint, so they never propose an infeasible configuration."""
    mem = backend.memory_function() if hasattr(backend, "memory_function") else backend.predicted_memory
    space = getattr(backend, "space", None)
    scores = backend.sensitivity_scores() if hasattr(backend, "sensitivity_scores") else None
    inputs = SamplerInputs(
        distributions=dict(backend.distributions), memory=mem, budget=float(cfg.memory_budget),
        memory_known=cfg.objectives.memory == "predicted",
        features=space.feature_fn(scores) if hasattr(space, "feature_fn") else None, profiled=scores is not None,
        hold=space.held_values() if hasattr(space, "held_values") else {}, n_trials=cfg.n_trials,
        seed=cfg.sampler_seed)
    try:
        return build_sampler(cfg.sampler, inputs, cfg.sampler_options)
    except TypeError as err:
        raise StudyConfigError(f"{cfg.source or '<study>'}: sampler_options: {err}") from None
    except ValueError as err:
        raise StudyConfigError(f"{cfg.source or '<study>'}: sampler: {err}") from None


def _settings_dict(s: Any) -> dict[str, Any]:
    if hasattr(s, "to_dict"):
        return dict(s.to_dict())
    if dataclasses.is_dataclass(s):
        return dataclasses.asdict(s)
    return dict(s)


class AutomixBackend:
    """The real `TrialBackend`: search parameters -> per-layer settings -> `TrialSpec` dicts for
    `automix.trial.run_trial`, with the memory of every proposal from `automix.trial.memory.estimate`.

    Building it reads only the model's config (no weights), loads the search space for the
    model's layer names and checks every method name; `preflight` then checks the rest.
    """

    function = "automix.trial:run_trial"
    profile_function = "automix.trial:profile_job"

    def __init__(self, cfg: StudyConfig) -> None:
        self.cfg = cfg
        where = cfg.source or "<study>"
        unknown = [m for m in cfg.methods if m not in available_methods()]
        if unknown:
            raise StudyConfigError(f"{where}: methods: unknown method(s) {unknown}; available: "
                                   f"{', '.join(available_methods())}")
        model = cfg.model if is_named_model(cfg.model) else str(cfg.resolve_path(cfg.model))
        try:
            self.model_dir = resolve_model_dir(model)
        except ModelLoadError as err:
            raise StudyConfigError(f"{where}: model: {err}") from None
        self.hf_config = AutoConfig.from_pretrained(self.model_dir)
        self.arch = arch_info(self.hf_config)
        self.layer_names = target_layer_names(self.hf_config)
        self.space = _load_space(cfg, self.layer_names)
        self.distributions = {"method": CategoricalDistribution(list(cfg.methods)),
                              **dict(self.space.distributions)}
        self._mem: dict[tuple, float] = {}
        self._padded: bool | None = None
        self._memory_fn: DecomposedFunction | None = None

    def sensitivity_scores(self, local: bool = False, ray_address: str | None = None
                           ) -> dict[str, dict[int, float]] | None:
        """Per-layer, per-bits sensitivities for the sampler's features (`fisher_kl`: an estimate
        of the KL each layer alone causes), per `cfg.sensitivity`.

        "on" and "auto" load the profile cached for the model and the study's task and data, or
        compute it as a Ray task with one trial's resources, where the trials will run (in this
        process when `local`), printing its progress; "auto" goes on without a profile when it
        cannot be computed, "on" raises. "off" never profiles."""
        mode = getattr(self.cfg, "sensitivity", "off")
        if mode == "off":
            return None
        if not any(p.suffix in (".safetensors", ".bin", ".pt") for p in self.model_dir.iterdir()):
            return None  # a config-only directory: nothing to profile
        spec = {**self._spec_fields(), **self.cfg.trial.extra}
        res = self.cfg.resources
        path, payload = self.profile_file()
        if path.is_file():
            try:
                return SensitivityProfile.load(path).scores(DEFAULT_METRIC)
            except ValueError as err:  # unreadable or an old format: computed again below
                print(f"note: recomputing the sensitivity profile: {err}")
        if not res.gpus:  # the profile runs alone, before any trial: the study's CPU share
            payload["threads"] = max(1, int(self.cfg.workers * res.cpus))
        print(f"profiling the sensitivity of {self.cfg.model}'s layers on its {spec['task']} data "
              f"({'in this process' if local else 'as a Ray task'}; cached in {path})", flush=True)
        try:
            executor = (LocalExecutor(self.profile_function) if local else
                        RayExecutor(self.profile_function, workers=1, cpus=res.cpus, gpus=res.gpus,
                                    max_retries=self.cfg.max_retries, address=ray_address))
            with executor:
                executor.submit("profile", payload)
                outcomes: list = []
                while not outcomes:
                    outcomes = executor.poll(1.0)
            if outcomes[0].status != "ok":
                raise RuntimeError(f"the sensitivity profile {outcomes[0].status}: {outcomes[0].error}")
            profile = SensitivityProfile.from_dict(outcomes[0].value)
        except (RuntimeError, ValueError, OSError) as err:
            if mode == "on":
                raise
            print(f"note: no sensitivity profile ({err}); the sampler goes on with bits-only features")
            return None
        profile.save(path)  # a cluster worker's cache is not the driver's
        return profile.scores(DEFAULT_METRIC)

    def profile_file(self) -> tuple[Path, dict[str, Any]]:
        """Where the study's sensitivity profile is cached, and the profile job's payload."""
        spec = {**self._spec_fields(), **self.cfg.trial.extra}
        payload: dict[str, Any] = {"model_spec": str(self.model_dir), "task": spec["task"], "data": spec["data"],
                                   "device": "cuda" if self.cfg.resources.gpus else "cpu"}
        quantizer = spec.get("quantizer") or (spec.get("method_settings") or {}).get("quantizer")
        if quantizer:
            payload["method"] = quantizer
        path, _ = profile_path(**{k: v for k, v in payload.items() if k != "device"})
        return path, payload

    def _layers(self, params: Mapping[str, Any]) -> dict[str, Any]:
        space_params = {k: v for k, v in params.items() if k != "method"}
        return dict(self.space.params_to_layers(space_params))

    def predicted_memory(self, params: Mapping[str, Any]) -> float:
        key = tuple(sorted((k, str(v)) for k, v in params.items()))
        if key not in self._mem:
            self._mem[key] = float(self._estimate(params).peak)
        return self._mem[key]

    def _estimate(self, params: Mapping[str, Any]) -> Any:
        """The analytic model's `MemoryBreakdown` of a configuration, as the trial will predict it."""
        t = self.cfg.trial
        return estimate(self.arch, self._layers(params), params["method"], batch_size=t.batch_size,
                        seq_len=t.seq_len, dtype=t.dtype, config=self.hf_config,
                        device="cuda" if self.cfg.resources.gpus else "cpu",
                        padded=self.batches_padded(), **t.memory_options())

    def memory_function(self) -> DecomposedFunction:
        """`predicted_memory` with a vectorised form for the sampler (``batch``): per-parameter
        and per-pair tables of the analytic model (pairs of parameters that set layers of the
        same block: a layer's packed size depends on its block's pruning), checked against the
        model on random configurations; per-candidate calls if the check fails. Built once.

        The memory is the trial's peak over its phases (the estimate's ``peak``: load, prepare,
        train, evaluate), ``s + max_t m_t``: with gradient checkpointing the training step holds
        the largest block recomputation, and a method whose initialisation can hold more than the
        step adds that phase as one more term (the estimate's ``peak_terms``; the other phases fit
        under the step by construction). The tables are of ``s`` and of each term (`decompose`'s
        ``max_terms``), so ``batch`` takes the maximum itself, exactly."""
        if self._memory_fn is None:
            blocks = {name: {block_index(layer) for layer in layers}
                      for name, layers in self.space.param_layers().items()}
            last: dict[str, Any] = {}  # decompose asks for the total, then the terms, of one configuration

            def breakdown(params: Mapping[str, Any]) -> Any:
                key = tuple(sorted((k, str(v)) for k, v in params.items()))
                if last.get("key") != key:
                    last.update(key=key, est=self._estimate(params))
                    self._mem.setdefault(key, float(last["est"].peak))
                return last["est"]

            self._memory_fn = decompose(lambda p: float(breakdown(p).peak), self.distributions,
                                        may_interact=lambda a, b: bool(blocks[a] & blocks[b]),
                                        max_terms=lambda p: breakdown(p).peak_terms)
        return self._memory_fn

    def batches_padded(self) -> bool:
        """Whether any of the trials' training batches carries padding, read off the batches as
        `run_trial` does: padding makes attention keep an explicit mask, which the trial's own
        memory prediction counts, so the sampler's known memory must count it too."""
        if self._padded is None:
            spec = {**self._spec_fields(), **self.cfg.trial.extra}
            self._padded = False  # no tokenizer / bad data: the trial fails, preflight reports it
            try:
                tokenizer = load_tokenizer(self.model_dir)
                if tokenizer is not None:
                    self._padded = training_padded(get_task(spec["task"], spec["data"]), tokenizer,
                                                   int(spec["batch_size"]), int(spec["seq_len"]),
                                                   int(spec["seed"]), int(spec["steps"]))
            except (OSError, ValueError, StopIteration):
                pass
        return self._padded

    def smallest_memory(self) -> tuple[float, dict[str, Any]]:
        """The least memory any configuration of the space can take (coordinate-wise minimum,
        exact when memory is a sum over layers, as it is), and that configuration."""
        best_params, best = None, float("inf")
        for method in self.cfg.methods:
            params: dict[str, Any] = {"method": method}
            for name, dist in self.space.distributions.items():
                params[name] = _choices(dist)[0]
            for name, dist in self.space.distributions.items():
                options = _choices(dist)
                if len(options) > 1:
                    params[name] = min(options, key=lambda v: self.predicted_memory({**params, name: v}))
            mem = self.predicted_memory(params)
            if mem < best:
                best, best_params = mem, params
        return best, best_params or {}

    def layers_dict(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return compact_layers({n: _settings_dict(s) for n, s in self._layers(params).items()})

    def payload(self, params: Mapping[str, Any]) -> dict:
        return {**self._spec_fields(), "method": params["method"], "layers": self.layers_dict(params),
                **self.cfg.trial.extra}

    def _spec_fields(self) -> dict[str, Any]:
        """The trial spec fields every trial of the study shares (before `trial.extra`)."""
        t, cfg = self.cfg.trial, self.cfg
        spec = {
            "model": cfg.model if is_named_model(cfg.model) else str(self.model_dir),  # a name: each worker resolves its own cache
            "task": cfg.task, "data": _data_spec(cfg), **t.spec_fields(),
            "device": "cuda" if cfg.resources.gpus else "cpu",
        }
        if cfg.pruner.enabled:  # intermediate evaluations for the pruner to judge
            spec["report_every"] = cfg.pruner.report_every(t.steps)
            spec["report_eval_batches"] = cfg.pruner.eval_batches
        return spec

    def describe(self, params: Mapping[str, Any]) -> tuple[str, dict, dict]:
        layers = self._layers(params)
        settings = [_settings_dict(s) for s in layers.values()]
        n = max(len(settings), 1)
        # Methods that keep the base weights dense (plain LoRA) hold 16 bits whatever the space says.
        if not get_method(params["method"]).memory_profile(self.arch, layers, None).quantize_base:
            layers_for_bits = {k: dataclasses.replace(v, bits=16) for k, v in layers.items()}
        else:
            layers_for_bits = layers
        summary = {
            "avg_bits": float(average_bits(layers_for_bits, layer_shapes(self.arch, layers))),
            "avg_prune": sum(float(s.get("prune", 0.0)) for s in settings) / n,
            "avg_rank": sum(float(s.get("rank", 0)) for s in settings) / n,
            "n_layers": len(settings),
        }
        return params["method"], summary, self.layers_dict(params)


def _choices(dist: Any) -> list[Any]:
    if hasattr(dist, "choices"):
        return list(dist.choices)
    step = getattr(dist, "step", None) or (1 if type(dist).__name__.startswith("Int") else None)
    if step is None:
        return [dist.low, dist.high]
    n = int(round((dist.high - dist.low) / step))
    return [dist.low + i * step for i in range(n + 1)]


def _data_spec(cfg: StudyConfig) -> str | None:
    """The study's data as a trial gets it: a name as written, a path resolved against the study file."""
    if not cfg.data:
        return None
    return cfg.data if is_named_data(cfg.data) else str(cfg.resolve_path(cfg.data))


def _load_space(cfg: StudyConfig, layer_names: list[str]) -> SearchSpace:
    """The study's search space: the YAML file with the study's overrides merged in (in memory).

    An error in a key the overrides set names the study file's line of
    ``search_space.overrides.<key>``; one in a key of the space file, the space file's line.
    """
    where = cfg.source or "<study>"
    path = cfg.resolve_path(cfg.search_space.path)
    if not path.is_file():
        raise StudyConfigError(f"{where}: search_space.path: file {path} not found")
    try:
        doc = read_space_file(path)
        data, lines = doc.data, doc.lines
        overrides = cfg.search_space.overrides
        if overrides:
            data = _deep_merge(data, overrides)
            lines = lines.overlaid(overrides, cfg.file_lines("search_space", "overrides"))
        return SearchSpace(data, layer_names, source=lines, known_methods=available_methods())
    except ValueError as err:
        raise StudyConfigError(f"{where}: search_space: {err}") from None


def _deep_merge(base: Any, over: Any) -> Any:
    """``over`` merged into ``base``: mappings key by key (recursively), anything else replaces."""
    if isinstance(base, Mapping) and isinstance(over, Mapping):
        out = dict(base)
        for k, v in over.items():
            out[k] = _deep_merge(base[k], v) if k in base else v
        return out
    return over


def preflight(cfg: StudyConfig, backend: Any, *, cluster: bool = False) -> None:
    """Everything that can be checked before a trial runs or anything is written (raises
    StudyConfigError / ValueError).

    The model, methods and search space were checked building `backend`; here: the task's data
    and eval data (every record, as a trial reads it, streamed: first, so that bad data is
    refused before anything reads it whole), the memory budget against the smallest
    configuration, the trial spec, the resources (GPUs asked for on a machine without CUDA, when
    no cluster is given), the Optuna storage (and its database driver) and the MLflow tracking URI.
    """
    where = cfg.source or "<study>"
    if cfg.resources.gpus and not cluster:
        import torch  # (third-party; the driver has it through automix.trial)

        if not torch.cuda.is_available():
            raise StudyConfigError(
                f"{cfg.file_lines('resources').where(('gpus',))}: each trial asks for "
                f"{cfg.resources.gpus:g} GPU, but this machine has no CUDA device: set resources.gpus: 0, "
                "or run on a Ray cluster with GPUs (--ray-address)")
    if isinstance(backend, AutomixBackend):
        _check_data(cfg, {**backend._spec_fields(), **cfg.trial.extra})
    params: dict[str, Any] = {}
    smallest = getattr(backend, "smallest_memory", None)
    if smallest is not None:
        got = smallest()
        mem, params = got if isinstance(got, tuple) else (got, {})
        if mem > cfg.memory_budget:
            raise StudyConfigError(
                f"{where}: memory_budget: {format_size(cfg.memory_budget)} is below the smallest "
                f"possible configuration ({format_size(mem)}"
                + (f", method {params.get('method')}" if params.get("method") else "") + ")"
            )
    if isinstance(backend, AutomixBackend):
        try:  # the spec every trial will get (trial settings + extra keys) is a valid TrialSpec
            TrialSpec.model_validate(backend.payload(params or {"method": cfg.methods[0]}))
        except ValidationError as err:
            why = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in err.errors())
            raise StudyConfigError(f"{where}: trial: the trial spec is not valid ({why})") from None
    try:
        check_tracking_uri(cfg.tracking)
    except TrackingError as err:
        raise StudyConfigError(f"{where}: tracking_uri: {err}") from None
    url = cfg.storage_url
    if url.startswith("sqlite:///"):
        parent = Path(url[len("sqlite:///"):]).parent
        if not parent.is_dir():
            raise StudyConfigError(f"{where}: storage: directory {parent} does not exist")
    else:
        try:
            engine = sqlalchemy.create_engine(url)
        except (ImportError, sqlalchemy.exc.NoSuchModuleError) as err:
            raise StudyConfigError(f"{where}: storage: no database driver for {url.split(':')[0]!r} ({err}); "
                                   "for PostgreSQL: pip install 'automix[postgres]' and write the URL as "
                                   "postgresql+psycopg2://USER:PASSWORD@HOST:5432/DB") from None
        try:
            with engine.connect():
                pass
            engine.dispose()
        except Exception as err:
            raise StudyConfigError(f"{where}: storage: Optuna storage {url!r} cannot be reached: {err}") from None


def _check_data(cfg: StudyConfig, spec: Mapping[str, Any]) -> None:
    """The data and eval data every trial gets (`spec`), streamed through once with the task's
    record rule (`automix.trial.validate_data`): a bad line, a missing or wrongly typed field,
    an empty file or a missing path is a StudyConfigError naming the study file's line and the
    data's FILE:LINE. Named data sets are built (on first use) and checked like files."""
    data, eval_data = spec.get("data"), spec.get("eval_data")
    lines = cfg.file_lines()
    if not isinstance(eval_data, (str, type(None))):
        return  # not a path: the trial spec check names it
    if eval_data and not data:
        raise StudyConfigError(f"{lines.where(('trial', 'extra', 'eval_data'))}: evaluation data is set without "
                               "`data`; the task's built-in data has its own held-out split and a trial would "
                               "ignore it: set data as well, or remove eval_data")
    if not data:
        return
    try:
        validate_data(str(spec.get("task", cfg.task)), data, eval_data or None)
    except ValueError as err:
        key = ("trial", "extra", "eval_data") if getattr(err, "role", "data") == "eval data" else ("data",)
        raise StudyConfigError(f"{lines.where(key)}: {err}") from None
