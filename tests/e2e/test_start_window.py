"""Issue 12, defect 3: no unenforced window when the fast path starts.

A blocked source streams while `hyperion run` (or `hyperion attach --policy`) starts. The
program must never see one of its packets before the policy is in the maps: not one is
counted pass/no_config, and once attached every one is dropped. A restart over pinned
state (`run --keep-on-exit`, then `run` again) keeps dropping throughout.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperion.fastpath.loader import PIN_ROOT
from hyperion.lab.bench import BaselineProgram
from hyperion.lab.sandbox import CLIENT_V4, HOST_V4, Sandbox, entered_netns
from tests.support.netutil import (
    HYPERION,
    PORT,
    UDPTOOL,
    Daemon,
    Receiver,
    counter,
    generation,
    hyperion,
    status,
    wait_counter,
    wait_for,
)

BLOCKED = "198.51.100.42"


def _policy(tmp_path: Path) -> Path:
    # Enough other entries that filling the maps takes a while: a program attached before
    # that would judge many stream packets without a policy.
    base = int(ipaddress.IPv6Address("2001:db8:7::"))
    extra = ", ".join(f'"{ipaddress.IPv6Address(base + i)}"' for i in range(20_000))
    path = tmp_path / "policy.yaml"
    path.write_text(f'fast_path:\n  drop_ips: ["{BLOCKED}", {extra}]\n')
    return path


def _udp_no_ports(sb: Sandbox) -> int:
    """The host stack's Udp NoPorts (RFC 4113 udpNoPorts): datagrams it got for a port nobody holds."""
    lines = [line.split() for line in sb.exec(sb.host_ns, ["cat", "/proc/net/snmp"]).stdout.splitlines()
             if line.startswith("Udp:")]
    return int(lines[1][lines[0].index("NoPorts")])


@pytest.fixture
def stream(sandbox: Sandbox) -> Iterator[subprocess.Popen[str]]:
    """A paced stream from the blocked source (bounded: 30,000 packets or 40 s), already flowing."""
    sb = sandbox
    sb.add_client_address(BLOCKED)
    before = _udp_no_ports(sb)
    proc = sb.popen(sb.client_ns, [*UDPTOOL, "send", "--src", BLOCKED, "--dst", HOST_V4, "--port", str(PORT),
                                   "--count", "30000", "--interval", "0.001", "--max-seconds", "40",
                                   "--tag", "stream"], stdout=subprocess.PIPE)
    try:
        # Before Hyperion is attached the host's stack gets it (no socket yet): proof that it flows.
        wait_for(lambda: _udp_no_ports(sb) - before >= 50, 20)
        yield proc
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
    proc.wait(timeout=10)


def test_run_fills_the_maps_before_attaching(sandbox: Sandbox, stream: subprocess.Popen[str],
                                            tmp_path: Path) -> None:
    sb = sandbox
    daemon = Daemon(sb, _policy(tmp_path), "--no-watch").start()
    try:
        wait_for(lambda: counter(status(sb), "drop", "blocklist_ip") >= 200, 20)
        receiver = Receiver(sb)
        wait_for(lambda: counter(status(sb), "drop", "blocklist_ip") >= 400, 20)
        _stop(stream)
        receiver.barrier(CLIENT_V4)  # unlisted, same veth queue: the stream was judged before it
        assert receiver.result()["by_source"].get(BLOCKED, 0) == 0
        st = status(sb)
        assert counter(st, "pass", "no_config") == 0, st["counters"]
        assert st["policy_generation"] == 1
    finally:
        code, err = daemon.stop()
    assert code == 0, err


def test_attach_with_policy_fills_the_maps_before_attaching(sandbox: Sandbox, stream: subprocess.Popen[str],
                                                           tmp_path: Path) -> None:
    sb = sandbox
    try:
        hyperion(sb, "attach", "--iface", sb.host_if, "--policy", str(_policy(tmp_path)))
        receiver = Receiver(sb)
        wait_for(lambda: counter(status(sb), "drop", "blocklist_ip") >= 200, 20)
        _stop(stream)
        receiver.barrier(CLIENT_V4)  # unlisted, same veth queue: the stream was judged before it
        assert receiver.result()["by_source"].get(BLOCKED, 0) == 0
        st = status(sb)
        assert counter(st, "pass", "no_config") == 0, st["counters"]
        assert st["policy_generation"] == 1
    finally:
        hyperion(sb, "detach", "--iface", sb.host_if, check=False)


def test_restart_over_pins_keeps_enforcing(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    sb.add_client_address(BLOCKED)
    policy = _policy(tmp_path)
    daemon = Daemon(sb, policy, "--keep-on-exit", "--no-watch").start()
    receiver = Receiver(sb)
    before = counter(status(sb), "drop", "blocklist_ip")
    proc = sb.popen(sb.client_ns, [*UDPTOOL, "send", "--src", BLOCKED, "--dst", HOST_V4, "--port", str(PORT),
                                   "--count", "15000", "--interval", "0.001", "--max-seconds", "60",
                                   "--tag", "stream"], stdout=subprocess.PIPE)
    try:
        wait_for(lambda: counter(status(sb), "drop", "blocklist_ip") - before >= 100, 20)
        assert daemon.stop()[0] == 0
        # No daemon now: the pinned program goes on dropping.
        stopped_at = counter(status(sb), "drop", "blocklist_ip")
        wait_for(lambda: counter(status(sb), "drop", "blocklist_ip") - stopped_at >= 100, 20)
        daemon = Daemon(sb, policy, "--no-watch").start(min_generation=2)
        assert proc.wait(timeout=90) == 0
        assert proc.stdout is not None
        sent = int(json.loads(proc.stdout.read())["sent"])
        wait_counter(sb, "drop", "blocklist_ip", before + sent)
        receiver.barrier(CLIENT_V4)
        st = status(sb)
        assert generation(sb) == 2
        assert receiver.result()["by_source"].get(BLOCKED, 0) == 0
        assert counter(st, "drop", "blocklist_ip") - before == sent
        assert counter(st, "pass", "no_config") == 0, st["counters"]
    finally:
        _stop(proc)
        code, err = daemon.stop()
    assert code == 0, err


def test_run_beside_a_foreign_xdp_program_starts_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    """Filling the maps first must not mean starting workers on an interface that cannot be attached."""
    sb = sandbox
    policy = tmp_path / "dns.yaml"
    policy.write_text('fast_path:\n  redirect_ports: [{protocol: udp, port: 53}]\n'
                      'slow_path:\n  dns_rules: [{match: "evil.test", action: drop}]\n')
    with entered_netns(sb.host_ns):
        baseline = BaselineProgram(sb.host_if, "xdp_pass", "baseline_pass")
    try:
        proc = sb.exec(sb.host_ns, [*HYPERION, "run", "--iface", sb.host_if, "--policy", str(policy)], check=False)
        assert proc.returncode == 2, proc.stderr
        assert f"hyperion: error: {sb.host_if}: another XDP program is already attached; detach it first" \
            in proc.stderr
        assert "slow path on" not in proc.stderr and "worker" not in proc.stderr, proc.stderr
        assert not PIN_ROOT.exists() or not any(p.name.endswith(f"_{sb.host_if}") for p in PIN_ROOT.iterdir())
    finally:
        baseline.close()
