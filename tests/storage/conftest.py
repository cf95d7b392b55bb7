"""A real HTTP server on 127.0.0.1 whose routes each test programs, recording every request it receives."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # as sent, still percent-encoded, query included
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False  # never answer: hold the connection until the server stops (a stalled peer)


Route = Callable[[Request], Reply]


class LocalServer:
    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Route] = {}
        self.fallback: Route | None = None  # answers any request no route matches
        self.requests: list[Request] = []
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # keep pytest output quiet
                return

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = Request(
                    self.command, self.path, {key.lower(): value for key, value in self.headers.items()}, body
                )
                server.requests.append(request)
                route = server.routes.get((self.command, urlsplit(self.path).path))
                if route is None and self.command == "HEAD":
                    route = server.routes.get(("GET", urlsplit(self.path).path))
                route = route or server.fallback
                reply = route(request) if route is not None else Reply(404, b"not found")
                if reply.hang:
                    server.release.wait(timeout=30)
                    return
                self.send_response(reply.status)
                headers = {"Content-Length": str(len(reply.body)), **reply.headers}
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(reply.body)

            do_GET = do_HEAD = do_POST = do_PUT = _handle

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @staticmethod
    def reply(body: bytes = b"", status: int = 200, *, hang: bool = False, **headers: str) -> Reply:
        return Reply(status=status, body=body, headers=headers, hang=hang)

    def route(self, method: str, path: str, handler: Route) -> None:
        self.routes[(method, path)] = handler

    def serve(self, method: str, path: str, *replies: Reply) -> None:
        """Answer `method path` with `replies` in turn, repeating the last one."""
        queue = list(replies)

        def handler(_request: Request) -> Reply:
            return queue.pop(0) if len(queue) > 1 else queue[0]

        self.route(method, path, handler)

    def hits(self, method: str, path: str) -> int:
        return sum(1 for request in self.requests if request.method == method and urlsplit(request.path).path == path)

    def stop(self) -> None:
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def http_server() -> Iterator[LocalServer]:
    server = LocalServer()
    try:
        yield server
    finally:
        server.stop()
