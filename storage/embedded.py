"""The embedded database: a FerretDB process (MongoDB wire protocol on SQLite) on loopback.

`voice-gateway serve` starts it when MONGODB_URL is unset; the tests start one per session.
Where its binary is comes from the caller (the gateway's settings): nothing here reads the
environment.
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

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from storage.errors import StorageError

FERRETDB_VERSION = "v1.24.2"
_REPO_ROOT = Path(__file__).resolve().parent.parent


def ferretdb_binary(*, explicit: Path | None, cache_dir: Path) -> Path:
    """The FerretDB binary: `explicit` (FERRETDB_BIN), the per-user cache (`cache_dir`,
    VOICE_GATEWAY_CACHE), or built now from a checkout.

    Building runs scripts/ensure-ferretdb.sh (needs Go and the Go module proxy), so an
    installed package with no checkout beside it can only use the first two.
    """
    if explicit is not None:
        if not os.access(explicit, os.X_OK):
            raise StorageError(f"FERRETDB_BIN={explicit} is not an executable file")
        return explicit
    cached = cache_dir / f"ferretdb-{FERRETDB_VERSION}" / "ferretdb"
    if os.access(cached, os.X_OK):
        return cached
    script = _REPO_ROOT / "scripts" / "ensure-ferretdb.sh"
    if not (script.is_file() and (_REPO_ROOT / "tools" / "ferretdb" / "main.go").is_file()):
        raise StorageError(
            f"FerretDB is not built and this is not a checkout to build it from: "
            f"run scripts/ensure-ferretdb.sh in a clone of the repository (needs Go), "
            f"set FERRETDB_BIN to a FerretDB {FERRETDB_VERSION} binary, or set MONGODB_URL "
            f"(looked for {cached})"
        )
    env = {**os.environ, "VOICE_GATEWAY_CACHE": str(cache_dir)}
    built = subprocess.run(
        ["bash", str(script)], check=False, capture_output=True, text=True, env=env
    )
    if built.returncode != 0:
        raise StorageError(f"{script} failed:\n" + built.stderr[-2000:])
    return Path(built.stdout.strip().splitlines()[-1])


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
    """Starts `binary` (see `ferretdb_binary`) on 127.0.0.1 with its data in `data_dir`;
    `url` is its MongoDB URL."""

    def __init__(
        self, *, binary: Path, data_dir: Path, port: int = 0, start_timeout_s: float = 30.0
    ) -> None:
        self.binary = binary
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
        """Start the server and return once it answers a MongoDB `ping`."""
        if self._proc is not None:
            raise StorageError("FerretDB is already running")
        binary = self.binary
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "FERRETDB_TELEMETRY": "disable", "DO_NOT_TRACK": "1"}
        with self.log_path.open("ab") as log:
            try:
                self._proc = subprocess.Popen(
                    [
                        str(binary),
                        f"--listen-addr=127.0.0.1:{self.port}",
                        f"--data-dir={self.data_dir}",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                )
            except OSError as exc:
                raise StorageError(f"cannot run FerretDB at {binary}: {exc}") from exc
        try:
            self._wait_until_ready(self._proc)
        except BaseException:
            self.stop()
            raise

    def _wait_until_ready(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self._timeout
        while not (self._accepts() and self._answers_ping()):
            if proc.poll() is not None:
                raise StorageError(
                    f"FerretDB exited with status {proc.returncode} at start "
                    f"(log {self.log_path}):\n{self._log_tail()}"
                )
            if time.monotonic() > deadline:
                raise StorageError(
                    f"FerretDB did not answer a ping within {self._timeout:g} s "
                    f"(log {self.log_path}):\n{self._log_tail()}"
                )
            time.sleep(0.02)

    def _accepts(self) -> bool:
        # A plain connect first: the driver's monitor would back off 500 ms after a refusal.
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _answers_ping(self) -> bool:
        client: MongoClient[dict[str, object]] = MongoClient(
            self.url, directConnection=True, serverSelectionTimeoutMS=1000
        )
        try:
            client.admin.command("ping")
            return True
        except PyMongoError:
            return False
        finally:
            client.close()

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM, up to 10 s to exit cleanly (SQLite flushes), then SIGKILL."""
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
