"""What the user writes: study files, search-space files and per-layer settings, validated.

`study` (the study YAML: model, task, methods, objectives, budget, how trials run), `layers`
(per-layer bits / group size / prune ratio / rank, and their YAML form), `sizes` (memory sizes
in human units). Errors name the file, the line and the key. No torch, no Optuna here.
"""
