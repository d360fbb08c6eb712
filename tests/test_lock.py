"""bench.core.lock: one run per output_dir; dead holders' locks are taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from bench.core.lock import OutputLock, OutputLocked


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid       # exited and reaped: no process has it (pids are not reused at once)


def _write_lock(directory, **holder) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ".lock").write_text(json.dumps(holder))


def test_acquire_release_and_a_live_holder_refuses(tmp_path):
    with OutputLock(tmp_path) as lock:
        holder = json.loads((tmp_path / ".lock").read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(OutputLocked, match=f"in use by pid {os.getpid()} on"):
            OutputLock(tmp_path).acquire()
        assert lock.held
    assert not (tmp_path / ".lock").exists()


@pytest.mark.parametrize("holder", ["dead pid", "reused pid", "damaged"])
def test_a_dead_holders_lock_is_taken_over(tmp_path, holder):
    if holder == "dead pid":
        _write_lock(tmp_path, host=socket.gethostname(), pid=_dead_pid())
    elif holder == "reused pid":     # our pid, but a process started at another time had it
        _write_lock(tmp_path, host=socket.gethostname(), pid=os.getpid(), started="1")
    else:
        (tmp_path / ".lock").write_text("{trunc")
    with OutputLock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_lock_from_another_host_is_named_not_taken(tmp_path):
    _write_lock(tmp_path, host="node-that-is-not-this-one", pid=1)
    with pytest.raises(OutputLocked, match="pid 1 on node-that-is-not-this-one .*delete the lock"):
        OutputLock(tmp_path).acquire()
    assert json.loads((tmp_path / ".lock").read_text())["host"] == "node-that-is-not-this-one"


def test_a_directory_made_for_the_lock_goes_if_nothing_was_written(tmp_path):
    """A command that stops (bad input) after taking the lock leaves no empty output_dir."""
    target = tmp_path / "a" / "b"
    with OutputLock(target):
        assert target.is_dir()
    assert not (tmp_path / "a").exists()
    with OutputLock(target):
        (target / "record_r0.json").write_text("{}")
    assert sorted(p.name for p in target.iterdir()) == ["record_r0.json"]
