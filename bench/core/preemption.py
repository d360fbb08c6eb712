"""Preemption and time-limit signals: set a flag, save at the next step, requeue.

Which signals arrive (SLURM, submitit 1.5.4):

- ``SIGUSR2`` -- submitit's "checkpoint and requeue" signal. The ``submitit_slurm``
  launcher writes ``#SBATCH --signal=USR2@<signal_delay_s>``, so SLURM sends it to every
  task ``signal_delay_s`` before the time limit (and clusters that signal preemption
  send it then too). submitit moved from USR1 to USR2 because NCCL used to catch USR1
  (facebookincubator/submitit PR #1697); ``SUBMITIT_PREEMPT_SIGNAL=USR1`` switches back.
- ``SIGUSR1`` -- the classic ``#SBATCH --signal=USR1@120`` of hand-written sbatch
  scripts (and submitit with ``SUBMITIT_PREEMPT_SIGNAL=USR1``).
- ``SIGTERM`` -- ``scancel``, SLURM preemption, and the final kill at the time limit.
  No requeue from the app: SLURM requeues preempted jobs itself (PreemptMode=REQUEUE),
  and ``scancel`` means stop.

How submitit requeues a Hydra job (read in submitit/core/job_environment.py and
hydra_plugins/hydra_submitit_launcher/submitit_launcher.py): before calling the task,
``submitit.core.submission.process_job`` installs ``SignalHandler.checkpoint_and_try_requeue``
on USR2 (SIGTERM/SIGCONT are only logged). That handler, on the global rank 0 task only,
calls the submitted callable's ``checkpoint()`` -- the Hydra launcher's returns a
``DelayedSubmission`` of itself with the *same* overrides and job number, hence the same
output directory -- re-pickles it, runs ``scontrol requeue <job id>`` and raises
``SystemExit(-1)``. Timeouts count against ``max_num_timeout`` (0 in the plugin's
defaults: no requeue on timeout); preemptions do not. Nothing in that path saves
training state: the app must. With ``submitit_local`` the same handler "requeues" by
exiting with code 144 and the local controller restarts the task.

So the pattern is: ``PreemptionFlag`` replaces those handlers with ones that only set a
flag (remembering submitit's); the loop polls the flag each step; on a request it saves
(``force=True``), waits for the save, writes its record with status "running", then
calls ``requeue_if_slurm(flag)``, which hands the signal back to submitit's handler (so
submitit's requeue bookkeeping and timeout countdown apply) or, outside submitit on
SLURM, runs ``scontrol requeue`` itself. The requeued job restarts the same Hydra job,
which resumes from its latest checkpoint::

    arm()                                              # first thing: see "Every phase"
    ckpt = Checkpointer(output_dir / "checkpoints", every_steps=cfg.checkpoint.every_steps,
                        max_to_keep=cfg.checkpoint.max_to_keep)
    state, step = job.init_state(), 0
    if (latest := ckpt.latest_step()) is not None:     # requeued: resume
        state, extra = ckpt.restore(latest, state)     # onto init_state's shardings/dtypes
        step = latest                                  # + records/history from ``extra``
    with PreemptionFlag() as flag, ckpt:
        while ...:
            state, metrics = job.train(state, step, count)
            step += count
            if flag.any_process_requested():           # == flag.requested in one process
                ckpt.save(step, state, extra(), force=True)
                ckpt.wait_until_finished()
                write_all()                            # records keep status "running"
                requeue_if_slurm(flag)                 # submitit: requeues + SystemExit
                return records                         # SIGTERM / not SLURM: stop here
            ckpt.save(step, state, extra())            # periodic (every_steps) or no-op

Call ``requeue_if_slurm`` outside any ``except Exception`` that writes "failed" records:
submitit raises ``UncompletedJobError`` there when the job timed out too many times.

Every phase, not just the training loop. A Python signal handler runs in the main thread
between two bytecodes of whatever it was doing: inside JAX's tracing/lowering, an orbax
save, a curvature measurement, logging. submitit's USR2 handler pickles, runs ``scontrol
requeue`` and raises ``SystemExit`` right there; a USR2 that hit a compile that way ended
in a segmentation fault once the job had been requeued. So nothing but "remember the
signal" may run in a handler, from the first line of the job to its last:

- ``arm()``, called first thing by the entry point, installs a process-wide handler that
  only records the first signal (and remembers submitit's handlers). It stays installed
  outside ``PreemptionFlag`` blocks: data loading, state init (a compile), restore, the
  final writes.
- ``PreemptionFlag`` stacks on top of it and adopts a signal recorded before it was entered,
  so the loop saves at its first poll; on exit it puts the armed handler back.
- ``requeue_if_slurm`` calls submitit's handler from ordinary code, with the flag's handler
  still installed: a second signal during the requeue (``scontrol requeue`` itself sends
  SIGTERM to the job) only sets a flag.

Without ``arm()`` the windows before and after the loop keep whatever handler was there
(submitit's, or the default action: terminate).

Stopping at once when nothing is unsaved. A Python handler runs only when the main thread
gets back to bytecode: during an XLA compile (220 s for one curvature program) it does not
run at all, and the loop acts only at its next poll. So ``arm()`` also starts a watchdog
thread that learns of every signal from C (``signal.set_wakeup_fd``). The loop tells it
whether anything would be lost: :func:`mark_unsaved` after each training call,
:func:`mark_saved` after each checkpoint (nothing is unsaved at the start, or right after a
restore). A signal that arrives while nothing is unsaved -- loading, compiling, restoring,
evaluating or measuring curvature at the start or at a checkpointed step -- is acted on by
the watchdog at once: it waits for a checkpoint still being written, requeues like
``requeue_if_slurm``, runs the :func:`at_stop` callbacks (the output lock) and ends the
process (exit 0, as a stop at a poll). The same command resumes from the checkpoint and
repeats the step's evaluation, so the record is the uninterrupted one. With unsaved
training steps the loop saves at its next poll, as above. SIGINT (Ctrl-C) is one of the
signals (a stop, never a requeue); a second SIGINT ends the process without saving.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import types
from collections.abc import Callable, Iterable
from typing import Any

DEFAULT_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1,
                                               signal.SIGUSR2)
#: signals sent before the time limit: the job should come back (requeue)
REQUEUE_SIGNALS: frozenset[int] = frozenset({signal.SIGUSR1, signal.SIGUSR2})
#: sent along with SIGTERM (requeue, scancel); submitit logs it from its handler. Ours does
#: nothing (the kernel resumes a stopped process whatever the handler).
QUIET_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGCONT,)

Handler = Callable[[int, types.FrameType | None], Any] | int | None


class _Armed:
    """Process-wide state of ``arm()``: the handlers it replaced and the first signal seen."""

    previous: dict[int, Handler] = {}
    signum: int | None = None


def _armed_handler(signum: int, frame: types.FrameType | None) -> None:
    # Only record: no I/O, no locks, no JAX, no exceptions in a signal handler.
    if _Armed.signum is None:
        _Armed.signum = signum


class _Watchdog:
    """What the watchdog thread knows: whether training steps are unsaved, how to wait for
    a checkpoint being written, what to run before the process ends."""

    thread: threading.Thread | None = None
    fds: tuple[int, int] | None = None
    unsaved = False
    wait_for_save: Callable[[], None] | None = None
    at_stop: list[Callable[[], None]] = []
    acting = threading.Lock()   # held by whoever stops the process: watchdog or loop
    seen: list[int] = []
    fork_hook = False


def mark_unsaved() -> None:
    """The loop ran training steps that no checkpoint holds yet."""
    _Watchdog.unsaved = True


def mark_saved(wait_for_save: Callable[[], None] | None = None) -> None:
    """Every training step is in a checkpoint (``wait_for_save`` blocks until it is on disk)."""
    _Watchdog.wait_for_save, _Watchdog.unsaved = wait_for_save, False


def at_stop(callback: Callable[[], None]) -> None:
    """Run ``callback`` before the watchdog ends the process (e.g. release the output lock)."""
    _Watchdog.at_stop.append(callback)


def _stop_now(signum: int) -> None:
    """End the process from the watchdog thread: nothing is unsaved (see module docstring)."""
    name = signal.Signals(signum).name
    print(f"{name}: nothing unsaved since the last checkpoint (or the start); stopping now. "
          "The same command resumes.", file=sys.stderr, flush=True)
    code = 0
    try:
        if _Watchdog.wait_for_save is not None:
            _Watchdog.wait_for_save()
        _requeue(signum, _Armed.previous.get(signal.Signals(signum)))
    except SystemExit as exc:    # submitit's handler requeued and exits
        code = exc.code if isinstance(exc.code, int) else 1
    except Exception as err:     # noqa: BLE001 -- the process ends either way: say why
        print(f"error: {name}: stopping: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        code = 1
    for callback in _Watchdog.at_stop:
        try:
            callback()
        except Exception:  # noqa: BLE001 -- best effort: a stale lock is taken over later
            pass
    os._exit(code)


def _watch(read_fd: int, signals: frozenset[int]) -> None:
    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            return
        if not data:   # disarm() closed the pipe
            return
        for signum in data:
            if signum not in signals:
                continue
            if signum == signal.SIGINT and signal.SIGINT in _Watchdog.seen:
                print("SIGINT again: stopping without saving", file=sys.stderr, flush=True)
                os._exit(130)
            _Watchdog.seen.append(signum)
            if not _Watchdog.unsaved and _Watchdog.acting.acquire(blocking=False):
                _stop_now(signum)


def _forked_child() -> None:
    """A forked child (e.g. an input worker) inherits the wakeup fd but not the thread: a
    signal sent to the child alone (a pool terminating its workers) must not reach the
    parent's watchdog."""
    if _Watchdog.fds is None:
        return
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:   # forked from another thread: that thread is not the child's main
        pass
    for fd in _Watchdog.fds:
        try:
            os.close(fd)
        except OSError:
            pass
    _Watchdog.thread = _Watchdog.fds = None


def _start_watchdog(signals: frozenset[int]) -> None:
    if _Watchdog.thread is not None:
        return
    if not _Watchdog.fork_hook:
        os.register_at_fork(after_in_child=_forked_child)
        _Watchdog.fork_hook = True
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)   # the C handler must never block
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    _Watchdog.fds = (read_fd, write_fd)
    _Watchdog.thread = threading.Thread(target=_watch, args=(read_fd, signals),
                                        name="bench-preemption-watchdog", daemon=True)
    _Watchdog.thread.start()


def _stop_watchdog() -> None:
    if _Watchdog.thread is None or _Watchdog.fds is None:
        return
    signal.set_wakeup_fd(-1)
    os.close(_Watchdog.fds[1])          # the thread reads EOF and returns
    _Watchdog.thread.join(timeout=5)
    os.close(_Watchdog.fds[0])
    _Watchdog.thread = _Watchdog.fds = None
    _Watchdog.seen, _Watchdog.unsaved, _Watchdog.wait_for_save = [], False, None


def _quiet_handler(signum: int, frame: types.FrameType | None) -> None:
    """Nothing runs for a QUIET_SIGNALS signal (instead of, e.g., submitit's logging)."""


def _require_main_thread(what: str) -> None:
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(f"{what} must be called from the main thread (Python runs signal "
                           "handlers only there)")


def arm(signals: Iterable[int] = DEFAULT_SIGNALS, *, stop_when_saved: bool = True) -> None:
    """Make ``signals`` only record themselves for the rest of the process (idempotent).
    With ``stop_when_saved``, a signal arriving while nothing is unsaved ends the process at
    once (the watchdog; see the module docstring).

    Call first thing in the entry point, before data loading and the first compile. A
    signal received while armed is picked up by the next ``PreemptionFlag`` entered (the
    loop then saves at its first poll); submitit's handlers are remembered, so
    ``requeue_if_slurm`` still hands the signal to them.
    """
    _require_main_thread("arm()")
    signals = tuple(map(signal.Signals, signals))
    for s in signals:
        if s not in _Armed.previous:
            _Armed.previous[s] = signal.signal(s, _armed_handler)
    for s in QUIET_SIGNALS:
        if s not in _Armed.previous:
            _Armed.previous[s] = signal.signal(s, _quiet_handler)
    if stop_when_saved:
        _start_watchdog(frozenset(int(s) for s in signals))


def disarm() -> None:
    """Put back the handlers ``arm()`` replaced and forget a recorded signal (tests)."""
    _require_main_thread("disarm()")
    _stop_watchdog()
    for s, old in _Armed.previous.items():
        signal.signal(s, old if old is not None else signal.SIG_DFL)
    _Armed.previous = {}
    _Armed.signum = None


def armed_signal() -> int | None:
    """The first signal recorded by ``arm()``'s handler (None if none, or not armed)."""
    return _Armed.signum


class PreemptionFlag:
    """Context manager: while active, the given signals only set a flag (and SIGCONT,
    which comes with SIGTERM, does nothing).

    ``requested`` / ``signal_name`` / ``signum`` describe the first signal received, or
    the one ``arm()`` recorded before the flag was entered. On exit the previous handlers
    (``arm()``'s, else e.g. submitit's) are restored. Must be entered from the main thread
    (Python only runs signal handlers there).
    """

    def __init__(self, signals: Iterable[int] = DEFAULT_SIGNALS) -> None:
        self.signals = tuple(signal.Signals(s) for s in signals)
        self._signum: int | None = None
        self._previous: dict[int, Handler] = {}
        self._active = False

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        # Only record: no I/O, no locks, no JAX in a signal handler.
        if self._signum is None:
            self._signum = signum

    def install(self) -> PreemptionFlag:
        if self._active:
            return self
        self._previous = {s: signal.signal(s, self._handle) for s in self.signals}
        for s in QUIET_SIGNALS:
            if s not in self._previous:
                self._previous[s] = signal.signal(s, _quiet_handler)
        self._active = True
        if self._signum is None and _Armed.signum in self.signals:
            self._signum = _Armed.signum    # arrived earlier (loading, init compile, restore)
        return self

    def restore(self) -> None:
        """Put the previous handlers back (idempotent)."""
        if not self._active:
            return
        for s, old in self._previous.items():
            signal.signal(s, old if old is not None else signal.SIG_DFL)
        self._active = False

    def __enter__(self) -> PreemptionFlag:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()

    @property
    def requested(self) -> bool:
        return self._signum is not None

    @property
    def signum(self) -> int | None:
        return self._signum

    @property
    def signal_name(self) -> str | None:
        return None if self._signum is None else signal.Signals(self._signum).name

    def previous_handler(self, signum: int) -> Handler:
        """The handler that was installed for ``signum`` before this flag (looking through
        ``arm()``'s: the one it replaced, e.g. submitit's)."""
        s = signal.Signals(signum)
        handler = self._previous.get(s)
        return _Armed.previous.get(s) if handler is _armed_handler else handler

    def request(self, signum: int = signal.SIGTERM) -> None:
        """Raise the flag by hand (tests, or a loop enforcing its own time budget)."""
        self._handle(signum, None)

    def any_process_requested(self) -> bool:
        """True if any JAX process has the flag up. A collective: with several processes
        every one must call it at the same step (e.g. every N steps), so that all of them
        save the same step together."""
        import jax

        if jax.process_count() == 1:
            return self.requested
        import numpy as np
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray([int(self.requested)], np.int32))
        return bool(np.asarray(flags).max())


def slurm_job_id() -> str | None:
    """The id ``scontrol requeue`` needs: ``<array job>_<task>`` for arrays, else the job id."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def _submitit_requeue_handler(handler: Handler) -> bool:
    """Is ``handler`` submitit's ``SignalHandler.checkpoint_and_try_requeue``?"""
    owner = getattr(handler, "__self__", None)
    if owner is None or getattr(handler, "__name__", "") != "checkpoint_and_try_requeue":
        return False
    try:
        from submitit.core.job_environment import SignalHandler
    except ImportError:
        return False
    return isinstance(owner, SignalHandler)


def requeue_if_slurm(flag: PreemptionFlag, *, max_requeues: int | None = None) -> bool:
    """Have the job requeued after the preemption save, if the signal calls for it.

    - Under submitit (the Hydra submitit launchers), if the signal received is the one
      submitit handles: calls submitit's handler, from here, not from a signal (the flag's
      handlers stay installed, so a signal during the requeue only sets a flag). On
      global rank 0 that re-pickles the launcher, runs ``scontrol requeue``
      (submitit_local: exit code 144) and raises ``SystemExit``, so this call does not
      return; other ranks return True.
    - Plain SLURM (``SLURM/sbatch_template.sh``), USR1/USR2: rank 0 runs
      ``scontrol requeue <job>``; returns True. ``max_requeues`` caps
      ``SLURM_RESTART_COUNT`` (None: no cap).
    - SIGTERM, no signal, or not on SLURM: returns False (nothing to do; stop).

    True means "this job will run again": stop training and return.
    """
    signum = flag.signum
    if signum is None:
        return False
    if not _Watchdog.acting.acquire(blocking=False):   # the watchdog is stopping the process
        threading.Event().wait()
    try:
        return _requeue(signum, flag.previous_handler(signum), max_requeues=max_requeues)
    finally:
        _Watchdog.acting.release()


def _requeue(signum: int, previous: Handler, *, max_requeues: int | None = None) -> bool:
    """``requeue_if_slurm`` for ``signum``, whose handler before ours was ``previous``."""
    if _submitit_requeue_handler(previous):
        previous(signum, None)  # type: ignore[operator]  # rank 0: requeue + SystemExit
        return True
    if signum not in REQUEUE_SIGNALS:
        return False
    job_id = slurm_job_id()
    if job_id is None:
        return False
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    if max_requeues is not None and restarts >= max_requeues:
        return False
    if int(os.environ.get("SLURM_PROCID", "0") or 0) == 0:
        subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=60)
    return True
