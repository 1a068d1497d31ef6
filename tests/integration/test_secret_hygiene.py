"""Secrets at start-up, against real processes: a database URL's password never reaches an
error or a log line, and a placeholder GATEWAY_API_KEY stops the gateway before it serves."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.net import free_port

PASSWORD = "Hunter2-" + uuid.uuid4().hex[:8]


def _serve(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`voice-gateway serve` with `env`, until it exits by itself."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(free_port())],
        env={
            **os.environ,
            "PUBLIC_URL": "http://127.0.0.1:1",
            "TWILIO_AUTH_TOKEN": uuid.uuid4().hex,
            "DATA_DIR": str(tmp_path / "data"),
            "LOG_LEVEL": "INFO",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# In a process of its own: PyMongo 4.20's monitor, cancelled by `close()` while it
# connects to the refused port, leaves that socket to the garbage collector (15 of 40
# opens, measured), whose ResourceWarning would then fail whichever test runs next here.
_OPEN = """
import asyncio, sys
from storage import StorageError, open_database
try:
    asyncio.run(open_database(sys.argv[1], "db", timeout_s=0.5))
except StorageError as exc:
    print(exc)
"""


def test_a_database_error_masks_the_urls_password() -> None:
    url = f"mongodb://gateway:{PASSWORD}@127.0.0.1:{free_port()}/?authSource=admin"
    done = subprocess.run(
        [sys.executable, "-W", "ignore::ResourceWarning", "-c", _OPEN, url],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    error = done.stdout + done.stderr
    assert error.startswith("cannot open MongoDB at "), error
    assert PASSWORD not in error
    assert f"mongodb://gateway:***@127.0.0.1:{url.split(':')[3]}" in error


def test_a_gateway_that_cannot_reach_its_database_logs_no_password(tmp_path: Path) -> None:
    url = f"mongodb://gateway:{PASSWORD}@127.0.0.1:{free_port()}/"
    done = _serve({"MONGODB_URL": url, "GATEWAY_API_KEY": "vg_" + uuid.uuid4().hex}, tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "cannot open MongoDB at mongodb://gateway:***@127.0.0.1" in output
    assert PASSWORD not in output


@pytest.mark.parametrize("key", ["change-me", "changeme", "secret", "password"])
def test_a_placeholder_api_key_stops_the_gateway_before_it_serves(
    key: str, mongo_url: str, tmp_path: Path
) -> None:
    done = _serve({"MONGODB_URL": mongo_url, "GATEWAY_API_KEY": key}, tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("voice-gateway: GATEWAY_API_KEY is refused: it is shorter")
    assert "Traceback" not in done.stderr
