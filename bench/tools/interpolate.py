"""Keskar et al. 2017, Figure 3: the loss and accuracy along the line between two solutions.

``interpolation_curve(record_sb, record_lb, alphas)`` evaluates the parameters

    x(alpha) = alpha * x_LB + (1 - alpha) * x_SB        (alpha = 0: SB, alpha = 1: LB)

on the whole training and test sets and returns a DataFrame with columns ``alpha, train_loss,
train_accuracy, test_loss, test_accuracy`` (the ``interpolation.csv`` that
``analysis.figures`` plots). Keskar et al. plot alpha in [-1, 2].

Inputs are two run records written with ``save_params=true`` (``record["artifacts"]["params"]``
names the ``params_r<k>.npz`` beside the record, keyed by ``jax.tree_util.keystr`` of the paths
of the ``{"params": ..., "stats": ...}`` tree). Both runs must share the model and dataset
config (same architecture, same data); they usually differ in batch size (and maybe LR).

Evaluation is the training loop's own (``bench.core.step.make_evaluate``: eval mode, exact means over
the whole sets in chunks of ``eval.batch_size``), so alpha = 0 and alpha = 1 reproduce the SB and
LB records' final metrics to float tolerance. The model is rebuilt from the record's config
(``bench.config.from_dict(record["config"])``); the data from the config too, unless ``data``
is given (a run trained on data passed in directly).

BatchNorm running statistics (eval mode uses them), ``bn_stats``:

* ``"interpolate"`` (default): interpolated with the same alpha as the parameters (``mean(alpha)``,
  ``var(alpha)`` are the same convex / affine combinations). Outside [0, 1] an interpolated
  variance can become negative; it is clipped at 0 (BatchNorm then divides by sqrt(epsilon)).
  In BN networks this alone can make the extrapolated ends of the curve blow up, whatever the
  curvature of the loss in the parameters: compare with ``"recompute"``.
* ``"recompute"``: the statistics of ``x(alpha)`` are recomputed on the training data (BN
  recalibration, as ``torch.optim.swa_utils.update_bn``): starting from the interpolated ones,
  ``recompute_passes`` train-mode forward passes over one fixed batch of up to
  ``recompute_examples`` training examples update the running averages (with momentum 0.9 the
  starting point's weight is 0.9^100 ~ 3e-5 after 100 passes). Dropout is active in those passes
  (train mode), as in torch's update_bn. Models without BatchNorm give the same curve either way.

The curve itself is always evaluated in eval mode (running statistics, no dropout).

CLI: ``python -m bench.tools.interpolate SB_RECORD LB_RECORD [--alphas -1 2 31] [--bn-stats interpolate|recompute]
[--out CSV]``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

BN_MODES = ("interpolate", "recompute")
COLUMNS = ("alpha", "train_loss", "train_accuracy", "test_loss", "test_accuracy")
KESKAR_ALPHAS = tuple(np.round(np.linspace(-1.0, 2.0, 31), 10))  # step 0.1 over [-1, 2]


def _record(path: Path | str) -> tuple[dict[str, Any], Path]:
    from bench.record import read_record

    path = Path(path)
    record = read_record(path)
    if record.get("status") != "finished":
        raise ValueError(f"{path}: status {record.get('status')!r}; interpolation needs a finished run")
    name = (record.get("artifacts") or {}).get("params")
    if not name:
        raise ValueError(f"{path}: no saved parameters (record['artifacts']['params']); "
                         f"train with save_params=true")
    return record, path.parent / name


def _check_compatible(a: dict[str, Any], b: dict[str, Any]) -> None:
    for key in ("model", "dataset"):
        if a["config"].get(key) != b["config"].get(key):
            raise ValueError(f"the two runs differ in their {key} config; interpolation needs the "
                             f"same architecture and data: {a['config'].get(key)} vs {b['config'].get(key)}")


def template_tree(cfg: Any, input_shape: tuple[int, ...], num_classes: int):
    """The ``{"params", "stats"}`` tree of the config's model, abstract (shapes only), and its graphdef."""
    import jax
    from flax import nnx

    from bench.models import build_model
    from bench.core.step import split_model

    abstract = nnx.eval_shape(lambda: build_model(cfg.model, input_shape, num_classes,
                                                  nnx.Rngs(jax.random.key(0))))
    graphdef, params, stats = split_model(abstract)
    return graphdef, {"params": params, "stats": stats}


def load_params(npz_path: Path | str, template: Any) -> Any:
    """The saved tree, rebuilt on ``template``'s structure (keys: keystr of the tree paths)."""
    import jax

    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(template)
    with np.load(npz_path) as saved:
        keys = [jax.tree_util.keystr(p) for p, _ in leaves_with_path]
        missing, extra = set(keys) - set(saved.files), set(saved.files) - set(keys)
        if missing or extra:
            raise ValueError(f"{npz_path}: saved keys do not match the model (missing "
                             f"{sorted(missing)[:3]}, unexpected {sorted(extra)[:3]})")
        leaves = []
        for key, (_, leaf) in zip(keys, leaves_with_path):
            arr = saved[key]
            if tuple(arr.shape) != tuple(leaf.shape):
                raise ValueError(f"{npz_path}: {key} has shape {arr.shape}, model expects {leaf.shape}")
            leaves.append(np.asarray(arr, dtype=leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _is_variance(path: Any) -> bool:
    import jax

    text = jax.tree_util.keystr(path)
    return text.startswith("['stats']") and ("'var'" in text or ".var" in text)


def interpolate_trees(sb: Any, lb: Any, alphas: np.ndarray) -> Any:
    """Leaves stacked over alphas: ``(1 - a) * sb + a * lb`` (exactly sb at 0 and lb at 1);
    BatchNorm variances clipped at 0."""
    import jax

    a = np.asarray(alphas, np.float64)

    def mix(path, x, y):
        x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
        shape = (len(a),) + (1,) * x64.ndim
        out = (1.0 - a).reshape(shape) * x64[None] + a.reshape(shape) * y64[None]
        if _is_variance(path):
            out = np.maximum(out, 0.0)
        return out.astype(np.asarray(x).dtype)

    return jax.tree_util.tree_map_with_path(mix, sb, lb)


def interpolation_curve(record_sb_path: Path | str, record_lb_path: Path | str,
                        alphas: Sequence[float] = KESKAR_ALPHAS, *, data: Any = None,
                        alpha_chunk: int = 8, bn_stats: str = "interpolate",
                        recompute_passes: int = 100, recompute_examples: int = 4096) -> pd.DataFrame:
    """Loss and accuracy (train and test sets, eval mode) of ``alpha x_LB + (1 - alpha) x_SB``.

    ``alpha_chunk`` alphas are evaluated at once (vmapped like the loop's replicas); lower it
    for big models. ``bn_stats``: ``"interpolate"`` or ``"recompute"`` (module docstring).
    The DataFrame's ``attrs`` name the two runs and the BN mode.
    """
    import jax

    from bench.config import from_dict
    from bench.data import load_dataset
    from bench.core.job import eval_indices
    from bench.core.parallel import batch_sharded, global_array, make_mesh, put_replicated
    from bench.core.step import ModelFns, make_evaluate

    if bn_stats not in BN_MODES:
        raise ValueError(f"bn_stats={bn_stats!r}; valid: {', '.join(BN_MODES)}")
    alphas = np.asarray(list(alphas), np.float64)
    if alphas.ndim != 1 or len(alphas) == 0 or not np.all(np.isfinite(alphas)):
        raise ValueError("alphas must be a non-empty list of finite numbers")
    rec_sb, npz_sb = _record(record_sb_path)
    rec_lb, npz_lb = _record(record_lb_path)
    _check_compatible(rec_sb, rec_lb)
    cfg = from_dict(rec_sb["config"])
    data = data if data is not None else load_dataset(cfg.dataset)

    graphdef, template = template_tree(cfg, data.input_shape, data.num_classes)
    sb, lb = load_params(npz_sb, template), load_params(npz_lb, template)
    fns = ModelFns(graphdef, cfg.loss)
    mesh = make_mesh()
    evaluate = jax.jit(make_evaluate(fns, mesh))
    sets = {}
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        idx, mask = eval_indices(len(x), cfg.eval.batch_size, mesh.size)
        sets[split] = (*put_replicated((x, y), mesh),
                       *(global_array(a, batch_sharded(mesh, 1, 2)) for a in (idx, mask)))

    recompute = None
    if bn_stats == "recompute" and jax.tree.leaves(template["stats"]):
        recompute = _recompute_fn(fns, cfg, data, mesh, recompute_passes, recompute_examples)
    chunk = max(1, min(alpha_chunk, len(alphas)))
    rows: dict[str, list[float]] = {c: [] for c in COLUMNS[1:]}
    for start in range(0, len(alphas), chunk):
        part = alphas[start:start + chunk]
        padded = np.concatenate([part, np.full(chunk - len(part), part[-1])])  # one compile
        tree = put_replicated(interpolate_trees(sb, lb, padded), mesh)
        if recompute is not None:
            tree = {"params": tree["params"], "stats": recompute(tree["params"], tree["stats"])}
        for split, (x, y, idx, mask) in sets.items():
            loss, acc = jax.device_get(evaluate(tree["params"], tree["stats"], x, y, idx, mask))
            rows[f"{split}_loss"].extend(np.asarray(loss, np.float64)[: len(part)].tolist())
            rows[f"{split}_accuracy"].extend(np.asarray(acc, np.float64)[: len(part)].tolist())
    df = pd.DataFrame({"alpha": alphas, **rows}, columns=list(COLUMNS))
    df.attrs.update(sb_run_id=rec_sb.get("run_id"), lb_run_id=rec_lb.get("run_id"),
                    sb_batch_size=rec_sb["experiment"].get("batch_size"),
                    lb_batch_size=rec_lb["experiment"].get("batch_size"), bn_stats=bn_stats)
    return df


def _recompute_fn(fns: Any, cfg: Any, data: Any, mesh: Any, passes: int, examples: int):
    """``(params[A], stats[A]) -> stats[A]``: running statistics after ``passes`` train-mode
    forward passes over the first ``examples`` training examples (a fixed batch)."""
    import jax
    import jax.numpy as jnp

    from bench.core.parallel import put_replicated

    n = min(examples, data.num_train)
    quantum = math.lcm(mesh.size, cfg.model.ghost_batch_size or 1)
    n -= n % quantum
    if n < 1:
        raise ValueError(f"not enough training examples to recompute BatchNorm statistics ({data.num_train})")
    x = put_replicated(data.x_train[:n], mesh)

    def one(params, stats):
        def body(stats, i):
            _, new = fns.apply(params, stats, x, train=True,
                               dropout_key=jax.random.fold_in(jax.random.PRNGKey(0), i))
            return new, None

        stats, _ = jax.lax.scan(body, stats, jnp.arange(passes))
        return stats

    return jax.jit(jax.vmap(one))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.tools.interpolate", description=__doc__.split("\n")[0])
    ap.add_argument("record_sb", type=Path, help="small-batch run record (alpha = 0)")
    ap.add_argument("record_lb", type=Path, help="large-batch run record (alpha = 1)")
    ap.add_argument("--alphas", nargs=3, type=float, default=(-1.0, 2.0, 31),
                    metavar=("START", "STOP", "NUM"), help="np.linspace(START, STOP, NUM); default -1 2 31")
    ap.add_argument("--bn-stats", choices=BN_MODES, default="interpolate",
                    help="BatchNorm running statistics: interpolated (default) or recomputed per alpha")
    ap.add_argument("--out", type=Path, default=Path("interpolation.csv"))
    args = ap.parse_args(argv)
    start, stop, num = args.alphas
    alphas = np.round(np.linspace(start, stop, int(num)), 10)
    try:
        df = interpolation_curve(args.record_sb, args.record_lb, alphas, bn_stats=args.bn_stats)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    print(f"wrote {args.out} ({len(df)} alphas)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
