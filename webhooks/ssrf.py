"""The SSRF guard: webhook URLs must not reach private, loopback, link-local or otherwise
special addresses, unless an allowlist entry (host name or CIDR) names them.

Two checks: `check_literal` when an assistant is saved (scheme, host name, IP literals;
no DNS), and `check` before each delivery, which also resolves the host name.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

from webhooks.errors import UnresolvedHost, UnsafeURL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: an IPv4 address in the last 32 bits
# What inet_aton reads as an IPv4 address although ipaddress does not: 127.1, 0x7f.1,
# 2130706433, 0177.0.0.1 (the C library's legacy forms, which resolvers honour).
_LEGACY_IPV4 = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$", re.IGNORECASE)


def _refused(ip: IPAddress) -> str | None:
    """Why a webhook may not reach `ip`, or None if it is a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv6 forms that carry an IPv4 address reach that address.
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return _refused(embedded)
    for label, flag in (
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("private", ip.is_private),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("unspecified", ip.is_unspecified),
        ("non-public", not ip.is_global),  # e.g. 100.64/10 (carrier-grade NAT)
    ):
        if flag:
            return label
    return None


def _literal(host: str) -> IPAddress | None:
    """The address an IP-literal host names (legacy IPv4 forms too), or None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _LEGACY_IPV4.match(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _is_localhost(host: str) -> bool:
    # RFC 6761: "localhost" and every name under it are loopback.
    return host in ("localhost", "localhost.localdomain") or host.endswith(".localhost")


def _is_network(value: str) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


class SsrfGuard:
    """Checks webhook URLs against the address rules and the allowlist."""

    def __init__(self, allow: Sequence[str] = ()) -> None:
        self._hosts = {_normal(a) for a in allow if not _is_network(a)}
        self._networks = [ipaddress.ip_network(a, strict=False) for a in allow if _is_network(a)]

    def _allowed(self, host: str, ip: IPAddress | None) -> bool:
        if host in self._hosts:
            return True
        return ip is not None and any(ip in net for net in self._networks)

    def _split(self, url: str) -> tuple[str, int]:
        """The normalised host and the port of an http(s) URL, or `UnsafeURL`."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise UnsafeURL(f"not a valid URL: {exc}") from exc
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UnsafeURL("webhook URLs are http(s) URLs with a host")
        return _normal(parts.hostname), port or (443 if parts.scheme == "https" else 80)

    def check_literal(self, url: str) -> None:
        """What can be checked without DNS: scheme, host, and an IP-literal host's address."""
        host, _ = self._split(url)
        if _is_localhost(host) and not self._allowed(host, None):
            raise UnsafeURL(f"{host} is a loopback address")
        ip = _literal(host)
        if ip is None:
            return
        reason = _refused(ip)
        if reason and not self._allowed(host, ip):
            raise UnsafeURL(f"{host} is a {reason} address")

    async def check(self, url: str) -> str | None:
        """Resolve the host and refuse if any of its addresses is refused; return the
        address to connect to (None: connect to the URL as it is, an IP literal or a host
        the allowlist names). Connecting to the checked address, not to the name again,
        is what keeps a DNS answer that changes in between (rebinding) out."""
        self.check_literal(url)
        host, port = self._split(url)
        if host in self._hosts or _literal(host) is not None:
            return None  # allowed by name, or an IP literal check_literal has judged
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise UnresolvedHost(f"cannot resolve {host}: {exc}") from exc
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
        for ip in addresses:
            reason = _refused(ip)
            if reason and not self._allowed(host, ip):
                raise UnsafeURL(f"{host} resolves to {ip}, a {reason} address")
        if not addresses:
            raise UnresolvedHost(f"{host} resolved to no address")
        return str(addresses[0])


def pinned_url(url: str, address: str) -> tuple[str, str]:
    """`url` with its host replaced by the checked `address`, and the Host header value
    that keeps the request what it was (TLS gets the name through SNI, see the outbox)."""
    parts = urlsplit(url)
    netloc = f"[{address}]" if ":" in address else address
    if parts.port is not None:
        netloc += f":{parts.port}"
    host_header = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=netloc).geturl(), host_header


def _normal(host: str) -> str:
    return host.lower().rstrip(".")
