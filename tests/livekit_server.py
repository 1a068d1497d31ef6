"""A real livekit-server (built from the Go module proxy) with its Redis, on loopback ports.

`scripts/ensure-livekit-server.sh` builds the binary into the per-user cache (the test
command exports LIVEKIT_SERVER_BIN); `redis-server` comes from Debian. Without Redis the
server's SIP APIs answer "sip not connected (redis required)", so both always run.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from google.protobuf.json_format import MessageToJson
from livekit import api as lkapi

from tests.net import free_port, wait_port

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class LiveKitServer:
    url: str
    api_key: str
    api_secret: str
    redis_port: int


def signed_webhook(server: LiveKitServer, event: lkapi.WebhookEvent) -> tuple[bytes, str]:
    """The body and Authorization header livekit-server sends for `event` (a JWT valid five
    minutes whose sha256 claim covers the JSON body)."""
    body = MessageToJson(event).encode()
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    token = (
        lkapi.AccessToken(server.api_key, server.api_secret)
        .with_sha256(digest)
        .with_ttl(timedelta(minutes=5))
        .to_jwt()
    )
    return body, token


def _binary() -> str:
    path = os.environ.get("LIVEKIT_SERVER_BIN")
    if path:
        return path
    built = subprocess.run(
        ["bash", str(ROOT / "scripts" / "ensure-livekit-server.sh")],
        check=True,
        capture_output=True,
        text=True,
    )
    return built.stdout.strip()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def run_livekit_server(
    work_dir: Path, *, webhook_url: str | None = None
) -> Iterator[LiveKitServer]:
    """Redis, then livekit-server --dev on free loopback ports, until the block ends.

    With `webhook_url`, the server POSTs its signed room events there. It logs at
    `LIVEKIT_LOG_LEVEL` (default `info`: `--dev` alone means `debug`, which writes every
    offer and answer, megabytes a second while rooms join, on the cores the calls use)."""
    redis = shutil.which("redis-server")
    if redis is None:
        raise RuntimeError("redis-server is missing: `scripts/dev.sh test` installs it")
    redis_port = free_port()
    redis_log = work_dir / "redis.log"
    with redis_log.open("wb") as out:
        redis_proc = subprocess.Popen(
            [redis, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_port(redis_port, redis_proc, redis_log, "redis-server")
        api_key, api_secret = "testkey", secrets.token_hex(32)
        log_level = os.environ.get("LIVEKIT_LOG_LEVEL", "info")
        lk_log = work_dir / "livekit.log"
        # A free port may be taken (by an outgoing connection's ephemeral port) before the
        # server binds it: start again on other ports.
        for attempt in range(3):
            http_port, tcp_port, udp_port = (free_port() for _ in range(3))
            config = f"""
port: {http_port}
bind_addresses: ["127.0.0.1"]
rtc:
  tcp_port: {tcp_port}
  udp_port: {udp_port}
  use_external_ip: false
  node_ip: 127.0.0.1
  # A host candidate on 127.0.0.1 too: a browser (--allow-loopback-in-peer-connection)
  # then connects over loopback even where no other interface exists.
  enable_loopback_candidate: true
logging:
  level: {log_level}
redis:
  address: 127.0.0.1:{redis_port}
keys:
  {api_key}: {api_secret}
"""
            if webhook_url is not None:
                config += f"webhook:\n  api_key: {api_key}\n  urls: [{webhook_url!r}]\n"
            with lk_log.open("wb") as out:
                lk_proc = subprocess.Popen(
                    [_binary(), "--dev", "--config-body", config],
                    stdout=out, stderr=subprocess.STDOUT,
                )  # fmt: skip
            try:
                wait_port(http_port, lk_proc, lk_log, "livekit-server")
                break
            except RuntimeError:
                _stop(lk_proc)
                if attempt == 2 or "address already in use" not in lk_log.read_text():
                    raise
        try:
            yield LiveKitServer(
                url=f"http://127.0.0.1:{http_port}",
                api_key=api_key,
                api_secret=api_secret,
                redis_port=redis_port,
            )
        finally:
            _stop(lk_proc)
    finally:
        _stop(redis_proc)
