"""The drain flag, and the balancer config the repository ships: HAProxy accepts it (and the
loopback copy the tests run), it health-checks /ready, keeps WebSockets open for a call's
length and retries a draining gateway's 503 on another one."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gateway.drain import Draining
from gateway.errors import GatewayDraining
from tests.balancer import SHIPPED_CONFIG, haproxy_binary, loopback_config


def test_draining_is_set_once_and_refuses_new_calls_from_then_on() -> None:
    draining = Draining()
    assert not draining.active
    draining.refuse_new_call()  # not draining: nothing happens
    assert draining.begin() is True
    assert draining.begin() is False
    assert draining.active
    with pytest.raises(GatewayDraining):
        draining.refuse_new_call()


def test_the_shipped_config_checks_ready_keeps_websockets_and_retries_503() -> None:
    lines = {line.split("#", 1)[0].strip() for line in SHIPPED_CONFIG.read_text().splitlines()}
    assert "option httpchk GET /ready" in lines
    assert "http-check expect status 200" in lines
    assert "retry-on conn-failure 503" in lines and "option redispatch 1" in lines
    assert any(line.startswith("timeout tunnel 4h") for line in lines)
    assert not any("shutdown-sessions" in line for line in lines)


def test_haproxy_accepts_the_shipped_config_and_its_loopback_copy(tmp_path: Path) -> None:
    shipped = SHIPPED_CONFIG.read_text()
    copy = loopback_config(shipped, port=18080, stats_port=18404, servers={"a": 18001, "b": 18002})
    assert "resolvers" not in copy and "gateway2:8080" not in copy
    assert "    server a 127.0.0.1:18001" in copy.splitlines()
    path = tmp_path / "haproxy.cfg"
    path.write_text(copy)
    for config in (SHIPPED_CONFIG, path):
        checked = subprocess.run(
            [haproxy_binary(), "-c", "-f", str(config)], capture_output=True, text=True
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
