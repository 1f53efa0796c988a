"""The daemon starts AF_XDP workers only when some class sends them something: a policy whose DNS
classes are judged wholly in XDP (placement "xdp only") runs no worker; a reload that adds a
slow-path rule starts them, and one that removes it stops them. Fakes stand in for the kernel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hyperion.daemon import daemon as daemon_module
from hyperion.policy.loading import parse_policy

XDP_ONLY = ("fast_path:\n  redirect_ports: [{protocol: udp, port: 53}]\n"
            "slow_path:\n  dns_rules: [{match: 'evil.test', action: nxdomain}]\n")
WITH_REGEX = ("fast_path:\n  redirect_ports: [{protocol: udp, port: 53}]\n"
              "slow_path:\n  dns_rules: [{match: 'evil.test', action: nxdomain}, {regex: '^x', action: drop}]\n")
SLOW_PLACEMENT = XDP_ONLY + "  dns_name_rules: slow_path\n"
OTHER_CLASS = "fast_path:\n  redirect_ports: [{protocol: tcp, port: 8080}]\n"


class RecordingSlowPath:
    live: list[RecordingSlowPath] = []

    def __init__(self, *args: Any, compiled: Any = None, **kwargs: Any) -> None:
        self.stopped = False
        self.rules = compiled

    def start(self) -> None:
        RecordingSlowPath.live.append(self)

    def update(self, policy: Any, rules: Any) -> None:
        self.rules = rules

    def stop(self) -> None:
        self.stopped = True
        RecordingSlowPath.live.remove(self)


class FakeFastPath:
    def __init__(self) -> None:
        self.generation = 1

    def apply(self, compiled: Any, retire: Any = None) -> int:
        self.generation += 1
        return self.generation

    def active_slot(self) -> int:
        return self.generation & 1

    def record_applied_policy(self, text: str) -> None:
        pass


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> daemon_module.Daemon:
    RecordingSlowPath.live = []
    monkeypatch.setattr(daemon_module, "SlowPath", RecordingSlowPath)
    d = daemon_module.Daemon(daemon_module.DaemonOptions("veth-x", tmp_path / "p.yaml"))
    d.fastpath = FakeFastPath()  # type: ignore[assignment]
    monkeypatch.setattr(d, "compile_slow_path", lambda policy: object())
    return d


def apply(d: daemon_module.Daemon, text: str) -> None:
    d.apply_policy(parse_policy(text), text, compiled=object())  # type: ignore[arg-type]


def test_a_policy_judged_wholly_in_xdp_runs_no_worker(daemon: daemon_module.Daemon) -> None:
    apply(daemon, XDP_ONLY)
    assert daemon.slowpath is None and RecordingSlowPath.live == []


@pytest.mark.parametrize("text", [WITH_REGEX, SLOW_PLACEMENT, OTHER_CLASS],
                         ids=["regex rule", "dns_name_rules slow_path", "a non-DNS class"])
def test_workers_run_when_a_class_needs_them(daemon: daemon_module.Daemon, text: str) -> None:
    apply(daemon, text)
    assert daemon.slowpath is not None and len(RecordingSlowPath.live) == 1


def test_reloads_start_and_stop_the_workers_as_needed(daemon: daemon_module.Daemon) -> None:
    apply(daemon, XDP_ONLY)
    assert daemon.slowpath is None
    apply(daemon, WITH_REGEX)
    assert daemon.slowpath is not None and len(RecordingSlowPath.live) == 1
    apply(daemon, XDP_ONLY)
    assert daemon.slowpath is None and RecordingSlowPath.live == []
