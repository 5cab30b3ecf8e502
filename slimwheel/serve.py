"""Serve a static slimwheel index on 127.0.0.1, with PEP 691 content negotiation.

A directory URL gets ``index.v1.json`` when the client's Accept header
prefers ``application/vnd.pypi.simple.v1+json`` (as pip's does), else
``index.html``. The same rule, for a web server in front of a published
site (nginx)::

    map $http_accept $simple_index {
        default                                  index.html;
        "~application/vnd\\.pypi\\.simple\\.v1\\+json" index.v1.json;
    }
    location / { index $simple_index; types { } default_type text/html; }
    location ~ \\.v1\\.json$ { default_type application/vnd.pypi.simple.v1+json; }
"""

from __future__ import annotations

import contextlib
import http.server
import os
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from .index import HTML_TYPE, JSON_TYPE


def _prefers_json(accept: str) -> bool:
    best_json = best_html = -1.0
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        media, q = fields[0], 1.0
        for f in fields[1:]:
            if f.startswith("q="):
                try:
                    q = float(f[2:])
                except ValueError:
                    q = 0.0
        if media == JSON_TYPE:
            best_json = max(best_json, q)
        elif media in (HTML_TYPE, "text/html", "*/*"):
            best_html = max(best_html, q)
    return best_json > 0 and best_json >= best_html


class IndexHandler(http.server.SimpleHTTPRequestHandler):
    log_file: TextIO | None = None

    def send_head(self) -> Any:
        path = self.translate_path(self.path)
        if os.path.isdir(path):
            if not self.path.split("?", 1)[0].endswith("/"):
                return super().send_head()  # redirect to the slash form
            wanted = (
                "index.v1.json" if _prefers_json(self.headers.get("Accept", "")) else "index.html"
            )
            target = os.path.join(path, wanted)
            if not os.path.isfile(target):
                self.send_error(404)
                return None
            data = open(target, "rb")  # noqa: SIM115 (the base class closes it)
            self._served = wanted
            self.send_response(200)
            self.send_header("Content-Type", JSON_TYPE if wanted.endswith(".json") else "text/html")
            self.send_header("Content-Length", str(os.fstat(data.fileno()).st_size))
            self.send_header("Vary", "Accept")
            self.end_headers()
            return data
        return super().send_head()

    def guess_type(self, path: Any) -> str:
        p = str(path)
        if p.endswith(".v1.json"):
            return JSON_TYPE
        if p.endswith((".whl", ".metadata")):
            return "application/octet-stream"
        return super().guess_type(path)

    def log_message(self, fmt: str, *args: Any) -> None:
        if self.log_file is not None:
            # A malformed request line is logged before command and path exist.
            served = getattr(self, "_served", "")
            command = getattr(self, "command", None) or "-"
            path = getattr(self, "path", None) or "-"
            self.log_file.write(f"{command} {path} {served} {fmt % args}\n")
            self.log_file.flush()


def make_server(
    site: Path, port: int = 0, log: TextIO | None = None
) -> http.server.ThreadingHTTPServer:
    """A server bound to 127.0.0.1 (port 0: any free port)."""
    handler = type("Handler", (IndexHandler,), {"log_file": log})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", port), partial(handler, directory=str(site))
    )
    return server


@contextlib.contextmanager
def serving(site: Path, log: TextIO | None = None) -> Iterator[str]:
    """Serve ``site`` on a free port of 127.0.0.1 in a thread; yield its URL."""
    server = make_server(site, 0, log)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host!s}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
