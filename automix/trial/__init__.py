"""One trial: what a Ray worker runs for every configuration the search proposes.

``run_trial(spec)`` loads the model (`models`), prunes it (`prune`), lets the method quantize it
and initialise adapters (`automix.methods`), fine-tunes on the task's data (`data`), evaluates,
and measures memory against the analytic model (`memory`). `sensitivity` profiles a model per
layer and bit width, also as a task on a worker.

This package's namespace is the entry point the study layer uses (`automix.study` imports
`automix.trial`, never its submodules): the trial function and its spec, and the few
driver-side questions a study asks before any trial runs (which methods exist and what they
train, the memory a configuration will take, the model's tokenizer and data, the sensitivity
profile).
"""

from automix.methods import available_methods, get_method
from automix.trial.data import get_task, is_named_data, is_padded, training_padded, validate_data
from automix.trial.memory import MemoryBreakdown, estimate
from automix.trial.models import ModelLoadError, is_named_model, load_tokenizer, model_fingerprint, resolve_model_dir
from automix.trial.run import PreparedTrial, prepare_model, run_trial
from automix.trial.sensitivity import DEFAULT_METRIC, SensitivityProfile, load_or_profile, profile_job, profile_path
from automix.trial.spec import TrialFailure, TrialResult, TrialSpec

__all__ = [
    "DEFAULT_METRIC", "MemoryBreakdown", "ModelLoadError", "PreparedTrial", "SensitivityProfile", "TrialFailure",
    "TrialResult", "TrialSpec", "available_methods", "estimate", "get_method", "get_task", "is_named_data",
    "is_named_model", "is_padded", "load_or_profile",
    "load_tokenizer", "model_fingerprint", "prepare_model", "profile_job", "profile_path",
    "resolve_model_dir", "run_trial", "training_padded", "validate_data",
]
