"""What the user writes: study files, search-space files and per-layer settings, validated.

`study` (the study YAML: model, task, methods, objectives, budget, how trials run; memory sizes
in human units), `space` (the search-space file schema), `layers` (per-layer bits / group size /
prune ratio / rank, and the layer configuration file). All are pydantic schemas; `_yaml` reads
their files once with the line of every key, so errors name the file, the line and the key.
No torch, no Optuna here.
"""
