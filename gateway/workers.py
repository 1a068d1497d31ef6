"""`serve --workers N`: a supervisor process that binds the listening socket once and runs N
gateway processes (`gateway.worker`) accepting on it, restarting any that dies.

The socket is handed down (inherited by each worker), not bound N times with SO_REUSEPORT:
- a worker that dies or restarts loses no connection: the queue of connections not yet
  accepted belongs to the one shared socket, which stays open in the supervisor and the
  other workers (SO_REUSEPORT gives each process its own queue, reset when it closes);
- the port is bound once, so "address in use" is said once, before any worker starts, and
  a second gateway on the same port fails instead of silently sharing it (SO_REUSEPORT lets
  any process of the same user join the group);
- a worker whose event loop is busy comes to `accept` later than an idle one, so new
  connections go to the less loaded workers (SO_REUSEPORT hashes them whatever the load).
The price: under light load the spread is not even (whichever worker wakes first wins).

Workers are spawned (a fresh interpreter through `subprocess`, never a fork: forking a
process that has WebRTC threads can hang the child), and this module imports nothing of the
app (no LiveKit, no providers), so the supervisor itself holds no such threads. Worker 0
starts alone and the others once it is ready: the first start on an empty database (its
indexes, the bootstrap API key, the session secret) is made by one process. Each worker
has its own gateway id and lease, so the calls of a worker that died are finished as lost
by the others' sweepers once its lease expires, as any dead gateway's are; the restarted
worker is a new gateway and takes none of them over.

The supervisor makes a directory for the run (METRICS_DIR) where each worker publishes its
metrics, so that `GET /metrics`, whichever worker answers it, is the whole gateway's
(`gateway/worker_metrics.py`); it removes it at the end.

SIGTERM / SIGINT to the supervisor is forwarded to every worker (each drains as a single
`serve` does); the supervisor returns once all have exited. Each worker dies with the
supervisor even if it is SIGKILLed (`gateway.worker` asks for PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType

log = logging.getLogger(__name__)

_READY = b"r"


def default_workers() -> int:
    """One worker per core this process may run on (its CPU affinity; `os.cpu_count()`
    where the platform cannot say)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def listening_socket(host: str, port: int, *, backlog: int = 2048) -> socket.socket:
    """A TCP socket listening on host:port that child processes can inherit (as uvicorn
    binds one: SO_REUSEADDR, IPv6 when the host has a colon)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        # Listening now: connections queue while the workers start or restart.
        sock.listen(backlog)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """How long a dead worker waits to be started again: `base_s` doubling per death in a
    row up to `cap_s`; a worker that served `stable_s` starts its count afresh."""

    base_s: float = 0.5
    cap_s: float = 30.0
    stable_s: float = 30.0

    def delay_s(self, deaths_in_a_row: int) -> float:
        return min(self.cap_s, self.base_s * 2.0 ** max(0, deaths_in_a_row - 1))


@dataclass(slots=True)
class _Worker:
    """One worker slot: the process now in it, and what the supervisor knows of it."""

    index: int
    proc: subprocess.Popen[bytes] | None = None
    ready_fd: int | None = None  # the read end of its readiness pipe, until it said or died
    ready_at: float | None = None
    ever_ready: bool = False
    deaths_in_a_row: int = 0
    restart_at: float | None = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _describe(status: int) -> str:
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-status).name}"
    return f"exit status {status}"


@dataclass
class WorkerSupervisor:
    """Runs `count` workers on the inherited listening socket `sock`; `run()` returns the
    supervisor's exit status once they have all exited.

    Each worker's environment is `env` plus WORKER_INDEX; `command` is the worker's argv
    before the supervisor's own options (tests may wrap it)."""

    count: int
    sock: socket.socket
    env: Mapping[str, str]
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    command: Sequence[str] = (sys.executable, "-m", "gateway.worker")
    _workers: list[_Worker] = field(init=False, default_factory=list)
    _signals: list[int] = field(init=False, default_factory=list)
    _stopping: bool = field(init=False, default=False)
    _wake_r: int = field(init=False, default=-1)
    _wake_w: int = field(init=False, default=-1)

    def run(self) -> int:
        """Start the workers (worker 0 first, the rest once it is ready), keep them running
        until SIGTERM / SIGINT, forward that to them, wait for them to exit."""
        if self.count < 1:
            raise ValueError("a supervisor needs at least one worker")
        self._workers = [_Worker(i) for i in range(self.count)]
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        try:
            status = self._supervise()
        except BaseException:
            log.exception("the worker supervisor failed: stopping the workers")
            self._signals.append(signal.SIGTERM)
            self._stopping = True
            self._stop_all()
            raise
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)
            for worker in self._workers:
                self._close_ready(worker)
        return status

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        # Only noted here; the loop (woken by the wakeup fd) acts on it.
        if sig != signal.SIGCHLD:
            self._signals.append(sig)
            self._stopping = True

    def _supervise(self) -> int:
        first = self._workers[0]
        self._start(first)
        while not self._stopping:
            self._wait(self._next_timeout())
            if self._stopping:
                break
            if not first.ever_ready:
                if first.ready_at is not None:
                    first.ever_ready = True
                    host, port = self.sock.getsockname()[:2]
                    log.info(
                        "serving on one socket with %d worker processes",
                        self.count,
                        extra={"host": host, "port": port, "workers": self.count},
                    )
                    for worker in self._workers[1:]:
                        self._start(worker)
                elif not first.alive():
                    return self._first_start_failed(first)
                continue
            self._tend(time.monotonic())
        return self._stop_all()

    def _first_start_failed(self, first: _Worker) -> int:
        """Worker 0 exited before it was ready, at the first start: no later start would
        fare better (bad settings, no database), so the supervisor stops as `serve` would."""
        assert first.proc is not None
        status = first.proc.wait()
        log.error(
            "worker 0 could not start (%s): stopping",
            _describe(status),
            extra={"worker": 0, "pid": first.proc.pid},
        )
        return status if status > 0 else 1  # as `serve` alone would have exited

    def _tend(self, now: float) -> None:
        """Note the workers that became ready, restart the dead ones when their delay is over."""
        for worker in self._workers:
            if worker.proc is None:
                if worker.restart_at is not None and now >= worker.restart_at:
                    worker.restart_at = None
                    self._start(worker)
                continue
            status = worker.proc.poll()
            if status is None:
                continue
            self._close_ready(worker)
            stable = worker.ready_at is not None and now - worker.ready_at >= self.policy.stable_s
            worker.deaths_in_a_row = 1 if stable else worker.deaths_in_a_row + 1
            delay = self.policy.delay_s(worker.deaths_in_a_row)
            log.error(
                "worker died (%s): restarting it in %.1f s",
                _describe(status),
                delay,
                extra={
                    "worker": worker.index,
                    "pid": worker.proc.pid,
                    "deaths_in_a_row": worker.deaths_in_a_row,
                },
            )
            worker.proc = None
            worker.ready_at = None
            worker.restart_at = now + delay

    def _next_timeout(self) -> float:
        now = time.monotonic()
        pending = [w.restart_at - now for w in self._workers if w.restart_at is not None]
        return max(0.0, min([1.0, *pending]))

    def _wait(self, timeout_s: float) -> None:
        """Sleep until a signal (SIGCHLD included), a worker's readiness, or `timeout_s`."""
        readers = [w.ready_fd for w in self._workers if w.ready_fd is not None]
        ready, _, _ = select.select([self._wake_r, *readers], [], [], timeout_s)
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 512):
                    pass
        for worker in self._workers:
            if worker.ready_fd is not None and worker.ready_fd in ready:
                said = os.read(worker.ready_fd, 16)
                self._close_ready(worker)
                if said == _READY and worker.proc is not None:
                    worker.ready_at = time.monotonic()
                    log.info(
                        "worker ready",
                        extra={"worker": worker.index, "pid": worker.proc.pid},
                    )

    def _start(self, worker: _Worker) -> None:
        ready_r, ready_w = os.pipe()
        fd = self.sock.fileno()
        argv = [
            *self.command,
            f"--listen-fd={fd}",
            f"--ready-fd={ready_w}",
            f"--parent={os.getpid()}",
        ]
        env = {**self.env, "WORKER_INDEX": str(worker.index)}
        try:
            # Its own process group: a terminal's Ctrl-C reaches the supervisor alone, which
            # forwards it once (a second SIGINT would make uvicorn cut live calls).
            worker.proc = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                pass_fds=(fd, ready_w),
                process_group=0,
            )
        finally:
            os.close(ready_w)
        worker.ready_fd = ready_r
        worker.ready_at = None
        # Debug: until worker 0 is ready, what `serve` says is what it would say alone.
        log.debug("worker started", extra={"worker": worker.index, "pid": worker.proc.pid})

    def _close_ready(self, worker: _Worker) -> None:
        if worker.ready_fd is not None:
            os.close(worker.ready_fd)
            worker.ready_fd = None

    def _forward(self, signals: list[int]) -> None:
        for sig in signals:
            for worker in self._workers:
                if worker.proc is not None and worker.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        worker.proc.send_signal(sig)

    def _stop_all(self) -> int:
        """Forward every signal received (now and while waiting) to the live workers, wait for
        all of them; 0 when each ended cleanly."""
        names = ", ".join(signal.Signals(s).name for s in self._signals) or "none"
        log.info("stopping the workers", extra={"signals": names})
        for worker in self._workers:
            worker.restart_at = None
        clean = True
        while True:
            pending, self._signals = self._signals, []
            self._forward(pending)
            for worker in self._workers:
                if worker.proc is None:
                    continue
                status = worker.proc.poll()
                if status is None:
                    continue
                self._close_ready(worker)
                # 0 after a drain; killed by the signal itself if it came before the
                # worker's handlers were installed (it served nothing yet).
                ok = status in (0, -signal.SIGTERM, -signal.SIGINT)
                clean = clean and ok
                (log.info if ok else log.error)(
                    "worker exited (%s)",
                    _describe(status),
                    extra={"worker": worker.index, "pid": worker.proc.pid, "status": status},
                )
                worker.proc = None
            if all(w.proc is None for w in self._workers):
                return 0 if clean else 1
            self._wait(1.0)


def supervise_workers(
    *, count: int, host: str, port: int, mongodb_url: str, policy: RestartPolicy | None = None
) -> int:
    """`serve --workers N` once the database is reachable at `mongodb_url`: bind host:port,
    run the workers on it until SIGTERM / SIGINT; the exit status of the command."""
    try:
        sock = listening_socket(host, port)
    except OSError as exc:  # as uvicorn says it when it binds alone
        log.error("cannot listen on %s:%d: %s", host, port, exc.strerror or exc)
        return 1
    # Each worker publishes its metrics here, and the one that answers `GET /metrics` reads
    # them all (gateway/worker_metrics.py); made for this run, removed after it.
    metrics_dir = tempfile.mkdtemp(prefix="voice-gateway-metrics-")
    env = {
        **os.environ,
        "MONGODB_URL": mongodb_url,  # the embedded server the supervisor started, or the same
        "HOST": host,
        "PORT": str(sock.getsockname()[1]),
        "METRICS_DIR": metrics_dir,
    }
    try:
        return WorkerSupervisor(count, sock, env, policy or RestartPolicy()).run()
    finally:
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
