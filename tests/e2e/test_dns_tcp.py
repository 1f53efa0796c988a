"""DNS over TCP judged in XDP, with real resolvers (dnsmasq, unbound) and real clients (dig +tcp,
kdig +tcp) at their default offloads, through a running daemon (DESIGN14B "In XDP").

Each client query is one connection whose query is one whole segment at the stream position, so
XDP decides it: a blocked name gets its NXDOMAIN or REFUSED in the stream (XDP_TX, which on a veth
reaches the client only because its end runs an XDP program: Sandbox(wire_xdp=True)), a dropped one
times out, and the server never sees either (its query log says so). What XDP hands to the slow
path is not tested here (the slow path's reassembly is tested with the native engine).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hyperion.lab.sandbox import HOST_V4, HOST_V6, Sandbox
from tests.support.netutil import Daemon, scrape, wait_for
from tests.support.peers import kdig, need_tool, unbound
from tests.support.telemetry import Samples, parse_metrics

POLICY = r"""
fast_path:
  redirect_ports:
    - {protocol: udp, port: 53, on_failure: drop}
    - {protocol: tcp, port: 53, on_failure: drop}
slow_path:
  dns_rules:
    - {match: "evil.com", action: drop}
    - {match: "*.tracker.test", action: nxdomain}
    - {match: "allowed.tracker.test", action: allow}
    - {match: "x.test", qtype: AAAA, action: refuse}
"""

RULE = {
    "evil": "slow_path.dns_rules[0] match=evil.com action=drop",
    "tracker": "slow_path.dns_rules[1] match=*.tracker.test action=nxdomain",
    "allowed": "slow_path.dns_rules[2] match=allowed.tracker.test action=allow",
    "x_aaaa": "slow_path.dns_rules[3] match=x.test qtype=AAAA action=refuse",
}
ACTION = {"evil": "drop", "tracker": "nxdomain", "allowed": "allow", "x_aaaa": "refuse"}
SERVERS = [HOST_V4, HOST_V6]


def dig_tcp(sb: Sandbox, name: str, qtype: str = "A", server: str = HOST_V4, timeout: int = 2) -> str:
    """dig +tcp: 'RCODE answers', or TIMEOUT."""
    out = sb.exec(sb.client_ns, ["dig", "+tcp", f"+time={timeout}", "+tries=1", f"@{server}", name, qtype],
                  check=False).stdout
    status = next((line for line in out.splitlines() if "status:" in line), None)
    if status is None:
        assert "timed out" in out or "no servers could be reached" in out, out
        return "TIMEOUT"
    rcode = status.split("status:")[1].split(",")[0].strip()
    answers = [line.split()[-1] for line in out.splitlines() if line and not line.startswith(";") and "\tA\t" in line]
    return f"{rcode} {' '.join(answers)}".strip()


@dataclass
class Served:
    sb: Sandbox
    log: Path | None  # the server's query log (dnsmasq), or None (unbound: not kept)

    def metrics(self) -> Samples:
        return parse_metrics(scrape(self.sb))[0]

    def queries_seen(self) -> str:
        assert self.log is not None
        return self.log.read_text()


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def packets(before: Samples, after: Samples, verdict: str, reason: str) -> float:
    return delta(before, after, "hyperion_fastpath_packets_total", verdict=verdict, reason=reason)


def matches(before: Samples, after: Samples, rule: str) -> float:
    return delta(before, after, "hyperion_dns_rule_matches_total", rule=RULE[rule], action=ACTION[rule])


@pytest.fixture
def wire(kernel: None) -> Iterator[Sandbox]:
    """A sandbox whose client end delivers XDP_TX frames (the program's answers), as a NIC does."""
    sb = Sandbox(wire_xdp=True).up()
    try:
        yield sb
    finally:
        sb.down()


def _dnsmasq(sb: Sandbox, log: Path) -> subprocess.Popen[str]:
    need_tool("dnsmasq")
    # --keep-in-foreground, not --no-daemon: in debug mode dnsmasq serves TCP in its main process, one
    # connection at a time, and a connection whose query XDP answered stays open on its side.
    return sb.popen(sb.host_ns, ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces",
                                 f"--listen-address={HOST_V4}", f"--listen-address={HOST_V6}", "--pid-file",
                                 "--user=root", "--log-queries", f"--log-facility={log}",
                                 "--address=/good.test/203.0.113.80", "--address=/x.test/203.0.113.81",
                                 "--address=/tracker.test/203.0.113.82", "--address=/evil.com/203.0.113.66"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
def dnsmasq_behind_hyperion(wire: Sandbox, tmp_path: Path) -> Iterator[Served]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    log = tmp_path / "dnsmasq.log"
    server = _dnsmasq(wire, log)
    daemon = Daemon(wire, policy).start()
    try:
        wait_for(lambda: dig_tcp(wire, "good.test") == "NOERROR 203.0.113.80", 15)
        yield Served(wire, log)
    finally:
        daemon.stop()
        server.terminate()
        server.wait(timeout=10)


def _queried(log: str, name: str) -> bool:
    """dnsmasq --log-queries: 'query[A] name from address'."""
    return any(f"] {name} from " in line for line in log.splitlines() if "query[" in line)


@pytest.mark.parametrize("server", SERVERS, ids=["ipv4", "ipv6"])
def test_blocked_names_are_answered_in_the_stream(dnsmasq_behind_hyperion: Served, server: str) -> None:
    served = dnsmasq_behind_hyperion
    sb = served.sb
    before = served.metrics()
    assert dig_tcp(sb, "a.tracker.test", server=server) == "NXDOMAIN"
    assert kdig(sb, "b.Tracker.TEST", server=server, tcp=True) == "NXDOMAIN"   # a second client, mixed case
    assert dig_tcp(sb, "x.test", "AAAA", server=server) == "REFUSED"
    assert kdig(sb, "x.test", "AAAA", server=server, tcp=True) == "REFUSED"
    assert dig_tcp(sb, "allowed.tracker.test", server=server) == "NOERROR 203.0.113.82"  # exact beats the suffix
    assert kdig(sb, "x.test", "A", server=server, tcp=True) == "NOERROR 203.0.113.81"
    assert dig_tcp(sb, "tracker.test", server=server) == "NOERROR 203.0.113.82"  # the apex is not *.tracker.test
    after = served.metrics()
    # One connection per query, its query one whole segment: each judged once, in XDP.
    assert packets(before, after, "answer", "dns_nxdomain") == 2
    assert packets(before, after, "answer", "dns_refused") == 2
    assert packets(before, after, "pass", "dns_allow") == 1
    assert packets(before, after, "pass", "dns_no_match") == 2
    for reason in ("dns_tcp_midstream", "dns_tcp_ended", "dns_unanswerable"):
        assert packets(before, after, "drop", reason) == 0
    assert delta(before, after, "hyperion_redirects_total", **{"class": "tcp/53"}) == 0
    assert (matches(before, after, "tracker"), matches(before, after, "x_aaaa"), matches(before, after, "allowed")) \
        == (2, 2, 1)
    # The server saw the queries that passed, never the answered ones.
    seen = served.queries_seen()
    assert _queried(seen, "allowed.tracker.test") and _queried(seen, "tracker.test") and _queried(seen, "x.test")
    assert not _queried(seen, "a.tracker.test") and not _queried(seen, "b.Tracker.TEST")
    assert not any("query[AAAA] x.test " in line for line in seen.splitlines())


@pytest.mark.parametrize("server", SERVERS, ids=["ipv4", "ipv6"])
def test_a_dropped_name_times_out_and_never_reaches_the_server(dnsmasq_behind_hyperion: Served,
                                                                server: str) -> None:
    served = dnsmasq_behind_hyperion
    sb = served.sb
    before = served.metrics()
    assert dig_tcp(sb, "evil.com", server=server, timeout=1) == "TIMEOUT"
    assert kdig(sb, "EVIL.com", server=server, tcp=True) == "TIMEOUT"
    after = served.metrics()
    # The clients retransmit the dropped segment (RFC 6298) until they give up: each copy is judged at
    # the same stream position and dropped again, so at least one drop per client, and the rule
    # counted every one of them.
    drops = packets(before, after, "drop", "dns_drop")
    assert drops >= 2 and matches(before, after, "evil") == drops
    assert delta(before, after, "hyperion_redirects_total", **{"class": "tcp/53"}) == 0
    assert packets(before, after, "drop", "dns_tcp_midstream") == 0
    seen = served.queries_seen()
    assert not _queried(seen, "evil.com") and not _queried(seen, "EVIL.com")
    # The same connection setup still serves an allowed name afterwards (a new connection per query).
    assert dig_tcp(sb, "good.test", server=server) == "NOERROR 203.0.113.80"


def test_unbound_behind_the_xdp_tier_over_tcp(wire: Sandbox, tmp_path: Path) -> None:
    need_tool("unbound")
    sb = wire
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    server = unbound(sb, tmp_path)
    daemon = Daemon(sb, policy).start()
    try:
        wait_for(lambda: dig_tcp(sb, "good.test") == "NOERROR 203.0.113.80", 15)
        served = Served(sb, None)
        before = served.metrics()
        assert dig_tcp(sb, "allowed.tracker.test", server=HOST_V6) == "NOERROR 203.0.113.84"
        assert kdig(sb, "deep.a.tracker.test", tcp=True) == "NXDOMAIN"
        assert dig_tcp(sb, "x.test", "AAAA", server=HOST_V6) == "REFUSED"
        assert dig_tcp(sb, "evil.com", timeout=1) == "TIMEOUT"
        assert dig_tcp(sb, "x.test", "A") == "NOERROR 203.0.113.81"
        after = served.metrics()
        assert packets(before, after, "answer", "dns_nxdomain") == 1
        assert packets(before, after, "answer", "dns_refused") == 1
        assert packets(before, after, "pass", "dns_allow") == 1
        assert packets(before, after, "pass", "dns_no_match") == 1
        assert packets(before, after, "drop", "dns_drop") >= 1
    finally:
        daemon.stop()
        server.terminate()
        server.wait(timeout=10)
