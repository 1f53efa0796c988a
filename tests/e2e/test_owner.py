"""Issue 12, defect 4: one owner per interface.

A second `hyperion run` on an interface is refused and touches nothing; the CLI's writers go
through the running daemon or refuse while it runs, and without one they write directly; the
daemon notices when its program is detached behind its back.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from hyperion.lab.sandbox import CLIENT_V4, Sandbox, SandboxError
from tests.support.netutil import (
    HYPERION,
    Daemon,
    Receiver,
    counter,
    generation,
    hyperion,
    scrape,
    send,
    status,
    wait_for,
)
from tests.support.peers import dig, dnsmasq
from tests.support.telemetry import parse_metrics, value

POLICY_A = 'fast_path:\n  drop_ips: ["198.51.100.42"]\n'
POLICY_B = 'fast_path:\n  drop_ips: ["198.51.100.43"]\n'
# dns_name_rules: slow_path: the first daemon runs a worker (a queue) for the second to leave alone.
DNS_POLICY = ('fast_path:\n  drop_ips: ["198.51.100.42"]\n'
              '  redirect_ports: [{protocol: udp, port: 53, on_failure: drop}]\n'
              'slow_path:\n  dns_name_rules: slow_path\n  dns_rules: [{match: "evil.test", action: drop}]\n')
SOURCES = ("198.51.100.10", "198.51.100.42", "198.51.100.43")


def delivered(sb: Sandbox, src: str, count: int = 5) -> int:
    receiver = Receiver(sb)
    send(sb, src, count=count)
    receiver.barrier(CLIENT_V4)  # unlisted, same veth queue: src's datagrams were judged before it
    return int(receiver.result()["by_source"].get(src, 0))


def metric(sb: Sandbox, name: str) -> float:
    return value(parse_metrics(scrape(sb))[0], name)


def _addresses(sb: Sandbox) -> None:
    for address in SOURCES:
        sb.add_client_address(address)


def test_second_run_is_refused_and_touches_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    _addresses(sb)
    first_policy, second_policy = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first_policy.write_text(DNS_POLICY)
    second_policy.write_text('fast_path:\n  drop_ips: ["198.51.100.10"]\n')
    server = dnsmasq(sb)
    first = Daemon(sb, first_policy).start()
    try:
        assert first.proc is not None
        wait_for(lambda: dig(sb, "good.test") == "NOERROR 203.0.113.80", 10)
        queues_before = json.loads(hyperion(sb, "queues", "--iface", sb.host_if, "--json").stdout)["queues"]
        assert [q["state"] for q in queues_before] == ["active"]
        # Its own metrics port, so nothing but the interface is shared with the first.
        second = sb.popen(sb.host_ns, [*HYPERION, "run", "--iface", sb.host_if, "--policy", str(second_policy),
                                       "--metrics-addr", "127.0.0.1:2113"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            _, err = second.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            second.kill()
            second.communicate(timeout=10)
            raise AssertionError("a second `hyperion run` on the same interface kept running") from None
        assert second.returncode == 2, err
        assert err.startswith("hyperion: error: "), err
        assert f"pid {first.proc.pid}" in err and sb.host_if in err, err
        # The first daemon: same policy, same queues, still attached and healthy.
        assert generation(sb) == 1
        assert delivered(sb, "198.51.100.42") == 0 and delivered(sb, "198.51.100.10") == 5
        assert dig(sb, "good.test") == "NOERROR 203.0.113.80"
        assert dig(sb, "evil.test") == "TIMEOUT"
        queues = json.loads(hyperion(sb, "queues", "--iface", sb.host_if, "--json").stdout)
        assert queues["source"] == "daemon" and [q["state"] for q in queues["queues"]] == ["active"]
        assert metric(sb, "hyperion_fastpath_attached") == 1 and metric(sb, "hyperion_fastpath_up") == 1
    finally:
        code, err = first.stop()
        server.terminate()
        server.wait(timeout=10)
    assert code == 0, err


def test_cli_writers_go_through_the_daemon_or_refuse(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    _addresses(sb)
    policy, other = tmp_path / "policy.yaml", tmp_path / "other.yaml"
    policy.write_text(POLICY_A)
    other.write_text(POLICY_B)
    daemon = Daemon(sb, policy, "--no-watch").start()
    try:
        assert daemon.proc is not None
        via = f"(through the daemon, pid {daemon.proc.pid})"
        before = counter(status(sb), "drop", "blocklist_dynamic")
        out = hyperion(sb, "block", "add", "198.51.100.10", "--iface", sb.host_if).stdout
        assert out.strip() == f"blocked 198.51.100.10 until removed {via}"
        assert delivered(sb, "198.51.100.10") == 0
        assert counter(status(sb), "drop", "blocklist_dynamic") - before == 5
        out = hyperion(sb, "block", "del", "198.51.100.10", "--iface", sb.host_if).stdout
        assert out.strip() == f"unblocked 198.51.100.10 {via}"
        gone = hyperion(sb, "block", "del", "198.51.100.10", "--iface", sb.host_if, check=False)
        assert gone.returncode == 1 and gone.stdout.strip() == f"198.51.100.10 was not blocked {via}"
        assert delivered(sb, "198.51.100.10") == 5

        out = hyperion(sb, "policy", "apply", str(other), "--iface", sb.host_if).stdout
        assert out.strip() == f"applied {other}: generation 2 {via}"
        assert generation(sb) == 2
        assert delivered(sb, "198.51.100.43") == 0 and delivered(sb, "198.51.100.42") == 5
        bad = tmp_path / "bad.yaml"
        bad.write_text('fast_path:\n  drop_ips: ["198.51.100.999"]\n')
        refused = hyperion(sb, "policy", "apply", str(bad), "--iface", sb.host_if, check=False)
        assert refused.returncode == 2 and "fast_path.drop_ips[0]" in refused.stderr
        assert generation(sb) == 2

        for argv in (["detach", "--iface", sb.host_if],
                     ["attach", "--iface", sb.host_if, "--policy", str(policy)]):
            proc = hyperion(sb, *argv, check=False)
            assert proc.returncode == 2, proc.stderr
            assert proc.stderr.startswith(f"hyperion: error: {argv[0]}: refused: {sb.host_if} is owned by "
                                          f"hyperion run (pid {daemon.proc.pid})"), proc.stderr
        assert generation(sb) == 2 and status(sb)["attach_mode"] == "native"
        assert delivered(sb, "198.51.100.43") == 0
        assert metric(sb, "hyperion_fastpath_attached") == 1
    finally:
        code, err = daemon.stop()
    assert code == 0, err
    assert "policy applied from" in err


def test_cli_writers_without_a_daemon_write_directly(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    _addresses(sb)
    policy, other = tmp_path / "policy.yaml", tmp_path / "other.yaml"
    policy.write_text(POLICY_A)
    other.write_text(POLICY_B)
    try:
        assert hyperion(sb, "attach", "--iface", sb.host_if, "--policy", str(policy)).stdout.strip() == \
            f"attached to {sb.host_if}; policy generation 1"
        assert hyperion(sb, "block", "add", "198.51.100.10").stdout.strip() == "blocked 198.51.100.10 until removed"
        assert delivered(sb, "198.51.100.10") == 0
        assert hyperion(sb, "block", "del", "198.51.100.10").stdout.strip() == "unblocked 198.51.100.10"
        assert hyperion(sb, "policy", "apply", str(other)).stdout.strip() == f"applied {other}: generation 2"
        assert delivered(sb, "198.51.100.43") == 0 and delivered(sb, "198.51.100.10") == 5
        assert hyperion(sb, "detach").stdout.strip() == f"detached from {sb.host_if}"
        # Nothing is left holding the interface: a daemon takes it at once.
        daemon = Daemon(sb, policy).start()
        assert delivered(sb, "198.51.100.42") == 0
        assert daemon.stop()[0] == 0
    finally:
        hyperion(sb, "detach", "--iface", sb.host_if, check=False)


def _big_policy(path: Path, blocked: str, offset: int) -> None:
    base = int(ipaddress.IPv6Address("2001:db8:5::")) + offset
    extra = ", ".join(f'"{ipaddress.IPv6Address(base + i)}"' for i in range(20_000))
    path.write_text(f'fast_path:\n  drop_ips: ["{blocked}", {extra}]\n')


def test_forwarded_applies_and_reloads_never_build_one_slot_twice(sandbox: Sandbox, tmp_path: Path) -> None:
    """Every apply and every reload is one generation: two writers building the same inactive
    slot at once would both write generation N+1, and the total would come out short."""
    sb = sandbox
    policy, other = tmp_path / "policy.yaml", tmp_path / "other.yaml"
    _big_policy(policy, "198.51.100.42", 0)
    _big_policy(other, "198.51.100.43", 100_000)
    daemon = Daemon(sb, policy, "--no-watch").start()
    try:
        applies = [sb.popen(sb.host_ns, [*HYPERION, "policy", "apply", str(other if i % 2 else policy),
                                         "--iface", sb.host_if], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                   for i in range(6)]
        deadline = time.monotonic() + 60
        while any(p.poll() is None for p in applies) and time.monotonic() < deadline:
            daemon.signal(signal.SIGHUP)
            time.sleep(0.2)  # pacing of the SIGHUPs, not a wait for a condition
        for proc in applies:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
        # The reload a last SIGHUP asked for may still run: wait until it is counted.
        wait_for(lambda: _generations_add_up(sb, len(applies)), 30)
        metrics = parse_metrics(scrape(sb))[0]
        assert value(metrics, "hyperion_policy_reload_total", result="error") == 0
        assert value(metrics, "hyperion_policy_reload_total", result="success") >= 1
    finally:
        code, err = daemon.stop()
    assert code == 0, err


def _generations_add_up(sb: Sandbox, applies: int) -> bool:
    metrics = parse_metrics(scrape(sb))[0]
    reloads = value(metrics, "hyperion_policy_reload_total", result="success")
    return value(metrics, "hyperion_policy_generation") == 1 + applies + reloads


def test_external_detach_is_noticed_and_exported(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    _addresses(sb)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY_A)
    daemon = Daemon(sb, policy, "--no-watch").start()
    try:
        assert metric(sb, "hyperion_fastpath_attached") == 1
        # The kernel does not let netlink replace a program attached through a BPF link.
        off = sb.exec(sb.host_ns, ["ip", "link", "set", "dev", sb.host_if, "xdp", "off"], check=False)
        assert off.returncode != 0
        assert delivered(sb, "198.51.100.42") == 0 and status(sb)["attach_mode"] == "native"
        assert metric(sb, "hyperion_fastpath_attached") == 1
        link_id = status(sb)["link_id"]
        sb.exec(sb.host_ns, ["bpftool", "link", "detach", "id", str(link_id)])
        wait_for(lambda: metric(sb, "hyperion_fastpath_attached") == 0, 10)
        assert delivered(sb, "198.51.100.42") == 5  # nothing enforces now, as the metric says
        assert daemon.proc is not None and daemon.proc.poll() is None
    finally:
        code, err = daemon.stop()
    assert code == 0, err
    assert f"the XDP program is NO LONGER ATTACHED to {sb.host_if}" in err


def test_deleted_and_recreated_netdev_is_noticed(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    dummy = f"{sb.prefix}b0"  # a bridge: this kernel has no dummy module
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY_A)
    sb.ip(sb.host_ns, "link", "add", dummy, "type", "bridge")
    daemon = Daemon(sb, policy, "--no-watch", "--mode", "generic")
    daemon.argv[daemon.argv.index(sb.host_if)] = dummy
    daemon.proc = sb.popen(sb.host_ns, daemon.argv, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: _metric_or_none(sb, "hyperion_fastpath_attached") == 1, 20, daemon._died)
        sb.ip(sb.host_ns, "link", "del", dummy)
        sb.ip(sb.host_ns, "link", "add", dummy, "type", "bridge")
        wait_for(lambda: metric(sb, "hyperion_fastpath_attached") == 0, 10)
    finally:
        code, err = daemon.stop()
        sb.exec(sb.host_ns, ["ip", "link", "del", dummy], check=False)
    assert code == 0, err
    assert f"the XDP program is NO LONGER ATTACHED to {dummy}" in err


def _metric_or_none(sb: Sandbox, name: str) -> float | None:
    try:
        return metric(sb, name)
    except (SandboxError, KeyError):
        return None


def test_lock_refuses_a_daemon_owner_at_once_and_waits_for_a_cli_writer(kernel: None) -> None:
    import sys
    import uuid

    from hyperion.daemon.owner import InterfaceBusyError, InterfaceLock, OwnerRole, lock_path

    ifname = f"hyp{uuid.uuid4().hex[:8]}l"
    probe = ("import sys; from hyperion.daemon.owner import *\n"
             "try:\n"
             f"    InterfaceLock.acquire({ifname!r}, OwnerRole.CLI, 'probe', wait=float(sys.argv[1])).release()\n"
             "    print('acquired')\n"
             "except InterfaceBusyError as exc:\n"
             "    print(exc)\n")
    try:
        with InterfaceLock.acquire(ifname, OwnerRole.DAEMON, "hyperion run", wait=0):
            started = time.monotonic()
            out = subprocess.run([sys.executable, "-c", probe, "30"], capture_output=True, text=True,
                                 check=True).stdout.strip()
            assert out.startswith(f"{ifname} is owned by hyperion run (pid {os.getpid()})"), out
            assert time.monotonic() - started < 20  # not the 30 s a CLI writer would be waited for
        with InterfaceLock.acquire(ifname, OwnerRole.CLI, "hyperion block add", wait=0):
            out = subprocess.run([sys.executable, "-c", probe, "0.5"], capture_output=True, text=True,
                                 check=True).stdout.strip()
            assert out == f"{ifname} is owned by hyperion block add (pid {os.getpid()}) in this network namespace"
        assert subprocess.run([sys.executable, "-c", probe, "0"], capture_output=True, text=True,
                              check=True).stdout.strip() == "acquired"
        with pytest.raises(InterfaceBusyError), InterfaceLock.acquire(ifname, OwnerRole.DAEMON, "a", wait=0), \
                InterfaceLock.acquire(ifname, OwnerRole.DAEMON, "b", wait=0):
            pass
    finally:
        lock_path(ifname).unlink(missing_ok=True)
