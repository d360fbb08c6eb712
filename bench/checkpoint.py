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
particular after the forced save on preemption (see ``bench.preemption``).

PRNG keys: typed keys (``jax.random.key``, any impl) and raw ``uint32`` key data both
round-trip bit-identically with orbax-checkpoint 0.12 (tested); pass the abstract state
with the same key dtype (``key<fry>`` or ``uint32``) that was saved.

Multi-process (``jax.distributed``): every process must call ``save``/``restore`` with
the same step; orbax writes each shard once and synchronizes the processes. Every process
writes its own iterator file; a run saved on N processes restores on M != N from process 0's
file (the position is the step; each process re-derives its own rows, bench.data.stream).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from grain.checkpoint import CheckpointHandler as GrainCheckpointHandler

STATE = "state"
EXTRA = "extra"
DATA = "data"


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
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=(STATE, EXTRA, DATA))

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
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored[STATE], dict(restored[EXTRA] or {})

    def has_data(self, step: int) -> bool:
        """Whether the checkpoint of ``step`` holds input iterator positions."""
        return (self.directory / str(step) / DATA).is_dir()

    def wait_until_finished(self) -> None:
        """Block until every started save is on disk (committed)."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager's resources."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
