"""The control-socket protocol (hyperion.daemon.control), root-free: the requests the CLI sends reach
the daemon's handler as sent, malformed ones are refused by name, and every request kind the
protocol defines is one the daemon handles."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperion.daemon import control
from hyperion.daemon.control import CONTROL_COMMANDS, ControlError, ControlReply, ControlRequest, ControlServer
from hyperion.daemon.daemon import Daemon, DaemonOptions
from hyperion.errors import HyperionError
from tests.support.paths import POLICIES

POLICY = POLICIES / "example.yaml"


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, list[ControlRequest]]]:
    """A control server on a private socket that records what its handler receives."""
    path = tmp_path / "control.sock"
    monkeypatch.setattr(control, "socket_path", lambda ifname: path)
    received: list[ControlRequest] = []

    def handler(message: ControlRequest) -> ControlReply:
        received.append(message)
        if message["cmd"] == "block_del":
            return {"removed": True, "pid": 4242}
        return {"pid": 4242}

    srv = ControlServer(path, handler)
    try:
        yield path, received
    finally:
        srv.close()


def _raw(path: Path, line: bytes) -> object:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(line)
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


# The requests as the CLI builds them (cli/main.py), and the JSON that goes on the wire.
CLI_REQUESTS: list[tuple[ControlRequest, str]] = [
    ({"cmd": "queues"}, '{"cmd": "queues"}'),
    ({"cmd": "restart", "queue": 1}, '{"cmd": "restart", "queue": 1}'),
    ({"cmd": "withdraw", "queue": 0}, '{"cmd": "withdraw", "queue": 0}'),
    ({"cmd": "restore", "queue": None}, '{"cmd": "restore", "queue": null}'),
    ({"cmd": "block_add", "address": "192.0.2.7", "ttl": 30.0},
     '{"cmd": "block_add", "address": "192.0.2.7", "ttl": 30.0}'),
    ({"cmd": "block_add", "address": "2001:db8::7", "ttl": None},
     '{"cmd": "block_add", "address": "2001:db8::7", "ttl": null}'),
    ({"cmd": "block_del", "address": "198.51.100.9"}, '{"cmd": "block_del", "address": "198.51.100.9"}'),
    ({"cmd": "policy_apply", "path": "/etc/hyperion/policy.yaml"},
     '{"cmd": "policy_apply", "path": "/etc/hyperion/policy.yaml"}'),
]


@pytest.mark.parametrize(("message", "wire"), CLI_REQUESTS, ids=[w for _, w in CLI_REQUESTS])
def test_request_reaches_the_handler_as_sent(server: tuple[Path, list[ControlRequest]], message: ControlRequest,
                                             wire: str) -> None:
    path, received = server
    assert json.dumps(message) == wire
    answer = control.request("eth-test", message, timeout=5)
    assert received == [message]
    assert answer["ok"] is True and answer["pid"] == 4242
    assert answer.get("removed") is (True if message["cmd"] == "block_del" else None)
    # And over a raw socket: one JSON line in, one JSON object out.
    assert _raw(path, (wire + "\n").encode()) == answer
    assert received[-1] == message


@pytest.mark.parametrize(("line", "named"), [
    (b'["block_add"]\n', "JSON object, got list"),
    (b'{"cmd": "shutdown"}\n', "unknown control command 'shutdown'"),
    (b'{"address": "192.0.2.1"}\n', "unknown control command None"),
    (b'{"cmd": "block_add", "ttl": 5}\n', "'address' must be str, got None"),
    (b'{"cmd": "block_add", "address": 3232235521, "ttl": null}\n', "'address' must be str"),
    (b'{"cmd": "block_add", "address": "192.0.2.1", "ttl": "10m"}\n', "'ttl' must be int or float or null"),
    (b'{"cmd": "block_add", "address": "192.0.2.1", "ttl": true}\n', "'ttl' must be int or float or null"),
    (b'{"cmd": "block_del"}\n', "'address' must be str"),
    (b'{"cmd": "restart", "queue": "0"}\n', "'queue' must be int or null, got '0'"),
    (b'{"cmd": "policy_apply", "path": null}\n', "'path' must be str"),
    (b'{"cmd": "queues"\n', "Expecting"),  # not JSON: the decoder's own message
])
def test_malformed_request_is_refused_by_name(server: tuple[Path, list[ControlRequest]], line: bytes,
                                              named: str) -> None:
    path, received = server
    answer = _raw(path, line)
    assert isinstance(answer, dict) and answer["ok"] is False and named in answer["error"], answer
    assert received == []  # the handler never sees it


def test_refusal_reaches_the_cli_as_control_error(server: tuple[Path, list[ControlRequest]]) -> None:
    bad: dict[str, object] = {"cmd": "block_del", "address": None}
    with pytest.raises(ControlError, match="'address' must be str"):
        control.request("eth-test", bad, timeout=5)  # type: ignore[arg-type]


def test_no_daemon_is_a_control_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control, "socket_path", lambda ifname: tmp_path / "none.sock")
    with pytest.raises(ControlError, match="no daemon is running for eth-test"):
        control.request("eth-test", {"cmd": "queues"}, timeout=5)


def test_every_request_kind_is_one_the_daemon_handles(tmp_path: Path) -> None:
    """Each "cmd" the protocol defines gets the daemon's own answer, never "unknown control command"."""
    assert sorted(CONTROL_COMMANDS) == sorted(
        ["queues", "restart", "withdraw", "restore", "block_add", "block_del", "policy_apply"])
    daemon = Daemon(DaemonOptions(ifname="eth-test", policy_path=POLICY))
    daemon.stop()  # nothing started: writes are refused at once instead of waiting for a main loop
    examples: dict[str, dict[str, object]] = {
        "queues": {"cmd": "queues"},
        "restart": {"cmd": "restart", "queue": 0},
        "withdraw": {"cmd": "withdraw", "queue": 0},
        "restore": {"cmd": "restore", "queue": None},
        "block_add": {"cmd": "block_add", "address": "192.0.2.1", "ttl": 60},
        "block_del": {"cmd": "block_del", "address": "192.0.2.1"},
        "policy_apply": {"cmd": "policy_apply", "path": str(POLICY)},
    }
    assert sorted(examples) == sorted(CONTROL_COMMANDS)
    answers: dict[str, str] = {}
    for command in CONTROL_COMMANDS:
        try:
            answers[command] = json.dumps(daemon.control(control.decode_request(examples[command])))
        except HyperionError as exc:
            answers[command] = str(exc)
    assert answers == {
        "queues": '{"queues": [], "slowpath": false}',
        "restart": "no slow path is running (the policy has no redirect_ports, or --no-slowpath)",
        "withdraw": "no slow path is running (the policy has no redirect_ports, or --no-slowpath)",
        "restore": "no slow path is running (the policy has no redirect_ports, or --no-slowpath)",
        "block_add": "the daemon is stopping; nothing was changed",
        "block_del": "the daemon is stopping; nothing was changed",
        "policy_apply": "the daemon is stopping; nothing was changed",
    }


def test_absent_queue_and_ttl_mean_none() -> None:
    """As the daemon always read them: restore names no queue, a block without ttl lasts until removed."""
    assert control.decode_request({"cmd": "restore"}) == {"cmd": "restore", "queue": None}
    assert control.decode_request({"cmd": "block_add", "address": "203.0.113.5"}) == {
        "cmd": "block_add", "address": "203.0.113.5", "ttl": None}
    assert control.decode_request({"cmd": "block_add", "address": "203.0.113.5", "ttl": 600}) == {
        "cmd": "block_add", "address": "203.0.113.5", "ttl": 600.0}
