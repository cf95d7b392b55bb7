"""source/storage/network.py: which addresses a fetch may connect to, checked on the address actually connected to.

Real requests against real servers on 127.0.0.1; the policy under test is the only thing deciding.
"""

from __future__ import annotations

import ipaddress
import time

import httpx
import pytest

from source.storage.network import AddressNotAllowed, NetworkPolicy, guarded_client, is_public_address


def _get(policy: NetworkPolicy, url: str) -> httpx.Response:
    with guarded_client(policy, connect_seconds=2, stall_seconds=2) as client:
        return client.get(url)


def _port(server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def test_loopback_is_refused_by_default_with_a_message_that_says_how_to_allow_it(http_server) -> None:
    http_server.serve("GET", "/a.png", http_server.reply(b"png"))

    with pytest.raises(AddressNotAllowed) as caught:
        _get(NetworkPolicy(), f"{http_server.url}/a.png")

    assert "127.0.0.1" in str(caught.value) and "--allow-private-urls" in str(caught.value)
    assert http_server.requests == []  # refused before connecting


def test_loopback_is_allowed_when_the_operator_allows_private_addresses(http_server) -> None:
    http_server.serve("GET", "/a.png", http_server.reply(b"png"))
    assert _get(NetworkPolicy(allow_private=True), f"{http_server.url}/a.png").content == b"png"


def test_a_trusted_host_is_allowed_on_a_private_address_and_only_that_host(http_server) -> None:
    http_server.serve("GET", "/a.png", http_server.reply(b"png"))
    policy = NetworkPolicy(trusted_hosts=frozenset({"127.0.0.1"}))

    assert _get(policy, f"{http_server.url}/a.png").content == b"png"
    with pytest.raises(AddressNotAllowed, match="localhost"):
        _get(policy, f"http://localhost:{_port(http_server)}/a.png")


def test_a_name_that_resolves_to_loopback_is_refused_at_connect_time(http_server) -> None:
    # The DNS-rebinding shape: the URL holds a name, not an IP literal, so only the connect-time check can see where
    # it leads. With a trust for exactly that name, the same request goes through (to the resolved address).
    http_server.serve("GET", "/a.png", http_server.reply(b"png"))
    url = f"http://localhost:{_port(http_server)}/a.png"

    with pytest.raises(AddressNotAllowed, match="localhost resolves to no public address"):
        _get(NetworkPolicy(), url)
    assert http_server.requests == []
    assert _get(NetworkPolicy(trusted_hosts=frozenset({"LOCALHOST."})), url).content == b"png"


@pytest.mark.parametrize(
    "host",
    ["[::1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "169.254.169.254", "10.1.2.3", "100.64.0.1", "0.0.0.0"],
)
def test_private_and_special_addresses_are_refused_without_any_network_traffic(host: str) -> None:
    started = time.monotonic()
    with pytest.raises(AddressNotAllowed):
        # 10.x and 169.254.x would hang until the connect timeout if a connection were attempted.
        with guarded_client(NetworkPolicy(), connect_seconds=5, stall_seconds=5) as client:
            client.get(f"http://{host}:8080/latest/meta-data/")
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.215.14", True),
        ("2606:4700::6810:85e5", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),  # shared address space (carrier-grade NAT)
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("ff02::1", False),
        ("::ffff:10.0.0.1", False),  # IPv4-mapped
        ("::ffff:8.8.8.8", True),
        ("2002:7f00:1::", False),  # 6to4 around 127.0.0.1
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 around 169.254.169.254
        ("::7f00:1", False),  # IPv4-compatible (deprecated), reserved
    ],
)
def test_public_addresses(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


def test_other_schemes_are_not_fetched_by_the_client() -> None:
    with pytest.raises(httpx.UnsupportedProtocol):
        _get(NetworkPolicy(allow_private=True), "file:///etc/passwd")


def test_the_client_does_not_follow_redirects_itself(http_server) -> None:
    http_server.serve("GET", "/old", http_server.redirect("/new"))
    http_server.serve("GET", "/new", http_server.reply(b"moved"))

    response = _get(NetworkPolicy(allow_private=True), f"{http_server.url}/old")

    assert response.status_code == 302 and http_server.hits("GET", "/new") == 0


def test_no_proxy_is_taken_from_the_environment(http_server, monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy would connect on the worker's behalf, out of the policy's sight.
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://10.9.9.9:3128")
    monkeypatch.setenv("ALL_PROXY", "http://10.9.9.9:3128")
    http_server.serve("GET", "/a.png", http_server.reply(b"png"))
    assert _get(NetworkPolicy(allow_private=True), f"{http_server.url}/a.png").content == b"png"


def test_the_deadline_ends_a_server_that_drips_its_headers(http_server) -> None:
    # Each byte comes well within the stall timeout; only the overall deadline can end this.
    head = b"HTTP/1.1 200 OK\r\nX-Padding: " + b"a" * 200
    http_server.serve("GET", "/slow-headers", http_server.streamed(http_server.drip(head, 0.05), raw=True))
    started = time.monotonic()

    with pytest.raises(httpx.TimeoutException):
        with guarded_client(
            NetworkPolicy(allow_private=True), connect_seconds=1, stall_seconds=1, deadline=time.monotonic() + 0.5
        ) as client:
            client.get(f"{http_server.url}/slow-headers")

    assert time.monotonic() - started < 3  # the drip alone would take 10 s
