"""A Hugging Face Hub-compatible HTTP server for tests: the endpoints the real `huggingface_hub` client uses.

It speaks the model-repo subset of the Hub API that `create_repo`, `create_commit` (preupload, LFS batch
upload with the plain "basic" transfer, ndjson commit), `repo_info`/`list_repo_tree`/`get_paths_info`,
`hf_hub_download` and `snapshot_download` need, and is strict where a client bug would show: writes need
the token, commits to missing repos or branches fail, LFS uploads are checked against their sha256 oid,
commits may only reference uploaded objects, and `parentCommit` must be the branch head. Every request is
logged, and `fail_next` drops connections to prove clients retry. The client must run with
`HF_HUB_DISABLE_XET=1` (xet is chosen client-side) and `HF_ENDPOINT=server.endpoint`.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

LFS_PATTERNS = ("*.safetensors", "*.npz", "*.bin", "*.pt", "*.gguf")
LFS_MIN_SIZE = 10 * 1024 * 1024  # the Hub sends files this large through LFS whatever their name
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()
_REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (what the Hub reports as a file's `oid`/`blobId`)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(oid: str, size: int) -> bytes:
    """The git-lfs pointer file stored in git in place of an LFS object."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


@dataclass(frozen=True)
class Entry:
    """One file of a commit: its git blob id, size, and the LFS object it points to (if any)."""

    size: int
    blob_id: str
    lfs_oid: str | None = None

    def tree_json(self, path: str) -> dict:
        out: dict = {"type": "file", "oid": self.blob_id, "size": self.size, "path": path}
        if self.lfs_oid:
            out["lfs"] = {"oid": self.lfs_oid, "size": self.size, "pointerSize": len(lfs_pointer(self.lfs_oid, self.size))}
        return out


@dataclass
class Commit:
    sha: str
    parent: str | None
    summary: str
    files: dict[str, Entry]


@dataclass
class Repo:
    repo_id: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)


class HttpError(Exception):
    """An error answer: status, message and the Hub's X-Error-Code header."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class _Drop(Exception):
    """Close the connection without an answer (fault injection)."""


class HubServer:
    """The server and its state; use as a context manager (`with HubServer() as hub:`)."""

    def __init__(self, token: str = "hf_test_token", user: str = "tester", orgs: tuple[str, ...] = ("whisper-mlx",)):
        self.token, self.user, self.orgs = token, user, orgs
        self.root = Path(tempfile.mkdtemp(prefix="hub-server-"))
        (self.root / "lfs").mkdir()
        (self.root / "blobs").mkdir()
        self.repos: dict[str, Repo] = {}
        self.log: list[tuple[str, str]] = []  # (method, path) of every request, in arrival order
        self._faults: dict[str, int] = {}
        self._tickets: dict[str, str] = {}  # upload ticket -> LFS oid it may upload
        self._lock = threading.RLock()
        self._counter = 0
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self  # type: ignore[attr-defined]
        self.port = self._httpd.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        # LFS downloads redirect to another host name, as the Hub redirects to its CDN.
        self.cdn = f"http://localhost:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> "HubServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        shutil.rmtree(self.root, ignore_errors=True)

    # ---- test controls -------------------------------------------------------------------------

    def fail_next(self, kind: str, times: int = 1) -> None:
        """Drop the connection on the next `times` requests of a kind.

        kinds: "upload" (LFS PUT, mid-body), "commit" (before applying it), "commit-after" (after applying
        it: the commit lands but its answer is lost), "resolve" (file download).
        """
        with self._lock:
            self._faults[kind] = self._faults.get(kind, 0) + times

    def requests(self, method: str | None = None, contains: str = "") -> list[tuple[str, str]]:
        """Logged requests, filtered by method and a path substring."""
        with self._lock:
            return [r for r in self.log if (method is None or r[0] == method) and contains in r[1]]

    def clear_log(self) -> None:
        with self._lock:
            self.log.clear()

    def head(self, repo_id: str, branch: str = "main") -> Commit:
        """The commit a branch points to."""
        with self._lock:
            repo = self.repos[repo_id]
            return repo.commits[repo.branches[branch]]

    def read(self, repo_id: str, path: str, revision: str = "main") -> bytes:
        """A file's content at a revision."""
        with self._lock:
            return self._content(self._commit(self.repos[repo_id], revision).files[path])

    def put_file(self, repo_id: str, path: str, data: bytes, summary: str = "server-side edit") -> str:
        """Commit one file directly on the server (as another user would); creates the repo if needed."""
        with self._lock:
            repo = self.repos.get(repo_id) or self._create(repo_id)
            files = dict(self.head(repo_id).files)
            files[path] = self._store(data, lfs=self._is_lfs(path, len(data), data[:512], files))
            return self._new_commit(repo, "main", summary, files)

    # ---- storage ------------------------------------------------------------------------------

    def _create(self, repo_id: str) -> Repo:
        repo = Repo(repo_id)
        self.repos[repo_id] = repo
        self._new_commit(repo, "main", "initial commit", {".gitattributes": self._store(GITATTRIBUTES, lfs=False)})
        return repo

    def _store(self, data: bytes, lfs: bool) -> Entry:
        if lfs:
            oid = hashlib.sha256(data).hexdigest()
            _atomic_write(self.root / "lfs" / oid, data)
            return Entry(len(data), git_blob_sha1(lfs_pointer(oid, len(data))), oid)
        blob_id = git_blob_sha1(data)
        _atomic_write(self.root / "blobs" / blob_id, data)
        return Entry(len(data), blob_id)

    def _content(self, entry: Entry) -> bytes:
        if entry.lfs_oid:
            return (self.root / "lfs" / entry.lfs_oid).read_bytes()
        return (self.root / "blobs" / entry.blob_id).read_bytes()

    def _new_commit(self, repo: Repo, branch: str, summary: str, files: dict[str, Entry]) -> str:
        self._counter += 1
        parent = repo.branches.get(branch)
        listing = sorted((p, e.blob_id) for p, e in files.items())
        sha = hashlib.sha1(json.dumps([parent, summary, listing, self._counter, time.time_ns()]).encode()).hexdigest()
        repo.commits[sha] = Commit(sha, parent, summary, dict(files))
        repo.branches[branch] = sha
        return sha

    def _repo(self, repo_id: str) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None:
            raise HttpError(404, f"Repository Not Found: {repo_id}", "RepoNotFound")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        revision = unquote(revision)
        sha = repo.branches.get(revision, revision)
        if sha not in repo.commits:
            raise HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.commits[sha]

    def _is_lfs(self, path: str, size: int, sample: bytes, files: dict[str, Entry]) -> bool:
        patterns = LFS_PATTERNS if ".gitattributes" in files else ()
        return size >= LFS_MIN_SIZE or b"\0" in sample or any(fnmatch.fnmatch(Path(path).name, p) for p in patterns)

    def _take_fault(self, kind: str) -> bool:
        with self._lock:
            if self._faults.get(kind, 0) > 0:
                self._faults[kind] -= 1
                return True
            return False


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _folder_entries(files: dict[str, Entry], prefix: str, recursive: bool) -> list[dict]:
    """Tree listing under `prefix` ("" = root): files, and folders as the Hub lists them."""
    out: list[dict] = []
    folders: set[str] = set()
    base = prefix + "/" if prefix else ""
    for path in sorted(files):
        if not path.startswith(base):
            continue
        rest = path[len(base):]
        parts = rest.split("/")
        for i in range(1, len(parts)):
            folder = base + "/".join(parts[:i])
            if (recursive or i == 1) and folder not in folders:
                folders.add(folder)
                out.append({"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(), "size": 0, "path": folder})
        if recursive or len(parts) == 1:
            out.append(files[path].tree_json(path))
    return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    routes = [
        ("GET", r"/api/whoami-v2", "whoami"),
        ("GET", r"/api/agent-harnesses", "agent_harnesses"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("POST", r"/api/repos/create", "create_repo"),
        ("GET", rf"/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?", "model_info"),
        ("GET", rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?", "tree"),
        ("POST", rf"/api/models/{_REPO}/paths-info/(?P<rev>[^/]+)", "paths_info"),
        ("POST", rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
        ("POST", rf"/{_REPO}\.git/info/lfs/objects/batch", "lfs_batch"),
        ("PUT", r"/lfs-upload/(?P<ticket>\w+)", "lfs_upload"),
        ("POST", r"/lfs-verify/(?P<repo_org>[\w.-]+)/(?P<repo_name>[\w.-]+)", "lfs_verify"),
        ("POST", rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)", "commit"),
        ("GET", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
        ("HEAD", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
        ("GET", r"/cdn/(?P<oid>[0-9a-f]{64})", "cdn"),
        ("HEAD", r"/cdn/(?P<oid>[0-9a-f]{64})", "cdn"),
    ]

    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass

    @property
    def hub(self) -> HubServer:
        return self.server.hub  # type: ignore[attr-defined]

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    # ---- plumbing -------------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        self.query = parse_qs(url.query)
        with self.hub._lock:
            self.hub.log.append((method, path))
        try:
            for route_method, pattern, name in self.routes:
                match = re.fullmatch(pattern, path) if route_method == method else None
                if match:
                    getattr(self, "h_" + name)(**{k: v for k, v in match.groupdict().items()})
                    return
            raise HttpError(404, f"no route for {method} {path}")
        except _Drop:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        except HttpError as e:
            self._send(e.status, {"error": e.message}, headers={**({"X-Error-Code": e.code} if e.code else {}),
                                                                "X-Error-Message": e.message, **e.headers})

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _json_body(self):
        try:
            return json.loads(self._body() or b"null")
        except json.JSONDecodeError as e:
            raise HttpError(400, f"invalid JSON body: {e}") from None

    def _send(self, status: int, payload=None, headers: dict | None = None, raw: bytes | None = None) -> None:
        body = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else b"")
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Type", "application/json" if raw is None else "application/octet-stream")
        headers.setdefault("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _auth(self, required: bool) -> str | None:
        """The user a request acts as; a wrong token is always an error, a missing one only for writes."""
        header = self.headers.get("Authorization")
        if header is None:
            if required:
                raise HttpError(401, "Invalid username or password.")
            return None
        if header != f"Bearer {self.hub.token}":
            raise HttpError(401, "Invalid credentials in Authorization header")
        return self.hub.user

    def _writable(self, repo_id: str) -> None:
        self._auth(required=True)
        namespace = repo_id.split("/")[0]
        if namespace != self.hub.user and namespace not in self.hub.orgs:
            raise HttpError(403, f"You don't have the rights to write to {namespace}")

    # ---- endpoints -------------------------------------------------------------------------------

    def h_whoami(self):
        user = self._auth(required=True)
        self._send(200, {"type": "user", "name": user, "orgs": [{"name": o} for o in self.hub.orgs],
                         "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}})

    def h_agent_harnesses(self):
        self._send(200, {"standardEnvVars": [], "harnesses": {}})

    def h_validate_yaml(self):
        body = self._json_body()
        content = body.get("content", "") if isinstance(body, dict) else ""
        errors = []
        if content.startswith("---"):
            end = content.find("\n---", 3)
            try:
                meta = yaml.safe_load(content[3:end] if end > 0 else "")
                if meta is not None and not isinstance(meta, dict):
                    errors.append({"message": "metadata must be a mapping"})
            except yaml.YAMLError as e:
                errors.append({"message": f"invalid YAML: {e}"})
        self._send(400 if errors else 200, {"errors": errors, "warnings": []})

    def h_create_repo(self):
        body = self._json_body()
        if not isinstance(body, dict) or not body.get("name"):
            raise HttpError(400, "name is required")
        if body.get("type", "model") != "model":
            raise HttpError(400, "this test server only hosts model repos")
        repo_id = f"{body.get('organization') or self.hub.user}/{body['name']}"
        self._writable(repo_id)
        with self.hub._lock:
            if repo_id in self.hub.repos:
                raise HttpError(409, "You already created this model repo", headers={"X-Repo-Url": f"{self.hub.endpoint}/{repo_id}"})
            self.hub._create(repo_id)
        self._send(200, {"url": f"{self.hub.endpoint}/{repo_id}", "name": repo_id, "id": repo_id})

    def h_model_info(self, repo, rev=None):
        self._auth(required=False)
        with self.hub._lock:
            commit = self.hub._commit(self.hub._repo(repo), rev or "main")
            blobs = self.query.get("blobs", ["false"])[0].lower() in ("1", "true")
            siblings = []
            for path, entry in sorted(commit.files.items()):
                item: dict = {"rfilename": path}
                if blobs:
                    item.update(size=entry.size, blobId=entry.blob_id)
                    if entry.lfs_oid:
                        item["lfs"] = {"sha256": entry.lfs_oid, "size": entry.size,
                                       "pointerSize": len(lfs_pointer(entry.lfs_oid, entry.size))}
                siblings.append(item)
        self._send(200, {"id": repo, "modelId": repo, "author": repo.split("/")[0], "sha": commit.sha,
                         "private": False, "disabled": False, "gated": False, "tags": [], "siblings": siblings})

    def h_tree(self, repo, rev, path=None):
        self._auth(required=False)
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        with self.hub._lock:
            commit = self.hub._commit(self.hub._repo(repo), rev)
            prefix = (path or "").strip("/")
            if prefix and prefix in commit.files:
                raise HttpError(404, f"{prefix} is a file, not a folder", "EntryNotFound")
            entries = _folder_entries(commit.files, prefix, recursive)
            if prefix and not entries:
                raise HttpError(404, f"no folder {prefix}", "EntryNotFound")
        self._send(200, entries)

    def h_paths_info(self, repo, rev):
        self._auth(required=False)
        raw = self._body().decode()
        form = parse_qs(raw) if "application/x-www-form-urlencoded" in self.headers.get("Content-Type", "") else {}
        if not form and raw.strip().startswith("{"):
            form = {k: (v if isinstance(v, list) else [v]) for k, v in json.loads(raw).items()}
        with self.hub._lock:
            commit = self.hub._commit(self.hub._repo(repo), rev)
            out = [commit.files[p].tree_json(p) for p in form.get("paths", []) if p in commit.files]
        self._send(200, out)

    def h_preupload(self, repo, rev):
        self._writable(repo)
        body = self._json_body()
        if not isinstance(body, dict) or not isinstance(body.get("files"), list):
            raise HttpError(400, "expected {'files': [...]}")
        with self.hub._lock:
            commit = self.hub._commit(self.hub._repo(repo), rev)
            out = []
            for item in body["files"]:
                try:
                    path, size, sample = item["path"], int(item["size"]), base64.b64decode(item["sample"])
                except (KeyError, TypeError, ValueError):
                    raise HttpError(400, f"malformed preupload entry {item!r}") from None
                lfs = self.hub._is_lfs(path, size, sample, commit.files)
                existing = commit.files.get(path)
                answer = {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
                if existing is not None:
                    answer["oid"] = existing.lfs_oid if lfs and existing.lfs_oid else existing.blob_id
                out.append(answer)
        self._send(200, {"files": out, "commitOid": commit.sha})

    def h_lfs_batch(self, repo):
        self._writable(repo)
        with self.hub._lock:
            self.hub._repo(repo)
        body = self._json_body()
        if not isinstance(body, dict) or body.get("operation") != "upload" or "basic" not in body.get("transfers", []):
            raise HttpError(400, "only LFS uploads with the basic transfer are supported")
        objects = []
        for obj in body.get("objects", []):
            oid, size = obj.get("oid"), obj.get("size")
            if not (isinstance(oid, str) and len(oid) == 64 and isinstance(size, int)):
                raise HttpError(422, f"malformed LFS object {obj!r}")
            answer: dict = {"oid": oid, "size": size, "authenticated": True}
            if not (self.hub.root / "lfs" / oid).is_file():
                ticket = secrets.token_hex(16)
                with self.hub._lock:
                    self.hub._tickets[ticket] = f"{oid}:{size}"
                answer["actions"] = {
                    "upload": {"href": f"{self.hub.endpoint}/lfs-upload/{ticket}", "header": {}},
                    "verify": {"href": f"{self.hub.endpoint}/lfs-verify/{repo}", "header": {}},
                }
            objects.append(answer)
        self._send(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                   headers={"Content-Type": "application/vnd.git-lfs+json"})

    def h_lfs_upload(self, ticket):
        with self.hub._lock:
            expected = self.hub._tickets.get(ticket)
        if expected is None:
            raise HttpError(403, "unknown or used upload ticket")
        oid, size = expected.split(":")
        if self.hub._take_fault("upload"):
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(min(length // 2, 1 << 20))  # read part of the body, then drop the connection
            raise _Drop()
        data = self._body()
        if len(data) != int(size) or hashlib.sha256(data).hexdigest() != oid:
            raise HttpError(400, f"uploaded content does not match LFS oid {oid} / size {size}")
        _atomic_write(self.hub.root / "lfs" / oid, data)
        with self.hub._lock:
            self.hub._tickets.pop(ticket, None)
        self._send(200, raw=b"", headers={"ETag": f'"{oid}"'})

    def h_lfs_verify(self, repo_org, repo_name):
        self._writable(f"{repo_org}/{repo_name}")
        body = self._json_body()
        path = self.hub.root / "lfs" / str(body.get("oid"))
        if not path.is_file() or path.stat().st_size != body.get("size"):
            raise HttpError(404, f"LFS object {body.get('oid')} was not uploaded")
        self._send(200, {"message": "ok"})

    def h_commit(self, repo, rev):
        self._writable(repo)
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        if self.hub._take_fault("commit"):
            raise _Drop()
        if not lines or lines[0].get("key") != "header" or not lines[0]["value"].get("summary"):
            raise HttpError(400, "a commit starts with a header line holding a non-empty summary")
        header, operations = lines[0]["value"], lines[1:]
        if not operations:
            raise HttpError(400, "empty commit")
        branch = unquote(rev)
        with self.hub._lock:
            repo_obj = self.hub._repo(repo)
            if branch not in repo_obj.branches:
                raise HttpError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            head = repo_obj.commits[repo_obj.branches[branch]]
            parent = header.get("parentCommit")
            if parent is not None and not head.sha.startswith(parent):
                raise HttpError(412, f"parentCommit {parent} is not the head of {branch} ({head.sha})")
            files = dict(head.files)
            for op in operations:
                key, value = op.get("key"), op.get("value", {})
                path = value.get("path", "")
                if not path or path.startswith("/") or ".." in path.split("/"):
                    raise HttpError(400, f"invalid path {path!r}")
                if key == "file":
                    if value.get("encoding") != "base64":
                        raise HttpError(400, f"{path}: only base64 content is supported")
                    data = base64.b64decode(value["content"])
                    files[path] = self.hub._store(data, lfs=False)
                elif key == "lfsFile":
                    oid, size = value.get("oid"), value.get("size")
                    blob = self.hub.root / "lfs" / str(oid)
                    if value.get("algo") != "sha256" or not blob.is_file():
                        raise HttpError(422, f"{path}: LFS object {oid} was never uploaded")
                    if size is not None and blob.stat().st_size != size:
                        raise HttpError(422, f"{path}: LFS object {oid} has size {blob.stat().st_size}, not {size}")
                    files[path] = Entry(blob.stat().st_size, git_blob_sha1(lfs_pointer(oid, blob.stat().st_size)), oid)
                elif key == "deletedFile":
                    if path not in files:
                        raise HttpError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    del files[path]
                elif key == "deletedFolder":
                    files = {p: e for p, e in files.items() if not p.startswith(path.rstrip("/") + "/")}
                else:
                    raise HttpError(400, f"unknown commit operation {key!r}")
            sha = self.hub._new_commit(repo_obj, branch, header["summary"], files)
        if self.hub._take_fault("commit-after"):
            raise _Drop()
        self._send(200, {"success": True, "commitOid": sha, "commitUrl": f"{self.hub.endpoint}/{repo}/commit/{sha}",
                         "hookOutput": "", "pullRequestUrl": None})

    def h_resolve(self, repo, rev, path):
        self._auth(required=False)
        if self.hub._take_fault("resolve"):
            raise _Drop()
        with self.hub._lock:
            repo_obj = self.hub._repo(repo)
            commit = self.hub._commit(repo_obj, rev)
            entry = commit.files.get(path)
            if entry is None:
                raise HttpError(404, f"Entry not found: {path}", "EntryNotFound", headers={"X-Repo-Commit": commit.sha})
        common = {"X-Repo-Commit": commit.sha, "Accept-Ranges": "bytes"}
        if entry.lfs_oid:
            location = f"{self.hub.cdn}/cdn/{entry.lfs_oid}?repo={quote(repo)}"
            self._send(302, raw=b"", headers={**common, "Location": location, "ETag": f'"{entry.blob_id}"',
                                               "X-Linked-Etag": f'"{entry.lfs_oid}"', "X-Linked-Size": str(entry.size)})
            return
        data = self.hub._content(entry)
        self._send(200, raw=data, headers={**common, "ETag": f'"{entry.blob_id}"'})

    def h_cdn(self, oid):
        blob = self.hub.root / "lfs" / oid
        if not blob.is_file():
            raise HttpError(404, "no such object")
        data = blob.read_bytes()
        start = 0
        range_header = self.headers.get("Range", "")
        if range_header.startswith("bytes=") and range_header[6:].split("-")[0].isdigit():
            start = int(range_header[6:].split("-")[0])
            self._send(206, raw=data[start:], headers={"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
            return
        self._send(200, raw=data, headers={"ETag": f'"{oid}"'})


# ---- helpers for tests that run the real client in a subprocess ------------------------------------
# huggingface_hub reads HF_ENDPOINT, HF_HOME, HF_HUB_OFFLINE and HF_HUB_DISABLE_XET when it is imported,
# so code under test runs in a fresh interpreter with the environment pointing at this server.

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def client_env(hub: HubServer, hf_home: Path, offline: bool = False, **extra: str) -> dict[str, str]:
    """Environment for a client process: this server, its token, a private HF_HOME, plain LFS uploads."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE_", "WHISPER_MLX_ZOO_ORG"))}
    env.update(
        HF_ENDPOINT=hub.endpoint,
        HF_TOKEN=hub.token,
        HF_HOME=str(hf_home),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        PYTHONPATH=str(REPO_ROOT),
    )
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    env.update(extra)
    return env


def run(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a command from the repository root, capturing text output."""
    return subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


TEST_CACHE = Path(os.environ.get("WHISPER_MLX_TEST_CACHE", REPO_ROOT / ".cache" / "tests"))
GATE_CLIPS = ["en_weather", "ho_doctor"]
HUB_BUILD = TEST_CACHE / "hub-build"
HUB_MANIFESTS = TEST_CACHE / "hub-build-manifests"  # what build_variant(HUB_BUILD) builds from


def publish_cli(hub: HubServer, hf_home: Path, build_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """python -m tools.publish against this server, checking builds against the manifests they were built
    from (HUB_MANIFESTS unless `--manifests` is given)."""
    manifests = () if "--manifests" in args else ("--manifests", str(HUB_MANIFESTS))
    return run([PYTHON, "-m", "tools.publish", *args, *manifests, "--build-dir", str(build_dir), "--retry-wait", "0.05"],
               client_env(hub, hf_home, **env))


def _small_gate_manifests(family: str, out: Path) -> Path:
    """The family's real manifest with a two-clip gate set: the hub tests need a built variant, not a verdict.

    Quality gates proper are zoo/gates' subject; here a lenient WER check keeps the build a real one
    (conversion, gates, card, checksums) at a fraction of the full gate run's cost.
    """
    import yaml

    defaults = yaml.safe_load((REPO_ROOT / "manifests" / "_defaults.yaml").read_text())
    defaults["gates"]["thresholds"] = {}
    for recipe in defaults["variants"].values():
        recipe["gates"] = {"max_wer_delta": 50.0}
    data = yaml.safe_load((REPO_ROOT / "manifests" / f"{family}.yaml").read_text())
    data["gates"] = {"clips": GATE_CLIPS}
    out.mkdir(parents=True, exist_ok=True)
    (out / "_defaults.yaml").write_text(yaml.safe_dump(defaults, sort_keys=False))
    (out / f"{family}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def build_variant(build_dir: Path, name: str = "tiny.en-4bit") -> Path:
    """DIR/NAME/ built by python -m tools.build (incremental: reused while its inputs are unchanged)."""
    manifests = _small_gate_manifests(name.rsplit("-", 1)[0], build_dir.parent / f"{build_dir.name}-manifests")
    assert build_dir != HUB_BUILD or manifests == HUB_MANIFESTS
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")} | {"PYTHONPATH": str(REPO_ROOT)}
    done = run([PYTHON, "-m", "tools.build", name, "--out", str(build_dir), "--manifests", str(manifests),
                "--clips-dir", str(TEST_CACHE / "clips")], env)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return build_dir / name
