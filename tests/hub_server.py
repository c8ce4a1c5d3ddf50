"""A Hub-compatible HTTP server on loopback, for tests that push to and pull from "the Hub" without a network.

It implements the subset of the Hugging Face Hub API that ``huggingface_hub`` 2.x uses for:

- ``create_repo``: ``POST /api/repos/create`` (409 with the repo URL when it exists, as the Hub answers);
- ``create_branch``: ``POST /api/models/{repo}/branch/{branch}``;
- ``create_commit`` / ``upload_folder``: ``POST /api/validate-yaml`` (README metadata check),
  ``POST /api/models/{repo}/preupload/{rev}`` (always answers ``uploadMode: "regular"``, so the client sends the
  content inline, base64, in the NDJSON commit payload and never tries Xet or LFS), and
  ``POST /api/models/{repo}/commit/{rev}`` (the NDJSON payload: a header line, then ``file`` / ``deletedFile`` /
  ``deletedFolder`` lines; ``lfsFile`` lines are refused because no LFS upload was offered);
- ``model_info`` / ``repo_info``: ``GET /api/models/{repo}`` and ``GET /api/models/{repo}/revision/{rev}``;
- ``list_repo_files`` / ``list_repo_tree`` (also used by ``snapshot_download``): ``GET /api/models/{repo}/tree/{rev}``;
- ``hf_hub_download``: ``HEAD`` and ``GET /{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, ``ETag`` and
  ``Content-Length``; misses answer 404 with the ``X-Error-Code`` the client maps to its exceptions
  (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``).

Files are stored content-addressed in a temporary folder; commits are immutable snapshots ``path -> blob``.
Authentication is not checked. Every request is recorded in :attr:`HubServer.requests`.

Usage::

    with HubServer(tmp_path) as hub:
        api = HfApi(endpoint=hub.url, token="hf_test")
        api.create_repo("tester/model")
        ...
        hub.files("tester/model")  # {"config.json": b"...", ...}
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_USER = "tester"
TEST_TOKEN = "hf_test_token"  # any token passes: the server does not check authentication
_REPO = r"(?P<repo>[^/]+/[^/]+)"
_ROUTES: list[tuple[str, re.Pattern, str]] = [
    ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("GET", re.compile(r"^/api/whoami-v2$"), "whoami"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/commit/(?P<rev>[^/]+)$"), "commit"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/branch/(?P<rev>[^/]+)$"), "create_branch"),
    ("GET", re.compile(rf"^/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?$"), "model_info"),
    ("GET", re.compile(rf"^/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$"), "tree"),
    ("GET", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
    ("HEAD", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
]


def git_blob_oid(content: bytes) -> str:
    """The git object id of a blob (what the Hub reports as a regular file's ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class _Repo:
    private: bool
    commits: dict[str, dict[str, str]] = field(default_factory=dict)  # sha -> {path: blob oid}
    refs: dict[str, str] = field(default_factory=dict)  # branch -> sha
    log: list[tuple[str, str, str]] = field(default_factory=list)  # (branch, sha, summary), oldest first


class _HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class HubServer:
    """The loopback Hub. Use as a context manager; :attr:`url` is the endpoint to give ``huggingface_hub``.

    Args:
        storage: folder for the uploaded blobs (e.g. pytest's ``tmp_path``).
    """

    def __init__(self, storage: str | Path) -> None:
        self.storage = Path(storage) / "hub_blobs"
        self.storage.mkdir(parents=True, exist_ok=True)
        self.repos: dict[str, _Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> HubServer:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="hub-server", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------------------------------------ inspection
    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The content of every file of ``repo_id`` at ``revision``."""
        repo = self.repos[repo_id]
        sha = self._resolve(repo, revision)
        return {path: self._read_blob(oid) for path, oid in repo.commits[sha].items()}

    def materialize(self, repo_id: str, dest: str | Path, revision: str = "main") -> Path:
        """Write the repo's files at ``revision`` into ``dest`` (a local copy of what a download would give)."""
        dest = Path(dest)
        for path, content in self.files(repo_id, revision).items():
            target = dest / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        return dest

    def commit_messages(self, repo_id: str, branch: str = "main") -> list[str]:
        """Summaries of the commits pushed to ``branch`` of ``repo_id``, oldest first."""
        return [summary for b, _, summary in self.repos[repo_id].log if b == branch]

    # ------------------------------------------------------------------------------------------- storage
    def _write_blob(self, content: bytes) -> str:
        oid = git_blob_oid(content)
        path = self.storage / oid
        if not path.exists():
            path.write_bytes(content)
        return oid

    def _read_blob(self, oid: str) -> bytes:
        return (self.storage / oid).read_bytes()

    def _repo(self, repo_id: str) -> _Repo:
        repo = self.repos.get(repo_id)
        if repo is None:
            raise _HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    @staticmethod
    def _resolve(repo: _Repo, revision: str) -> str:
        revision = unquote(revision)
        if revision in repo.refs:
            return repo.refs[revision]
        if revision in repo.commits:
            return revision
        raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _new_commit(self, repo: _Repo, files: dict[str, str], salt: str) -> str:
        sha = hashlib.sha1(f"{salt}:{time.time_ns()}:{sorted(files.items())}".encode()).hexdigest()
        repo.commits[sha] = files
        return sha

    # --------------------------------------------------------------------------------------------- routes
    def create_repo(self, body: dict[str, Any], **_: Any) -> tuple[int, Any]:
        repo_id = f"{body.get('organization') or DEFAULT_USER}/{body['name']}"
        url = f"{self.url}/{repo_id}"
        if (body.get("type") or "model") != "model":
            raise _HubError(400, "the test Hub only hosts model repos")
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": url}
        repo = _Repo(private=body.get("visibility") == "private" or bool(body.get("private")))
        repo.refs["main"] = self._new_commit(repo, {}, "initial")
        self.repos[repo_id] = repo
        return 200, {"url": url, "name": repo_id}

    def validate_yaml(self, **_: Any) -> tuple[int, Any]:
        return 200, {"errors": [], "warnings": []}

    def whoami(self, **_: Any) -> tuple[int, Any]:
        return 200, {"type": "user", "name": DEFAULT_USER, "orgs": [], "auth": {"accessToken": {"role": "write"}}}

    def preupload(self, repo: str, rev: str, body: dict[str, Any], **_: Any) -> tuple[int, Any]:
        hub_repo = self._repo(repo)
        branch = unquote(rev)
        current = hub_repo.commits[hub_repo.refs[branch]] if branch in hub_repo.refs else {}
        files = [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": current.get(f["path"])}
            for f in body["files"]
        ]
        return 200, {"files": files, "commitOid": hub_repo.refs.get(branch)}

    def create_branch(self, repo: str, rev: str, body: dict[str, Any], **_: Any) -> tuple[int, Any]:
        hub_repo = self._repo(repo)
        branch = unquote(rev)
        if branch in hub_repo.refs:
            return 409, {"error": f"Branch {branch} already exists"}
        hub_repo.refs[branch] = self._resolve(hub_repo, body.get("startingPoint") or "main")
        return 200, {}

    def commit(self, repo: str, rev: str, raw: bytes, **_: Any) -> tuple[int, Any]:
        hub_repo = self._repo(repo)
        branch = unquote(rev)
        if branch not in hub_repo.refs:
            raise _HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        files = dict(hub_repo.commits[hub_repo.refs[branch]])
        summary = ""
        for line in raw.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value.get("summary", "")
            elif key == "file":
                if value.get("encoding") != "base64":
                    raise _HubError(400, f"unsupported encoding {value.get('encoding')!r}")
                files[value["path"]] = self._write_blob(base64.b64decode(value["content"]))
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: o for p, o in files.items() if not p.startswith(prefix)}
            else:  # lfsFile / copy: only offered when preupload says "lfs", which this server never does
                raise _HubError(422, f"the test Hub accepts inline files only, got {key!r}")
        sha = self._new_commit(hub_repo, files, summary)
        hub_repo.refs[branch] = sha
        hub_repo.log.append((branch, sha, summary))
        return 200, {"success": True, "commitOid": sha, "commitUrl": f"{self.url}/{repo}/commit/{sha}"}

    def model_info(self, repo: str, rev: str | None = None, **_: Any) -> tuple[int, Any]:
        hub_repo = self._repo(repo)
        sha = self._resolve(hub_repo, rev or "main")
        return 200, {
            "id": repo, "modelId": repo, "author": repo.split("/")[0], "sha": sha, "private": hub_repo.private,
            "tags": [], "siblings": [{"rfilename": p} for p in sorted(hub_repo.commits[sha])],
        }

    def tree(self, repo: str, rev: str, query: dict[str, list[str]], path: str | None = None, **_: Any):
        hub_repo = self._repo(repo)
        files = hub_repo.commits[self._resolve(hub_repo, rev)]
        prefix = f"{unquote(path).strip('/')}/" if path else ""
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        entries: dict[str, dict[str, Any]] = {}
        for file_path, oid in sorted(files.items()):
            if not file_path.startswith(prefix):
                continue
            rest = file_path[len(prefix):].split("/")
            # Folders on the way to the file, as the Hub lists them (only the first level unless recursive).
            for depth in range(1, len(rest) if recursive else min(2, len(rest))):
                folder = prefix + "/".join(rest[:depth])
                entries.setdefault(folder, {"type": "directory", "path": folder, "oid": git_blob_oid(folder.encode())})
            if recursive or len(rest) == 1:
                size = (self.storage / oid).stat().st_size
                entries[file_path] = {"type": "file", "path": file_path, "size": size, "oid": oid}
        if prefix and not entries:
            raise _HubError(404, f"Entry not found: {prefix}", "EntryNotFound")
        return 200, list(entries.values())


class _Handler(BaseHTTPRequestHandler):
    """Routes requests to the :class:`HubServer` methods; HTTP/1.1 keep-alive, as httpx expects."""

    protocol_version = "HTTP/1.1"
    server_hub: HubServer

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            raw = b"".join(chunks)
        else:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            raw = gzip.decompress(raw)
        return raw

    def _dispatch(self, method: str) -> None:
        hub = self.server_hub
        parts = urlsplit(self.path)
        raw = self._body() if method in ("POST", "PUT") else b""
        with hub._lock:
            hub.requests.append((method, parts.path))
        for route_method, pattern, name in _ROUTES:
            match = pattern.match(parts.path)
            if route_method != method or match is None:
                continue
            kwargs = {k: v for k, v in match.groupdict().items() if v is not None}
            try:
                with hub._lock:
                    if name == "resolve":
                        return self._resolve_file(method, **kwargs)
                    body = json.loads(raw) if raw and name != "commit" else {}
                    status, payload = getattr(hub, name)(body=body, raw=raw, query=parse_qs(parts.query), **kwargs)
            except _HubError as err:
                return self._send_error(err)
            return self._send_json(status, payload)
        self._send_error(_HubError(404, f"the test Hub has no route {method} {parts.path}"))

    def _resolve_file(self, method: str, repo: str, rev: str, path: str) -> None:
        hub = self.server_hub
        hub_repo = hub._repo(repo)
        sha = hub._resolve(hub_repo, rev)
        oid = hub_repo.commits[sha].get(unquote(path))
        if oid is None:
            err = _HubError(404, f"Entry not found: {path}", "EntryNotFound")
            return self._send_error(err, {"X-Repo-Commit": sha})
        content = hub._read_blob(oid)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(content)))
        self.send_header("ETag", f'"{oid}"')
        self.send_header("X-Repo-Commit", sha)
        self.end_headers()
        if method == "GET":
            self.wfile.write(content)

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_error(self, err: _HubError, headers: dict[str, str] | None = None) -> None:
        headers = dict(headers or {})
        headers["X-Error-Message"] = err.message
        if err.code:
            headers["X-Error-Code"] = err.code
        self._send_json(err.status, {"error": err.message}, headers)
