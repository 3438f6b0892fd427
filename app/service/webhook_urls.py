"""Which webhook URLs vidledger may post to (SSRF).

Only `http` and `https`, and only to public addresses: loopback, private,
link-local (the cloud metadata address among them), multicast, reserved
and unspecified addresses, and their IPv6 and IPv4-mapped forms, are
refused unless an allowed network (`VIDLEDGER_WEBHOOK_ALLOWED_NETWORKS`)
contains them. A name is checked by every address it resolves to, at
registration and again at every send: a name that resolves elsewhere later
(DNS rebinding) is caught when it matters.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: Shared address space (carrier-grade NAT): not private to `ipaddress`, not public either.
_SHARED = ipaddress.ip_network("100.64.0.0/10")


class RefusedUrl(ValueError):
    """A URL vidledger will not post to; the message says why, without secrets."""


@dataclass(frozen=True)
class Target:
    """Where a checked URL goes: its host (for the Host header and TLS) and
    the addresses it was checked at, to connect to one of them."""

    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]


def parse_networks(text: str) -> tuple[Network, ...]:
    """`VIDLEDGER_WEBHOOK_ALLOWED_NETWORKS`: comma-separated CIDRs. Raises ValueError."""
    return tuple(ipaddress.ip_network(part.strip()) for part in text.split(",") if part.strip())


@functools.lru_cache(maxsize=4096)
def _refused(address: IPAddress) -> str | None:
    """Why `address` is not public, or None. Cached: a pure function, asked at every send."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for what, hit in (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("private", address.is_private),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("unspecified", address.is_unspecified),
        ("shared", isinstance(address, ipaddress.IPv4Address) and address in _SHARED),
    ):
        if hit:
            return what
    return None


def check(url: str, allowed: Sequence[Network] = ()) -> Target:
    """The target of `url` if vidledger may post there. Raises `RefusedUrl`."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise RefusedUrl("not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise RefusedUrl("only http:// and https:// URLs are allowed")
    host = parts.hostname
    if not host:
        raise RefusedUrl("the URL has no host")
    if parts.username or parts.password:
        raise RefusedUrl("the URL must not carry a user name or password")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        found = [literal]
    else:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            raise RefusedUrl(f"the host {host!r} does not resolve") from None
        found = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    for address in found:
        why = _refused(address)
        if why is not None and not _allowed(address, tuple(allowed)):
            raise RefusedUrl(f"{host} is a {why} address ({address}); only public addresses")
    return Target(parts.scheme, host, port, tuple(dict.fromkeys(str(a) for a in found)))


@functools.lru_cache(maxsize=4096)
def _allowed(address: IPAddress, allowed: tuple[Network, ...]) -> bool:
    return any(address in network for network in allowed)
