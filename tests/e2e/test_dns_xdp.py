"""DNS name rules judged in XDP, with real resolvers (dnsmasq, unbound) and real clients (dig, kdig,
dnsperf) at their default offloads.

A DNS class with only name rules redirects nothing: every verdict is the XDP program's, answers
(NXDOMAIN, REFUSED) come from XDP_TX, and what passes reaches the resolver on the real interface.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperion.lab.sandbox import HOST_V4, HOST_V6, Sandbox
from tests.support.netutil import WAIT, Daemon, scrape, wait_for
from tests.support.peers import daemon_serving_dns, dig, kdig, need_tool, unbound
from tests.support.telemetry import parse_metrics, value

NAME_RULES = r"""
fast_path:
  redirect_ports:
    - {protocol: udp, port: 53, on_failure: drop}
slow_path:
  dns_rules:
    - {match: "evil.com", action: drop}
    - {match: "*.tracker.test", action: nxdomain}
    - {match: "allowed.tracker.test", action: allow}
    - {match: "x.test", qtype: AAAA, action: refuse}
    - {match: "*.test", qtype: MX, action: refuse}
"""

RULE = {
    "evil": "slow_path.dns_rules[0] match=evil.com action=drop",
    "tracker": "slow_path.dns_rules[1] match=*.tracker.test action=nxdomain",
    "allowed": "slow_path.dns_rules[2] match=allowed.tracker.test action=allow",
    "x_aaaa": "slow_path.dns_rules[3] match=x.test qtype=AAAA action=refuse",
}


def _metrics(sb: Sandbox) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return parse_metrics(scrape(sb))[0]


def _packets(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], verdict: str, reason: str) -> float:
    return value(samples, "hyperion_fastpath_packets_total", verdict=verdict, reason=reason)


@pytest.fixture
def wire(kernel: None) -> Iterator[Sandbox]:
    """A sandbox whose client end delivers XDP_TX frames (the program's answers), as a NIC does."""
    sb = Sandbox(wire_xdp=True).up()
    try:
        yield sb
    finally:
        sb.down()


@pytest.fixture
def name_rules(wire: Sandbox, tmp_path: Path) -> Iterator[Sandbox]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(NAME_RULES)
    with daemon_serving_dns(wire, policy):
        yield wire


def test_name_rules_are_judged_and_answered_in_xdp(name_rules: Sandbox) -> None:
    sb = name_rules
    before = _metrics(sb)
    assert dig(sb, "evil.com") == "TIMEOUT"
    assert dig(sb, "a.tracker.test") == "NXDOMAIN"
    assert dig(sb, "b.tracker.test", server=HOST_V6) == "NXDOMAIN"
    assert dig(sb, "TRACKER.test") == "NOERROR 203.0.113.82"          # the apex is not "*.tracker.test"
    assert dig(sb, "allowed.tracker.test") == "NOERROR 203.0.113.82"  # the exact rule beats the suffix
    assert dig(sb, "x.test", "AAAA") == "REFUSED"
    assert dig(sb, "x.test", "A") == "NOERROR 203.0.113.81"
    assert kdig(sb, "c.Tracker.TEST") == "NXDOMAIN"                    # a second client, mixed case
    assert kdig(sb, "x.test", "AAAA", server=HOST_V6) == "REFUSED"
    after = _metrics(sb)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - (value(before, name, **labels)
                                               if (name, frozenset(labels.items())) in before else 0.0)
    # Each query was judged once by the program; none went to the slow path.
    assert delta("hyperion_fastpath_packets_total", verdict="drop", reason="dns_drop") == 1
    assert delta("hyperion_fastpath_packets_total", verdict="answer", reason="dns_nxdomain") == 3
    assert delta("hyperion_fastpath_packets_total", verdict="answer", reason="dns_refused") == 2
    assert delta("hyperion_fastpath_packets_total", verdict="pass", reason="dns_allow") == 1
    assert delta("hyperion_redirects_total", **{"class": "udp/53"}) == 0
    assert value(after, "hyperion_dns_rule_matches_total", rule=RULE["evil"], action="drop") == 1
    assert value(after, "hyperion_dns_rule_matches_total", rule=RULE["tracker"], action="nxdomain") == 3
    assert value(after, "hyperion_dns_rule_matches_total", rule=RULE["allowed"], action="allow") == 1
    assert value(after, "hyperion_dns_rule_matches_total", rule=RULE["x_aaaa"], action="refuse") == 2


def test_unbound_behind_the_xdp_tier(wire: Sandbox, tmp_path: Path) -> None:
    sb = wire
    policy = tmp_path / "policy.yaml"
    policy.write_text(NAME_RULES)
    server = unbound(sb, tmp_path)
    daemon = Daemon(sb, policy).start()
    try:
        wait_for(lambda: dig(sb, "good.test") == "NOERROR 203.0.113.80", 15)
        assert dig(sb, "allowed.tracker.test") == "NOERROR 203.0.113.84"
        assert kdig(sb, "deep.a.tracker.test", server=HOST_V6) == "NXDOMAIN"
        assert dig(sb, "evil.com", server=HOST_V6) == "TIMEOUT"
        assert dig(sb, "x.test", "MX") == "REFUSED"    # "*.test" with qtype MX: a subdomain of test ...
        assert dig(sb, "test", "MX") != "REFUSED"      # ... but not the apex
        assert dig(sb, "x.test", "A") == "NOERROR 203.0.113.81"
    finally:
        daemon.stop()
        server.terminate()
        server.wait(timeout=10)


VLAN_PROBE = r"""
import json, sys, threading
from scapy.all import DNS, DNSQR, Dot1Q, Ether, IP, IPv6, UDP, AsyncSniffer, sendp
iface, src_mac, dst_mac, family = sys.argv[1:5]
ip = IP(src="192.0.2.2", dst="192.0.2.1") if family == "4" else IPv6(src="2001:db8:1::2", dst="2001:db8:1::1")
ready = threading.Event()
sniffer = AsyncSniffer(iface=iface, count=1, started_callback=ready.set,
                       lfilter=lambda p: p.haslayer(DNS) and p[DNS].qr == 1)
sniffer.start()
ready.wait(10)
sendp(Ether(src=src_mac, dst=dst_mac) / Dot1Q(vlan=100) / ip / UDP(sport=40053, dport=53)
      / DNS(id=4242, rd=1, qd=DNSQR(qname="a.tracker.test")), iface=iface, verbose=False)
sniffer.join(timeout=10)
if sniffer.running:
    sniffer.stop()
got = sniffer.results or []
print(json.dumps([{"vlan": p[Dot1Q].vlan if p.haslayer(Dot1Q) else None, "id": p[DNS].id, "rcode": p[DNS].rcode,
                   "qname": p[DNS].qd.qname.decode(), "dport": p[UDP].dport} for p in got]))
"""


@pytest.mark.parametrize("family", ["4", "6"])
def test_vlan_tagged_queries_are_answered_with_their_tag(name_rules: Sandbox, family: str) -> None:
    """802.1Q (this kernel has no VLAN devices, so the tagged query is a raw frame): the program
    parses past the tag and answers on the same VLAN."""
    sb = name_rules
    before = _metrics(sb)
    out = sb.exec(sb.client_ns, [sys.executable, "-c", VLAN_PROBE, sb.client_if, sb.mac(sb.client_ns, sb.client_if),
                                 sb.mac(sb.host_ns, sb.host_if), family]).stdout
    assert json.loads(out) == [{"vlan": 100, "id": 4242, "rcode": 3, "qname": "a.tracker.test.", "dport": 40053}]
    assert _packets(_metrics(sb), "answer", "dns_nxdomain") - _packets(before, "answer", "dns_nxdomain") == 1


def test_regex_rules_keep_the_slow_path_for_unmatched_names(wire: Sandbox, tmp_path: Path) -> None:
    """Name rules decide in XDP; only queries no name rule matched go up to the regex rules."""
    sb = wire
    policy = tmp_path / "policy.yaml"
    policy.write_text(NAME_RULES + '    - {regex: "^[a-z0-9]{20,}\\\\.", action: drop}\n')
    with daemon_serving_dns(sb, policy):
        before = _metrics(sb)
        assert dig(sb, "a.tracker.test") == "NXDOMAIN"
        assert dig(sb, "evil.com") == "TIMEOUT"
        assert dig(sb, "abcdefghijklmnopqrstuvwxyz.good.test") == "TIMEOUT"  # the regex, in the slow path
        assert dig(sb, "good.test") == "NOERROR 203.0.113.80"
        after = _metrics(sb)
        redirected = value(after, "hyperion_redirects_total", **{"class": "udp/53"}) - value(
            before, "hyperion_redirects_total", **{"class": "udp/53"})
        assert redirected == 2  # the regex match and good.test; not the two name-rule verdicts


def test_dnsperf_through_the_xdp_tier(name_rules: Sandbox, tmp_path: Path) -> None:
    need_tool("dnsperf")
    sb = name_rules
    queries = tmp_path / "queries.txt"
    # A fixed count read once (-n 1): with a time limit dnsperf counts a query in flight at the stop as lost.
    queries.write_text("good.test A\na.tracker.test A\n" * 25_000)
    before = _metrics(sb)
    out = sb.exec(sb.client_ns, ["timeout", "120", "dnsperf", "-s", HOST_V4, "-d", str(queries), "-n", "1",
                                 "-q", "32", "-t", "30"]).stdout
    sent = int(re.search(r"Queries sent:\s+(\d+)", out)[1])  # type: ignore[index]
    lost = int(re.search(r"Queries lost:\s+(\d+)", out)[1])  # type: ignore[index]
    assert (sent, lost) == (50_000, 0), out
    assert re.search(r"NOERROR 25000 ", out) and re.search(r"NXDOMAIN 25000 ", out), out

    def answered() -> float:
        return _packets(_metrics(sb), "answer", "dns_nxdomain") - _packets(before, "answer", "dns_nxdomain")
    wait_for(lambda: answered() >= 25_000, WAIT)
    assert answered() == 25_000
    assert _packets(_metrics(sb), "pass", "dns_no_match") - _packets(before, "pass", "dns_no_match") == 25_000
