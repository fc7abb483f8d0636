"""A fault-injecting HTTP proxy in front of the S3 server, for fault tests and stress runs.

>>> with run_fault_proxy(server.endpoint_url, lambda method, path: "cut" if "/dandi/index/" in path else None) as url:
...     location = dataclasses.replace(location, endpoint_url=url)

``decide(method, path)`` is asked for every request and answers ``None`` (pass it through),
``"503"`` (answer 503 SlowDown without forwarding), ``"reset"`` (close the connection without
an answer) or ``"cut"`` (forward, then send the headers and only half the body, and close).
Requests are forwarded byte for byte (``Host`` included), so signatures stay valid.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

Decide = Callable[[str, str], str | None]
_SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


def _handler(upstream: str, decide: Decide, counts: dict[str, int]) -> type[BaseHTTPRequestHandler]:
    target = urlsplit(upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _proxy(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            fault = decide(self.command, self.path)
            if fault is not None:
                counts[fault] = counts.get(fault, 0) + 1
            if fault == "reset":
                self.close_connection = True
                return
            if fault == "503":
                self.send_response(503)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(_SLOW_DOWN)))
                self.end_headers()
                self.wfile.write(_SLOW_DOWN)
                return
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    conn.putheader(name, value)
                conn.endheaders(body or None)
                response = conn.getresponse()
                data = response.read()
            finally:
                conn.close()
            self.send_response(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if fault == "cut" and self.command != "HEAD":
                self.wfile.write(data[: len(data) // 2])
                self.close_connection = True
            elif self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _proxy

    return Handler


@contextmanager
def run_fault_proxy(upstream: str, decide: Decide) -> Iterator[tuple[str, dict[str, int]]]:
    """Serve the proxy on 127.0.0.1 (a free port); yields its URL and the faults injected so far
    (fault -> count)."""
    counts: dict[str, int] = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(upstream, decide, counts))
    server.daemon_threads = True
    server.handle_error = lambda request, address: None  # type: ignore[method-assign]  # clients hang up mid-fault
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", counts
    finally:
        server.shutdown()
        server.server_close()
