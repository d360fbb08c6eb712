"""One run per output directory at a time: ``<output_dir>/.lock`` names its holder.

The lock file is created with ``O_CREAT | O_EXCL`` (atomic, on NFS too since v3) and holds
the holder's host, pid and process start time. A second command on the same directory stops
with one line naming the holder. A lock left by a process that no longer runs (killed with
-9, a node that rebooted) on this host is taken over: the pid is gone, or it now belongs to
a process started at another time. A lock held from another host cannot be checked from
here; the message says so and how to remove it by hand.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from bench.schema import ConfigError

LOCK_NAME = ".lock"


class OutputLocked(ConfigError):
    """Another live process runs in this output directory."""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell pid reuse apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(holder: dict[str, Any]) -> bool:
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # exists, another user's
        return True
    started = holder.get("started")
    return started is None or _start_time(pid) in (None, started)


def _describe(holder: dict[str, Any]) -> str:
    return f"pid {holder.get('pid')} on {holder.get('host')}"


class OutputLock:
    """``with OutputLock(output_dir):`` -- hold the directory's lock (see module docstring)."""

    def __init__(self, directory: Path | str) -> None:
        self.path = Path(directory) / LOCK_NAME
        self.held = False
        self._made: list[Path] = []   # directories created for the lock (removed if left empty)

    def _holder(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}   # being written, or damaged: treated as held by a dead process
        return holder if isinstance(holder, dict) else {}

    def acquire(self) -> None:
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": _start_time(os.getpid())}
        missing = [d for d in (self.path.parent, *self.path.parent.parents) if not d.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._made = missing
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:
                    continue                       # released meanwhile: try again
                if holder.get("host") not in (None, me["host"]):
                    raise OutputLocked(
                        f"{self.path.parent} is in use by {_describe(holder)} (lock file "
                        f"{self.path}); if that run is gone, delete the lock file") from None
                if _alive(holder):
                    raise OutputLocked(f"{self.path.parent} is in use by {_describe(holder)}: "
                                       "wait for it to end, or use another output_dir") from None
                self._take_over(holder)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        raise OutputLocked(f"could not take the lock {self.path}: other processes keep taking it")

    def _take_over(self, dead: dict[str, Any]) -> None:
        """Remove the lock of the ``dead`` holder. Renamed aside first and checked: if another
        taker was faster and the file is already its new lock, it is put back."""
        stale = self.path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
        try:
            os.rename(self.path, stale)
        except FileNotFoundError:
            return
        try:
            moved = json.loads(stale.read_text())
        except (OSError, ValueError):
            moved = {}
        if moved and moved != dead:
            try:
                os.link(stale, self.path)     # back, unless someone holds it again already
            except OSError:
                pass
        stale.unlink(missing_ok=True)

    def release(self) -> None:
        if self.held:
            self.held = False
            holder = self._holder()
            if holder and holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            for d in self._made:      # a run that wrote nothing leaves no directory behind
                try:
                    d.rmdir()
                except OSError:
                    break

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
