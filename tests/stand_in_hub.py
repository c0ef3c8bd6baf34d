"""A stand-in for the Hugging Face Hub on 127.0.0.1: serves model folders as hub repositories.

Enough of the Hub's HTTP API for ``huggingface_hub.snapshot_download`` (and so for
``transformers`` and ``sentence-transformers``): the repository's revision, its file tree, and
each file by ``resolve`` (HEAD and GET). Every request is recorded, so a test can check that a
second run asked nothing. Point a process at it with ``HF_ENDPOINT=server.url``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


class StandInHub:
    """Serve ``repos`` (repo id -> local folder) until :meth:`stop`; use as a context manager."""

    def __init__(self, repos: dict[str, Path]):
        self.repos = {repo: Path(folder) for repo, folder in repos.items()}
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                hub._answer(self, body=False)

            def do_GET(self) -> None:
                hub._answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> StandInHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- the API ---------------------------------------------------------------------------------
    def _files(self, repo: str) -> dict[str, Path]:
        root = self.repos[repo]
        return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}

    def _sha(self, repo: str) -> str:
        h = hashlib.sha1()
        for name, path in self._files(repo).items():
            h.update(name.encode() + b"\0" + path.read_bytes())
        return h.hexdigest()

    def _answer(self, handler: BaseHTTPRequestHandler, *, body: bool) -> None:
        path = unquote(urlparse(handler.path).path)
        self.requests.append(f"{handler.command} {path}")
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo = "/".join(parts[2:4])
            if repo not in self.repos:
                return self._send(handler, 404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}, body)
            if len(parts) == 4 or parts[4] == "revision":
                files = self._files(repo)
                info = {"id": repo, "modelId": repo, "sha": self._sha(repo), "private": False,
                        "siblings": [{"rfilename": name} for name in files]}  # fmt: skip
                return self._json(handler, info, body)
            if parts[4] == "tree":
                tree = [
                    {"type": "file", "path": name, "size": p.stat().st_size, "oid": hashlib.sha1(p.read_bytes()).hexdigest()}
                    for name, p in self._files(repo).items()
                ]
                return self._json(handler, tree, body)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo = "/".join(parts[:2])
            name = "/".join(parts[4:])
            if repo not in self.repos:
                return self._send(handler, 404, b"", {"X-Error-Code": "RepoNotFound"}, body)
            files = self._files(repo)
            if name not in files:
                return self._send(handler, 404, b"", {"X-Error-Code": "EntryNotFound"}, body)
            data = files[name].read_bytes()
            etag = '"' + hashlib.sha1(data).hexdigest() + '"'
            return self._send(handler, 200, data, {"ETag": etag, "X-Repo-Commit": self._sha(repo)}, body)
        return self._send(handler, 404, b"", {}, body)

    def _json(self, handler: BaseHTTPRequestHandler, obj, body: bool) -> None:
        self._send(handler, 200, json.dumps(obj).encode(), {"Content-Type": "application/json"}, body)

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, code: int, data: bytes, headers: dict[str, str], body: bool) -> None:
        handler.send_response(code)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if body:
            handler.wfile.write(data)
