"""Where automix keeps what it builds on this machine, and where a study's stores are.

`cache_root()` is the one rule for caches: ``$AUTOMIX_CACHE_DIR`` when set, else the platform's
user cache directory (``~/.cache/automix`` on Linux). Each cache has its own sub-folder
(``models/`` for pretrained built-in models, ``gguf/``, ``registry/``, ``data/``,
``sensitivity/``). It lives in `config` because every layer (the built-in model included) needs
it and it depends on nothing.

**Stores.** A study's Optuna storage and MLflow tracking store default to SQLite files in the
working directory; a relative SQLite path written in a study file (``sqlite:///stores/o.db``)
is relative to the study file's directory, like every other path in it (`resolve_store`). A
study records the stores it ran with; when its Optuna store is opened somewhere else (a copied or
moved project), a recorded SQLite MLflow store that lay beside the recorded Optuna store is the
one beside the opened Optuna store now, and one that lay elsewhere is not written to
(`relocate_recorded_store` says which and why).
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

__all__ = ["cache_root", "sqlite_file", "resolve_store", "relocate_recorded_store"]

SQLITE = "sqlite:///"


def cache_root() -> Path:
    """$AUTOMIX_CACHE_DIR, or the user cache directory of automix."""
    root = os.environ.get("AUTOMIX_CACHE_DIR")
    return Path(root).expanduser() if root else Path(platformdirs.user_cache_dir("automix"))


def sqlite_file(url: str | None) -> Path | None:
    """The database file of a SQLite URL (relative as written; None for other stores)."""
    if not url or not url.startswith(SQLITE) or url == SQLITE + ":memory:":
        return None
    return Path(url[len(SQLITE):])


def resolve_store(url: str, base: str | os.PathLike) -> str:
    """``url`` with a relative SQLite path made absolute against ``base`` (server URLs as given)."""
    path = sqlite_file(url)
    if path is None or path.is_absolute():
        return url
    return f"{SQLITE}{(Path(base) / path.expanduser()).resolve()}"


def relocate_recorded_store(recorded: str | None, recorded_storage: str | None, storage: str
                            ) -> tuple[str | None, str]:
    """(the store to use, a note for the user: '' when nothing moved) for a store a study
    recorded (``recorded``, e.g. its MLflow tracking URI) next to its Optuna storage
    (``recorded_storage``), now that the Optuna storage is opened at ``storage``.

    Nothing changes for server URLs or when the Optuna storage is where it was recorded. A SQLite
    store that lay in (or under) the recorded Optuna store's directory is taken at the same place
    relative to the opened one: the project was copied or moved, and it must write into its own
    stores. One that lay elsewhere is not used (None: the working directory's default), and the
    note says so."""
    old_file, new_file, path = sqlite_file(recorded_storage), sqlite_file(storage), sqlite_file(recorded)
    if recorded is None or path is None or old_file is None or new_file is None:
        return recorded, ""
    old_dir, new_dir = old_file.resolve().parent, new_file.resolve().parent
    if old_dir == new_dir:
        return recorded, ""
    try:
        rel = path.resolve().relative_to(old_dir)
    except ValueError:
        return None, (f"the study recorded its MLflow store at {recorded}, outside the directory its Optuna "
                      f"store was in ({old_dir}); the Optuna store is now {new_file.resolve()}, so that store "
                      "belongs to another project and is not written to (pass --tracking-uri to choose one)")
    moved = f"{SQLITE}{new_dir / rel}"
    return moved, (f"the study's stores were recorded in {old_dir} and are read from {new_dir} (a copied or "
                   f"moved project): using the MLflow store {moved}, not {recorded}")
