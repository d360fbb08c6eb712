"""How compiled programs are shaped on this backend, decided once when a job is built.

Each choice below is a measured workaround for XLA:CPU (jax 0.10.2); on accelerators every
one of them is off. Step, models and curvature consult one :class:`ExecutionPolicy` instead
of testing the backend themselves, so the same numbers come out (to round-off) either way and
a reader finds every backend-dependent decision here.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax


@dataclass(frozen=True)
class ExecutionPolicy:
    backend: str
    # XLA:CPU runs convolutions inside a while loop several times slower than outside one
    # (a 1-D CNN step: 11.8 ms in a rolled scan vs 0.9 ms unrolled), so scans of model
    # evaluations are unrolled fully there. Attention models gain nothing and their unrolled
    # 25-step program took minutes to compile: they stay rolled (``unroll_attention=False``).
    unroll_scans: bool
    # A vmapped convolution over per-replica kernels lowers to a grouped convolution, which
    # XLA:CPU runs far slower than K separate ones: evaluation loops over replicas instead.
    loop_over_replicas: bool
    # Curvature loops (chunks, Lanczos/Hutchinson iterations) as lax loops in one jitted
    # program (accelerators) or driven by the host, one small program per chunk (CPU).
    rolled_curvature_loops: bool
    # K > 1 vectorized replicas on CPU: 1-D convolutions as im2col + matmul in training.
    convs_as_matmul_for_replicas: bool

    @classmethod
    def for_backend(cls, backend: str | None = None) -> "ExecutionPolicy":
        backend = backend or jax.default_backend()
        cpu = backend == "cpu"
        return cls(backend=backend, unroll_scans=cpu, loop_over_replicas=cpu,
                   rolled_curvature_loops=not cpu, convs_as_matmul_for_replicas=cpu)

    def scan_unroll(self, attention: bool = False) -> int | bool:
        """``unroll=`` for a ``lax.scan`` of model evaluations (``True``: fully; ``1``: a loop)."""
        return True if self.unroll_scans and not attention else 1

    def convs_as_matmul(self, num_replicas: int) -> bool:
        return self.convs_as_matmul_for_replicas and num_replicas > 1


def current() -> ExecutionPolicy:
    """The policy of the default backend (what a job built now would use)."""
    return ExecutionPolicy.for_backend()
