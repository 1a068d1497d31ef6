"""The embedded FerretDB process: start, answer, keep its data, fail clearly."""

from __future__ import annotations

import os
from pathlib import Path

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


def test_starts_on_a_free_port_and_answers(tmp_path: Path) -> None:
    with embedded_ferretdb(tmp_path) as server:
        assert server.url == f"mongodb://127.0.0.1:{server.port}/" and server.port > 0
        assert _ping(server.url)["ok"] == 1.0
    assert "listening" in server.log_path.read_text()


def test_data_persists_across_a_restart(tmp_path: Path) -> None:
    with embedded_ferretdb(tmp_path) as server:
        client: MongoClient[dict[str, object]] = MongoClient(server.url)
        client.app.notes.insert_one({"_id": "n1", "text": "kept"})
        client.close()
    with pytest.raises(OSError):  # stopped: nothing listens any more
        _ping_once(server.url)
    with embedded_ferretdb(tmp_path) as server:
        client = MongoClient(server.url)
        assert client.app.notes.find_one({"_id": "n1"}) == {"_id": "n1", "text": "kept"}
        client.close()


def _ping_once(url: str) -> None:
    import socket

    port = int(url.rsplit(":", 1)[1].strip("/"))
    socket.create_connection(("127.0.0.1", port), timeout=1).close()


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
