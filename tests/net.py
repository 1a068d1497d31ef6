"""Loopback helpers for the servers tests start: a free port, and waiting for a listener."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path

# Ports this process handed out: the kernel may give a port that is free again (nothing
# bound yet) to the next caller, and two servers of one test were then told the same port.
_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, not handed out before by
    this process."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    """Wait until `proc` listens on `port`; its log's tail is in the error if it dies."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited:\n" + log.read_text(errors="replace")[-3000:])
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}:\n" + log.read_text(errors="replace"))
