"""HAProxy from Debian on loopback in front of gateway processes, configured from the
repository's own `deploy/haproxy.cfg` (only its addresses are changed): what the balancer
test and bench put between simulated carriers and two gateways."""

from __future__ import annotations

import contextlib
import csv
import io
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.net import free_port, wait_port

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_CONFIG = ROOT / "deploy" / "haproxy.cfg"


def haproxy_binary() -> str:
    """Debian's haproxy (`scripts/dev.sh test` installs it)."""
    found = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )
    if found is None:
        raise RuntimeError("haproxy is not installed: apt-get install -y haproxy")
    return found


def loopback_config(shipped: str, *, port: int, stats_port: int, servers: dict[str, int]) -> str:
    """`shipped` with its listeners on 127.0.0.1 and its servers replaced by `servers`
    (name -> loopback port); its DNS resolvers section dropped (no Docker here)."""
    out: list[str] = []
    in_resolvers = False
    for line in shipped.splitlines():
        if line.startswith("resolvers "):
            in_resolvers = True
            continue
        if in_resolvers:
            if line.strip() and line.startswith((" ", "\t")):
                continue
            in_resolvers = False
        if re.match(r"\s+server\s", line):
            continue
        line = line.replace("bind :8080", f"bind 127.0.0.1:{port}")
        line = line.replace("bind :8404", f"bind 127.0.0.1:{stats_port}")
        out.append(line)
        if re.match(r"\s+default-server\s", line):
            out.extend(f"    server {name} 127.0.0.1:{p}" for name, p in servers.items())
    config = "\n".join(out) + "\n"
    assert f"127.0.0.1:{port}" in config and all(f"server {n} " in config for n in servers)
    return config


@dataclass(frozen=True)
class Balancer:
    url: str
    stats_url: str
    log_path: Path

    def server_states(self) -> dict[str, str]:
        """Each gateway server's state as HAProxy sees it (`UP`, `DOWN`, `UP 1/2`, ...)."""
        text = httpx.get(self.stats_url + ";csv", timeout=5).text.lstrip("# ")
        return {
            row["svname"]: row["status"]
            for row in csv.DictReader(io.StringIO(text))
            if row["pxname"] == "gateways" and row["svname"] not in ("FRONTEND", "BACKEND")
        }


@contextlib.contextmanager
def run_balancer(
    work: Path, servers: dict[str, int], *, port: int | None = None
) -> Iterator[Balancer]:
    """HAProxy on `port` (or a free one) in front of `servers`, until the block ends."""
    port = port or free_port()
    stats_port = free_port()
    config = work / "haproxy.cfg"
    config.write_text(
        loopback_config(
            SHIPPED_CONFIG.read_text(), port=port, stats_port=stats_port, servers=servers
        )
    )
    log_path = work / "haproxy.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [haproxy_binary(), "-db", "-f", str(config)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_port(port, proc, log_path, "haproxy")
        wait_port(stats_port, proc, log_path, "haproxy's stats")
        yield Balancer(
            url=f"http://127.0.0.1:{port}",
            stats_url=f"http://127.0.0.1:{stats_port}/stats",
            log_path=log_path,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
