"""The slow path with real parts: dnsmasq in the protected namespace, dig and probes from the client.

Traffic of the redirect classes goes through AF_XDP sockets into the native
workers; what passes is delivered through the TUN device to the real service.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperion.lab.sandbox import HOST_V4, HOST_V6, Sandbox
from tests.support.netutil import Daemon, Receiver, counter, hyperion, scrape, send, status, wait_counter, wait_for
from tests.support.peers import daemon_serving_dns, dig, dnsmasq
from tests.support.telemetry import parse_metrics, value

POLICY = r"""
fast_path:
  redirect_ports:
    - {protocol: udp, port: 53, on_failure: drop}
    - {protocol: tcp, port: 8080, on_failure: pass}
    - {protocol: udp, port: 9999, on_failure: pass}
slow_path:
  dns_name_rules: slow_path  # these tests are about the slow path: every name rule runs there
  dns_rules:
    - {match: "evil.com", action: drop}
    - {match: "*.tracker.test", action: nxdomain}
    - {match: "x.test", qtype: AAAA, action: refuse}
    - {match: "c2.test", action: block_source, ttl: 10m}
  signatures:
    - {class: {protocol: tcp, port: 8080}, literal: "root", action: drop}
    - {class: {protocol: udp, port: 9999}, regex: "(?i)union\\s+select", action: block_source, ttl: 5m}
"""


@pytest.fixture
def protected(sandbox: Sandbox, tmp_path: Path) -> Iterator[tuple[Sandbox, Path]]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    events = tmp_path / "events.jsonl"
    with daemon_serving_dns(sandbox, policy, "--events", str(events)):
        yield sandbox, events


def test_dns_verdicts_reach_their_destination(protected: tuple[Sandbox, Path]) -> None:
    sb, events = protected
    assert dig(sb, "good.test") == "NOERROR 203.0.113.80"
    assert dig(sb, "good.test", server=HOST_V6) == "NOERROR 203.0.113.80"
    assert dig(sb, "evil.com") == "TIMEOUT"
    assert dig(sb, "a.tracker.test") == "NXDOMAIN"
    assert dig(sb, "b.tracker.test", server=HOST_V6) == "NXDOMAIN"   # answered in the dataplane over IPv6
    assert dig(sb, "tracker.test") == "NOERROR 203.0.113.82"         # the apex is not "*.tracker.test"
    assert dig(sb, "x.test", "AAAA") == "REFUSED"
    assert dig(sb, "x.test", "A") == "NOERROR 203.0.113.81"
    metrics, _ = parse_metrics(scrape(sb))
    evil = "slow_path.dns_rules[0] match=evil.com action=drop"
    assert value(metrics, "hyperion_slowpath_drops_total", rule=evil) == 1
    assert value(metrics, "hyperion_slowpath_packets_total", queue="0", outcome="nxdomain") == 2
    assert value(metrics, "hyperion_slowpath_packets_total", queue="0", outcome="refused") == 1
    assert value(metrics, "hyperion_redirects_total", **{"class": "udp/53"}) >= 9
    assert value(metrics, "hyperion_redirect_failures_total", **{"class": "udp/53"}) == 0
    assert value(metrics, "hyperion_afxdp_rx_queue_pressure", queue="0") < 0.5
    assert value(metrics, "hyperion_slowpath_inspection_latency_seconds_count", queue="0") >= 9
    expected = {("evil.com", "drop"), ("a.tracker.test", "nxdomain"), ("b.tracker.test", "nxdomain"),
                ("x.test", "refuse")}

    def slow_events() -> set[tuple[str, str]]:
        records = [json.loads(line) for line in events.read_text().splitlines()]
        return {(r["qname"], r["action"]) for r in records if r.get("source") == "slowpath"}

    # Events travel with the workers' reports and the event pump: wait for them, then compare exactly.
    wait_for(lambda: len(slow_events()) >= len(expected), 10)
    assert slow_events() == expected


def test_block_source_sends_later_packets_to_die_in_xdp(protected: tuple[Sandbox, Path]) -> None:
    sb, _ = protected
    sb.add_client_address("198.51.100.10")
    before = counter(status(sb), "drop", "blocklist_dynamic")
    assert dig(sb, "c2.test", source="198.51.100.10") == "TIMEOUT"
    blocks = json.loads(hyperion(sb, "block", "list", "--json").stdout)
    assert [b["address"] for b in blocks] == ["198.51.100.10"] and 590 < blocks[0]["expires_in"] <= 600
    receiver = Receiver(sb)
    send(sb, "198.51.100.10", count=5, tag="after")
    dropped = wait_counter(sb, "drop", "blocklist_dynamic", before + 5)
    receiver.barrier("192.0.2.2")  # an unlisted source, same veth queue: "after" was judged before it
    assert receiver.result()["by_tag"] == {}
    assert counter(dropped, "drop", "blocklist_dynamic") - before == 5
    assert dig(sb, "good.test") == "NOERROR 203.0.113.80"  # other clients unaffected


def test_payload_signatures_over_udp_and_tcp(protected: tuple[Sandbox, Path]) -> None:
    sb, _ = protected
    sb.add_client_address("198.51.100.11")
    sb.add_client_address("198.51.100.12")
    receiver = Receiver(sb, duration=30, port=9999)
    tcp_receiver = Receiver(sb, duration=30, port=8080)
    send(sb, "198.51.100.11", count=3, port=9999, tag="clean", payload="select 1")
    send(sb, "198.51.100.12", count=1, port=9999, tag="sqli", payload="1 UNION  SELECT password")
    send(sb, "198.51.100.12", count=2, port=9999, tag="later", payload="hello")
    send(sb, "198.51.100.11", count=2, port=8080, tag="tcpclean", payload="GET /index", tcp=True)
    send(sb, "198.51.100.11", count=1, port=8080, tag="tcproot", payload="GET /root", tcp=True)
    # UDP: a clean datagram after the others through the same queue and worker. TCP: the receiver
    # takes connections one at a time, in order, so once a clean connection made after "tcproot"
    # is counted, "tcproot" has been read (or has timed out with nothing).
    receiver.barrier("198.51.100.11")
    tcp_receiver.barrier("198.51.100.11", tcp=True)
    udp = receiver.result()["by_tag"]
    # The matching datagram is dropped and its source blocked, so the later ones die in XDP.
    assert udp == {"clean": 3}
    assert tcp_receiver.result()["by_tag"] == {"tcpclean": 2}


def test_malformed_dns_is_dropped_and_counted(protected: tuple[Sandbox, Path]) -> None:
    sb, _ = protected
    before, _ = parse_metrics(scrape(sb))
    # A query header whose name runs past the end of the message, four times.
    malformed = bytes.fromhex("123401000001000000000000") + b"\x09truncated"
    code = (f"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"for _ in range(4): s.sendto({malformed!r}, ('{HOST_V4}', 53))")
    sb.exec(sb.client_ns, [sys.executable, "-c", code])
    key = ("hyperion_slowpath_packets_total", frozenset({"queue": "0", "outcome": "malformed_dns"}.items()))

    def malformed_count() -> float:
        return parse_metrics(scrape(sb))[0].get(key, 0) - before.get(key, 0)

    # The datagrams are on their way when the sender exits: wait for the count, then check it is exact.
    wait_for(lambda: malformed_count() >= 4, 10)
    assert malformed_count() == 4


def test_rules_change_on_reload(protected: tuple[Sandbox, Path], tmp_path: Path) -> None:
    sb, _ = protected
    assert dig(sb, "good.test") == "NOERROR 203.0.113.80"
    (tmp_path / "policy.yaml").write_text(POLICY.replace('"evil.com"', '"good.test"'))
    wait_for(lambda: dig(sb, "good.test") == "TIMEOUT", 10)
    metrics, _ = parse_metrics(scrape(sb))
    # The old rule's hits are kept across the swap.
    assert value(metrics, "hyperion_slowpath_rule_matches_total",
                 rule="slow_path.dns_rules[0] match=good.test action=drop", action="drop") >= 1


def test_two_queues_are_both_served(sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox.down()
    sb = Sandbox(prefix=sandbox.prefix, rx_queues=2).up()
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    server = dnsmasq(sb)
    daemon = Daemon(sb, policy).start()
    try:
        answers = [dig(sb, "good.test") for _ in range(16)]  # each from a new source port: spread by hash
        metrics, _ = parse_metrics(scrape(sb))
        per_queue = [value(metrics, "hyperion_slowpath_inspected_total", queue=q) for q in ("0", "1")]
    finally:
        daemon.stop()
        server.terminate()
        server.wait(timeout=10)
        sb.down()
    assert answers == ["NOERROR 203.0.113.80"] * 16
    # Counters are read from the workers' shared control blocks at scrape time: exact, no waiting.
    assert all(n > 0 for n in per_queue) and sum(per_queue) == 16


def test_after_the_workers_stop_each_class_takes_its_fallback(sandbox: Sandbox, tmp_path: Path) -> None:
    """Daemon stopped with --keep-on-exit: it fences the queues (state 'fenced', reason shutdown, and
    xsk_map entries removed) and stops the workers; the fast path stays. udp/53 is fail-closed
    (dropped, counted as queue_fenced), tcp/8080 fail-open (delivered by the kernel)."""
    sb = sandbox
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    server = dnsmasq(sb)
    daemon = Daemon(sb, policy, "--keep-on-exit").start()
    try:
        wait_for(lambda: dig(sb, "good.test") == "NOERROR 203.0.113.80", 10)
        assert daemon.stop()[0] == 0
        before = counter(status(sb), "drop", "queue_fenced")
        assert dig(sb, "good.test") == "TIMEOUT"
        assert counter(status(sb), "drop", "queue_fenced") - before == 1
        queues = json.loads(hyperion(sb, "queues", "--iface", sb.host_if, "--json").stdout)
        assert queues["source"] == "fast path (no daemon running)"
        assert [(q["queue"], q["state"], q["reason"]) for q in queues["queues"]] == [(0, "fenced", "shutdown")]
        tcp_receiver = Receiver(sb, duration=20, port=8080)
        send(sb, "192.0.2.2", count=2, port=8080, tag="root", payload="root", tcp=True)
        tcp_receiver.wait_tags({"root": 2})
        # Fail-open: uninspected, so even the signature's payload arrives.
        assert tcp_receiver.result()["by_tag"] == {"root": 2}
        assert counter(status(sb), "pass", "queue_fenced") >= 2
    finally:
        if daemon.proc and daemon.proc.poll() is None:
            daemon.stop()
        hyperion(sb, "detach", "--iface", sb.host_if, check=False)
        server.terminate()
        server.wait(timeout=10)
