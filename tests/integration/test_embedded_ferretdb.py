"""The embedded FerretDB process: start, answer, keep its data, fail clearly."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from pymongo import MongoClient

import storage.embedded
from gateway.settings import Settings
from storage import StorageError
from tests.ferretdb_server import embedded_ferretdb


def _ping(url: str) -> dict[str, object]:
    client: MongoClient[dict[str, object]] = MongoClient(url, serverSelectionTimeoutMS=2000)
    try:
        return client.admin.command("ping")
    finally:
        client.close()


def test_starts_on_its_socket_and_answers(tmp_path: Path) -> None:
    with embedded_ferretdb(tmp_path) as server:
        assert server.url == "mongodb://" + quote(str(tmp_path / "ferretdb.sock"), safe="") + "/"
        assert _ping(server.url)["ok"] == 1.0
    assert "listening" in server.log_path.read_text()


def _tcp_listeners(pid: int) -> list[str]:
    """The TCP sockets process `pid` listens on, as /proc/net/tcp{,6} local addresses."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # state LISTEN, our socket
                listening.append(fields[1])
    return listening


def _loose_modes(directory: Path) -> dict[str, str]:
    """Paths under `directory` (itself included) that its group or others may use."""
    loose = {}
    for path in [directory, *directory.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & 0o077:
            loose[str(path.relative_to(directory))] = oct(mode)
    return loose


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_only_its_owner_reaches_it_and_reads_its_files(tmp_path: Path) -> None:
    data = tmp_path / "ferretdb"
    with embedded_ferretdb(data) as server:
        client: MongoClient[dict[str, object]] = MongoClient(server.url)
        client.app.secrets.insert_one({"_id": "org", "secret": "whsec_x"})
        client.close()
        assert server.pid is not None
        assert _tcp_listeners(server.pid) == []  # no port to reach it by, only the socket
        assert stat.S_ISSOCK(server.socket_path.stat().st_mode)
        assert server.socket_path.parent == data
        assert sorted(p.name for p in data.glob("*.sqlite")) == ["app.sqlite"]
        assert _loose_modes(data) == {}
    assert not server.socket_path.exists()  # removed at a clean stop


def test_files_an_older_version_left_readable_are_made_private(tmp_path: Path) -> None:
    data = tmp_path / "ferretdb"
    with embedded_ferretdb(data) as server:
        client: MongoClient[dict[str, object]] = MongoClient(server.url)
        client.app.notes.insert_one({"_id": "n1"})
        client.close()
    data.chmod(0o755)  # as versions before r2 left them
    for path in data.iterdir():
        path.chmod(0o644)
    assert _loose_modes(data) != {}
    with embedded_ferretdb(data) as server:
        assert _ping(server.url)["ok"] == 1.0
        assert _loose_modes(data) == {}


def test_a_killed_servers_socket_does_not_block_a_restart(tmp_path: Path) -> None:
    with embedded_ferretdb(tmp_path) as server:
        assert server.pid is not None
        os.kill(server.pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while _answers(server.socket_path):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert server.socket_path.is_socket()  # left behind
        server.stop()
        server.start()
        assert _ping(server.url)["ok"] == 1.0


def test_a_deep_data_directory_gets_a_private_socket_directory(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*["d" * 20] * 6)
    with embedded_ferretdb(deep) as server:
        assert server.socket_path.parent != deep
        assert stat.S_IMODE(server.socket_path.parent.stat().st_mode) == 0o700
        assert _ping(server.url)["ok"] == 1.0
    assert not server.socket_path.parent.exists()


def test_data_persists_across_a_restart(tmp_path: Path) -> None:
    with embedded_ferretdb(tmp_path) as server:
        client: MongoClient[dict[str, object]] = MongoClient(server.url)
        client.app.notes.insert_one({"_id": "n1", "text": "kept"})
        client.close()
    assert not _answers(server.socket_path)  # stopped: nothing listens any more
    with embedded_ferretdb(tmp_path) as server:
        client = MongoClient(server.url)
        assert client.app.notes.find_one({"_id": "n1"}) == {"_id": "n1", "text": "kept"}
        client.close()


def _answers(socket_path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(str(socket_path))
        except OSError:
            return False
        return True


def test_a_server_that_dies_at_start_reports_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "ferretdb"
    fake.write_text("#!/bin/sh\necho 'cannot open data dir' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("FERRETDB_BIN", str(fake))
    with pytest.raises(StorageError, match=r"(?s)status 3.*cannot open data dir"):
        embedded_ferretdb(tmp_path / "data").start()


def test_outside_a_checkout_it_says_how_to_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FERRETDB_BIN", raising=False)
    monkeypatch.setenv("VOICE_GATEWAY_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(storage.embedded, "_REPO_ROOT", tmp_path / "site-packages")
    settings = Settings()
    with pytest.raises(StorageError, match=r"ensure-ferretdb\.sh"):
        storage.embedded.ferretdb_binary(
            explicit=settings.ferretdb_bin, cache_dir=settings.voice_gateway_cache
        )
    assert os.environ["VOICE_GATEWAY_CACHE"].endswith("empty-cache")


def test_a_second_server_on_the_same_files_is_refused(tmp_path: Path) -> None:
    with embedded_ferretdb(tmp_path) as server:
        with pytest.raises(StorageError, match=r"another FerretDB serves .*MONGODB_URL=mongodb://"):
            embedded_ferretdb(tmp_path).start()
        assert _ping(server.url)["ok"] == 1.0  # the first one is untouched
