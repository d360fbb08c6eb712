"""Convolutions of any spatial rank as im2col + one matmul (an alternative formulation).

XLA:CPU runs small 2-D convolutions slowly: for the 2-D CNN on 8x8 digits, a gradient with
``lax.conv_general_dilated`` takes ~3.5x longer than the same gradient written as slices and a
matmul (``python -m bench.perf.curvature --convs matmul``, jax 0.10.2). The HVP gains less
(~1.6x): its im2col transposes are memory-bound pads; for a 1-D CNN the HVP is 2.3x slower, so
curvature keeps the model's own convolutions by default (bench.metrics.probe, ``convs=``).
Same parameters and math; results agree to float rounding.

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
    out = [(lhs.shape[1 + d] + lo + hi - window[d]) // strides[d] + 1 for d, (lo, hi) in enumerate(padding)]
    # Pad to a multiple of the stride and split each spatial axis into (position, phase): every
    # patch offset is then a unit-stride slice of one phase plane, so the derivatives are plain
    # pads and slices (a strided slice's transpose, an interior pad, is slow on XLA:CPU).
    size = [max(lhs.shape[1 + d] + lo + hi, (out[d] - 1) * strides[d] + window[d]) for d, (lo, hi) in enumerate(padding)]
    size = [-(-n // s) * s for n, s in zip(size, strides)]
    x = jnp.pad(lhs, ((0, 0), *((lo, n - lhs.shape[1 + d] - lo) for d, ((lo, _), n) in enumerate(zip(padding, size))), (0, 0)))
    x = x.reshape(x.shape[0], *(v for n, s in zip(size, strides) for v in (n // s, s)), x.shape[-1])
    cols = []
    for off in itertools.product(*map(range, window)):
        index: list[Any] = [slice(None)]
        for d, (o, s) in enumerate(zip(off, strides)):
            index += [slice(o // s, o // s + out[d]), o % s]
        cols.append(x[tuple(index)])
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
