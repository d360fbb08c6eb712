"""Convolutions of any spatial rank as im2col + one matmul, for curvature on CPU.

XLA:CPU runs the convolutions that forward-over-reverse differentiation produces (the kernel
gradient's convolution and its tangent) far slower than the equivalent matmuls: one HVP of a
2-D CNN costs about 4.5 gradients with ``lax.conv_general_dilated``, and any convolution
inside a ``while`` loop runs several times slower again (measured with
``python -m bench.perf.curvature``, jax 0.10.2). Written as strided slices (im2col) and a
matmul, every derivative of the convolution is a slice, a pad or a matmul, which XLA:CPU runs
at full speed in any context. Same parameters and math; results agree to float rounding.

Memory: the im2col patches are ``prod(kernel_size)`` times the input activation.
"""

from __future__ import annotations

import itertools
from typing import Any

import jax.numpy as jnp
from flax import nnx
from jax import lax


def _plain(dimension_numbers: Any, ndim: int) -> bool:
    """Whether ``dimension_numbers`` is the channels-last default (N...C, ...IO) that nnx uses."""
    if dimension_numbers is None:
        return True
    spatial = "".join("HWDXYZ"[i] for i in range(ndim - 2))
    default = lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim,
                                         (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"))
    try:
        given = lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, dimension_numbers)
    except (TypeError, ValueError):
        return False
    return given == default


def matmul_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                precision=None, preferred_element_type=None, **_: Any):
    """``lax.conv_general_dilated`` (``nnx.Conv.conv_general_dilated``'s signature) for
    channels-last convolutions of any spatial rank, as im2col + one matmul; anything else
    (groups, dilation, other layouts) is passed through unchanged."""
    nsp = lhs.ndim - 2
    if (feature_group_count != 1 or batch_group_count != 1 or not _plain(dimension_numbers, lhs.ndim)
            or any(d != 1 for d in (lhs_dilation or ())) or any(d != 1 for d in (rhs_dilation or ()))):
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, batch_group_count,
                                        precision, preferred_element_type)
    window, strides = rhs.shape[:nsp], tuple(window_strides)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:-1], window, strides, padding)
    x = jnp.pad(lhs, ((0, 0), *map(tuple, padding), (0, 0)))
    out = [(x.shape[1 + d] - window[d]) // strides[d] + 1 for d in range(nsp)]
    # Patches in the kernel's (spatial..., in) order, so the kernel reshapes to [prod(window) * in, out].
    cols = []
    for off in itertools.product(*map(range, window)):
        start = (0, *off, 0)
        limit = (x.shape[0], *(o + s * (n - 1) + 1 for o, s, n in zip(off, strides, out)), x.shape[-1])
        cols.append(lax.slice(x, start, limit, (1, *strides, 1)))
    cols = jnp.concatenate(cols, -1)
    return jnp.einsum("...p,po->...o", cols, rhs.reshape(-1, rhs.shape[-1]), precision=precision,
                      preferred_element_type=preferred_element_type)


def with_matmul_convs(model: nnx.Module) -> int:
    """Switch every ``nnx.Conv`` of ``model`` (in place) to :func:`matmul_conv`; returns how many."""
    count = 0
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Conv):
            node.conv_general_dilated = matmul_conv
            count += 1
    return count
