"""The helpers every on-disk cache shares (where the caches live: `automix.config.locations`).

`hash_file` is the one rule for
fingerprinting a (possibly huge) file, `file_sha256` memoises a file's content digest, and
`atomic_dir` builds a directory under a temporary name and renames it into place, so that a
reader never sees half a cache entry and concurrent builders of the same entry do not clash.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["hash_file", "file_sha256", "atomic_dir"]

_FULL_HASH_LIMIT = 1 << 30  # files above 1 GiB are hashed by sampled 1 MiB chunks every 64 MiB


def hash_file(h: "hashlib._Hash", path: Path) -> None:
    """Feed a file's name, size and content into `h` (sampled above 1 GiB, for speed)."""
    size = path.stat().st_size
    h.update(f"{path.name}:{size}".encode())
    with open(path, "rb") as f:
        if size <= _FULL_HASH_LIMIT:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        else:
            for off in range(0, size, 64 << 20):
                f.seek(off)
                h.update(f.read(1 << 20))


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """Full sha256 (hex) of a file's content, memoised per (path, size, mtime) in this process."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory next to `final`; on success rename it to `final`.

    If another process finished `final` first, its copy is kept and ours is dropped (entries
    are content-addressed, so both are the same). On an exception the temporary is removed.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it private; the entry is an ordinary cache folder
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
