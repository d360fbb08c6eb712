"""The tiny float64 tanh MLP of the curvature tests (dense Hessians are cheap): importable, and
read as source by tests that rebuild it in a subprocess (tests/test_hessian.py)."""

import jax, jax.numpy as jnp, numpy as np

def init_mlp(key, sizes=(4, 16, 3)):
    keys = jax.random.split(key, len(sizes) - 1)
    return [{"w": jax.random.normal(k, (a, b), jnp.float64) / np.sqrt(a), "b": jnp.full((b,), 0.1, jnp.float64)}
            for k, a, b in zip(keys, sizes[:-1], sizes[1:])]

def loss_fn(params, batch):
    h = batch["x"]
    for i, layer in enumerate(params):
        h = h @ layer["w"] + layer["b"]
        if i < len(params) - 1:
            h = jnp.tanh(h)
    logp = jax.nn.log_softmax(h)
    return -jnp.mean(jnp.take_along_axis(logp, batch["y"][:, None], axis=1))

def make_problem(n=96):
    params = init_mlp(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (n, 4), jnp.float64)
    noise = 0.5 * jax.random.normal(jax.random.PRNGKey(2), (n, 3), jnp.float64)
    y = jnp.argmax(x[:, :3] + noise, axis=1).astype(jnp.int32)
    return params, {"x": x, "y": y}
