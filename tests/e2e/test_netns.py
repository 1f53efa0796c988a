"""Integration: Hyperion attached to a veth in a namespace, real UDP traffic from a client namespace.

The receiving socket is the ground truth for delivery; the fast path's
counters must agree with what was sent, exactly where the traffic is ours
alone (drops and allowlist passes: ARP and IPv6 ND also cross the link).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hyperion.fastpath.loader import PIN_ROOT
from hyperion.lab.sandbox import HOST_V4, HOST_V6, Sandbox
from tests.support.netutil import (
    HYPERION,
    UDPTOOL,
    WAIT,
    Daemon,
    Receiver,
    counter,
    hyperion,
    send,
    status,
    wait_counter,
    wait_for,
)

PORT = 5000

POLICY = """
fast_path:
  allow_cidrs: ["203.0.113.7"]
  drop_ips: ["198.51.100.42"]
  drop_cidrs: ["203.0.113.0/24", "2001:db8:ff42::/48"]
"""


@pytest.fixture
def attached(sandbox: Sandbox, tmp_path: Path) -> Iterator[Sandbox]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    for address in ("198.51.100.42", "198.51.100.10", "203.0.113.9", "203.0.113.7",
                    "2001:db8:ff42::9", "2001:db8:ff01::10"):
        sandbox.add_client_address(address)
    hyperion(sandbox, "attach", "--iface", sandbox.host_if, "--policy", str(policy))
    yield sandbox
    hyperion(sandbox, "detach", "--iface", sandbox.host_if, check=False)


def test_blocked_sources_are_not_delivered_allowed_ones_are(attached: Sandbox) -> None:
    sb = attached
    before = status(sb)
    receiver = Receiver(sb)
    sources = {"198.51.100.10": HOST_V4, "2001:db8:ff01::10": HOST_V6, "203.0.113.7": HOST_V4,
               "198.51.100.42": HOST_V4, "203.0.113.9": HOST_V4, "2001:db8:ff42::9": HOST_V6}
    for src, dst in sources.items():
        assert send(sb, src, dst, count=20) == 20
    receiver.wait_tags({"t": 60})
    wait_counter(sb, "drop", "blocklist_ip", counter(before, "drop", "blocklist_ip") + 20)
    after = wait_counter(sb, "drop", "blocklist_cidr", counter(before, "drop", "blocklist_cidr") + 40)
    got = receiver.result()["by_source"]
    assert got == {"198.51.100.10": 20, "203.0.113.7": 20, "2001:db8:ff01::10": 20}
    assert counter(after, "drop", "blocklist_ip") - counter(before, "drop", "blocklist_ip") == 20
    assert counter(after, "drop", "blocklist_cidr") - counter(before, "drop", "blocklist_cidr") == 40
    assert counter(after, "pass", "allowlist") - counter(before, "pass", "allowlist") == 20
    assert counter(after, "pass", "no_match") - counter(before, "pass", "no_match") >= 40


def test_dynamic_block_with_ttl_expires(attached: Sandbox) -> None:
    sb = attached
    # Only the block and the send lie between the entry's insertion and its expiry, and the TTL
    # leaves a loaded machine ample time for them: the sends are checked to have ended before the
    # expiry (the kernel entry's expiry is at least the TTL after `added`), and the expiry itself
    # is waited for.
    ttl = 15.0
    before = status(sb)
    receiver = Receiver(sb)
    added = time.monotonic()
    hyperion(sb, "block", "add", "198.51.100.10", "--ttl", f"{ttl:.0f}s", "--iface", sb.host_if)
    send(sb, "198.51.100.10", count=10, tag="blocked")
    sent = time.monotonic() - added
    assert sent < ttl - 1, f"the blocked phase took {sent:.1f} s of the {ttl} s TTL: the machine is too slow"

    def listed() -> list[dict[str, Any]]:
        return list(json.loads(hyperion(sb, "block", "list", "--json").stdout))

    assert [b["address"] for b in listed()] == ["198.51.100.10"]
    blocked = wait_counter(sb, "drop", "blocklist_dynamic", counter(before, "drop", "blocklist_dynamic") + 10)
    assert counter(blocked, "drop", "blocklist_dynamic") - counter(before, "drop", "blocklist_dynamic") == 10
    wait_for(lambda: [b["expired"] for b in listed()] == [True], ttl + WAIT)
    send(sb, "198.51.100.10", count=10, tag="expired")
    receiver.wait_tags({"expired": 10})
    assert receiver.result()["by_tag"] == {"expired": 10}


def test_operator_block_without_ttl_until_removed(attached: Sandbox) -> None:
    sb = attached
    receiver = Receiver(sb)
    hyperion(sb, "block", "add", "2001:db8:ff01::10")
    send(sb, "2001:db8:ff01::10", HOST_V6, count=5, tag="blocked")
    hyperion(sb, "block", "del", "2001:db8:ff01::10")
    send(sb, "2001:db8:ff01::10", HOST_V6, count=5, tag="unblocked")
    receiver.wait_tags({"unblocked": 5})  # sent after the blocked ones, on the same path
    assert receiver.result()["by_tag"] == {"unblocked": 5}


def test_status_reports_program_policy_and_maps(attached: Sandbox) -> None:
    st = status(attached)
    assert st["attach_mode"] == "native"
    assert st["policy_generation"] == 1 and st["mode"] == "enforce"
    assert st["maps"]["hyp_bcidr4"] == {"entries": 1, "capacity": 262144}
    assert st["maps"]["hyp_bcidr6"]["entries"] == 1
    assert st["maps"]["hyp_bip4"]["entries"] == 1
    assert st["maps"]["hyp_allow4"]["entries"] == 1
    assert st["verified_insns"] > 0 and st["xlated_bytes"] > 0


def test_bad_policy_apply_changes_nothing(attached: Sandbox, tmp_path: Path) -> None:
    sb = attached
    bad = tmp_path / "bad.yaml"
    bad.write_text("fast_path:\n  drop_cidrs: ['0.0.0.0/0']\n  drop_ips: ['not-an-ip']\n")
    proc = hyperion(sb, "policy", "apply", str(bad), check=False)
    assert proc.returncode == 2
    assert "fast_path.drop_ips[0]" in proc.stderr and "not-an-ip" in proc.stderr
    st = status(sb)
    assert st["policy_generation"] == 1
    receiver = Receiver(sb)
    send(sb, "198.51.100.10", count=5)
    receiver.wait_tags({"t": 5})
    assert receiver.result()["by_source"] == {"198.51.100.10": 5}


def test_detach_removes_program_and_pins(attached: Sandbox) -> None:
    sb = attached
    pin_dirs = [p for p in PIN_ROOT.iterdir() if p.name.endswith(f"_{sb.host_if}")]
    assert len(pin_dirs) == 1
    hyperion(sb, "detach", "--iface", sb.host_if)
    assert not pin_dirs[0].exists()
    link = json.loads(sb.exec(sb.host_ns, ["ip", "-j", "-d", "link", "show", sb.host_if]).stdout)[0]
    assert "xdp" not in link
    receiver = Receiver(sb)
    send(sb, "198.51.100.42", count=5)
    receiver.wait_tags({"t": 5})
    assert receiver.result()["by_source"] == {"198.51.100.42": 5}
    assert hyperion(sb, "status", "--iface", sb.host_if, check=False).returncode == 2


def test_generic_mode_and_native_refused_without_driver_support(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    dummy = f"{sb.prefix}b0"
    sb.ip(sb.host_ns, "link", "add", dummy, "type", "bridge")  # bridges have no native XDP
    proc = hyperion(sb, "attach", "--iface", dummy, check=False)
    assert proc.returncode == 2
    assert "no native XDP support; use --mode generic" in proc.stderr
    hyperion(sb, "attach", "--iface", dummy, "--mode", "generic")
    st = json.loads(hyperion(sb, "status", "--iface", dummy, "--json").stdout)
    assert st["attach_mode"] == "generic"
    hyperion(sb, "detach", "--iface", dummy)


def test_unknown_interface_is_a_clear_error(sandbox: Sandbox) -> None:
    proc = hyperion(sandbox, "attach", "--iface", "nosuchif0", check=False)
    assert proc.returncode == 2
    assert "interface 'nosuchif0' does not exist" in proc.stderr


def test_restart_with_fast_path_kept_loses_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    """Stop the daemon with --keep-on-exit and start it again under a steady stream."""
    sb = sandbox
    policy = tmp_path / "policy.yaml"
    policy.write_text('fast_path:\n  allow_cidrs: ["198.51.100.10"]\n  drop_ips: ["198.51.100.42"]\n')
    sb.add_client_address("198.51.100.10")
    daemon = Daemon(sb, policy, "--keep-on-exit").start()
    receiver = Receiver(sb)
    first = counter(status(sb), "pass", "allowlist")
    stream = sb.popen(sb.client_ns, [*UDPTOOL, "send", "--src", "198.51.100.10", "--dst", HOST_V4,
                                     "--port", str(PORT), "--count", "400", "--interval", "0.005",
                                     "--tag", "stream"], stdout=subprocess.PIPE)
    try:
        wait_for(lambda: counter(status(sb), "pass", "allowlist") > first, WAIT)  # the stream is flowing
        assert daemon.stop()[0] == 0
        assert any(p.name.endswith(f"_{sb.host_if}") for p in PIN_ROOT.iterdir())
        mid = counter(status(sb), "pass", "allowlist")
        daemon = Daemon(sb, policy, "--keep-on-exit").start(min_generation=2)
        assert stream.wait(timeout=30) == 0
    finally:
        daemon.stop()
    receiver.wait_tags({"stream": 400})
    assert stream.stdout is not None
    assert json.loads(stream.stdout.read())["sent"] == 400
    assert receiver.result()["by_tag"] == {"stream": 400}
    st = status(sb)
    # Counters continued across the restart rather than starting over.
    assert first <= mid <= counter(st, "pass", "allowlist") == first + 400
    assert st["policy_generation"] == 2
    hyperion(sb, "detach", "--iface", sb.host_if)


def test_run_with_bad_policy_attaches_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("mode: enforced\n")
    proc = sandbox.exec(sandbox.host_ns, [*HYPERION, "run", "--iface", sandbox.host_if, "--policy", str(bad)],
                        check=False)
    assert proc.returncode == 2
    assert "mode: 'enforced'" in proc.stderr
    assert not PIN_ROOT.exists() or not any(p.name.endswith(f"_{sandbox.host_if}") for p in PIN_ROOT.iterdir())
