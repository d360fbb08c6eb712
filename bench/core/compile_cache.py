"""JAX's persistent compilation cache: compile once per program shape across a sweep.

``compile_cache_dir`` (a top-level config key) is ``auto`` by default: the directory in
``$BATCH_BENCH_COMPILE_CACHE`` if set, else ``$XDG_CACHE_HOME/batch-bench/jax-compile``
(``~/.cache/...``); ``null`` disables it. It is enabled before the first compile of a process
(JAX initializes its cache once per process; a later, different setting has no effect and the
record says what was actually used) with no minimum compile time, so every program is cached.

Many SLURM jobs may share one cache on a network filesystem. JAX 0.10's file cache writes an
entry in place (no lock when the size is unbounded), so a job killed mid-write would leave a
truncated entry that every later job fails to read (JAX then warns and recompiles, for ever).
Entries are therefore written to a temporary file and renamed into place (atomic on POSIX and
NFS), so readers see a whole entry or none. Hits and misses are counted from JAX's monitoring
events and stored in every record (``environment.compile_cache``).
"""

from __future__ import annotations

import os
import secrets
from collections import Counter
from pathlib import Path
from typing import Any

AUTO = "auto"
ENV_VAR = "BATCH_BENCH_COMPILE_CACHE"
_EVENTS = {"/jax/compilation_cache/cache_hits": "hits",
           "/jax/compilation_cache/cache_misses": "misses"}
_counts: Counter[str] = Counter()
_state: dict[str, Any] = {"dir": None, "atomic_writes": False, "listening": False}


def resolve(setting: str | None) -> str | None:
    """The cache directory a ``compile_cache_dir`` setting means (None: disabled)."""
    if setting is None:
        return None
    if setting == AUTO:
        if os.environ.get(ENV_VAR):
            return os.path.expanduser(os.environ[ENV_VAR])
        base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        return os.path.join(base, "batch-bench", "jax-compile")
    return os.path.expanduser(setting)


def enable(setting: str | None) -> dict[str, Any]:
    """Turn the cache on (before the first compile of this process); returns :func:`info`."""
    import jax

    path = resolve(setting)
    if path is not None and _state["dir"] is None and not jax.config.jax_compilation_cache_dir:
        Path(path).mkdir(parents=True, exist_ok=True)
        _install_atomic_writes()
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        _state["dir"] = path
    if not _state["listening"]:
        jax.monitoring.register_event_listener(_count)
        _state["listening"] = True
    return info()


def _count(event: str, **_: Any) -> None:
    if event in _EVENTS:
        _counts[_EVENTS[event]] += 1


def info() -> dict[str, Any]:
    """What this process uses: the directory (None: disabled), whether entries are written
    atomically, and the hits / misses so far."""
    import jax

    return {"dir": jax.config.jax_compilation_cache_dir or None,
            "atomic_writes": _state["atomic_writes"],
            "hits": _counts["hits"], "misses": _counts["misses"]}


def _install_atomic_writes() -> None:
    """Make JAX's file cache write each entry via a temporary file + rename (module docstring).

    Uses JAX internals (``jax._src.compilation_cache.get_file_cache`` and ``LRUCache``); if a
    JAX version lacks them, the cache still works with JAX's own writes and ``info()`` says so.
    """
    try:
        from jax._src import compilation_cache as cc
        from jax._src.lru_cache import _CACHE_SUFFIX, LRUCache
    except ImportError:
        return
    if not hasattr(cc, "get_file_cache") or not hasattr(LRUCache, "put"):
        return

    class AtomicLRUCache(LRUCache):
        def put(self, key: str, value: bytes) -> None:
            if self.eviction_enabled or not key:  # bounded caches write under JAX's file lock
                return super().put(key, value)
            final = Path(str(self.path)) / f"{key}{_CACHE_SUFFIX}"
            if final.exists():
                return
            tmp = final.with_name(f".{final.name}.{secrets.token_hex(6)}.tmp")
            tmp.write_bytes(value)
            os.replace(tmp, final)

    original = cc.get_file_cache

    def get_file_cache(path: str):
        out = original(path)
        if out is not None and type(out[0]) is LRUCache and str(out[1]).startswith("/"):
            return AtomicLRUCache(path, max_size=out[0].max_size if out[0].eviction_enabled else -1), out[1]
        return out

    cc.get_file_cache = get_file_cache
    _state["atomic_writes"] = True
