"""bench.core.preemption: the flag, handler restore, and the requeue pattern end to end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench.core.preemption import (DEFAULT_SIGNALS, PreemptionFlag, arm, armed_signal, disarm,
                              requeue_if_slurm, slurm_job_id)

REPO = Path(__file__).resolve().parents[1]


def _deliver(signum: int) -> None:
    os.kill(os.getpid(), signum)
    # CPython runs the Python-level handler at the next bytecode boundary of the main thread
    for _ in range(100):
        time.sleep(0.001)


def test_signal_sets_flag_and_old_handler_restored():
    seen: list[int] = []

    def old(signum, frame):
        seen.append(signum)

    prev = signal.signal(signal.SIGUSR1, old)
    try:
        with PreemptionFlag() as flag:
            assert not flag.requested and flag.signal_name is None
            assert signal.getsignal(signal.SIGUSR1) is not old
            _deliver(signal.SIGUSR1)
            assert flag.requested
            assert flag.signal_name == "SIGUSR1" and flag.signum == signal.SIGUSR1
            assert seen == []                      # the old handler did not run
            assert flag.previous_handler(signal.SIGUSR1) is old
            _deliver(signal.SIGTERM)               # later signals keep the first one
            assert flag.signal_name == "SIGUSR1"
        assert signal.getsignal(signal.SIGUSR1) is old
        _deliver(signal.SIGUSR1)
        assert seen == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, prev)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR2])
def test_each_default_signal_only_sets_flag(signum):
    before = {s: signal.getsignal(s) for s in DEFAULT_SIGNALS}
    with PreemptionFlag() as flag:
        _deliver(signum)                           # would kill the process without the flag
        assert flag.requested and flag.signum == signum
    assert {s: signal.getsignal(s) for s in DEFAULT_SIGNALS} == before


def test_restore_on_exception_and_manual_request():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RuntimeError):
        with PreemptionFlag() as flag:
            raise RuntimeError("boom")
    assert signal.getsignal(signal.SIGTERM) is before
    flag = PreemptionFlag(signals=[signal.SIGUSR1])
    flag.request(signal.SIGUSR2)
    assert flag.requested and flag.signal_name == "SIGUSR2"
    assert flag.any_process_requested()            # single process: its own flag


def test_requeue_if_slurm_outside_slurm_and_on_sigterm(monkeypatch, tmp_path):
    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(var, raising=False)
    flag = PreemptionFlag()
    assert not requeue_if_slurm(flag)              # nothing received
    flag.request(signal.SIGUSR1)
    assert not requeue_if_slurm(flag)              # not on SLURM
    # on SLURM, SIGTERM (scancel / SLURM's own preemption requeue): no requeue by the app
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    term = PreemptionFlag()
    term.request(signal.SIGTERM)
    assert not requeue_if_slurm(term)


def test_requeue_if_slurm_plain_sbatch_calls_scontrol(monkeypatch, tmp_path):
    """Without submitit: rank 0 runs `scontrol requeue <array job>_<task>`."""
    log = tmp_path / "scontrol.log"
    fake = tmp_path / "bin" / "scontrol"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "1001")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "1000")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert slurm_job_id() == "1000_3"
    flag = PreemptionFlag()
    flag.request(signal.SIGUSR1)
    assert requeue_if_slurm(flag)
    assert log.read_text().split() == ["requeue", "1000_3"]
    monkeypatch.setenv("SLURM_PROCID", "1")        # other ranks: rank 0 requeues the job
    assert requeue_if_slurm(flag)
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "4")
    assert not requeue_if_slurm(flag, max_requeues=4)
    assert log.read_text().split() == ["requeue", "1000_3"]   # called once only


APP = textwrap.dedent("""
    import os, time
    from pathlib import Path
    import hydra
    from hydra.core.hydra_config import HydraConfig

    def log(out, line):
        with open(out / "events.txt", "a") as f:
            f.write(line + "\\n")

    @hydra.main(config_path="conf", config_name="config", version_base="1.3")
    def main(cfg):
        import jax.numpy as jnp
        from bench.core.checkpoint import Checkpointer
        from bench.core.preemption import PreemptionFlag, requeue_if_slurm

        out = Path(HydraConfig.get().runtime.output_dir)
        with PreemptionFlag() as flag, Checkpointer(out / "ckpt", every_steps=None) as ckpt:
            start = ckpt.latest_step() or 0
            state = {"x": jnp.zeros((), jnp.int32)}
            if start:
                state, extra = ckpt.restore(start, state)
                assert extra["signal"] == "SIGUSR2"
            log(out, f"start {start} {int(state['x'])}")
            (out / f"ready_{os.getpid()}").write_text(str(os.getpid()))
            deadline = time.time() + 60
            step = start
            while step < cfg.total_steps and time.time() < deadline:
                if start == 0:
                    time.sleep(0.02)        # first run: slow, waiting for the signal
                state = {"x": state["x"] + 1}
                step += 1
                if flag.requested:
                    ckpt.save(step, state, {"signal": flag.signal_name}, force=True)
                    ckpt.wait_until_finished()
                    log(out, f"saved {step} {flag.signal_name}")
                    requeued = requeue_if_slurm(flag)   # submitit: does not return
                    log(out, f"stopped requeued={requeued}")
                    return
            log(out, f"done {step} {int(state['x'])}")

    if __name__ == "__main__":
        main()
""")


def test_submitit_local_requeue_resumes_from_checkpoint(tmp_path):
    """The full pattern through hydra-submitit-launcher (hydra/launcher=local): SIGUSR2 ->
    flag -> forced save -> requeue_if_slurm hands the signal to submitit's handler ->
    submitit re-pickles the launcher and requeues (local: exit 144, task restarted) ->
    the same Hydra job (same output dir) resumes from the checkpoint and finishes."""
    conf = tmp_path / "conf"
    (conf / "hydra").mkdir(parents=True)
    (conf / "config.yaml").write_text("total_steps: 400\n")
    (conf / "hydra" / "launcher").symlink_to(REPO / "conf" / "hydra" / "launcher")
    (tmp_path / "app.py").write_text(APP)
    sweep = tmp_path / "sweep"
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, "app.py", "-m", "hydra/launcher=local", f"hydra.sweep.dir={sweep}",
         "total_steps=400"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        job = sweep / "0"
        deadline = time.time() + 60
        while not list(job.glob("ready_*")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        ready = list(job.glob("ready_*"))
        assert ready, f"job never started: {proc.poll()} {proc.stdout.read() if proc.poll() is not None else ''}"
        time.sleep(0.3)
        os.kill(int(ready[0].read_text()), signal.SIGUSR2)   # what SLURM sends before the limit
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    events = (job / "events.txt").read_text().split("\n")
    assert proc.returncode == 0, out[-3000:] + "\n".join(events)
    assert events[0] == "start 0 0"
    kind, saved_step, signame = events[1].split()
    assert (kind, signame) == ("saved", "SIGUSR2") and 0 < int(saved_step) < 400
    assert not any(e.startswith("stopped") for e in events)   # submitit requeued, no return
    assert events[2] == f"start {saved_step} {saved_step}"    # resumed in the same dir
    assert events[3] == "done 400 400"
    assert len(list(job.glob("ready_*"))) == 2                # two processes ran the job


# ---- every phase: arm(), adoption by the flag, requeue with the flag still installed ----

@pytest.fixture
def disarmed():
    """arm() is process-wide: put the original handlers back after the test."""
    before = {s: signal.getsignal(s) for s in (*DEFAULT_SIGNALS, signal.SIGCONT)}
    yield
    disarm()
    assert {s: signal.getsignal(s) for s in (*DEFAULT_SIGNALS, signal.SIGCONT)} == before


def test_sigcont_runs_nothing_while_flag_or_armed(disarmed):
    """SIGCONT comes with SIGTERM on requeue/scancel; submitit's handler for it logs. While
    the flag is up (or armed) it runs nothing and does not count as a preemption request."""
    seen: list[int] = []
    prev = signal.signal(signal.SIGCONT, lambda signum, frame: seen.append(signum))
    try:
        with PreemptionFlag() as flag:
            _deliver(signal.SIGCONT)
            assert not flag.requested
        for _ in range(2):                         # re-entering installs it again
            flag.install()
            _deliver(signal.SIGCONT)
            flag.restore()
        arm(stop_when_saved=False)
        _deliver(signal.SIGCONT)
        assert seen == [] and armed_signal() is None
        disarm()
        _deliver(signal.SIGCONT)
        assert seen == [signal.SIGCONT]            # the previous handler is back
    finally:
        signal.signal(signal.SIGCONT, prev)


def test_arm_records_early_signal_and_flag_adopts_it(disarmed):
    seen: list[int] = []

    def submitit_like(signum, frame):
        seen.append(signum)

    prev = signal.signal(signal.SIGUSR2, submitit_like)
    try:
        arm(stop_when_saved=False)
        arm(stop_when_saved=False)                                  # idempotent: still remembers submitit_like
        assert armed_signal() is None
        _deliver(signal.SIGUSR2)                   # e.g. during data loading or the init compile
        _deliver(signal.SIGTERM)                   # later signals keep the first one
        assert armed_signal() == signal.SIGUSR2 and seen == []
        with PreemptionFlag() as flag:
            assert flag.requested and flag.signal_name == "SIGUSR2"   # polled at the 1st step
            assert flag.previous_handler(signal.SIGUSR2) is submitit_like  # through arm()
        # after the loop the armed handler is back: a late SIGTERM does not kill the process
        _deliver(signal.SIGTERM)
        assert seen == []
        # a flag that does not watch the recorded signal does not adopt it
        with PreemptionFlag(signals=[signal.SIGUSR1]) as only_usr1:
            assert not only_usr1.requested
        disarm()
        assert signal.getsignal(signal.SIGUSR2) is submitit_like and armed_signal() is None
    finally:
        signal.signal(signal.SIGUSR2, prev)


def test_submitit_handler_runs_with_flag_handler_installed(disarmed):
    """requeue_if_slurm calls submitit's handler from ordinary code; a signal arriving during
    the requeue (scontrol requeue sends SIGTERM to the job) only sets a flag."""
    from submitit.core.job_environment import SignalHandler

    calls: list[str] = []

    class FakeSubmitit(SignalHandler):
        def checkpoint_and_try_requeue(self, signum, frame=None):
            installed = signal.getsignal(signal.SIGTERM)
            calls.append(f"requeue {signal.Signals(signum).name} "
                         f"flag-installed={getattr(installed, '__self__', None) is flag}")
            _deliver(signal.SIGTERM)               # would run submitit's bypass / kill otherwise
            _deliver(signal.SIGUSR2)               # must not re-enter this method
            raise SystemExit(-1)                   # what submitit does after scontrol requeue

    handler = SignalHandler.__new__(FakeSubmitit)
    prev = signal.signal(signal.SIGUSR2, handler.checkpoint_and_try_requeue)
    try:
        arm(stop_when_saved=False)
        with pytest.raises(SystemExit):
            with PreemptionFlag() as flag:
                _deliver(signal.SIGUSR2)
                assert flag.signal_name == "SIGUSR2"
                requeue_if_slurm(flag)
        assert calls == ["requeue SIGUSR2 flag-installed=True"]
        assert signal.getsignal(signal.SIGUSR2) is not prev   # armed handler back, not submitit's
    finally:
        disarm()
        signal.signal(signal.SIGUSR2, prev)


def test_watchdog_stops_a_clean_process_and_ignores_a_forked_childs_signal(tmp_path):
    """arm()'s watchdog: a signal while nothing is unsaved ends the process at once, even
    with the main thread blocked where no Python handler runs; with unsaved steps it waits
    for the loop; a signal to a forked child never reaches the parent's watchdog."""
    script = textwrap.dedent("""
        import os, signal, sys, threading, time
        from bench.core.preemption import arm, at_stop, mark_saved, mark_unsaved
        arm()
        at_stop(lambda: print("released", flush=True))
        mark_saved()                             # nothing unsaved
        ready_r, ready_w = os.pipe()
        child = os.fork()
        if child == 0:                           # e.g. an input worker, running
            os.write(ready_w, b"x")
            time.sleep(30)
            os._exit(0)
        os.read(ready_r, 1)
        os.kill(child, signal.SIGTERM)           # to the child alone: the parent goes on
        time.sleep(1.0)
        print("still here", flush=True)
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        mark_unsaved()
        os.kill(os.getpid(), signal.SIGTERM)     # unsaved: only the flag (the loop saves)
        time.sleep(1.0)
        print("still here", flush=True)
        mark_saved()
        os.kill(os.getpid(), signal.SIGUSR1)     # nothing unsaved: stop now
        threading.Event().wait()                 # blocked; the watchdog ends the process
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env={**{k: v for k, v in os.environ.items()
                                              if not k.startswith("SLURM_")},
                                           "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:3] == ["still here", "still here", "released"]
    assert "SIGUSR1: nothing unsaved" in proc.stderr and "SIGTERM: nothing" not in proc.stderr
