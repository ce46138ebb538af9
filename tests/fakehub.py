"""A local stand-in for the Hugging Face Hub and for release-URL hosts, for tests.

Serves in-memory files on 127.0.0.1 from a thread:
- plain files at `/files/<name>` (GET/HEAD, `Range: bytes=N-` resume), and
- hub files at `/<repo>/resolve/<revision>/<path>` with the headers that
  huggingface_hub's `get_hf_file_metadata` / `hf_hub_download` read:
  `X-Repo-Commit`, `ETag` (git blob sha1, or the sha256 for LFS files) and, for
  LFS files, `X-Linked-Etag` / `X-Linked-Size`; unknown files answer 404 with
  `X-Error-Code: EntryNotFound`.

Faults are per file: `cut_after` (send that many body bytes, then close the
connection although Content-Length promised more) for the first `cut_times`
responses (None = every time), `advertised_sha256` (claim a hash that the
bytes do not have) and `chunk_delay` (a slow link). Every request is logged in `requests` for assertions.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote


@dataclass
class FakeFile:
    data: bytes
    lfs: bool = True
    cut_after: int | None = None
    cut_times: int | None = None
    advertised_sha256: str | None = None
    chunk_delay: float = 0.0  # seconds to pause after each 256 KiB sent (a slow link)
    cuts_done: int = 0

    @property
    def sha256(self) -> str:
        return self.advertised_sha256 or hashlib.sha256(self.data).hexdigest()

    @property
    def git_sha1(self) -> str:
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    authorization: str | None = None  # the Authorization header, e.g. "Bearer <HF_TOKEN>"


@dataclass
class FakeHub:
    files: dict[str, FakeFile] = field(default_factory=dict)
    repos: dict[str, str] = field(default_factory=dict)  # repo -> commit hash
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self):
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- setup ---------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add_url_file(self, name: str, data: bytes, **faults) -> str:
        """Serve `data` at /files/<name>; returns its full URL."""
        self.files[f"/files/{name}"] = FakeFile(data, **faults)
        return f"{self.url}/files/{quote(name)}"

    def add_hub_file(self, repo: str, filename: str, data: bytes, lfs: bool = True, **faults) -> FakeFile:
        commit = self.repos.setdefault(repo, hashlib.sha1(repo.encode()).hexdigest())
        f = FakeFile(data, lfs=lfs, **faults)
        for rev in ("main", commit):
            self.files[f"/{repo}/resolve/{rev}/{filename}"] = f
        return f

    def range_requests(self, path_suffix: str) -> list[Request]:
        return [r for r in self.requests if r.method == "GET" and r.range and r.path.endswith(path_suffix)]

    def gets(self, path_suffix: str) -> list[Request]:
        return [r for r in self.requests if r.method == "GET" and r.path.endswith(path_suffix)]

    # ---- lifecycle -----------------------------------------------------------
    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fakehub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeHub

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        path = unquote(self.path.split("?", 1)[0])
        with self.fake._lock:
            self.fake.requests.append(Request(self.command, path, self.headers.get("Range"),
                                              self.headers.get("Authorization")))
            f = self.fake.files.get(path)
        m = _RESOLVE.match(path)
        if f is None:
            self.send_response(404)
            if m:
                known_repo = m.group("repo") in self.fake.repos
                self.send_header("X-Error-Code", "EntryNotFound" if known_repo else "RepoNotFound")
                if known_repo:
                    self.send_header("X-Repo-Commit", self.fake.repos[m.group("repo")])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return

        total = len(f.data)
        start = 0
        rng = self.headers.get("Range")
        status = 200
        if rng and not head:
            rm = re.fullmatch(r"bytes=(\d+)-", rng.strip())
            if rm:
                start = int(rm.group(1))
                if start >= total:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{total}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
        body = f.data[start:]

        self.send_response(status)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
        if m:
            self.send_header("X-Repo-Commit", self.fake.repos[m.group("repo")])
            if f.lfs:
                self.send_header("ETag", f'"{f.sha256}"')
                self.send_header("X-Linked-Etag", f'"{f.sha256}"')
                self.send_header("X-Linked-Size", str(total))
            else:
                self.send_header("ETag", f'"{f.git_sha1}"')
        self.end_headers()
        if head:
            return

        with self.fake._lock:
            cut = f.cut_after is not None and (f.cut_times is None or f.cuts_done < f.cut_times)
            if cut:
                f.cuts_done += 1
        if cut:
            self.wfile.write(body[: f.cut_after])
            self.wfile.flush()
            self.close_connection = True
            return
        if f.chunk_delay:
            for i in range(0, len(body), 1 << 18):
                self.wfile.write(body[i:i + (1 << 18)])
                self.wfile.flush()
                time.sleep(f.chunk_delay)
            return
        self.wfile.write(body)
