"""The daemon's control socket: `hyperion queues` asks a running daemon about its queues and for
queue-local actions (restart, withdraw, restore).

A Unix stream socket, mode 0600, in the interface's state directory
(/run/hyperion/<pin name>/control.sock). One JSON request per connection, one
JSON answer: {"ok": true, ...} or {"ok": false, "error": "..."}.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hyperion.errors import HyperionError
from hyperion.fastpath.loader import STATE_ROOT, pin_dir_for

log = logging.getLogger("hyperion.control")

MAX_REQUEST_BYTES = 4096
Handler = Callable[[dict[str, Any]], dict[str, Any]]


class ControlError(HyperionError):
    """No daemon answers, or it refused the request."""


def socket_path(ifname: str) -> Path:
    return STATE_ROOT / pin_dir_for(ifname).name / "control.sock"


class ControlServer:
    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.exists():
            path.unlink()  # a socket left by a daemon that died

        class _Handler(socketserver.StreamRequestHandler):
            def handle(inner) -> None:
                line = inner.rfile.readline(MAX_REQUEST_BYTES)
                try:
                    answer = {"ok": True, **handler(json.loads(line))}
                except (HyperionError, ValueError, KeyError, TypeError) as exc:
                    answer = {"ok": False, "error": str(exc)}
                inner.wfile.write((json.dumps(answer) + "\n").encode())

        old_umask = os.umask(0o177)  # the socket is created 0600: only root acts on queues
        try:
            self._server = socketserver.ThreadingUnixStreamServer(str(path), _Handler)
        finally:
            os.umask(old_umask)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="control", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def request(ifname: str, message: dict[str, Any], timeout: float = 15.0) -> dict[str, Any]:
    path = socket_path(ifname)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(f"no daemon is running for {ifname} (no control socket at {path})") from None
        sock.sendall((json.dumps(message) + "\n").encode())
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    answer: dict[str, Any] = json.loads(data or b"{}")
    if not answer.get("ok"):
        raise ControlError(answer.get("error") or "the daemon gave no answer")
    return answer
