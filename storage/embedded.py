"""The embedded database: a FerretDB process (MongoDB wire protocol on SQLite) on loopback.

`voice-gateway serve` starts it when MONGODB_URL is unset; the tests start one per session.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from storage.errors import StorageError

FERRETDB_VERSION = "v1.24.2"
_REPO_ROOT = Path(__file__).resolve().parent.parent


def _cache_dir() -> Path:
    return Path(os.environ.get("VOICE_GATEWAY_CACHE", Path.home() / ".cache" / "voice-gateway"))


def ferretdb_binary() -> Path:
    """The FerretDB binary: $FERRETDB_BIN, the per-user cache, or built now from a checkout."""
    explicit = os.environ.get("FERRETDB_BIN")
    if explicit:
        return Path(explicit)
    cached = _cache_dir() / f"ferretdb-{FERRETDB_VERSION}" / "ferretdb"
    if cached.exists():
        return cached
    script = _REPO_ROOT / "scripts" / "ensure-ferretdb.sh"
    if not script.exists():
        raise StorageError(
            f"FerretDB is not built: run scripts/ensure-ferretdb.sh from a checkout, "
            f"set FERRETDB_BIN, or set MONGODB_URL (looked for {cached})"
        )
    built = subprocess.run(["bash", str(script)], check=False, capture_output=True, text=True)
    if built.returncode != 0:
        raise StorageError("building FerretDB failed:\n" + built.stderr[-2000:])
    return Path(built.stdout.strip())


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the gateway dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedFerretDB:
    """Starts FerretDB on 127.0.0.1 with its data in `data_dir`; `url` is its MongoDB URL."""

    def __init__(self, *, data_dir: Path, port: int = 0, start_timeout_s: float = 30.0) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or _free_port()
        self._timeout = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "ferretdb.log"

    def start(self) -> None:
        binary = ferretdb_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "FERRETDB_TELEMETRY": "disable", "DO_NOT_TRACK": "1"}
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    str(binary),
                    f"--listen-addr=127.0.0.1:{self.port}",
                    f"--data-dir={self.data_dir}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        deadline = time.monotonic() + self._timeout
        while not self._answers():
            if self._proc.poll() is not None:
                raise StorageError("FerretDB exited at start:\n" + self._log_tail())
            if time.monotonic() > deadline:
                self.stop()
                raise StorageError("FerretDB did not start in time:\n" + self._log_tail())
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> EmbeddedFerretDB:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
