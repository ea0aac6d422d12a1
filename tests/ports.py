"""A free TCP port on 127.0.0.1 for a server a test starts (a process group's store, an HTTP server, PostgreSQL).

Asking the OS for port 0 returns a port from the ephemeral range, the same range it hands to outgoing connections:
between the test picking it and the server binding it, a connection (gloo's pairs, an HTTP client) can take it, and
the server fails with EADDRINUSE. Ports below the ephemeral range are never given out that way, so one that binds
now stays free until the test's own server takes it.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default lower bound


def free_port() -> int:
    """A port in [10000, start of the ephemeral range) that binds now; the OS's choice if none does in 200 tries."""
    high = max(10001, _ephemeral_low())
    for _ in range(200):
        port = random.randrange(10000, high)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
