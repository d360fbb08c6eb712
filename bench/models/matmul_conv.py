"""Convolutions of any spatial rank as im2col + one matmul: the one conv-as-matmul formulation.

Same parameters and math as ``lax.conv_general_dilated``; results agree to float rounding.
Two measured uses on XLA:CPU (jax 0.10.2):

- Training K > 1 vectorized replicas (bench.core.execution.ExecutionPolicy.convs_as_matmul):
  ``jax.vmap`` over replicas that each carry their own kernel turns a convolution into a
  grouped one, which XLA:CPU runs several times slower than K separate convolutions (a K = 8
  step of the default 1-D CNN: 14.4 ms vs 8 x 1.0 ms, ``python -m bench.perf.replicas
  --formulations-only``). As im2col + matmul the vmapped convolution is a batched matmul:
  8.0 ms, per replica as fast as separate runs. Only 1-D convolutions are switched there.
- Curvature (bench.metrics.probe, ``convs="matmul"``): small 2-D convolutions' gradient is
  ~3.5x faster so (``python -m bench.perf.curvature --convs matmul``), the HVP only ~1.6x (its
  im2col transposes are memory-bound pads), and a 1-D CNN's HVP 2.3x slower, so curvature
  keeps the model's own convolutions by default.

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
    patches = _strided_patches if nsp == 1 else _phase_patches
    cols = jnp.concatenate(patches(lhs, window, strides, padding, out), -1)
    return jnp.einsum("...p,po->...o", cols, rhs.reshape(-1, rhs.shape[-1]), precision=precision,
                      preferred_element_type=preferred_element_type)


def _strided_patches(lhs, window, strides, padding, out) -> list[Any]:
    """Each patch offset as a strided slice of the padded input: the form 1-D convolutions
    train with (its numbers are the committed records'; for 1-D its derivatives are not slower)."""
    x = jnp.pad(lhs, ((0, 0), *(tuple(p) for p in padding), (0, 0)))
    return [x[(slice(None), *(slice(o, o + s * (n - 1) + 1, s) for o, s, n in zip(off, strides, out)))]
            for off in itertools.product(*map(range, window))]


def _phase_patches(lhs, window, strides, padding, out) -> list[Any]:
    """Pad to a multiple of the stride and split each spatial axis into (position, phase): every
    patch offset is then a unit-stride slice of one phase plane, so the derivatives are plain
    pads and slices (a strided slice's transpose, an interior pad, is slow on XLA:CPU for the
    2-D convolutions curvature measures)."""
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
    return cols


def with_matmul_convs(model: nnx.Module, spatial_rank: int | None = None) -> int:
    """Switch every ``nnx.Conv`` of ``model`` (in place; only those of ``spatial_rank`` spatial
    dimensions when given) to :func:`matmul_conv`; returns how many were switched."""
    count = 0
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Conv) and spatial_rank in (None, len(node.kernel_size)):
            node.conv_general_dilated = matmul_conv
            count += 1
    return count
