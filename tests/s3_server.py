"""A real S3-compatible HTTP server on loopback: moto's server mode (from PyPI, in the test
extras), spoken to with boto3 unchanged.

Its minimum multipart part size is lowered (moto's `S3_UPLOAD_PART_MIN_SIZE`) so that tests
see several parts of a short call; real S3 keeps its 5 MiB.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from tests.net import free_port, wait_port

TEST_PART_MIN_BYTES = 16 * 1024


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    access_key_id: str = "test-access-key"
    secret_access_key: str = "test-secret-key"
    region: str = "us-east-1"
    pid: int | None = None  # the server process (tests that stall it send SIGSTOP)
    # One boto3 client for the server's life, closed with it: a client per use leaves its
    # pooled socket to the garbage collector, whose ResourceWarning then fails whichever
    # test happens to be running.
    _client: list[Any] = field(default_factory=list, compare=False, repr=False)
    _owned: list[Any] = field(default_factory=list, compare=False, repr=False)

    def client(self) -> Any:
        """The tests' boto3 client for this server."""
        if not self._client:
            self._client.append(
                boto3.client(
                    "s3",
                    endpoint_url=self.endpoint_url,
                    aws_access_key_id=self.access_key_id,
                    aws_secret_access_key=self.secret_access_key,
                    region_name=self.region,
                )
            )
        return self._client[0]

    def closes(self, owner: Any) -> None:
        """Close `owner` (anything with `close()`, e.g. a test's bucket) with the server."""
        self._owned.append(owner)

    def close(self) -> None:
        """Close the tests' client and buckets (and their pooled connections)."""
        for owner in (*self._owned, *self._client):
            owner.close()
        self._owned.clear()
        self._client.clear()

    def env(self, bucket: str) -> dict[str, str | None]:
        """The gateway's settings for this server and `bucket`."""
        return {
            "S3_BUCKET": bucket,
            "S3_ENDPOINT_URL": self.endpoint_url,
            "S3_REGION": self.region,
            "S3_ACCESS_KEY_ID": self.access_key_id,
            "S3_SECRET_ACCESS_KEY": self.secret_access_key,
        }


@contextlib.contextmanager
def run_s3_server(
    log_dir: Path, *, min_part_bytes: int | None = TEST_PART_MIN_BYTES
) -> Iterator[S3Server]:
    """`moto_server` on a free loopback port until the block ends (None: S3's 5 MiB)."""
    port = free_port()
    log_path = log_dir / "moto.log"
    env = dict(os.environ)
    if min_part_bytes is not None:
        env["S3_UPLOAD_PART_MIN_SIZE"] = str(min_part_bytes)
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_port(port, proc, log_path, "moto_server")
        server = S3Server(endpoint_url=f"http://127.0.0.1:{port}", pid=proc.pid)
        try:
            yield server
        finally:
            server.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
