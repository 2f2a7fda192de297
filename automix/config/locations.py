"""Where automix keeps what it builds on this machine.

`cache_root()` is the one rule: ``$AUTOMIX_CACHE_DIR`` when set, else the platform's user cache
directory (``~/.cache/automix`` on Linux). Each cache has its own sub-folder (``models/`` for
pretrained built-in models, ``gguf/``, ``registry/``, ``data/``, ``sensitivity/``). It lives in
`config` because every layer (the built-in model included) needs it and it depends on nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

__all__ = ["cache_root"]


def cache_root() -> Path:
    """$AUTOMIX_CACHE_DIR, or the user cache directory of automix."""
    root = os.environ.get("AUTOMIX_CACHE_DIR")
    return Path(root).expanduser() if root else Path(platformdirs.user_cache_dir("automix"))
