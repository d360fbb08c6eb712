"""A bounded wait for ``jax.distributed``'s coordinator, with one line when it cannot be had.

``jax.distributed.initialize`` waits for the coordinator (process 0) up to its
``initialization_timeout`` and then aborts the process from C++ with a stack trace; a host
name that does not resolve is not caught earlier. So, before it: the coordinator's host must
resolve (else one ``ConfigError`` at once), and a process other than 0 waits at most
``COORDINATOR_TIMEOUT_S`` for the coordinator's port to accept a connection (else one
``ConfigError`` saying so). Process 0 serves the port itself, on every interface.
"""

from __future__ import annotations

import socket
import time

from bench.schema import ConfigError

#: how long a process waits for process 0's coordinator to come up (processes of one job may
#: start minutes apart on a busy cluster); also jax.distributed.initialize's own timeout
COORDINATOR_TIMEOUT_S = 300


def _host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"distributed.coordinator={address!r}: expected host:port")
    return host.strip("[]"), int(port)


def wait_for_coordinator(address: str, process_id: int | None, *,
                         timeout_s: float = COORDINATOR_TIMEOUT_S) -> None:
    """Return once ``address`` resolves and (for process_id != 0) accepts a connection;
    raise ConfigError after ``timeout_s`` seconds of trying."""
    host, port = _host_port(address)
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as err:
        raise ConfigError(f"distributed.coordinator={address}: host {host!r} does not resolve "
                          f"({err.strerror or err})") from None
    if not process_id:
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, timeout_s)):
                return
        except OSError as err:
            if time.monotonic() >= deadline:
                raise ConfigError(
                    f"distributed.coordinator={address}: no coordinator answered within "
                    f"{timeout_s:g} s ({err.strerror or err}); is process 0 running there?") from None
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
