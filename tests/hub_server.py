"""A small stand-in for the Hugging Face Hub on 127.0.0.1 for tests: local folders served as model repos.

It answers what huggingface_hub 2.x asks while downloading (see its hf_api.py and file_download.py):

* ``GET /api/models/{repo}[/revision/{rev}]``: ``{"id", "sha", "siblings": [{"rfilename"}]}`` (repo_info,
  model_info, resolve_revision; no revision: ``main``);
* ``GET /api/models/{repo}/tree/{rev}``: every file with ``oid`` (git blob sha1), ``size`` and, for LFS files,
  ``lfs`` (list_repo_tree; one page, no ``Link`` header);
* ``HEAD`` / ``GET /{repo}/resolve/{rev}/{path}``: ``X-Repo-Commit``, ``ETag`` (the blob sha1, or the sha256 of
  an LFS file, which then also comes as ``X-Linked-Etag`` / ``X-Linked-Size``), ``Content-Length``, and a
  ``Range: bytes=N-`` request answered with 206 and ``Content-Range``.

Errors carry the hub's ``X-Error-Code`` header (RepoNotFound, GatedRepo, RevisionNotFound, EntryNotFound),
from which huggingface_hub raises its exception types. Every request is recorded in ``requests``.

Test hooks: ``fail`` (an HTTP status for the GET of one file), ``cut`` (close the connection after N bytes of
one file, once), ``stall`` (send N bytes of one file, then hold the connection until :meth:`release`; once),
``gated`` (repos answering 403 GatedRepo). :func:`client_env` and :func:`run_kandinsky` run the CLI against it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple
from urllib.parse import unquote, urlsplit

# Stored with git LFS on the real hub (its default .gitattributes).
LFS_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".onnx", ".h5", ".model")

API_ROUTE = re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+)(/(?P<kind>revision|tree)/(?P<rev>[^/]+)(/.*)?)?")
RESOLVE_ROUTE = re.compile(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)")


@dataclass(frozen=True)
class Request:
    method: str
    path: str                 # the URL path, unquoted, without the query
    range: Optional[str]      # the Range header, if any


@dataclass(frozen=True)
class Blob:
    data: bytes
    sha1: str                 # git blob id
    sha256: Optional[str]     # LFS files only

    @classmethod
    def of(cls, path: Path) -> "Blob":
        data = path.read_bytes()
        sha1 = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        return cls(data, sha1, hashlib.sha256(data).hexdigest() if path.suffix in LFS_SUFFIXES else None)

    @property
    def etag(self) -> str:
        return self.sha256 or self.sha1


class HubServer:
    """Serves ``add_repo`` folders on an ephemeral port of 127.0.0.1 (``url``)."""

    def __init__(self) -> None:
        self.revisions: Dict[str, Dict[str, str]] = {}   # repo id -> {branch or commit: commit}
        self.folders: Dict[str, Path] = {}               # commit -> served folder
        self.requests: List[Request] = []
        self.fail: Dict[str, int] = {}                   # "repo/path" -> status of its GET
        self.cut: Dict[str, int] = {}                    # "repo/path" -> bytes sent before closing (once)
        self.stall: Dict[str, int] = {}                  # "repo/path" -> bytes sent before holding (once)
        self.gated: Set[str] = set()
        self.stalled = threading.Event()                 # set once a stalled file has sent its bytes
        self.released = threading.Event()                # set by release(): stalled transfers end
        self._blobs: Dict[Path, Blob] = {}
        self._lock = threading.Lock()
        self._httpd: Optional[ThreadingHTTPServer] = None
        self.url = ""                                    # the HF_ENDPOINT, once started

    def add_repo(self, repo_id: str, folder: Path, revision: str = "main") -> str:
        """Serve ``folder`` as ``repo_id`` at branch ``revision``; returns its commit id."""
        commit = hashlib.sha1(f"{repo_id}@{revision}:{folder}".encode()).hexdigest()
        branches = self.revisions.setdefault(repo_id, {})
        branches[revision] = branches[commit] = commit
        self.folders[commit] = Path(folder)
        return commit

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> "HubServer":
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _HubHandler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"   # kept after stop(): nothing answers there
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self.release()
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def release(self) -> None:
        """Let stalled transfers end (their connection is closed)."""
        self.released.set()

    # -- what was asked ----------------------------------------------------------------------------------
    def file_requests(self, method: str = "GET") -> List[Tuple[str, str, Optional[str]]]:
        """(repo id, file path, Range header) of every ``method`` request of a file."""
        found = []
        for r in list(self.requests):
            m = RESOLVE_ROUTE.fullmatch(r.path)
            if m and r.method == method:
                found.append((m["repo"], m["path"], r.range))
        return found

    def fetched(self, repo_id: str) -> List[str]:
        """The files of ``repo_id`` whose content was requested (GET), in request order."""
        return [path for repo, path, _ in self.file_requests() if repo == repo_id]

    # -- repo contents -----------------------------------------------------------------------------------
    def commit_of(self, repo_id: str, revision: str) -> Optional[str]:
        return self.revisions.get(repo_id, {}).get(revision)

    def files(self, commit: str) -> List[str]:
        folder = self.folders[commit]
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

    def blob(self, commit: str, path: str) -> Optional[Blob]:
        file = self.folders[commit] / path
        if not file.is_file():
            return None
        with self._lock:
            if file not in self._blobs:
                self._blobs[file] = Blob.of(file)
            return self._blobs[file]

    def tree(self, commit: str) -> List[dict]:
        entries = []
        for path in self.files(commit):
            blob = self.blob(commit, path)
            entry = {"type": "file", "path": path, "oid": blob.sha1, "size": len(blob.data)}
            if blob.sha256:
                entry["lfs"] = {"oid": blob.sha256, "size": len(blob.data), "pointerSize": 134}
            entries.append(entry)
        return entries


class _HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive, as the hub client expects; every answer has a Content-Length

    @property
    def hub(self) -> HubServer:
        return self.server.hub

    def log_message(self, format: str, *args) -> None:   # quiet
        pass

    def do_HEAD(self) -> None:
        self._route(body=False)

    def do_GET(self) -> None:
        self._route(body=True)

    # -- routing -----------------------------------------------------------------------------------------
    def _route(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.hub.requests.append(Request(self.command, path, self.headers.get("Range")))
        api, resolve = API_ROUTE.fullmatch(path), RESOLVE_ROUTE.fullmatch(path)
        match = api or resolve
        if match is None:
            return self._send(404, b"not found", body=body)
        repo_id, revision = match["repo"], match["rev"] or "main"
        if repo_id not in self.hub.revisions:
            return self._error(404, "RepoNotFound", f"Repository {repo_id} not found", body)
        if repo_id in self.hub.gated:
            return self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted", body)
        commit = self.hub.commit_of(repo_id, revision)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", body)
        if api is not None and api["kind"] != "tree":
            info = {"id": repo_id, "modelId": repo_id, "sha": commit, "private": False,
                    "siblings": [{"rfilename": f} for f in self.hub.files(commit)]}
            return self._send_json(info, body)
        if api is not None:
            return self._send_json(self.hub.tree(commit), body)
        self._file(repo_id, commit, resolve["path"], body)

    def _file(self, repo_id: str, commit: str, path: str, body: bool) -> None:
        blob = self.hub.blob(commit, path)
        if blob is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist", body, {"X-Repo-Commit": commit})
        key = f"{repo_id}/{path}"
        if body and key in self.hub.fail:
            return self._send(self.hub.fail[key], b"server error", body=body)
        data, status = blob.data, 200
        headers = {"X-Repo-Commit": commit, "ETag": f'"{blob.etag}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if blob.sha256:
            headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(len(data))})
        start = _range_start(self.headers.get("Range"))
        if body and start is not None and 0 < start < len(data):
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            data, status = data[start:], 206
        if body and status == 200 and key in self.hub.cut:
            return self._send_part(headers, data, self.hub.cut.pop(key), hold=False)
        if body and status == 200 and key in self.hub.stall:
            return self._send_part(headers, data, self.hub.stall.pop(key), hold=True)
        self._send(status, data, headers, body)

    # -- answers -----------------------------------------------------------------------------------------
    def _send_headers(self, status: int, headers: dict, length: int) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def _send(self, status: int, data: bytes, headers: Optional[dict] = None, body: bool = True) -> None:
        self._send_headers(status, headers or {}, len(data))
        if body:
            self.wfile.write(data)

    def _send_json(self, obj, body: bool) -> None:
        self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json"}, body)

    def _error(self, status: int, code: str, message: str, body: bool, headers: Optional[dict] = None) -> None:
        payload = json.dumps({"error": message}).encode()
        self._send(status, payload, {"X-Error-Code": code, "X-Error-Message": message,
                                     "Content-Type": "application/json", **(headers or {})}, body)

    def _send_part(self, headers: dict, data: bytes, nbytes: int, hold: bool) -> None:
        """Announce all of ``data`` but send only ``nbytes`` of it, then (after holding, if asked) close."""
        self._send_headers(200, headers, len(data))
        self.wfile.write(data[:nbytes])
        self.wfile.flush()
        if hold:
            self.hub.stalled.set()
            self.hub.released.wait(timeout=60)
        self.close_connection = True


def _range_start(header: Optional[str]) -> Optional[int]:
    m = re.fullmatch(r"bytes=(\d+)-", header or "")
    return int(m.group(1)) if m else None


# ------------------------------------------------------------------------------------------ the client side

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def client_env(endpoint: str, home: Path, **extra: str) -> Dict[str, str]:
    """The environment of a CLI run against ``endpoint``: HF_HOME / HF_HUB_CACHE under ``home``, no telemetry,
    no Xet, no token or proxy from the calling environment, nothing else of the caller's HF_* settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGING_FACE_")) and k.lower() not in PROXY_VARIABLES}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(home), HF_HUB_CACHE=str(Path(home) / "hub"),
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1", NO_PROXY="127.0.0.1,localhost")
    return {**env, **extra}


def run_kandinsky(env: Dict[str, str], *args, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """``python -m kandinsky_cli ARGS`` in a subprocess with ``env``; output captured as text. Give a scratch
    ``cwd``: ``-m`` puts the working directory first on sys.path."""
    return subprocess.run([sys.executable, "-m", "kandinsky_cli", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout, **kwargs)
