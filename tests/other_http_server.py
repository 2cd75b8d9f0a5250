"""A real HTTP server that is not Triton (``http.server``), for tests of a Server URL that points elsewhere.

``other_http_server()`` serves, on a free local port, whatever its ``mode`` says: plain text, JSON that is
not Triton's, or an HTML 404 page (``ANSWERS``), to every GET and POST.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
from typing import Iterator

ANSWERS = {  # mode -> (status, content type, body)
    "text": (200, "text/plain", b"hello, I am not Triton"),
    "json": (200, "application/json", b'{"status": "ok", "uptime": 12}'),
    "html404": (404, "text/html", b"<html><head><title>404 Not Found</title></head><body><h1>Not Found</h1>"
                                  b"<p>The requested URL was not found on this server.</p></body></html>"),
}


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        status, ctype, body = ANSWERS[self.server.mode]
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def other_http_server(mode: str = "text") -> Iterator[http.server.ThreadingHTTPServer]:
    """The server (its ``server_port``; set ``.mode`` to change its answers), shut down on exit."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.mode = mode
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
