"""A signal in every phase of a run (compile before and inside the loop, checkpoint save,
curvature compile) is acted on: at once when nothing is unsaved, else saved at the next poll
and resumed from; the rerun's record equals an uninterrupted run's. bench.train runs in a subprocess that sends itself the signal at the chosen moment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from record_factory import interruption_invariant

REPO = Path(__file__).resolve().parents[1]


DRIVER = textwrap.dedent("""
    # bench.train with one signal sent to itself in a chosen phase (see _signal_run).
    import os, signal, sys
    from jax import monitoring

    phase, signame, armed = sys.argv[1:4]
    sys.argv = [sys.argv[0], *sys.argv[4:]]
    sent = []

    def fire(where):
        if sent:
            return
        sent.append(where)
        with open(os.environ["SIGNAL_LOG"], "a") as f:
            f.write(f"{signame} during {where}\\n")
        os.kill(os.getpid(), getattr(signal, signame))   # its handler runs right here

    def in_loop():   # is bench.core.loop's PreemptionFlag installed?
        from bench.core.preemption import PreemptionFlag
        return isinstance(getattr(signal.getsignal(signal.SIGTERM), "__self__", None),
                          PreemptionFlag)

    def on_stage_start(event, value, fun_name="?", **kw):
        if event != "/jax/core/compile/backend_compile_duration":
            return
        if ((phase == "compile-before-loop" and not in_loop())
                or (phase == "compile-in-loop" and in_loop())
                or (phase.startswith("compile:") and phase[8:] in fun_name)):
            fire(f"compile {fun_name}")

    monitoring.register_scalar_listener(on_stage_start)   # called as each compile starts
    if phase == "checkpoint":
        from bench.core.checkpoint import Checkpointer
        save = Checkpointer.save

        def save_with_signal(self, *args, **kwargs):
            fire("checkpoint save")
            return save(self, *args, **kwargs)

        Checkpointer.save = save_with_signal
    if armed == "armed":
        from bench.core.preemption import arm
        arm()
    from bench.train import main
    main()
""")

TINY = ["dataset=synthetic", "dataset.synthetic_train=512", "dataset.synthetic_test=256",
        "model=mlp", "model.hidden=[16]", "budget=30steps", "eval.every_steps=10",
        "checkpoint.every_steps=10", "logger=none", "progress=false"]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO), **extra}


def _plain_run(out: Path, cache: Path, args: list[str]) -> None:
    # persistent compilation cache: same executables (same numbers), less compile time
    env = _env(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    proc = subprocess.run([sys.executable, "-m", "bench.train", *args, f"output_dir={out}"],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _signal_run(tmp: Path, phase: str, signame: str, args: list[str], *, armed: bool = True
                ) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run bench.train (no compilation cache: every compile happens) sending itself
    ``signame`` when ``phase`` starts; returns the process and the driver's log lines."""
    (tmp / "driver.py").write_text(DRIVER)
    log = tmp / "signals.log"
    proc = subprocess.run([sys.executable, str(tmp / "driver.py"), phase, signame,
                           "armed" if armed else "plain", *args, f"output_dir={tmp / 'run'}"],
                          env=_env(SIGNAL_LOG=str(log)), cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    return proc, log.read_text().splitlines() if log.exists() else []


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("reference")
    _plain_run(root / "run", root / "jax_cache", TINY)
    return root / "jax_cache", json.loads((root / "run" / "record_r0.json").read_text())


def _check_interrupted(tmp: Path, proc, log: list[str], expected_log: str,
                       saved_step: int) -> Path:
    """Exactly one signal, sent in the phase asked for; the process exited 0 (not killed by
    the signal, no crash) after saving ``saved_step`` and writing a "running" record."""
    assert log == [expected_log]
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp / "run"
    assert f"interrupted: checkpoint and records in {run}" in proc.stderr
    assert json.loads((run / "record_r0.json").read_text())["status"] == "running"
    assert sorted(int(p.name) for p in (run / "checkpoints").glob("[0-9]*"))[-1] == saved_step
    return run


def _check_resumes_to(run: Path, saved_step: int, cache: Path, reference: dict,
                      args: list[str] = TINY) -> None:
    """The same command again resumes from ``saved_step`` and ends with the record of the
    uninterrupted run."""
    _plain_run(run, cache, args)
    resumed = json.loads((run / "record_r0.json").read_text())
    assert resumed["timings"]["resumed_at_steps"] == [saved_step]
    assert interruption_invariant(resumed) == interruption_invariant(reference)


def _check_stopped_at_once(tmp: Path, proc, log: list[str], expected_log: str,
                           signame: str) -> Path:
    """Exactly one signal, sent in the phase asked for, while nothing was unsaved (no
    training step yet): the watchdog stopped the process there, exit 0, one line, no
    checkpoint written (there was nothing new to save), the output lock released."""
    assert log == [expected_log]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{signame}: nothing unsaved since the last checkpoint (or the start)" in proc.stderr
    assert "Traceback" not in proc.stderr
    run = tmp / "run"
    assert not list((run / "checkpoints").glob("[0-9]*")) and not (run / ".lock").exists()
    return run


def test_signal_during_compile_before_the_loop_with_arm(tmp_path, reference_run):
    """SIGUSR2 (submitit's signal) while JAX compiles the initial state, before bench.core.loop's
    flag exists: nothing is unsaved, so the process stops at once (not after the compile and
    the first training call); the same command then runs to the uninterrupted record."""
    cache, reference = reference_run
    proc, log = _signal_run(tmp_path, "compile-before-loop", "SIGUSR2", TINY)
    assert log and log[0].startswith("SIGUSR2 during compile jit(")
    run = _check_stopped_at_once(tmp_path, proc, log, log[0], "SIGUSR2")
    _plain_run(run, cache, TINY)
    resumed = json.loads((run / "record_r0.json").read_text())
    assert resumed["timings"]["resumed_at_steps"] == []
    assert interruption_invariant(resumed) == interruption_invariant(reference)


def test_signal_during_compile_in_the_loop(tmp_path):
    """SIGUSR1 while the loop compiles its first function (the step-0 evaluation): stopped
    at once as well (bench.train arms the watchdog itself)."""
    proc, log = _signal_run(tmp_path, "compile-in-loop", "SIGUSR1", TINY, armed=False)
    assert log and log[0].startswith("SIGUSR1 during compile jit(")
    _check_stopped_at_once(tmp_path, proc, log, log[0], "SIGUSR1")


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_signal_during_checkpoint_save(tmp_path, signame):
    """SIGTERM or SIGINT (Ctrl-C: a stop like SIGTERM, no KeyboardInterrupt) while the
    periodic checkpoint of step 10 is being written, with training steps unsaved: that save
    completes, training goes on to the next poll (step 20), saves there and stops."""
    proc, log = _signal_run(tmp_path, "checkpoint", signame, TINY, armed=False)
    _check_interrupted(tmp_path, proc, log, f"{signame} during checkpoint save", 20)
    assert "KeyboardInterrupt" not in proc.stderr


@pytest.mark.slow
def test_signal_during_curvature_compile_then_resume(tmp_path):
    """SIGUSR2 while the first Hessian (Lanczos) measurement (step 0) compiles: nothing is
    unsaved, so the process stops during that compile; the rerun ends with the record of an
    uninterrupted run."""
    args = [*TINY, "metrics.hessian=true", "metrics.every=10", "metrics.subset_size=256"]
    cache = tmp_path / "jax_cache"
    _plain_run(tmp_path / "reference", cache, args)
    reference = json.loads((tmp_path / "reference" / "record_r0.json").read_text())
    proc, log = _signal_run(tmp_path, "compile:lanczos", "SIGUSR2", args, armed=False)
    assert log and log[0].startswith("SIGUSR2 during compile jit(lanczos")
    run = _check_stopped_at_once(tmp_path, proc, log, log[0], "SIGUSR2")
    _plain_run(run, cache, args)
    resumed = json.loads((run / "record_r0.json").read_text())
    assert interruption_invariant(resumed) == interruption_invariant(reference)
