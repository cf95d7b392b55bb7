"""Which hosts the worker may fetch from, enforced where the connection is made.

URLs come from payloads written by other people's apps. Without a policy, a payload could make the worker fetch
from this machine or its private network (cloud metadata at 169.254.169.254, a database admin page on 10.x) and put
what it read into a video. Checking the URL's host before the request is not enough: a name can resolve to a public
address when checked and to 127.0.0.1 when connected (DNS rebinding). So the check runs inside httpcore's network
backend, on the very address the socket connects to; TLS still verifies the certificate against the name.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import httpcore
import httpx

ALLOWED_SCHEMES = frozenset({"http", "https"})
ALLOW_PRIVATE_FLAG = "--allow-private-urls"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# NAT64 (RFC 6052): an IPv4 address embedded in IPv6, reachable through a translating gateway.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _normalize_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def is_public_address(address: IPAddress) -> bool:
    """True for an address on the public internet; False for private, loopback, link-local, multicast, reserved,
    unspecified and shared (100.64/10) ones, also when an IPv4 one hides inside IPv6 (mapped, 6to4, NAT64)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(embedded)
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(_normalize_host(host))
    except ValueError:
        return None


class AddressNotAllowed(Exception):
    """The policy refused a host: it is, or resolves only to, a non-public address. Never worth retrying."""

    def __init__(self, host: str, *, is_literal: bool) -> None:
        what = "is not a public address" if is_literal else "resolves to no public address"
        super().__init__(
            f"{host} {what}; the worker fetches only from public addresses unless the operator starts it "
            f"with {ALLOW_PRIVATE_FLAG} (or trusts this host)"
        )
        self.host = host


@dataclass(frozen=True)
class NetworkPolicy:
    """Where fetches may connect. `trusted_hosts` are hosts the operator configured (HF_ENDPOINT's, SUPABASE_URL's):
    allowed even on a private address. `allow_private` opens every private address (a home or test setup)."""

    allow_private: bool = False
    trusted_hosts: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        object.__setattr__(self, "trusted_hosts", frozenset(_normalize_host(host) for host in self.trusted_hosts))

    def trusting(self, hosts: Iterable[str]) -> NetworkPolicy:
        """This policy with `hosts` trusted too."""
        return NetworkPolicy(self.allow_private, self.trusted_hosts | frozenset(hosts))

    def trusts(self, host: str) -> bool:
        return _normalize_host(host) in self.trusted_hosts

    def allows(self, host: str, address: IPAddress) -> bool:
        return self.allow_private or self.trusts(host) or is_public_address(address)


class _DeadlineStream(httpcore.NetworkStream):
    """A socket stream whose every wait ends by `deadline` (time.monotonic()): a server that drips its headers or
    its TLS handshake cannot outlast the fetch, though each wait alone stays under the stall timeout."""

    def __init__(self, stream: httpcore.NetworkStream, deadline: float) -> None:
        self._stream = stream
        self._deadline = deadline

    def _wait(self, timeout: float | None, expired: type[Exception]) -> float | None:
        return _time_left(timeout, self._deadline, expired)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._wait(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._wait(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        wait = self._wait(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, wait), self._deadline)

    def get_extra_info(self, info: str) -> object:
        return self._stream.get_extra_info(info)


def _time_left(timeout: float | None, deadline: float | None, expired: type[Exception]) -> float | None:
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise expired("the fetch's deadline has passed")
    return left if timeout is None else min(timeout, left)


class _PolicyBackend(httpcore.NetworkBackend):
    """httpcore's plain socket backend, except that it resolves the host itself and connects only to addresses the
    policy allows (an IP literal is judged without any network traffic), and that no wait outlasts `deadline`."""

    def __init__(self, policy: NetworkPolicy, deadline: float | None) -> None:
        self._policy = policy
        self._deadline = deadline
        self._sockets = httpcore.SyncBackend()

    def _allowed_addresses(self, host: str, port: int) -> list[str]:
        literal = _ip_literal(host)
        if literal is not None:
            candidates = [literal]
        else:
            try:
                # No timeout of its own: the system resolver's (a few seconds per server) bounds it.
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError) as error:
                raise httpcore.ConnectError(f"cannot resolve {host}: {error}") from None
            candidates = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
        allowed = [str(address) for address in candidates if self._policy.allows(host, address)]
        if not allowed:
            raise AddressNotAllowed(host, is_literal=literal is not None)
        return allowed

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        last_error: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in self._allowed_addresses(host, port):
            try:
                wait = _time_left(timeout, self._deadline, httpcore.ConnectTimeout)
                stream = self._sockets.connect_tcp(address, port, wait, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                last_error = error
                continue
            return stream if self._deadline is None else _DeadlineStream(stream, self._deadline)
        assert last_error is not None  # _allowed_addresses never returns an empty list
        raise last_error

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not fetched from")

    def sleep(self, seconds: float) -> None:
        self._sockets.sleep(seconds)


class _GuardedTransport(httpx.HTTPTransport):
    """httpx's own transport (request mapping, error mapping, TLS) over a pool whose backend applies the policy."""

    def __init__(self, policy: NetworkPolicy, *, limits: httpx.Limits, deadline: float | None) -> None:
        # Certificates as httpx finds them (certifi, or the operator's SSL_CERT_FILE / SSL_CERT_DIR).
        ssl_context = httpx.create_ssl_context()
        super().__init__(verify=ssl_context, trust_env=False, limits=limits)
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_PolicyBackend(policy, deadline),
        )


def guarded_client(
    policy: NetworkPolicy, *, connect_seconds: float, stall_seconds: float, deadline: float | None = None
) -> httpx.Client:
    """An httpx client that connects only where `policy` allows, never through a proxy from the environment, and
    never follows a redirect by itself (the caller checks each hop).

    `stall_seconds` bounds each wait for data (and for a free connection); `connect_seconds` each connection;
    `deadline` (a time.monotonic() value), if given, every wait of every request the client makes.
    """
    limits = httpx.Limits(max_connections=10, max_keepalive_connections=5)
    return httpx.Client(
        transport=_GuardedTransport(policy, limits=limits, deadline=deadline),
        timeout=httpx.Timeout(stall_seconds, connect=connect_seconds),
        follow_redirects=False,
        trust_env=False,
    )
