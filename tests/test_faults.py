"""Faults a run must survive, end to end: ``python -m bench.train`` in a subprocess with one
fault injected by a driver (kill -9 in training, evaluation or at a random moment of a
checkpoint save; damaged checkpoint bytes; a crash; a full disk; a signal during a compile
that never returns; a second command on the same output_dir). After each, the same command
must end with the record of an uninterrupted run (``interruption_invariant``), or stop with
one ``error:`` line having changed nothing."""

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

TINY = ["dataset=synthetic", "dataset.synthetic_train=512", "dataset.synthetic_test=256",
        "model=mlp", "model.hidden=[16]", "budget=30steps", "eval.every_steps=10",
        "checkpoint.every_steps=10", "logger=none", "progress=false"]

DRIVER = textwrap.dedent("""
    # bench.train with one fault: python driver.py FAULT ARG <bench.train overrides>
    import errno, os, random, signal, sys, threading
    fault, arg = sys.argv[1:3]
    sys.argv = [sys.argv[0], *sys.argv[3:]]

    def kill():
        os.kill(os.getpid(), signal.SIGKILL)

    from bench.core.evaluator import Evaluator
    from bench.core.program import TrainProgram
    from bench.core.checkpoint import Checkpointer
    import bench.record

    if fault == "kill-train":              # after the ARG-th training call, before its poll
        train, calls = TrainProgram.__call__, []
        def patched(self, *a, **k):
            out = train(self, *a, **k)
            calls.append(1)
            if len(calls) == int(arg):
                kill()
            return out
        TrainProgram.__call__ = patched
    elif fault in ("kill-eval", "crash-eval"):   # inside the evaluation of step ARG
        evaluate = Evaluator.__call__
        def patched_eval(self, state, step, lrs):
            if step == int(arg):
                self.metrics(state)
                if fault == "kill-eval":
                    kill()
                raise RuntimeError("injected crash\\nsecond line of the message")
            return evaluate(self, state, step, lrs)
        Evaluator.__call__ = patched_eval
    elif fault == "kill-save":             # a random moment (seed ARG) of the first save
        save, rng = Checkpointer.save, random.Random(int(arg))
        def patched_save(self, *a, **k):
            threading.Timer(rng.uniform(0.0, 0.3), kill).start()
            return save(self, *a, **k)
        Checkpointer.save = patched_save
    elif fault == "enospc":                # every atomic write from the ARG-th on fails
        write, count = bench.record.atomic_write_text, []
        def full(path, text):
            count.append(1)
            if len(count) >= int(arg):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            return write(path, text)
        bench.record.atomic_write_text = full
    elif fault == "block-compile":         # a compile that does not return; a signal meanwhile
        def stuck(self, key, fn, *args):
            os.kill(os.getpid(), getattr(signal, arg))
            threading.Event().wait()       # like XLA's C++ compile: the loop never polls
        from bench.core.timings import Programs
        Programs.compile = stuck
    from bench.train import cli
    cli()
""")


def _env(cache: Path) -> dict[str, str]:
    # a persistent compilation cache: the same executables (same numbers), less compile time
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}  # no requeue
    return {**env, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO),
            "JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def _train(out: Path, cache: Path, fault: str | None = None, arg: str = "",
           args: list[str] = TINY) -> subprocess.CompletedProcess:
    head = [str(out.parent / "driver.py"), fault, arg] if fault else ["-m", "bench.train"]
    if fault:
        (out.parent / "driver.py").write_text(DRIVER)
    return subprocess.run([sys.executable, *head, *args, f"output_dir={out}"], env=_env(cache),
                          cwd=out.parent, capture_output=True, text=True, timeout=600)


def _record(out: Path) -> dict:
    return json.loads((out / "record_r0.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("reference")
    proc = _train(root / "run", root / "jax_cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "jax_cache", _record(root / "run")


@pytest.fixture(scope="module")
def finished_run(reference) -> Path:
    """The reference run's directory (checkpoints 20 and 30, the finished record)."""
    return reference[0].parent / "run"


def _resumes_to_reference(out: Path, cache: Path, reference: dict) -> dict:
    proc = _train(out, cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = _record(out)
    assert interruption_invariant(record) == interruption_invariant(reference)
    return record


def _error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]


def test_kill_9_in_training_evaluation_and_save_then_the_same_command(tmp_path, reference):
    """kill -9 after a training call (step 20, checkpoint 10 on disk), then inside the
    step-10 evaluation of the resumed run, then at random moments of checkpoint saves:
    each time the same command resumes, and the last one ends with the uninterrupted record."""
    cache, ref = reference
    out = tmp_path / "run"
    for fault, arg in [("kill-train", "2"), ("kill-eval", "10"), ("kill-save", "0")]:
        proc = _train(out, cache, fault, arg)
        assert proc.returncode == -9, (fault, proc.stderr[-3000:])
    assert _resumes_to_reference(out, cache, ref)["status"] == "finished"


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_kill_9_at_random_moments_of_saves_repeatedly(tmp_path, reference, seed):
    """Five kills in a row, each at a random moment (seeded) of the first checkpoint save
    of its attempt: the same command still ends with the uninterrupted record."""
    cache, ref = reference
    out = tmp_path / "run"
    for attempt in range(5):
        proc = _train(out, cache, "kill-save", str(seed * 10 + attempt))
        assert proc.returncode in (-9, 0), proc.stderr[-3000:]
    _resumes_to_reference(out, cache, ref)


def test_flipped_bytes_in_the_newest_checkpoint_fall_back_not_a_wrong_result(tmp_path, reference,
                                                                              finished_run):
    """A finished run's newest checkpoint (step 30) gets flipped bytes (same size) in its
    state and the record is removed: the rerun rejects that step with a message,
    resumes from step 20 and ends with the uninterrupted record (it used to diverge)."""
    import shutil

    cache, ref = reference
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    (out / "record_r0.json").unlink()
    state = out / "checkpoints" / "30" / "state"
    victim = max((p for p in state.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x40
    victim.write_bytes(bytes(data))
    proc = _train(out, cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint step 30 rejected: " in proc.stderr and "resuming from step 20" in proc.stderr
    record = _record(out)
    assert record["timings"]["resumed_at_steps"] == [20]
    assert interruption_invariant(record) == interruption_invariant(ref)


def test_a_crash_records_failed_and_the_same_command_resumes(tmp_path, reference):
    """An exception in the step-20 evaluation: one error: line (no traceback on the
    console), the record says failed with the error, the traceback is in errors.log,
    bench.tools.status shows the job failed; the same command resumes to the uninterrupted record."""
    from bench.tools.status import sweep_status

    cache, ref = reference
    out = tmp_path / "run"
    proc = _train(out, cache, "crash-eval", "20")
    assert proc.returncode == 1
    assert _error_lines(proc) == [f"error: RuntimeError: injected crash (records marked failed; "
                                  f"traceback in {out / 'errors.log'})"]
    record = _record(out)
    assert record["status"] == "failed" and record["error"] == "RuntimeError: injected crash"
    assert "Traceback" in (out / "errors.log").read_text()
    assert [(j.status, j.error) for j in sweep_status(out)] == [
        ("failed", "RuntimeError: injected crash")]
    _resumes_to_reference(out, cache, ref)


def test_a_full_disk_ends_in_one_line_and_leaves_nothing_half_written(tmp_path, reference):
    """Every write fails with ENOSPC from the third on (the records of steps 0 and 10 are
    written, then the checksum of a checkpoint and the records fail): one error: line;
    every record file on disk is complete JSON, no temporary file is left, no checkpoint
    without its checksum is taken for complete; with the disk freed the same command
    resumes to the uninterrupted record."""
    cache, ref = reference
    out = tmp_path / "run"
    proc = _train(out, cache, "enospc", "3")
    assert proc.returncode == 1
    (line,) = _error_lines(proc)
    assert "No space left on device" in line and "could not be recorded" in line
    assert json.loads((out / "record_r0.json").read_text())["status"] == "running"
    assert not [p for p in out.rglob("*.tmp")]
    _resumes_to_reference(out, cache, ref)


@pytest.mark.parametrize("signame", ["SIGTERM", pytest.param("SIGINT", marks=pytest.mark.slow),
                                     pytest.param("SIGUSR2", marks=pytest.mark.slow)])
def test_a_signal_during_a_compile_that_never_returns_stops_at_once(tmp_path, reference, signame):
    """The first compile blocks (as XLA's C++ compile does: the main thread never gets back
    to the loop's poll) and a signal arrives: nothing is unsaved, so the process stops by
    itself, exit 0 with one line (before, it waited for the compile: 220 s once); the same
    command then runs to the uninterrupted record. The subprocess timeout only guards
    against a hang."""
    cache, ref = reference
    out = tmp_path / "run"
    proc = _train(out, cache, "block-compile", signame)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{signame}: nothing unsaved since the last checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr and not (out / ".lock").exists()
    _resumes_to_reference(out, cache, ref)


def test_a_second_command_on_a_locked_output_dir_stops_with_one_line(tmp_path):
    """A live holder (this test's process) of output_dir's lock: the command stops before
    anything is compiled, with one error: line naming the holder, exit 2, nothing written."""
    import socket

    out = tmp_path / "run"
    out.mkdir()
    lock = json.dumps({"host": socket.gethostname(), "pid": os.getpid()})
    (out / ".lock").write_text(lock)
    proc = _train(out, tmp_path / "cache")
    assert proc.returncode == 2
    assert _error_lines(proc) == [f"error: {out} is in use by pid {os.getpid()} on "
                                  f"{socket.gethostname()}: wait for it to end, or use another "
                                  "output_dir"]
    # Hydra's own run files (.hydra/, train.log) are written before bench.train runs
    assert sorted(p.name for p in out.iterdir() if p.name not in (".hydra", "train.log")) == [".lock"]
    assert (out / ".lock").read_text() == lock


@pytest.mark.slow
def test_two_identical_commands_at_once_one_runs(tmp_path, reference):
    """Two identical commands started together on one output_dir: one trains to the
    uninterrupted record, the other stops with the lock's error: line (or, had the first
    finished already, skips the finished job) -- never two runs writing the same files."""
    cache, ref = reference
    out = tmp_path / "run"
    env = _env(cache)
    cmd = [sys.executable, "-m", "bench.train", *TINY, f"output_dir={out}"]
    procs = [subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.returncode, err) for p in procs for _, err in [p.communicate(timeout=600)]]
    codes = sorted(code for code, _ in results)
    stopped = [err for code, err in results if code == 2 or "skipped:" in err]
    assert codes in ([0, 2], [0, 0]) and len(stopped) == 1, results
    assert "is in use by pid" in stopped[0] or "skipped:" in stopped[0]
    assert interruption_invariant(_record(out)) == interruption_invariant(ref)
    assert not (out / ".lock").exists()


def test_an_unreachable_coordinator_is_one_line_after_a_bounded_wait():
    """A coordinator port nobody serves: ConfigError after the stated wait (1 s here), not
    an endless wait or a C++ abort; a host that does not resolve: ConfigError at once."""
    import socket

    from bench.core.coordinator import wait_for_coordinator
    from bench.schema import ConfigError

    with socket.socket() as s:          # a free port, closed again: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConfigError, match=r"no coordinator answered within 1 s"):
        wait_for_coordinator(f"127.0.0.1:{port}", 1, timeout_s=1)
    with pytest.raises(ConfigError, match="does not resolve"):
        wait_for_coordinator("nonexistent.invalid:1234", 1)
    with pytest.raises(ConfigError, match="expected host:port"):
        wait_for_coordinator("localhost", 0)
    with socket.socket() as server:      # a live coordinator port: returns at once
        server.bind(("127.0.0.1", 0))
        server.listen()
        wait_for_coordinator(f"127.0.0.1:{server.getsockname()[1]}", 1, timeout_s=1)


def test_an_unresolvable_coordinator_stops_bench_train_with_one_line(tmp_path):
    out = tmp_path / "run"
    proc = _train(out, tmp_path / "cache", args=[*TINY, "distributed.coordinator=nonexistent.invalid:1234",
                                                 "distributed.num_processes=2",
                                                 "distributed.process_id=1"])
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = _error_lines(proc)
    assert line.startswith("error: distributed.coordinator=nonexistent.invalid:1234: host")


@pytest.mark.slow
def test_a_real_full_disk(tmp_path, reference):
    """output_dir on a 120 KiB tmpfs (root only; skipped elsewhere): the first checkpoint
    fits, the second does not. One error: line on stderr, no traceback on the console, the
    record on disk is complete, every step directory orbax committed verifies (the failed
    one stays a temporary directory); with room again the same command resumes to the
    uninterrupted record."""
    from bench.core.checkpoint import verify

    cache, ref = reference
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=120k", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        out = disk / "run"
        proc = _train(out, cache)
        assert proc.returncode == 1
        assert [ln for ln in proc.stderr.splitlines() if ln] == _error_lines(proc)
        (line,) = _error_lines(proc)
        assert "No space left on device" in line
        assert "Traceback" not in proc.stdout
        assert json.loads((out / "record_r0.json").read_text())["status"] in ("running", "failed")
        steps = [d for d in (out / "checkpoints").iterdir() if d.name.isdigit()]
        assert steps and all(verify(d) is None for d in steps)
        subprocess.run(["mount", "-o", "remount,size=20m", str(disk)], check=True)
        _resumes_to_reference(out, cache, ref)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
