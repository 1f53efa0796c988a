"""What the slow path passes re-enters the stack through the real interface (issue 14 part 7).

The reference is the Linux stack itself: an nftables input rule on `iifname <real interface> udp
dport 53` counts what the kernel saw arrive on that interface, and the host's addresses and
rp_filter settings are read back from the kernel. The sender (dig, at its default offloads) and the
resolver (dnsmasq) are real.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperion.lab.sandbox import HOST_V4, HOST_V6, Sandbox
from tests.support.netutil import Daemon, counter, status, wait_for
from tests.support.peers import daemon_serving_dns, dig

HELPER = re.compile(r"^hyp\d+[sr]$")  # the daemon's re-entry pair (the sandbox's own devices are hyp<run>...)

POLICY = """
fast_path:
  redirect_ports:
    - {protocol: udp, port: 53, on_failure: drop}
slow_path:
  dns_name_rules: slow_path  # every query goes through a worker
  dns_rules:
    - {match: "evil.com", action: drop}
"""


def _nft(sb: Sandbox, *args: str) -> str:
    return sb.exec(sb.host_ns, ["nft", *args]).stdout


def _input_counter(sb: Sandbox) -> int:
    ruleset = json.loads(_nft(sb, "-j", "list", "table", "inet", "hyperion_test"))
    counters = [item["rule"]["expr"] for item in ruleset["nftables"] if "rule" in item]
    return sum(e["counter"]["packets"] for expr in counters for e in expr if "counter" in e)


def _host_state(sb: Sandbox) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """Every address in the host namespace, and every rp_filter setting there."""
    links = json.loads(sb.exec(sb.host_ns, ["ip", "-j", "addr", "show"]).stdout)
    addresses = sorted((link["ifname"], a["local"]) for link in links for a in link.get("addr_info", []))
    sysctl = sb.exec(sb.host_ns, ["sysctl", "-a", "-r", r"\.rp_filter$"], check=False).stdout
    settings = dict(line.split(" = ", 1) for line in sysctl.splitlines() if " = " in line)
    # The daemon's own helper devices appear while it runs: compare the host's other devices.
    return [a for a in addresses if not HELPER.match(a[0])], {
        k: v for k, v in settings.items() if not HELPER.match(k.split(".")[3])}


@pytest.fixture
def counted(sandbox: Sandbox) -> Iterator[Sandbox]:
    """An nftables input chain in the host namespace counting DNS queries that arrive on its real
    interface (the namespace is the test's own, so is the table)."""
    _nft(sandbox, "add", "table", "inet", "hyperion_test")
    _nft(sandbox, "add", "chain", "inet", "hyperion_test", "input",
         "{ type filter hook input priority 0; policy accept; }")
    _nft(sandbox, "add", "rule", "inet", "hyperion_test", "input", "iifname", sandbox.host_if, "udp", "dport", "53",
         "counter")
    try:
        yield sandbox
    finally:
        subprocess.run(["nsenter", f"--net=/run/netns/{sandbox.host_ns}", "nft", "delete", "table", "inet",
                        "hyperion_test"], capture_output=True)


def test_every_query_the_slow_path_passes_arrives_on_the_real_interface(counted: Sandbox, tmp_path: Path) -> None:
    sb = counted
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    with daemon_serving_dns(sb, policy):
        before_nft, before = _input_counter(sb), status(sb)
        answers = [dig(sb, "good.test", server=HOST_V4 if i % 2 else HOST_V6) for i in range(10)]
        assert answers == ["NOERROR 203.0.113.80"] * 10
        assert dig(sb, "evil.com") == "TIMEOUT"
        after = status(sb)
        # Every query went through a worker (11 redirects), and the 10 it passed reached the input
        # hook as received on the real interface; the dropped one did not.
        assert counter(after, "redirect", "redirect_class") - counter(before, "redirect", "redirect_class") == 11
        assert _input_counter(sb) - before_nft == 10


def test_no_address_copied_and_no_sysctl_changed(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    before = _host_state(sb)
    with daemon_serving_dns(sb, policy):
        during = _host_state(sb)
        links = json.loads(sb.exec(sb.host_ns, ["ip", "-j", "link", "show"]).stdout)
        assert not [link["ifname"] for link in links if link.get("link_type") == "none"]  # no TUN device
        helpers = [link for link in links if HELPER.match(link["ifname"])]
        assert len(helpers) == 2 and all(not link.get("addr_info") for link in helpers)
    assert during == before
    links = json.loads(sb.exec(sb.host_ns, ["ip", "-j", "link", "show"]).stdout)
    assert not [link["ifname"] for link in links if HELPER.match(link["ifname"])]  # removed at stop


def test_a_pair_left_by_a_dead_daemon_is_removed_at_start(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    # The alias a daemon gives its pair, with the pid of a process that has exited.
    gone = subprocess.Popen(["true"])
    gone.wait()
    sb.exec(sb.host_ns, ["ip", "link", "add", "hyp99999s", "type", "veth", "peer", "name", "hyp99999r"])
    sb.exec(sb.host_ns, ["ip", "link", "set", "hyp99999s", "alias",
                         f"hyperion re-entry into {sb.host_if} (pid {gone.pid})"])
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    daemon = Daemon(sb, policy).start()
    try:
        def stale_gone() -> bool:
            links = json.loads(sb.exec(sb.host_ns, ["ip", "-j", "link", "show"]).stdout)
            return not any(link["ifname"].startswith("hyp99999") for link in links)
        wait_for(stale_gone, 30)
    finally:
        daemon.stop()
        subprocess.run(["nsenter", f"--net=/run/netns/{sb.host_ns}", "ip", "link", "del", "hyp99999s"],
                       capture_output=True)
