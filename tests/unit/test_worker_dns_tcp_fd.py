"""The workers get hyp_dns_tcp's fd (XDP's DNS-over-TCP hand-off) the way they get the dynamic
blocklists': one list of the maps a worker holds (protocol.WORKER_MAP_FDS), read by the supervisor
to pass the fds and by the worker to parse them, and handed to the native Queue."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from hyperion import _slowpath
from hyperion.slowpath import worker
from hyperion.slowpath.protocol import WORKER_MAP_FDS
from hyperion.slowpath.worker import Worker

ARGS = ["--ifname", "veth0", "--queue", "0", "--xsk-map-fd", "3", "--dyn4-fd", "4", "--dyn6-fd", "5",
        "--deliver-fd", "6", "--control-fd", "7"]


class _Stop(Exception):
    pass


def _parsed(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> argparse.Namespace:
    seen: list[argparse.Namespace] = []

    def capture(args: argparse.Namespace, out: Any) -> None:
        seen.append(args)
        raise _Stop

    monkeypatch.setattr(worker, "Worker", capture)
    with pytest.raises(_Stop):
        worker.main(argv)
    return seen[0]


def test_the_worker_takes_the_dns_tcp_fd_and_gives_it_to_its_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    assert WORKER_MAP_FDS["dns-tcp-fd"] == "hyp_dns_tcp"
    args = _parsed(monkeypatch, [*ARGS, "--dns-tcp-fd", "9"])
    assert args.dns_tcp_fd == 9
    assert _parsed(monkeypatch, ARGS).dns_tcp_fd == -1  # a program without the map: no hand-off
    opened: list[dict[str, Any]] = []
    monkeypatch.setattr(_slowpath, "Queue", lambda *a, **kw: opened.append(kw))
    w = Worker.__new__(Worker)
    w.args = argparse.Namespace(**{**vars(args), "frames": 4096, "ring_size": 2048, "events": False})
    w.control = None  # type: ignore[assignment]
    w.open_queue(object(), zerocopy=False)
    assert opened[0]["dns_tcp_fd"] == 9
