"""One process of `serve --workers N`, started by its supervisor (`gateway.workers`), never by
hand: the gateway app served on the listening socket the supervisor handed down.

    python -m gateway.worker --listen-fd=FD --ready-fd=FD --parent=PID

It reads the same settings as its supervisor (environment and `.env`), plus MONGODB_URL (the
supervisor's database) and WORKER_INDEX (logged as `worker` on every line, and shown by
/health). It writes one byte to `--ready-fd` once it serves, dies with its parent (even a
SIGKILLed one), and exits 0 after a drain started by SIGTERM / SIGINT, 2 for settings that
cannot work (no restart would help), 3 if its start-up failed.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import socket
import sys
import threading
from types import FrameType

from gateway.errors import ConfigError
from gateway.logs import configure_logging
from gateway.settings import Settings

_PR_SET_PDEATHSIG = 1
_STARTUP_FAILURE = 3


def die_with_parent(parent: int) -> None:
    """End this process when `parent` ends, whatever way it ends (SIGKILL included).

    Linux: the kernel sends SIGKILL when the parent dies (PR_SET_PDEATHSIG); a worker whose
    supervisor was killed has no one to drain for, and its calls are finished as lost by
    another gateway, as those of a killed `serve` are. Elsewhere a thread polls the parent.
    If the parent is already gone when this runs, the process exits at once."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    else:

        def watch() -> None:
            while os.getppid() == parent:
                threading.Event().wait(1.0)
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    if os.getppid() != parent:  # it died before the death signal was asked for
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway.worker", description=__doc__)
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--ready-fd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    die_with_parent(args.parent)

    # A stop asked for before uvicorn's own handlers are installed is kept, not lost; and
    # after uvicorn's graceful shutdown (it raises the signal again once it restored these
    # handlers) the process exits 0 instead of being killed by the signal.
    stop_asked: list[int] = []

    def note_stop(sig: int, frame: FrameType | None) -> None:
        stop_asked.append(sig)

    signal.signal(signal.SIGTERM, note_stop)
    signal.signal(signal.SIGINT, note_stop)

    settings = Settings()
    configure_logging(
        settings.log_level, json_format=settings.log_json, worker=settings.worker_index
    )
    sock = socket.socket(fileno=args.listen_fd)
    ready = os.fdopen(args.ready_fd, "wb", buffering=0)

    from gateway.cli import gateway_server  # the app: LiveKit, providers (never in the supervisor)

    def started() -> None:
        with contextlib.suppress(OSError):  # the supervisor is gone: PDEATHSIG ends us
            ready.write(b"r")
        ready.close()
        if stop_asked:  # came between the check below and uvicorn's handlers
            server.should_exit = True

    try:
        server = gateway_server(
            settings, host=settings.host, port=settings.port, on_started=started
        )
    except ConfigError as exc:
        sys.stderr.write(f"voice-gateway: {exc}\n")
        return 2
    if stop_asked:
        return 0
    server.run(sockets=[sock])
    return 0 if server.started else _STARTUP_FAILURE


if __name__ == "__main__":
    sys.exit(main())
