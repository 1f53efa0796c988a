"""The daemon's control socket: `hyperion queues` asks a running daemon about its queues and for
queue-local actions (restart, withdraw, restore).

A Unix stream socket, mode 0600, in the interface's state directory
(/run/hyperion/<pin name>/control.sock). One JSON request per connection, one
JSON answer: {"ok": true, ...} or {"ok": false, "error": "..."}.

The protocol is defined here once, for both ends: the CLI builds the requests below and reads a
ControlReply, the daemon's handler takes a decoded ControlRequest and returns a ControlReply.
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
from enum import StrEnum
from pathlib import Path
from typing import Literal, TypedDict, get_args, get_type_hints

from hyperion.errors import HyperionError
from hyperion.fastpath.loader import STATE_ROOT, pin_dir_for
from hyperion.slowpath.telemetry import QueueStatus
from hyperion.slowpath.watchdog import QueueAction

log = logging.getLogger("hyperion.control")

MAX_REQUEST_BYTES = 4096


class ControlError(HyperionError):
    """No daemon answers, or it refused the request."""


# Queue-local actions, carried out by the slow path's watchdog, which defines them.
QUEUE_ACTIONS: tuple[QueueAction, ...] = tuple(QueueAction)


class QueuesRequest(TypedDict):
    """`hyperion queues`: every managed queue's planes."""
    cmd: Literal["queues"]


class QueueActionRequest(TypedDict):
    """`hyperion queues restart|withdraw|restore`; restore takes no queue."""
    cmd: QueueAction
    queue: int | None


# block_add, block_del and policy_apply are the writes the CLI forwards to the daemon that owns the
# interface; the daemon carries them out on its main thread.
class BlockAddRequest(TypedDict):
    """`hyperion block add`, forwarded while a daemon owns the interface; ttl in seconds, None: until removed."""
    cmd: Literal["block_add"]
    address: str
    ttl: float | None


class BlockDelRequest(TypedDict):
    cmd: Literal["block_del"]
    address: str


class PolicyApplyRequest(TypedDict):
    """`hyperion policy apply`: the daemon reads the file (an absolute path) itself."""
    cmd: Literal["policy_apply"]
    path: str


ControlRequest = QueuesRequest | QueueActionRequest | BlockAddRequest | BlockDelRequest | PolicyApplyRequest
# Every "cmd" value, read off the request definitions.
def _commands(hint: object) -> tuple[str, ...]:
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        return tuple(member.value for member in hint)
    return tuple(get_args(hint))


CONTROL_COMMANDS: tuple[str, ...] = tuple(
    command for kind in get_args(ControlRequest) for command in _commands(get_type_hints(kind)["cmd"]))

class ControlReply(TypedDict, total=False):
    """The answer to any request: "ok" (and "error" when false) from the server, then the fields of
    the request's kind, which the handler returns."""
    ok: bool
    error: str
    queues: list[QueueStatus]  # queues
    slowpath: bool  # queues: whether a slow path runs
    state: str  # restart: the queue's state after it
    channels: int  # withdraw, restore: the channel count now
    was: int  # withdraw: the channel count before
    generation: int  # policy_apply
    removed: bool  # block_del: whether the address was blocked
    pid: int  # block_add, block_del, policy_apply: the daemon that carried it out


Handler = Callable[[ControlRequest], ControlReply]


def _field(message: dict[str, object], name: str, *types: type) -> object:
    value = message.get(name)
    if name not in message or not isinstance(value, types) or isinstance(value, bool):
        wanted = " or ".join("null" if t is type(None) else t.__name__ for t in types)
        raise ControlError(f"control request {message.get('cmd')!r}: {name!r} must be {wanted}, got {value!r}")
    return value


def decode_request(message: object) -> ControlRequest:
    """A request as read off the socket, checked against the definitions above."""
    if not isinstance(message, dict):
        raise ControlError(f"a control request is a JSON object, got {type(message).__name__}")
    command = message.get("cmd")
    if command == "queues":
        return QueuesRequest(cmd="queues")
    for action in QUEUE_ACTIONS:
        if command == action.value:
            # An absent queue is None, as for restore (which names none).
            queue = _field(message, "queue", int, type(None)) if "queue" in message else None
            assert queue is None or isinstance(queue, int)
            return QueueActionRequest(cmd=action, queue=queue)
    if command == "block_add":
        address = _field(message, "address", str)
        ttl = _field(message, "ttl", int, float, type(None)) if "ttl" in message else None  # absent: until removed
        assert isinstance(address, str) and (ttl is None or isinstance(ttl, int | float))
        return BlockAddRequest(cmd="block_add", address=address, ttl=None if ttl is None else float(ttl))
    if command == "block_del":
        address = _field(message, "address", str)
        assert isinstance(address, str)
        return BlockDelRequest(cmd="block_del", address=address)
    if command == "policy_apply":
        path = _field(message, "path", str)
        assert isinstance(path, str)
        return PolicyApplyRequest(cmd="policy_apply", path=path)
    raise ControlError(f"unknown control command {command!r}")


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
                answer: ControlReply
                try:
                    answer = {"ok": True, **handler(decode_request(json.loads(line)))}
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


def request(ifname: str, message: ControlRequest, timeout: float = 15.0) -> ControlReply:
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
    answer: ControlReply = json.loads(data or b"{}")
    if not answer.get("ok"):
        raise ControlError(answer.get("error") or "the daemon gave no answer")
    return answer
