"""Real HTTP servers on 127.0.0.1 for the tests: a programmable one, and a fake Hugging Face Hub built on it.

The real Hub (huggingface.co) cannot be reached from here, so `FakeHub` speaks the part of the Hub API that the real
`huggingface_hub` client (2.x) uses to download: repo info, the recursive tree listing and the per-file resolve
endpoint. Tests run the real client code against it; nothing in the client is mocked.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit


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
    # The body sent piece by piece as the iterable yields (called afresh for each reply): chunked unless `headers`
    # give a Content-Length. With `raw`, the pieces are the whole response, status line and headers included.
    stream: Callable[[], Iterable[bytes]] | None = None
    raw: bool = False


Route = Callable[[Request], Reply]


class LocalServer:
    """A real HTTP server on 127.0.0.1 whose routes each test programs, recording every request it receives."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Route] = {}
        self.fallback: Route | None = None  # answers any request no route matches
        self.requests: list[Request] = []
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # a reply's headers and body go out at once, not 40 ms apart

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
                if reply.stream is not None:
                    self._send_streamed(reply)
                    return
                self.send_response(reply.status)
                headers = {"Content-Length": str(len(reply.body)), **reply.headers}
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(reply.body)

            def _send_streamed(self, reply: Reply) -> None:
                assert reply.stream is not None
                self.close_connection = True  # a body cut short must not leave the connection reusable
                chunked = not reply.raw and not any(key.lower() == "content-length" for key in reply.headers)
                try:
                    if not reply.raw:
                        self.send_response(reply.status)
                        for key, value in reply.headers.items():
                            self.send_header(key, value)
                        if chunked:
                            self.send_header("Transfer-Encoding", "chunked")
                        self.end_headers()
                        if self.command == "HEAD":
                            return
                    for piece in reply.stream():
                        if server.release.is_set():
                            return
                        if piece:
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                    if chunked:
                        self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):  # the client gave up: what streams test for
                    return

            do_GET = do_HEAD = do_POST = do_PUT = _handle

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        self._thread.start()

    @staticmethod
    def reply(body: bytes = b"", status: int = 200, *, hang: bool = False, **headers: str) -> Reply:
        return Reply(status=status, body=body, headers=headers, hang=hang)

    @staticmethod
    def redirect(location: str, status: int = 302, **headers: str) -> Reply:
        return Reply(status=status, headers={"Location": location, **headers})

    @staticmethod
    def streamed(
        pieces: Callable[[], Iterable[bytes]], status: int = 200, *, raw: bool = False, **headers: str
    ) -> Reply:
        """A reply whose body is sent as `pieces()` yields (chunked unless a Content-Length header is given); with
        `raw`, the pieces are the whole response, status line and headers included."""
        return Reply(status=status, headers=headers, stream=pieces, raw=raw)

    def endless(self, piece: bytes = b"\0" * 65536) -> Callable[[], Iterator[bytes]]:
        """Pieces for `streamed`: `piece` again and again until the client hangs up or the server stops."""

        def pieces() -> Iterator[bytes]:
            while not self.release.is_set():
                yield piece

        return pieces

    def drip(self, data: bytes, every: float, *, then_hang: bool = False) -> Callable[[], Iterator[bytes]]:
        """Pieces for `streamed`: `data` one byte every `every` seconds (then, with `then_hang`, silence until the
        server stops), the way a hostile or broken server holds a client."""

        def pieces() -> Iterator[bytes]:
            for value in data:
                if self.release.wait(every):
                    return
                yield bytes([value])
            if then_hang:
                self.release.wait(timeout=30)

        return pieces

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


# Files the Hub keeps in Git LFS (their ETag is the sha256 of the content, not the git blob id).
_LFS_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".gguf")
_LFS_MIN_SIZE = 10 * 1024 * 1024


@dataclass(frozen=True)
class _HubFile:
    path: Path
    size: int
    blob_id: str  # git blob sha1, as in the tree listing's "oid"
    sha256: str | None  # set for LFS files

    @property
    def etag(self) -> str:
        return self.sha256 or self.blob_id


class FakeHub(LocalServer):
    """A local stand-in for the Hugging Face Hub: the real Hub cannot be reached here, so this server speaks its API.

    Point the client at it with HF_ENDPOINT (see the `fake_hub` fixture). Tests either program single routes (as on
    `LocalServer`) or publish a whole folder with `add_repo`, which answers, as the Hub does:

    - `GET /api/models/{repo_id}/revision/{revision}`: repo info (`sha` = the commit, `siblings` = every file);
    - `GET /api/models/{repo_id}/tree/{revision}?recursive=...`: every file (path, size, oid, lfs) and folder;
    - `HEAD`/`GET /{repo_id}/resolve/{revision}/{path}`: the file, with `X-Repo-Commit`, `ETag` and
      `Content-Length` (LFS files are served directly, not through a CDN redirect);
    - for a repo it does not hold: 404 with `X-Error-Code: RepoNotFound`; for a missing file of a repo it holds:
      404 with `X-Error-Code: EntryNotFound` (a bare 404 would read to the client as "Hub unreachable").

    `revision` may be the branch name given to `add_repo` or the commit it returns.
    """

    def __init__(self) -> None:
        super().__init__()
        self._repos: dict[str, str] = {}  # repo id -> commit
        self.fallback = self._not_found

    def add_repo(self, repo_id: str, folder: Path, *, revision: str = "main") -> str:
        """Publish every file under `folder` as repo `repo_id` at `revision`; return the (fake) commit sha."""
        files: dict[str, _HubFile] = {}
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                content = path.read_bytes()
                is_lfs = path.suffix in _LFS_SUFFIXES or len(content) >= _LFS_MIN_SIZE
                files[path.relative_to(folder).as_posix()] = _HubFile(
                    path=path,
                    size=len(content),
                    blob_id=hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest(),
                    sha256=hashlib.sha256(content).hexdigest() if is_lfs else None,
                )
        commit = hashlib.sha1("\n".join(f"{name} {file.etag}" for name, file in files.items()).encode()).hexdigest()
        self._repos[repo_id] = commit
        folders = sorted({parent.as_posix() for name in files for parent in Path(name).parents if parent.name})

        info = {
            "_id": commit[:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit,
            "lastModified": "2025-01-01T00:00:00.000Z",
            "private": False,
            "disabled": False,
            "gated": False,
            "library_name": "diffusers",
            "tags": ["diffusers"],
            "siblings": [{"rfilename": name} for name in files],
        }
        tree = [
            {"type": "directory", "oid": hashlib.sha1(name.encode()).hexdigest(), "size": 0, "path": name}
            for name in folders
        ]
        for name, file in files.items():
            entry: dict[str, object] = {"type": "file", "oid": file.blob_id, "size": file.size, "path": name}
            if file.sha256 is not None:
                entry["lfs"] = {"oid": file.sha256, "size": file.size, "pointerSize": 134}
            tree.append(entry)
        json_headers = {"Content-Type": "application/json"}
        for ref in (revision, commit):
            self.serve(
                "GET",
                f"/api/models/{repo_id}/revision/{quote(ref, safe='')}",
                Reply(200, json.dumps(info).encode(), json_headers),
            )
            self.serve(
                "GET",
                f"/api/models/{repo_id}/tree/{quote(ref, safe='')}",
                Reply(200, json.dumps(tree).encode(), json_headers),
            )
            for name, file in files.items():
                self.route(
                    "GET", f"/{repo_id}/resolve/{quote(ref, safe='')}/{quote(name)}", self._file_route(file, commit)
                )
        return commit

    def file_requests(self, repo_id: str, method: str = "GET") -> list[str]:
        """Paths in `repo_id` that a client sent `method` for on the resolve endpoint, in request order. GET fetches
        the content; HEAD only asks for the metadata (a client skips the GET when it already holds that blob)."""
        prefix = f"/{repo_id}/resolve/"
        paths = []
        for request in self.requests:
            url_path = urlsplit(request.path).path
            if request.method == method and url_path.startswith(prefix):
                _revision, _, file_path = url_path.removeprefix(prefix).partition("/")
                paths.append(unquote(file_path))
        return paths

    @staticmethod
    def _file_route(file: _HubFile, commit: str) -> Route:
        def answer(_request: Request) -> Reply:
            headers = {
                "X-Repo-Commit": commit,
                "ETag": f'"{file.etag}"',
                "Content-Type": "application/octet-stream",
                "Accept-Ranges": "bytes",
            }
            return Reply(200, file.path.read_bytes(), headers)

        return answer

    def _not_found(self, request: Request) -> Reply:
        url_path = unquote(urlsplit(request.path).path)
        is_api = url_path.startswith("/api/models/")
        repo_id = "/".join(url_path.removeprefix("/api/models/").strip("/").split("/")[:2])
        commit = self._repos.get(repo_id)
        if commit is None:
            headers = {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}
            return Reply(404, b'{"error":"Repository not found"}', {"Content-Type": "application/json", **headers})
        if is_api:
            headers = {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"}
            return Reply(404, b'{"error":"Invalid rev id"}', {"Content-Type": "application/json", **headers})
        return Reply(404, b"Entry not found", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit})
