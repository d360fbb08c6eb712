"""Which programs JAX compiles in a block of code: its "Compiling ..." log lines, collected
instead of printed (benchmarks count them; tests assert that a second measurement compiles
nothing)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import jax


@contextmanager
def logged_compiles() -> Iterator[list[str]]:
    """Yields a list that fills with one "Compiling ..." line per program compiled inside the
    block (jit, eager ops, AOT)."""
    compiled: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("Compiling"):
                compiled.append(record.getMessage())

    handler, logger = Collect(), logging.getLogger("jax")
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False  # collected here, not printed
    try:
        with jax.log_compiles():
            yield compiled
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
