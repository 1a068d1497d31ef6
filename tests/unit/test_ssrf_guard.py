"""The SSRF guard: which webhook URLs it refuses, with and without an allowlist."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from webhooks.errors import UnresolvedHost, UnsafeURL
from webhooks.ssrf import SsrfGuard, pinned_url

REFUSED = [
    "http://127.0.0.1/hook",
    "http://127.8.9.10:8080/hook",
    "http://10.0.0.1/",
    "http://10.255.255.255/",
    "http://172.16.0.1/",
    "http://172.31.255.254/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://0.0.0.0/",
    "http://100.64.0.1/",  # carrier-grade NAT
    "http://224.0.0.1/",
    "http://[::1]/",
    "http://[fc00::1]/",
    "http://[fd12:3456::1]/",
    "http://[fe80::1]/",
    "http://[::ffff:127.0.0.1]/",  # IPv4-mapped IPv6
    "http://[::ffff:10.0.0.1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[64:ff9b::a00:1]/",  # NAT64 of 10.0.0.1
    "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
    "http://localhost/",
    "http://LOCALHOST:8080/",
    "http://localhost./",
    "http://api.localhost/",
    "http://127.1/",  # legacy IPv4 forms resolvers accept
    "http://2130706433/",
    "http://0x7f.0.0.1/",
    "http://user:pw@127.0.0.1/",
    "ftp://example.com/",
    "file:///etc/passwd",
    "gopher://example.com/",
    "javascript:alert(1)",
    "http:///nohost",
    "http://example.com:99999/",
]


@pytest.mark.parametrize("url", REFUSED)
def test_refused(url: str) -> None:
    with pytest.raises(UnsafeURL):
        SsrfGuard().check_literal(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://8.8.8.8/hook",
        "http://93.184.216.34:8080/x",
        "https://[2606:4700:4700::1111]/hook",
        "https://hooks.example.com/calls",  # a name: judged at delivery, when resolved
        "http://172.32.0.1/",  # just outside 172.16/12
    ],
)
def test_public_literals_and_names_pass_the_literal_check(url: str) -> None:
    SsrfGuard().check_literal(url)


def test_the_allowlist_names_hosts_and_networks() -> None:
    guard = SsrfGuard(["127.0.0.1", "10.1.0.0/16", "Receiver.Internal", "fd00::/8", "localhost"])
    for url in (
        "http://127.0.0.1:8080/hook",
        "http://10.1.2.3/",
        "http://receiver.internal/",
        "http://[fd00::5]/",
        "http://localhost/",
    ):
        guard.check_literal(url)
    for url in ("http://127.0.0.2/", "http://10.2.0.1/", "http://[fc00::1]/", "ftp://127.0.0.1/"):
        with pytest.raises(UnsafeURL):
            guard.check_literal(url)


def _local_name() -> tuple[str, list[str]]:
    """This machine's host name and the addresses the resolver gives it (from /etc/hosts)."""
    name = socket.gethostname()
    try:
        infos = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
    except OSError:
        pytest.skip(f"{name} does not resolve here")
    return name, sorted({str(i[4][0]) for i in infos})


async def test_names_resolving_to_local_addresses_are_refused_at_delivery() -> None:
    name, addresses = _local_name()
    assert all(ipaddress.ip_address(a).is_private for a in addresses)  # loopback or LAN
    SsrfGuard().check_literal(f"http://{name}/hook")  # a name: fine without DNS...
    with pytest.raises(UnsafeURL, match="resolves to"):
        await SsrfGuard().check(f"http://{name}/hook")  # ...refused once resolved
    with pytest.raises(UnsafeURL, match="loopback"):
        await SsrfGuard().check("http://localhost:8080/hook")
    # Allowed by name: connect by name. Allowed by address: connect to the address checked.
    assert await SsrfGuard([name.upper()]).check(f"http://{name}/hook") is None
    networks = [str(ipaddress.ip_network(a)) for a in addresses]
    pinned = await SsrfGuard(networks).check(f"http://{name}:8080/hook")
    assert pinned in addresses


def test_a_pinned_url_keeps_port_path_query_and_host_header() -> None:
    url, host = pinned_url("https://user:pw@crm.example.com:8443/hooks/a?x=1", "203.0.113.7")
    assert url == "https://203.0.113.7:8443/hooks/a?x=1" and host == "crm.example.com:8443"
    url, host = pinned_url("http://crm.example.com/h", "2001:db8::1")
    assert url == "http://[2001:db8::1]/h" and host == "crm.example.com"


async def test_public_literals_pass_at_delivery_without_dns() -> None:
    await SsrfGuard().check("https://8.8.8.8/hook")
    with pytest.raises(UnsafeURL):
        await SsrfGuard().check("http://[::ffff:7f00:1]/hook")


async def test_an_unresolvable_name_is_retryable_not_unsafe() -> None:
    with pytest.raises(UnresolvedHost):
        await SsrfGuard().check("https://no-such-host.invalid/hook")
