"""A minimal OTLP/HTTP receiver: accepts what exporters POST, counts it, keeps nothing.

The service runs with tracing on as shipped (every event sampled, batched
export); this receiver stands in for the collector on 127.0.0.1 so that the
export costs what it costs in production, and says how much was sent.
"""

from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["OtlpReceiver", "delta"]

PATHS = ("/v1/traces", "/v1/metrics", "/v1/logs")


class OtlpReceiver:
    """``start()`` binds a free port on 127.0.0.1 and serves from a thread; read
    :meth:`snapshot` for requests and bytes per path; ``stop()`` at the end."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                if path not in PATHS:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                with receiver._lock:
                    receiver.requests[path] += 1
                    receiver.bytes[path] += len(body)
                # An empty Export*ServiceResponse, in the encoding that was sent.
                is_json = "json" in (self.headers.get("Content-Type") or "")
                reply = b"{}" if is_json else b""
                self.send_response(200)
                self.send_header(
                    "Content-Type", "application/json" if is_json else "application/x-protobuf"
                )
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> str:
        self._thread.start()
        return self.endpoint

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {
                path: {"requests": self.requests[path], "bytes": self.bytes[path]} for path in PATHS
            }

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def delta(
    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]
) -> dict[str, dict[str, int]]:
    """What was received between two snapshots (paths with nothing left out)."""
    out: dict[str, dict[str, int]] = {}
    for path, now in after.items():
        was = before.get(path, {"requests": 0, "bytes": 0})
        diff = {k: now[k] - was.get(k, 0) for k in now}
        if any(diff.values()):
            out[path] = diff
    return out
