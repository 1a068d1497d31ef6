"""A real gateway process (uvicorn on loopback) against the real FerretDB of the session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest


@dataclass(frozen=True)
class GatewayProcess:
    base_url: str
    auth_token: str
    api_key: str
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def gateway(mongo_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    auth_token = uuid.uuid4().hex
    api_key = "test-key-" + uuid.uuid4().hex
    log_path = tmp_path_factory.mktemp("gateway") / "gateway.log"
    env = {
        **os.environ,
        "MONGODB_URL": mongo_url,
        "MONGODB_DB": "e2e_" + uuid.uuid4().hex[:8],
        "PUBLIC_URL": base,
        "TWILIO_AUTH_TOKEN": auth_token,
        "GATEWAY_API_KEY": api_key,
        "LOG_LEVEL": "INFO",
    }
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    process = GatewayProcess(base, auth_token, api_key, log_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError("gateway exited:\n" + process.log_text())
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("gateway did not start:\n" + process.log_text())
            time.sleep(0.1)
        yield process
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
