"""A fault-injecting HTTP proxy on 127.0.0.1 in front of a test Orthanc.

Each rule counts the requests that match its method and path prefix (None matches any) and injects
its fault into the n-th of them. The faults:
  status500   answer 500 without forwarding
  delay       wait `delay` seconds, then forward (longer than the client's timeout, so it times out)
  truncate    forward, then send the headers and only half of the body before closing
  reset       close the connection with a TCP reset without answering
  down        answer nothing and reset every request until `down_seconds` have passed
  kill        forward, then call on_kill() before the answer goes back (used to SIGKILL the driver)
  hook        forward, then call on_hook() before answering (used to restart Orthanc or fill the tape)
  hook_before call on_hook(), then forward (used to add an instance just before a DELETE)
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade"}


class _QuietServer(ThreadingHTTPServer):
    """A server that does not print a traceback when a client resets its connection."""

    def handle_error(self, request: object, client_address: object) -> None:
        pass


@dataclass
class Rule:
    """Inject `fault` into the n-th request that matches method and path prefix."""

    fault: str
    nth: int
    method: str | None = None
    path_prefix: str | None = None
    seen: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and method != self.method:
            return False
        return self.path_prefix is None or path.startswith(self.path_prefix)


class FaultProxy:
    """A threaded loopback proxy; `url` is where clients connect, `target` the Orthanc behind it."""

    def __init__(self, target: str, delay: float = 3.0, down_seconds: float = 2.0):
        parts = urlsplit(target)
        self.target_host = parts.hostname or "127.0.0.1"
        self.target_port = parts.port or 80
        self.delay = delay
        self.down_seconds = down_seconds
        self.rules: list[Rule] = []
        self.on_kill: Callable[[], None] = lambda: None
        self.on_hook: Callable[[], None] = lambda: None
        self.requests = 0
        self.by_method: dict[str, int] = {}
        self.injected: list[tuple[int, str, str, str]] = []
        self._down_until = 0.0
        self._lock = threading.Lock()
        self._in_flight = 0
        self._idle = threading.Condition(self._lock)
        self._server = _QuietServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until the proxy has finished every request received so far, forwarded or dropped.

        A delayed request reaches Orthanc after its client has given up. Without this wait, it
        could land in the next run, for example a DELETE of an instance that was just uploaded again.
        """
        with self._idle:
            if not self._idle.wait_for(lambda: self._in_flight == 0, timeout):
                raise RuntimeError(f"timed out after {timeout} s waiting for the fault proxy: {self._in_flight} requests "
                                   "still in progress")

    def _enter(self) -> None:
        with self._lock:
            self._in_flight += 1

    def _leave(self) -> None:
        with self._idle:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.notify_all()

    def reset(self) -> None:
        """Clear the schedule and the counters before the next run."""
        with self._lock:
            self.rules = []
            self.requests = 0
            self.by_method = {}
            self.injected = []
            self._down_until = 0.0
            self.on_kill = lambda: None
            self.on_hook = lambda: None

    def _next_fault(self, method: str, path: str) -> str | None:
        with self._lock:
            self.requests += 1
            self.by_method[method] = self.by_method.get(method, 0) + 1
            if time.monotonic() < self._down_until:
                return "down"
            fault = None
            for rule in self.rules:
                if rule.matches(method, path):
                    rule.seen += 1
                    if rule.seen == rule.nth and fault is None:
                        fault = rule.fault
            if fault:
                self.injected.append((self.requests, method, path, fault))
                if fault == "down":
                    self._down_until = time.monotonic() + self.down_seconds
            return fault

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Without these, headers and body leave in separate segments and delayed ACKs add 40 ms a request.
            disable_nagle_algorithm = True
            wbufsize = 64 * 1024

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (signature of the base class)
                pass

            def _reset(self) -> None:
                # SO_LINGER with a zero timeout makes close() send a TCP reset.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True

            def _forward(self) -> tuple[int, list[tuple[str, str]], bytes]:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {name: value for name, value in self.headers.items() if name.lower() not in HOP_BY_HOP}
                connection = http.client.HTTPConnection(proxy.target_host, proxy.target_port, timeout=120)
                try:
                    connection.request(self.command, self.path, body=body, headers=headers)
                    response = connection.getresponse()
                    data = response.read()
                    kept = [(name, value) for name, value in response.getheaders()
                            if name.lower() not in HOP_BY_HOP and name.lower() != "content-length"]
                    return response.status, kept, data
                finally:
                    connection.close()

            def _answer(self, status: int, headers: list[tuple[str, str]], data: bytes, truncate: bool = False) -> None:
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if truncate:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    time.sleep(0.05)
                    self._reset()
                    return
                self.wfile.write(data)
                self.wfile.flush()

            def _handle(self) -> None:
                fault = proxy._next_fault(self.command, self.path)
                if fault in ("reset", "down"):
                    length = int(self.headers.get("Content-Length") or 0)
                    if length:
                        self.rfile.read(length)
                    self._reset()
                    return
                if fault == "status500":
                    length = int(self.headers.get("Content-Length") or 0)
                    if length:
                        self.rfile.read(length)
                    self._answer(500, [("Content-Type", "application/json")],
                                 b'{"HttpError": "Internal Server Error", "Message": "injected by the fault proxy"}')
                    return
                if fault == "delay":
                    time.sleep(proxy.delay)
                if fault == "hook_before":
                    proxy.on_hook()
                try:
                    status, headers, data = self._forward()
                except OSError:
                    self._reset()
                    return
                if fault == "kill":
                    proxy.on_kill()
                    self._reset()
                    return
                if fault == "hook":
                    proxy.on_hook()
                self._answer(status, headers, data, truncate=(fault == "truncate"))

            def _handle_counted(self) -> None:
                proxy._enter()
                try:
                    self._handle()
                finally:
                    proxy._leave()

            do_GET = do_POST = do_PUT = do_DELETE = _handle_counted

        return Handler
