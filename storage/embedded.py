"""The embedded database: a FerretDB process (MongoDB wire protocol on SQLite) on a Unix
socket that only this user can reach.

`voice-gateway serve` starts it when MONGODB_URL is unset; the tests start one per session.
Where its binary is comes from the caller (the gateway's settings): nothing here reads the
environment.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from storage.errors import StorageError

FERRETDB_VERSION = "v1.24.2"
# The build of tools/ferretdb/main.go (keep in step with scripts/ensure-ferretdb.sh):
# r2 listens on a Unix socket and keeps its files private; r3 looks `_id` up by its index.
FERRETDB_BUILD = "r3"
# sun_path holds 108 bytes on Linux, its terminating NUL included.
_SOCKET_PATH_MAX = 100
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
    cached = cache_dir / f"ferretdb-{FERRETDB_VERSION}-{FERRETDB_BUILD}" / "ferretdb"
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


def _child_setup() -> None:
    """In the child before exec: files it makes are private to this user (0600 / 0700), and
    it gets SIGTERM when the gateway dies, even by SIGKILL."""
    os.umask(0o077)
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def make_private(directory: Path) -> None:
    """Make `directory` 0700 and everything in it readable by its owner only.

    Data directories of versions before r2 were 0755 with world-readable (0644) SQLite files,
    which hold webhook signing secrets: they are fixed here at every start.
    """
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    for path in directory.rglob("*"):
        if path.is_symlink():
            continue
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & 0o077:
            path.chmod(mode & 0o700)


def _accepts(socket_path: Path) -> bool:
    """Whether something answers a connect at `socket_path`."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(0.5)
        try:
            sock.connect(str(socket_path))
        except OSError:
            return False
        return True


class EmbeddedFerretDB:
    """Starts `binary` (see `ferretdb_binary`) with its data in `data_dir`, reachable only
    through a Unix socket there (`url`): no TCP listener, and the directory, the socket and
    the SQLite files are private to this user (FerretDB's SQLite backend has no
    authentication, so the file permissions are what keeps other local users out).
    """

    def __init__(self, *, binary: Path, data_dir: Path, start_timeout_s: float = 30.0) -> None:
        self.binary = binary
        self.data_dir = Path(data_dir).resolve()
        self._socket_dir: Path | None = None
        self.socket_path = self._socket_path()
        self._timeout = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

    def _socket_path(self) -> Path:
        beside = self.data_dir / "ferretdb.sock"
        if len(os.fsencode(beside)) <= _SOCKET_PATH_MAX:
            return beside
        # A deep data directory: the socket goes to a private directory of its own (0700).
        self._socket_dir = Path(tempfile.mkdtemp(prefix="vg-ferretdb-"))
        return self._socket_dir / "ferretdb.sock"

    @property
    def url(self) -> str:
        return "mongodb://" + quote(str(self.socket_path), safe="") + "/"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "ferretdb.log"

    def start(self) -> None:
        """Start the server and return once it answers a MongoDB `ping`."""
        if self._proc is not None:
            raise StorageError("FerretDB is already running")
        binary = self.binary
        make_private(self.data_dir)
        if self._socket_dir is not None:
            make_private(self._socket_dir)
        if self.socket_path.is_socket():
            if _accepts(self.socket_path):
                raise StorageError(
                    f"another FerretDB serves {self.data_dir} (a running gateway?): stop it, "
                    f"or set MONGODB_URL={self.url} to use it"
                )
            self.socket_path.unlink()  # left by a server that was killed
        env = {**os.environ, "FERRETDB_TELEMETRY": "disable", "DO_NOT_TRACK": "1"}
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with open(log_fd, "ab") as log:
            try:
                self._proc = subprocess.Popen(
                    [
                        str(binary),
                        "--listen-addr=",
                        f"--listen-unix={self.socket_path}",
                        f"--data-dir={self.data_dir}",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    preexec_fn=_child_setup,
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
        while not (_accepts(self.socket_path) and self._answers_ping()):
            if proc.poll() is not None:
                if "not defined: -listen-unix" in self._log_tail():
                    raise StorageError(
                        f"{self.binary} is a FerretDB build without --listen-unix: rebuild it "
                        f"with scripts/ensure-ferretdb.sh (build {FERRETDB_BUILD})"
                    )
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
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._socket_dir is not None:  # a temporary directory of its own: leave none behind
            self.socket_path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self._socket_dir.rmdir()

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
