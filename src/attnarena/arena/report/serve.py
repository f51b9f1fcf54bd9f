"""``attnarena serve``: the leaderboard page served from the store while a suite runs.

Read-only: every request opens the store for reading and closes it. ``/`` is the page
(``web.page_html`` in live mode: it asks ``/data.json`` again every few seconds), and
``/data.json`` the store as the page reads it, with the runs in progress, who holds each
lease, and their curves so far (from their checkpoints under ``out_dir``). Binds to
127.0.0.1 unless told otherwise.
"""
from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from attnarena.arena.report.web import page_data, page_html
from attnarena.arena.store import Store, StoreError, store_label


def read_data(location, out_dir) -> dict:
    """The page's data from the store at ``location``; a store that cannot be read yet
    (no run has started) gives an empty page that says why."""
    try:
        store = Store(location, readonly=True)
    except StoreError as error:
        return {"generated": time.strftime("%Y-%m-%d %H:%M:%S"),
                "store": store_label(location), "status": {}, "running": [], "runs": [],
                "tasks": [], "averages": [], "speed": [], "compression": {},
                "linearization": {}, "styles": {}, "error": str(error)}
    try:
        return page_data(store, out_dir)
    finally:
        store.close()


def make_server(location, out_dir="results", host="127.0.0.1", port=8765,
                refresh_seconds=3.0) -> ThreadingHTTPServer:
    """An HTTP server for the page (not started: call ``serve_forever``). ``port`` 0 takes
    a free one (``server.server_address`` tells which)."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the name http.server calls)
            path = self.path.split("?")[0]
            if path in ("/", "/index.html", "/leaderboard.html"):
                body = page_html(read_data(location, out_dir), live=True,
                                 refresh_seconds=refresh_seconds).encode()
                kind = "text/html; charset=utf-8"
            elif path == "/data.json":
                body = json.dumps(read_data(location, out_dir), default=str).encode()
                kind = "application/json"
            else:
                self.send_error(404, "the page is at /, its data at /data.json")
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # one line per request would drown the terminal
            pass

    try:
        return ThreadingHTTPServer((host, port), Handler)
    except OSError as error:
        raise ValueError(f"cannot serve on {host}:{port}: {error.strerror or error}; "
                         "choose another --port") from None
