"""Branch a run from another run's checkpoint (``init_from=<run dir>``).

A branch starts from a parent job's orbax checkpoint (``init_from_step``: a saved step, null:
the latest): its parameters, BatchNorm statistics and, with ``init_from_optimizer=keep``, the
optimizer's statistics (moments, counts; the hyperparameters are the branch's own config's),
or with ``reset`` a fresh optimizer state of the branch's optimizer at the parent's parameters.

Counters: the branch continues the parent. Its plan is its OWN config's plan (``budget`` is the
total of the run, the parent's part included), entered at the step whose example count is the
parent's at that checkpoint; that step is where the LR schedule is evaluated and where the
step counter starts. A branch with no changed key therefore continues the parent bit for bit.
Data: the same permutation stream (each replica's seed, the parent's data epoch and offset)
continues from the parent's position with the branch's batch sizes (:class:`BranchedPlan`).

Replicas: K parent replicas and K branch replicas pair up (i from i); one parent replica seeds
every branch replica; otherwise ``init_from_replica`` picks one. A branch replica's seed sets
its data order and dropout after the branch point; its initialization is the parent's.

Nothing here writes into the parent's directory: its checkpoints are verified against their
seal (bench.core.checkpoint) and read, never moved.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.rules.plan import BatchPlan
from bench.schema import ConfigError

if TYPE_CHECKING:
    from bench.config import Config

CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class Parent:
    """One saved step of a parent job, as read from its files."""

    output_dir: Path
    step: int
    step_dir: Path
    seal: str                 # SHA-256 of the step's checksum manifest
    config_hash: str
    num_replicas: int
    examples: int
    tokens: int | None
    data_epoch: int
    data_offset: int
    last_lr: tuple[float, ...]

    def block(self, replica: int, branch_step: int) -> dict[str, Any]:
        """The record's ``parent`` block of a branch replica started from parent ``replica``."""
        return {"output_dir": str(self.output_dir), "run_id": f"{self.config_hash}-r{replica}",
                "step": self.step, "examples": self.examples, "tokens": self.tokens,
                "config_hash": self.config_hash, "checkpoint_sha256": self.seal,
                "replica": replica, "branch_step": branch_step}


def saved_steps(root: Path) -> list[int]:
    """The committed steps under ``root/checkpoints`` (orbax renames a step into place last)."""
    directory = root / CHECKPOINTS
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def _seal_of(step_dir: Path) -> str:
    from bench.core.checkpoint import MANIFEST

    sums = json.loads((step_dir / MANIFEST).read_text())["sha256"]
    return hashlib.sha256(json.dumps(sums, sort_keys=True).encode()).hexdigest()


def _extra(step_dir: Path) -> dict[str, Any]:
    # orbax's JsonSave writes the item as extra/metadata; read as a file, the parent is never
    # opened by a CheckpointManager (whose construction may create or clean directories)
    return json.loads((step_dir / "extra" / "metadata").read_text())


def open_parent(cfg: "Config") -> Parent:
    """The checkpoint ``cfg.init_from`` / ``init_from_step`` names, verified; ConfigError (one
    line) when there is none, the step was not saved or its seal fails."""
    from bench.core.checkpoint import verify

    root = Path(cfg.init_from).expanduser().absolute()
    steps = saved_steps(root)
    if not steps:
        raise ConfigError(f"init_from={cfg.init_from} holds no checkpoint ({root / CHECKPOINTS}/<step>);"
                          f" give the output_dir of a run that saved one (checkpoint.every_steps=...)")
    step = steps[-1] if cfg.init_from_step is None else cfg.init_from_step
    if step not in steps:
        raise ConfigError(f"init_from_step={step} was not saved in {root / CHECKPOINTS}; saved steps:"
                          f" {', '.join(map(str, steps))}")
    step_dir = root / CHECKPOINTS / str(step)
    if (why := verify(step_dir)) is not None:
        raise ConfigError(f"init_from={cfg.init_from}: checkpoint step {step} fails its seal ({why});"
                          f" branch from another step ({', '.join(str(s) for s in steps if s != step) or 'none'})")
    extra = _extra(step_dir)
    position = extra.get("position")
    if position is None:
        raise ConfigError(f"init_from={cfg.init_from}: checkpoint step {step} predates branching (no "
                          f"data position saved); rerun the parent with this version to branch from it")
    return Parent(root, step, step_dir, _seal_of(step_dir), str(extra["config_hash"]),
                  len(extra["records"]), int(position["examples"]), position["tokens"],
                  int(position["data_epoch"]), int(position["data_offset"]),
                  tuple(float(v) for v in np.atleast_1d(extra["last_lr"])))


def check_parent_unchanged(output_dir: Path, records: list[dict[str, Any]], cfg: "Config") -> None:
    """Refuse to reuse a branch's records when its parent checkpoint is not the one they
    started from (its seal differs from their ``parent`` block)."""
    from bench.core.reuse import StaleResults

    seal = open_parent(cfg).seal
    for record in records:
        if (record.get("parent") or {}).get("checkpoint_sha256") != seal:
            raise StaleResults(f"{output_dir} holds a branch of another checkpoint ({cfg.init_from} step "
                               f"{open_parent(cfg).step} changed since); use another output_dir, or delete "
                               f"that directory to start over")


def replica_sources(cfg: "Config", parent: Parent, count: int) -> np.ndarray:
    """Which parent replica each of the ``count`` branch replicas starts from."""
    k, pick = parent.num_replicas, cfg.init_from_replica
    if pick is not None:
        if pick >= k:
            raise ConfigError(f"init_from_replica={pick}: the parent has {k} replica(s); use 0..{k - 1}")
        return np.full(count, pick, np.int32)
    if k == count:
        return np.arange(count, dtype=np.int32)
    if k == 1:
        return np.zeros(count, np.int32)
    raise ConfigError(f"init_from={cfg.init_from} has {k} replicas and this run {count}: give "
                      f"init_from_replica=<0..{k - 1}> (every replica from that one) or {k} replicas")


def entry_step(plan: BatchPlan, parent: Parent, cfg: "Config") -> int:
    """The step of ``plan`` whose example count is the parent's; ConfigError naming a valid
    alternative when the parent's count is not a step boundary or the budget ends before it."""
    x = parent.examples
    step = plan.steps_for_budget(x, "examples") if x > 0 else 0
    if plan.examples(step) != x:
        b = plan.batch_size(step)
        fits = [s for s in saved_steps(parent.output_dir) if s != parent.step and _fits(plan, parent, s)]
        also = f", or init_from_step={fits[0]} (saved, on this plan's steps)" if fits else ""
        divisors = [d for d in range(b, 0, -1) if x % d == 0 and d % plan.first_batch_size == 0] or \
            [d for d in range(b, 0, -1) if x % d == 0]
        raise ConfigError(f"init_from_step={parent.step}: the parent's {x} examples are not a step boundary"
                          f" of this run's plan (B={b} steps reach {plan.examples(step)}, then "
                          f"{plan.examples(step + 1)}); use a batch_size dividing {x} (e.g. {divisors[0]}){also}")
    if step >= plan.total_steps:
        raise ConfigError(f"budget={cfg.budget} ends at step {plan.total_steps} ({plan.examples(plan.total_steps)}"
                          f" examples), not after the parent's {x}: a branch's budget is the total of the run,"
                          f" the parent's part included; use a budget above {x} examples")
    return step


def _fits(plan: BatchPlan, parent: Parent, step: int) -> bool:
    try:
        x = int(_extra(parent.output_dir / CHECKPOINTS / str(step))["position"]["examples"])
    except (OSError, KeyError, ValueError, TypeError):
        return False
    s = plan.steps_for_budget(x, "examples") if x > 0 else 0
    return plan.examples(s) == x and s < plan.total_steps


class BranchedPlan(BatchPlan):
    """``base`` (the branch's own plan) whose data position from ``start`` on continues the
    parent's ``(epoch, offset)`` in each replica's permutation stream (drop-last per epoch, as
    every plan); batch sizes, counters and boundaries stay ``base``'s."""

    def __init__(self, base: BatchPlan, start: int, epoch: int, offset: int):
        self.__dict__.update(base.__dict__)
        self._perm_cache = {}
        self.start_step = start
        self._origin = self._cursor = (start, epoch, offset)  # (step, epoch, offset) before a step

    def _advance(self, t: int, e: int, off: int, stop: int) -> tuple[int, int]:
        """The position before step ``stop`` from (``e``, ``off``) before step ``t``."""
        for _, count, b in self.segments(t, stop):
            per = self.n // b
            while count:
                if off + b > self.n:  # drop-last: the rest of the epoch is shorter than B
                    e, off = e + 1, 0
                left = (self.n - off) // b
                if count <= left:
                    off, count = off + count * b, 0
                else:
                    count -= left
                    e, off, count = e + 1 + count // per, 0, count % per
        return e, off

    def data_epoch(self, t: int) -> tuple[int, int]:
        if t < self.start_step:
            return super().data_epoch(t)
        t0, e, off = self._cursor if self._cursor[0] <= t else self._origin  # steps come in order
        e, off = self._advance(t0, e, off, t)
        self._cursor = (t, e, off)
        return (e + 1, 0) if off + self.batch_size(t) > self.n else (e, off)


# ---------------------------------------------------------------------------- the state


def _path_name(path: tuple) -> str:
    """A tree path as orbax stores it (``params.layers.0.kernel.value``), whatever the node
    types (dataclass fields, dict keys, sequence indices)."""
    import jax

    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            parts.append(key.name)
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        else:
            parts.append(str(getattr(key, "key", key)))
    return ".".join(parts)


def _flat(tree: Any) -> dict[str, Any]:
    import jax

    return {_path_name(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _saved_tree(parent: Parent) -> Any:
    """orbax's metadata of the saved state (shapes and dtypes; no array read)."""
    import orbax.checkpoint as ocp

    meta = ocp.StandardCheckpointer().metadata(parent.step_dir / "state")
    tree = getattr(meta, "item_metadata", meta)
    return getattr(tree, "tree", tree)


def _check_fit(cfg: "Config", saved: dict, abstract: dict, part: str) -> None:
    """Refuse (one line) when the branch's ``part`` tree differs from the saved one."""
    mine = {k: v for k, v in abstract.items() if k.split(".")[0] == part}
    theirs = {k: v for k, v in saved.items() if k.split(".")[0] == part}
    what = {"params": "the model", "stats": "the model's BatchNorm statistics",
            "opt_state": "the optimizer state"}[part]
    hint = ("; init_from_optimizer=reset starts a fresh optimizer state" if part == "opt_state"
            else "; branch with the parent's model keys")
    for key in sorted(set(mine) | set(theirs)):
        if part == "opt_state" and ".hyperparams." in f".{key}.":
            continue  # the branch's own hyperparameters replace the parent's
        if key not in theirs or key not in mine:
            where = "the checkpoint" if key not in theirs else "this run"
            raise ConfigError(f"init_from={cfg.init_from}: {what} does not fit the checkpoint ({key} is not in "
                              f"{where}){hint}")
        shape, dtype = theirs[key]
        if shape[1:] != tuple(mine[key].shape[1:]) or dtype != np.dtype(mine[key].dtype):
            raise ConfigError(f"init_from={cfg.init_from}: {what} does not fit the checkpoint ({key}: saved "
                              f"{shape[1:]} {dtype}, this run {tuple(mine[key].shape[1:])} "
                              f"{np.dtype(mine[key].dtype)}){hint}")


def start_state(cfg: "Config", train: Any, parent: Parent, sources: np.ndarray, step: int) -> Any:
    """The branch's TrainState at ``step``: the parent's parameters, statistics and (keep)
    optimizer statistics, replica i from parent replica ``sources[i]``. Checks the fit first,
    from the checkpoint's metadata and the branch's abstract state, before anything compiles."""
    import jax
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    from bench.core.parallel import replicated

    abstract = jax.eval_shape(train.init_state)
    meta = _saved_tree(parent)
    saved = {k: (tuple(m.shape), np.dtype(m.dtype)) for k, m in _flat(meta).items()}
    keep = cfg.init_from_optimizer == "keep"
    for part in ("params", "stats") + (("opt_state",) if keep else ()):
        _check_fit(cfg, saved, _flat(abstract), part)
    sharding = replicated(train.setup.mesh)
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding), meta)
    restored = _flat(ocp.StandardCheckpointer().restore(parent.step_dir / "state", target))
    idx = jnp.asarray(sources)
    fresh = train.init_state()  # the branch's own peak LRs, dropout keys, hyperparameters

    def from_parent(key: str) -> bool:
        part = key.split(".")[0]
        if part == "opt_state":
            return keep and ".hyperparams." not in f".{key}."
        return part in ("params", "stats", "alive", "diverged_step") or (part == "ewa" and key in restored)

    def leaf(path: tuple, value: Any) -> Any:
        key = _path_name(path)
        if from_parent(key):
            return jax.device_put(restored[key][idx], sharding)
        return jnp.full_like(value, step) if key == "step" else value

    state = jax.tree_util.tree_map_with_path(leaf, fresh)
    if not keep:  # optimizers whose state depends on the parameters (schedule-free's z)
        state = state.replace(opt_state=_reset_opt_state(train, state, fresh))
    if state.ewa is not None and not any(k.startswith("ewa.") for k in restored):
        state = state.replace(ewa=state.params)  # the parent kept no average: start it here
    return state


def _reset_opt_state(train: Any, state: Any, fresh: Any) -> Any:
    """A fresh optimizer state of the branch's optimizer at the parent's parameters."""
    import jax

    from bench.core.parallel import replicated

    init = jax.jit(jax.vmap(train.tx.init), out_shardings=replicated(train.setup.mesh))
    opt = init(state.params)
    # the hyperparameters the branch's init set (its peak LR etc.)
    return opt._replace(hyperparams=fresh.opt_state.hyperparams) if hasattr(opt, "hyperparams") else opt
