"""Orbax checkpoints for one job: the training state plus JSON loop metadata.

A thin wrapper over ``orbax.checkpoint.CheckpointManager`` (``StandardSave`` /
``StandardRestore``; the v1 API is not final). Each step directory holds two items (three
when the data is streamed)::

    <directory>/<step>/state   the state pytree (arrays, optax state, PRNG keys)
    <directory>/<step>/extra   JSON loop metadata (eval history, data-order position, ...)
    <directory>/<step>/data    the input iterators' positions, one file per process
                               (grain's handler: process_<i>-of-<n>.json)

Saves are asynchronous (arrays are copied off the device before ``save`` returns, so
donated buffers are safe); call ``wait_until_finished()`` before the process exits, in
particular after the forced save on preemption (see ``bench.core.preemption``).

PRNG keys: typed keys (``jax.random.key``, any impl) and raw ``uint32`` key data both
round-trip bit-identically with orbax-checkpoint 0.12 (tested); pass the abstract state
with the same key dtype (``key<fry>`` or ``uint32``) that was saved.

Checksums: once a step is on disk, process 0 writes ``<step>/sha256.json`` (the SHA-256 of
every file of the step). Opening a directory verifies every step: a step whose files do not
match (flipped bytes, truncated or missing files) is moved to ``<directory>.rejected/`` with
a message, and the run resumes from the newest step that verifies. The checksums are written
in orbax's finalize callback, before the step is renamed into place (its commit), so a step
without one was not written by this code to the end (its checksum failed, e.g. a full disk,
or it predates checksums): it is rejected the same way. A checkpoint is never restored
when its bytes are not the ones saved.

Multi-process (``jax.distributed``): every process must call ``save``/``restore`` with
the same step; orbax writes each shard once and synchronizes the processes. Every process
writes its own iterator file; a run saved on N processes restores on M != N from process 0's
file (the position is the step; each process re-derives its own rows, bench.data.stream).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from grain.checkpoint import CheckpointHandler as GrainCheckpointHandler

STATE = "state"
EXTRA = "extra"
DATA = "data"
MANIFEST = "sha256.json"
#: written or rewritten by orbax's commit, after the checksums: its commit marker and step
#: metadata (times, handler names); not the saved state
UNSUMMED = frozenset({MANIFEST, "commit_success.txt", "_CHECKPOINT_METADATA"})


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored (one line, for the user)."""


def _file_sums(step_dir: Path) -> dict[str, str]:
    """SHA-256 of every file under ``step_dir`` (but the manifest), by relative path."""
    sums = {}
    for path in sorted(p for p in step_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(step_dir).as_posix()
        if rel in UNSUMMED:
            continue
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        sums[rel] = digest.hexdigest()
    return sums


def seal(step_dir: Path) -> None:
    """Write ``step_dir``'s manifest (atomically: a reader sees all of it or none)."""
    from bench.record import atomic_write_text

    atomic_write_text(step_dir / MANIFEST, json.dumps({"sha256": _file_sums(step_dir)}, indent=0))


def verify(step_dir: Path) -> str | None:
    """None if ``step_dir`` matches its manifest, else what is wrong (``"no checksum"`` when
    it has none)."""
    try:
        want = json.loads((step_dir / MANIFEST).read_text())["sha256"]
    except FileNotFoundError:
        return "no checksum"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"unreadable checksum file ({err})"
    have = _file_sums(step_dir)
    for rel in sorted(set(want) | set(have)):
        if rel not in have:
            return f"{rel} is missing"
        if rel not in want:
            return f"{rel} was not saved"
        if have[rel] != want[rel]:
            return f"{rel} does not match its checksum (damaged or truncated)"
    return None


class IteratorHandler(GrainCheckpointHandler):
    """grain's orbax handler for iterator positions (each process saves
    ``process_<i>-of-<n>.json``); restoring with another process count reads process 0's."""

    def restore(self, directory: Any, item: Any = None, args: Any = None) -> Any:
        item = item or args.item
        path = directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        if not path.exists():
            saved = sorted(directory.glob("process_0-of-*.json"))
            if not saved:
                raise FileNotFoundError(f"no iterator state under {directory}")
            path = saved[0]
        item.set_state(path.read_text().encode())
        item.start_prefetch()
        return item


@ocp.args.register_with_handler(IteratorHandler, for_save=True)
@dataclasses.dataclass
class IteratorSave(ocp.args.CheckpointArgs):
    item: Any


@ocp.args.register_with_handler(IteratorHandler, for_restore=True)
@dataclasses.dataclass
class IteratorRestore(ocp.args.CheckpointArgs):
    item: Any


def _json_builtin(value: Any) -> Any:
    """numpy/jax scalars and arrays -> Python values (NaN/inf kept: JSON tokens)."""
    if isinstance(value, dict):
        return {str(k): _json_builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_builtin(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        return np.asarray(value).tolist()
    return value


def abstract_like(tree: Any) -> Any:
    """The restore target for ``tree``: ``jax.Array`` leaves become ``ShapeDtypeStruct``
    with the same shape, dtype (typed PRNG keys included) and sharding; other leaves
    (``ShapeDtypeStruct``, numpy arrays, Python scalars) pass through, and orbax restores
    them as the same kind of value.
    """

    def one(x: Any) -> Any:
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        return x

    return jax.tree.map(one, tree)


class Checkpointer:
    """Periodic and forced checkpoints of ``(state, extra)`` under ``directory``.

    Args:
      directory: where step directories go (created if needed), e.g.
        ``<job output_dir>/checkpoints``.
      every_steps: ``save(step, ...)`` writes when ``step`` reached a multiple of
        ``every_steps`` since the latest checkpoint; ``None``: only forced saves.
      max_to_keep: newest checkpoints kept (older ones are deleted).
    """

    def __init__(self, directory: Path | str, *, every_steps: int | None,
                 max_to_keep: int = 2) -> None:
        if every_steps is not None and every_steps < 1:
            raise ValueError(f"every_steps must be >= 1 or None, got {every_steps}")
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
        self.directory = Path(directory).absolute()
        self.every_steps = every_steps
        self._seal_error: Exception | None = None
        # checksums right after orbax's commit, in its finalize thread: the window in which a
        # killed process leaves a committed step without one is as short as it can be
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True,
            async_options=ocp.AsyncOptions(post_finalization_callback=self._seal_in_background))
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=(STATE, EXTRA, DATA))
        self.rejected: dict[int, str] = {}   # step -> why (moved to <directory>.rejected)
        self._verify_steps()

    def _verify_steps(self) -> None:
        """Reject the steps whose files are not the ones saved (see the module docstring)."""
        for step in sorted(self._manager.all_steps(), reverse=True):
            if (why := verify(self.directory / str(step))) is not None:
                self.rejected[step] = why
        if not self.rejected:
            return
        if jax.process_index() == 0:
            aside = self.directory.with_name(self.directory.name + ".rejected")
            aside.mkdir(exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for step, why in sorted(self.rejected.items()):
                target = aside / f"{step}-{stamp}"
                (self.directory / str(step)).rename(target)
                print(f"checkpoint step {step} rejected: {why}; moved to {target}",
                      file=sys.stderr)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("bench.core.checkpoint: rejected steps moved")
        self._manager.reload()
        latest = self._manager.latest_step()
        print(f"checkpoint: resuming from step {latest}" if latest is not None
              else "checkpoint: no verified step left; starting from the beginning",
              file=sys.stderr)

    def _seal_finished(self) -> None:
        """Checksum every committed step that has none yet (after its save finished): the
        step directories orbax has renamed into place (its commit). Process 0 only."""
        if jax.process_index() != 0:
            return
        for step_dir in self.directory.iterdir():
            if step_dir.name.isdigit() and not (step_dir / MANIFEST).exists():
                try:
                    seal(step_dir)
                except FileNotFoundError:   # deleted meanwhile (max_to_keep)
                    continue

    def _seal_in_background(self) -> None:
        """orbax's post-finalization callback: the step is written but not yet renamed into
        place (its commit), so the checksum is in the step as soon as the step exists."""
        if jax.process_index() != 0:
            return
        try:
            for tmp in self.directory.glob("*.orbax-checkpoint-tmp*"):
                if tmp.is_dir() and tmp.name.split(".")[0].isdigit():
                    seal(tmp)
        except Exception as err:   # noqa: BLE001 -- raised in the main thread by the next wait
            self._seal_error = err

    def _raise_seal_error(self) -> None:
        if (err := self._seal_error) is not None:
            self._seal_error = None
            raise err

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or ``None``."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def should_save(self, step: int) -> bool:
        """Whether a non-forced ``save(step, ...)`` would write: a multiple of
        ``every_steps`` was reached since the latest checkpoint (so a loop that advances
        several steps per call still saves once per interval)."""
        if self.every_steps is None:
            return False
        last = self.latest_step() or 0
        return step > last and step // self.every_steps > last // self.every_steps

    def save(self, step: int, state_pytree: Any, extra: dict[str, Any], *,
             force: bool = False, data: Any = None) -> bool:
        """Start saving ``state_pytree`` and ``extra`` at ``step``; True if a save started.

        Non-forced saves follow ``every_steps``. A step that is already saved is not
        rewritten (returns False), so a forced save right after a periodic one is safe.
        The write is asynchronous: ``wait_until_finished()`` before relying on it.
        ``data``: the input iterator (``get_state()``; bench.data.stream.TrainStream), saved
        by every process.
        """
        if not (force or self.should_save(step)):
            return False
        if step in self._manager.all_steps():
            return False
        self.wait_until_finished()   # orbax would wait for the previous save anyway; seal it
        items = {STATE: ocp.args.StandardSave(state_pytree),
                 EXTRA: ocp.args.JsonSave(_json_builtin(dict(extra)))}
        if data is not None:
            items[DATA] = IteratorSave(data)
        return bool(self._manager.save(step, args=ocp.args.Composite(**items), force=True))

    def restore(self, step: int | None, abstract_state: Any, *,
                data: Any = None) -> tuple[Any, dict[str, Any]]:
        """``(state, extra)`` saved at ``step`` (``None``: the latest).

        ``abstract_state``: a pytree of arrays or ``ShapeDtypeStruct`` with shardings;
        the restored arrays get exactly those shardings and dtypes. ``data``: an input
        iterator to position where it was saved (``set_state``), when the step has one.
        """
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"no checkpoint under {self.directory}")
        items = {STATE: ocp.args.StandardRestore(abstract_like(abstract_state)),
                 EXTRA: ocp.args.JsonRestore()}
        if data is not None and self.has_data(step):
            items[DATA] = IteratorRestore(data)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as err:   # noqa: BLE001 -- orbax raises many kinds; one line for the user
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} cannot be restored "
                f"({type(err).__name__}: {first[:300]}); move that step directory away to resume "
                "from an earlier one") from err
        return restored[STATE], dict(restored[EXTRA] or {})

    def has_data(self, step: int) -> bool:
        """Whether the checkpoint of ``step`` holds input iterator positions."""
        return (self.directory / str(step) / DATA).is_dir()

    def wait_until_finished(self) -> None:
        """Block until every started save is on disk (committed) and checksummed."""
        self._manager.wait_until_finished()
        self._raise_seal_error()
        self._seal_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager's resources."""
        self.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
