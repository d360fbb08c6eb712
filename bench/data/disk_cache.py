"""Generated datasets kept on disk: a procedurally generated split is made once per machine.

MNIST-1D's generator takes seconds (more than the default run's training) and yields the
same arrays for the same arguments, so the arrays are stored under
``$BATCH_BENCH_DATA_CACHE`` (default ``$XDG_CACHE_HOME/batch-bench/data``, ``~/.cache/...``;
``off`` disables) and read back bit for bit. The file name holds a hash of everything the
arrays depend on (generator version and arguments); a file is written to a temporary name and
renamed into place, so concurrent jobs read a whole file or none, and an unreadable one is
regenerated.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

ENV_VAR = "BATCH_BENCH_DATA_CACHE"
OFF = "off"


def cache_dir() -> Path | None:
    """Where generated arrays are kept (None: disabled)."""
    setting = os.environ.get(ENV_VAR)
    if setting == OFF:
        return None
    if setting:
        return Path(os.path.expanduser(setting))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "batch-bench" / "data"


def cached_arrays(name: str, key: dict[str, Any],
                  make: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``make()``'s arrays, read from the cache when an entry for ``key`` exists, else made
    and stored (a write that fails, e.g. a read-only home, only costs the next run the time)."""
    directory = cache_dir()
    if directory is None:
        return make()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = directory / f"{name}-{digest}.npz"
    try:
        with np.load(path, allow_pickle=False) as saved:
            return {k: saved[k] for k in saved.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # absent or broken: make it again
        pass
    arrays = make()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError:
        pass
    return arrays
