"""The training core: what ``python -m bench.train`` builds and runs, in the order
:func:`bench.core.loop.run` builds it.

- source (the DataSource: in memory or streamed), job (Setup: replicas, plan, model; Job: the
  facade the loop drives), execution (the backend's one execution policy), program (the compiled train program), step (the pure, jitted steps),
  evaluator (evaluation and the curvature meter), timings (compile/train/eval clocks)
- run_records (the ledger of rows), checkpoint (sealed orbax checkpoints), preemption and lock
  (signals, requeue, one live start per output dir), reuse (a finished, identical run is reused)
- parallel and coordinator (devices and JAX processes), saved_records (a directory's records), progress,
  tracking (W&B), compile_cache and compile_log.

The batch-size rules it applies are bench.rules; the tools that read its records, bench.tools.
"""
