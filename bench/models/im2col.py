"""1-D convolutions as im2col + one matmul, for K vectorized replicas on CPU.

``jax.vmap`` over replicas that each carry their own kernel turns ``lax.conv_general_dilated``
into a grouped convolution, which XLA:CPU runs several times slower than K separate
convolutions (a K = 8 training step of the default CNN: 14.4 ms vs 8 x 1.0 ms, measured with
``python -m bench.perf.replicas --formulations-only``, jax 0.10.2). Written as im2col + matmul,
the vmapped convolution is a batched matmul instead: 8.0 ms, i.e. per replica as fast as
separate runs. Same parameters and math; results agree to float rounding.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax


def im2col_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                precision=None, preferred_element_type=None, **_: Any):
    """``lax.conv_general_dilated`` for 1-D NWC/WIO convolutions as im2col + one matmul
    (``nnx.Conv.conv_general_dilated``'s signature); any other convolution is passed through."""
    if (lhs.ndim != 3 or feature_group_count != 1 or batch_group_count != 1
            or any(d != 1 for d in (lhs_dilation or (1,))) or any(d != 1 for d in (rhs_dilation or (1,)))):
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, batch_group_count,
                                        precision, preferred_element_type)
    width, (stride,) = rhs.shape[0], window_strides
    if isinstance(padding, str):
        (padding,) = lax.padtype_to_pads(lhs.shape[1:2], (width,), (stride,), padding)
    else:
        (padding,) = padding
    x = jnp.pad(lhs, ((0, 0), tuple(padding), (0, 0)))
    out = (x.shape[1] - width) // stride + 1
    cols = jnp.concatenate([x[:, i:i + stride * (out - 1) + 1:stride, :] for i in range(width)], -1)
    return jnp.einsum("nlp,po->nlo", cols, rhs.reshape(-1, rhs.shape[-1]), precision=precision,
                      preferred_element_type=preferred_element_type)


def with_im2col_convs(model: nnx.Module) -> int:
    """Switch every 1-D ``nnx.Conv`` of ``model`` (in place) to :func:`im2col_conv`; returns how
    many were switched."""
    count = 0
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Conv) and len(node.kernel_size) == 1:
            node.conv_general_dilated = im2col_conv
            count += 1
    return count


def im2col_for_replicas(num_replicas: int) -> bool:
    """Whether vectorized training should use :func:`im2col_conv`: K > 1 replicas on CPU (on
    accelerators a grouped convolution is fast, and evaluation loops over replicas instead)."""
    return num_replicas > 1 and jax.default_backend() == "cpu"
