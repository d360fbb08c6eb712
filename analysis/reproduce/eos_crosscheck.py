"""An edge-of-stability run outside the harness: is a sharpness above 2/lr the harness or the setup?

    python -m analysis.reproduce.eos_crosscheck +experiment=eos_offline --lr 0.4 --seed 0 \
        --steps 400 --every 1 --out results/eos_crosscheck/relu_ce_lr0.4.csv [KEY=VALUE ...]

Takes only the data and the initial parameters of the preset's run (same seed, so the two
trajectories start equal) and nothing else of the harness: the MLP's forward pass and loss are
written out here (dense layers, the preset's activation, 0.5 ||f - onehot||^2 or cross-entropy,
mean over the examples), training is plain full-batch ``params -= lr * grad`` in float32, and the
sharpness is ARPACK's (``scipy.sparse.linalg.eigsh``, which='LA', tol 1e-6) on forward-over-reverse
HVPs of all training examples, every ``--every`` steps. Before the edge of stability the
trajectory matches the harness's to float round-off; after it, rounding differences grow (the
dynamics are chaotic there), so compare statistics (the window rule of analysis.stability.eos_table),
not individual steps. Writes one CSV row per measurement (step, train_loss, sharpness,
two_over_lr) and prints the window summary.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.flatten_util import ravel_pytree
from scipy.sparse.linalg import LinearOperator, eigsh

ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh, "elu": jax.nn.elu}


def initial_mlp(cfg, seed: int) -> tuple[list[tuple[jax.Array, jax.Array]], object]:
    """The preset's MLP at the harness's initialization for ``seed``, as plain (W, b) pairs."""
    from bench.data import load_dataset
    from bench.streams import Stream
    from flax import nnx

    data = load_dataset(cfg.dataset)
    model = cfg.model.build(data.input_shape, data.num_classes,
                            nnx.Rngs(jax.random.fold_in(jax.random.PRNGKey(seed), Stream.INIT)))
    layers = [*model.layers, model.head]
    return [(jnp.asarray(layer.kernel[...]), jnp.asarray(layer.bias[...])) for layer in layers], data


def make_loss(activation: str, loss: str, num_classes: int):
    act = ACTIVATIONS[activation]

    def forward(params, x):
        h = x.reshape(x.shape[0], -1)
        for w, b in params[:-1]:
            h = act(h @ w + b)
        w, b = params[-1]
        return h @ w + b

    def mean_loss(params, x, y):
        out = forward(params, x)
        if loss == "mse":
            return jnp.mean(0.5 * jnp.sum((out - jax.nn.one_hot(y, num_classes)) ** 2, axis=-1))
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(out), y[:, None], axis=1))

    return mean_loss


def run(cfg, lr: float, seed: int, steps: int, every: int, until: int | None = None) -> pd.DataFrame:
    params, data = initial_mlp(cfg, seed)
    n = cfg.dataset.num_train or len(data.x_train)
    x, y = jnp.asarray(data.x_train[:n]), jnp.asarray(data.y_train[:n])
    mean_loss = make_loss(cfg.model.activation, cfg.loss, data.num_classes)
    flat0, unravel = ravel_pytree(params)

    @jax.jit
    def step(flat):
        value, grad = jax.value_and_grad(lambda f: mean_loss(unravel(f), x, y))(flat)
        return flat - lr * grad, value

    @jax.jit
    def hvp(flat, v):
        return jax.jvp(jax.grad(lambda f: mean_loss(unravel(f), x, y)), (flat,), (v,))[1]

    v0 = np.random.default_rng(0).standard_normal(flat0.size)
    rows, flat = [], flat0
    for t in range(steps + 1):
        if t % every == 0 and (until is None or t <= until):
            op = LinearOperator((flat.size, flat.size), dtype=np.float64,
                                matvec=lambda v, f=flat: np.asarray(hvp(f, jnp.asarray(v, jnp.float32)), np.float64))
            top = float(eigsh(op, k=1, which="LA", tol=1e-6, v0=v0, return_eigenvectors=False)[0])
            rows.append({"step": t, "sharpness": top, "two_over_lr": 2.0 / lr})
        new, value = step(flat)
        if rows and rows[-1]["step"] == t:
            rows[-1]["train_loss"] = float(value)
        flat = new
        if not np.isfinite(float(value)):
            break
    return pd.DataFrame(rows)


def window_summary(df: pd.DataFrame, lr: float, seed: int, tol: float = 0.2) -> dict:
    """eos_table's row for this run (same reach / hover / window rule as the harness's verdict)."""
    from analysis.stability import eos_table

    hist = df.rename(columns={"sharpness": "hessian_top_eigenvalue"}).assign(
        run_id="crosscheck", batch_size=1, peak_lr=lr, seed=seed, lr=lr)
    return eos_table(hist, tol).iloc[0].to_dict()


def main(argv: list[str] | None = None) -> int:
    from bench.hydra_conf import compose_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="+", help="+experiment=<preset> and KEY=VALUE overrides")
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--every", type=int, default=1, help="steps between sharpness measurements")
    ap.add_argument("--until", type=int, default=None, help="last step measured (default: all)")
    ap.add_argument("--out", type=Path, required=True, help="CSV file")
    args = ap.parse_args(argv)
    cfg = compose_config(args.overrides)
    t0 = time.perf_counter()
    df = run(cfg, args.lr, args.seed, args.steps, args.every, args.until)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    s = window_summary(df, args.lr, args.seed)
    print(f"{args.out}: {len(df)} measurements in {time.perf_counter() - t0:.0f} s; lr {args.lr:g} (2/lr "
          f"{2 / args.lr:.3g}), seed {args.seed}: first reach step {s['first_reach_step']}, window to step "
          f"{s['window_end_step']} ({s['window_rows']} rows), median sharpness/(2/lr) {s['median_ratio_after']:.3f}, "
          f"max {s['max_ratio']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
