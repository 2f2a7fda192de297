"""Many trials: the search loop and everything around it.

`backend` turns a validated study into trials (the search space over the model's layers, the
memory of each proposal, the `TrialSpec` payloads); `loop` asks the sampler, runs trials on an
executor and tells Optuna; `results` holds the maths on finished trials (fronts, hypervolume,
tables) that export and the dashboards read too; `executors` run trial functions on Ray (or
in-process); `tracking` mirrors trials to MLflow; `progress` is the live display; `storage`
opens the Optuna study and recovers from killed drivers.

This layer reaches trial code only through the `automix.trial` package namespace (what a Ray
worker runs and the few questions the driver asks about a model).
"""
