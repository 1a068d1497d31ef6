"""A real gateway process (uvicorn on loopback) against the real FerretDB of the session."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.livekit_server import LiveKitServer, run_livekit_server
from tests.net import free_port


@dataclass(frozen=True)
class GatewayProcess:
    base_url: str
    auth_token: str
    api_key: str
    log_path: Path
    db_name: str
    pid: int
    # The `serve` process itself (the supervisor under --workers N), for its exit status.
    process: subprocess.Popen[bytes] | None = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_exit(self, timeout_s: float) -> int:
        """Wait until the process exits; its exit code (negative: the signal that ended it)."""
        assert self.process is not None
        return self.process.wait(timeout=timeout_s)


@contextlib.contextmanager
def run_gateway(
    mongo_url: str,
    log_dir: Path,
    extra_env: dict[str, str | None] | None = None,
    *,
    port: int | None = None,
    workers: int = 1,
) -> Iterator[GatewayProcess]:
    """`voice-gateway serve --workers N` (one process unless told) as its own process on a
    loopback port, until the block ends."""
    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    auth_token = uuid.uuid4().hex
    api_key = "test-key-" + uuid.uuid4().hex
    log_path = log_dir / "gateway.log"
    env = {
        **os.environ,
        "MONGODB_URL": mongo_url,
        "MONGODB_DB": "e2e_" + uuid.uuid4().hex[:8],  # extra_env may name it
        "PUBLIC_URL": base,
        "TWILIO_AUTH_TOKEN": auth_token,
        "GATEWAY_API_KEY": api_key,
        "LOG_LEVEL": "INFO",
        # A test gateway refuses calls by its live-call bound only, not because a loaded CI
        # machine made its loop or its database late (tests of those causes set their own).
        "MAX_LOOP_LAG_MS": "10000",
        "MAX_WRITE_WAIT_MS": "0",
    }
    for name, value in (extra_env or {}).items():  # None removes a variable
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "gateway.cli", "serve"),
                *("--port", str(port), "--workers", str(workers)),
            ],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    process = GatewayProcess(
        base, auth_token, api_key, log_path, env["MONGODB_DB"], proc.pid, process=proc
    )
    try:
        _wait_until_up(base + "/health", proc, process.log_text, is_gateway=True)
        yield process
    finally:
        _stop(proc)


def _wait_until_up(
    url: str,
    proc: subprocess.Popen[bytes],
    log_text: Callable[[], str],
    *,
    is_gateway: bool = False,
) -> None:
    """Wait until `url` answers (a gateway's: its own /health, since another server on a
    port it was given, another test process's bound first, answers too, and the gateway
    then exits, its port taken). Generous: a loaded machine starts a gateway slowly."""
    deadline = time.monotonic() + 90
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited:\n" + log_text())
        try:
            answer = httpx.get(url, timeout=1)
            if not is_gateway or (answer.status_code == 200 and "status" in answer.json()):
                return
        except (httpx.TransportError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not start:\n" + log_text())
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()  # the gateway drains: calls still live go on (DRAIN_TIMEOUT_S)
    for last in (False, True):
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            if last:
                proc.kill()
                proc.wait()
            else:
                proc.terminate()  # a second SIGTERM cuts the drain short: calls end now


@contextlib.contextmanager
def run_room_stack(
    mongo_url: str, work: Path, extra_env: dict[str, str | None] | None = None
) -> Iterator[tuple[GatewayProcess, LiveKitServer]]:
    """A livekit-server whose signed webhooks go to a gateway configured for it (LIVEKIT_*
    set, then `extra_env`), until the block ends."""
    port = free_port()
    with run_livekit_server(work, webhook_url=f"http://127.0.0.1:{port}/livekit/webhook") as lk:
        env: dict[str, str | None] = {
            "LIVEKIT_URL": lk.url,
            "LIVEKIT_API_KEY": lk.api_key,
            "LIVEKIT_API_SECRET": lk.api_secret,
            **(extra_env or {}),
        }
        with run_gateway(mongo_url, work, env, port=port) as gateway:
            yield gateway, lk


@pytest.fixture(scope="module")
def gateway(mongo_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with run_gateway(mongo_url, tmp_path_factory.mktemp("gateway")) as process:
        yield process


@contextlib.contextmanager
def serve_fake(app: str) -> Iterator[str]:
    """Run `tests.fakes.<app>:app` under uvicorn on a free loopback port; yield its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", f"tests.fakes.{app}:app", "--port", str(port),
         "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_until_up(f"http://127.0.0.1:{port}/", proc, lambda: "")
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


@dataclass(frozen=True)
class FakeServer:
    """A protocol-faithful provider fake and its `/control` API."""

    url: str

    def control(self, **settings: object) -> None:
        httpx.post(self.url + "/control", json=settings, timeout=5).raise_for_status()

    def reset(self) -> None:
        httpx.post(self.url + "/control/reset", timeout=5).raise_for_status()

    def log(self) -> list[dict[str, object]]:
        entries: list[dict[str, object]] = httpx.get(self.url + "/control/log", timeout=5).json()
        return entries


@pytest.fixture(scope="module")
def openai_base_url() -> Iterator[str]:
    """A local server speaking OpenAI's chat-completions streaming protocol."""
    with serve_fake("openai_server") as url:
        yield url + "/v1"


@pytest.fixture(scope="module")
def deepgram_fake() -> Iterator[FakeServer]:
    with serve_fake("deepgram_server") as url:
        yield FakeServer(url)


@pytest.fixture(scope="module")
def cartesia_fake() -> Iterator[FakeServer]:
    with serve_fake("cartesia_server") as url:
        yield FakeServer(url)


@pytest.fixture(scope="module")
def twilio_fake() -> Iterator[FakeServer]:
    with serve_fake("twilio_server") as url:
        yield FakeServer(url)
