"""Telemetry: /metrics scraped over HTTP with exact values, drop events as JSON lines, event budget."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from hyperion.daemon.events import EventDecoder, EventReader
from hyperion.daemon.metrics import FastPathCollector, parse_listen_address
from hyperion.fastpath.program import FastPath
from hyperion.kernel.testrun import run_xdp
from hyperion.lab.sandbox import HOST_V4, Sandbox
from hyperion.policy.compiler import PolicyCompiler
from hyperion.policy.loading import parse_policy
from tests.netutil import WAIT, Daemon, counter, hyperion, scrape, send, status, wait_for

POLICY = """
fast_path:
  allow_cidrs: ["203.0.113.7"]
  drop_ips: ["198.51.100.42"]
  redirect_ports:
    - {protocol: udp, port: 53, on_failure: drop}
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> tuple[Samples, set[str]]:
    samples: Samples = {}
    families = set()
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, families


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def running(sandbox: Sandbox, tmp_path: Path) -> Iterator[tuple[Sandbox, Path]]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    events = tmp_path / "events.jsonl"
    for address in ("198.51.100.42", "203.0.113.7", "198.51.100.10"):
        sandbox.add_client_address(address)
    # No AF_XDP workers here: the udp/53 class takes its fail-closed fallback, counted per class.
    daemon = Daemon(sandbox, policy, "--events", str(events), "--no-slowpath").start()
    try:
        yield sandbox, events
    finally:
        daemon.stop()


def test_scrape_over_http_has_exact_values(running: tuple[Sandbox, Path]) -> None:
    sb, _ = running
    before, _ = parse_metrics(scrape(sb))
    send(sb, "198.51.100.42", count=20)
    send(sb, "203.0.113.7", count=15)
    send(sb, "198.51.100.10", count=7, port=53)
    # Every one of the 27 datagrams is dropped or passed by the fast path: wait until all are counted.
    judged = [("blocklist_ip", "drop"), ("allowlist", "pass"), ("redirect_failed", "drop")]

    def counted() -> tuple[Samples, set[str]]:
        return parse_metrics(scrape(sb))

    def all_counted() -> bool:
        now = counted()[0]
        return sum(value(now, "hyperion_fastpath_packets_total", verdict=v, reason=r)
                   - before.get(("hyperion_fastpath_packets_total",
                                 frozenset({"verdict": v, "reason": r}.items())), 0.0)
                   for r, v in judged) >= 27
    wait_for(all_counted, WAIT)
    after, families = counted()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - before.get((name, frozenset(labels.items())), 0.0)

    assert delta("hyperion_fastpath_drops_total", reason="blocklist_ip") == 20
    assert delta("hyperion_fastpath_packets_total", verdict="drop", reason="blocklist_ip") == 20
    assert delta("hyperion_fastpath_packets_total", verdict="pass", reason="allowlist") == 15
    assert delta("hyperion_fastpath_drops_total", reason="redirect_failed") == 7
    assert delta("hyperion_redirect_failures_total", **{"class": "udp/53"}) == 7
    assert delta("hyperion_rx_queue_drops_total", queue="0") == 27
    assert value(after, "hyperion_policy_generation") == 1
    assert value(after, "hyperion_policy_info", mode="enforce") == 1
    assert value(after, "hyperion_map_entries", map="hyp_bip4") == 1
    assert value(after, "hyperion_map_capacity", map="hyp_bip4") == 2097152
    assert value(after, "hyperion_policy_reload_total", result="error") == 0
    assert value(after, "hyperion_events_total", outcome="emitted") == 27
    assert value(after, "hyperion_fastpath_up") == 1
    assert value(after, "hyperion_policy_last_reload_timestamp_seconds") > 1.7e9
    assert any(name == "hyperion_build_info" for name, _ in after)
    # Registered before the slow path exists.
    assert {"hyperion_slowpath_drops", "hyperion_afxdp_rx_queue_pressure"} <= families


def test_drop_events_as_json_lines(running: tuple[Sandbox, Path]) -> None:
    sb, events = running
    send(sb, "198.51.100.42", count=12)
    wait_for(lambda: len(events.read_text().splitlines()) >= 12, WAIT)
    records = [json.loads(line) for line in events.read_text().splitlines()]
    assert len(records) == 12
    first = records[0]
    assert {k: first[k] for k in ("verdict", "reason", "src", "dst", "protocol", "dst_port", "rule_id", "rule",
                                  "interface", "queue")} == {
        "verdict": "drop", "reason": "blocklist_ip", "src": "198.51.100.42", "dst": HOST_V4, "protocol": "udp",
        "dst_port": 5000, "rule_id": 1, "rule": "fast_path.drop_ips[0] 198.51.100.42", "interface": sb.host_if,
        "queue": 0,
    }
    assert first["time"].endswith("Z") and first["length"] > 42


def test_top_once_against_the_running_daemon(running: tuple[Sandbox, Path]) -> None:
    sb, _ = running
    send(sb, "198.51.100.42", count=10)
    wait_for(lambda: counter(status(sb), "drop", "blocklist_ip") >= 10, WAIT)
    out = hyperion(sb, "top", "--once", "--interval", "0.2").stdout
    assert sb.host_if in out and "policy gen 1" in out
    assert "blocklist_ip" in out and "hyp_bip4" in out


def test_event_budget_suppresses_and_counts(detached: tuple[FastPath, int]) -> None:
    """50 drops on one CPU with a budget of 5 per second: 5 events, 45 suppressed, exactly."""
    fastpath, prog_fd = detached
    fastpath.apply(PolicyCompiler(fastpath.abi, fastpath.capacities()).compile(parse_policy(POLICY)))
    fastpath.set_event_rate(5)
    received: list[dict[str, Any]] = []
    reader = EventReader(fastpath.maps["hyp_events"].fd, EventDecoder(fastpath.abi), received.append)
    packet = bytes(Ether() / IP(src="198.51.100.42", dst=HOST_V4) / UDP(dport=9))
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})  # one CPU, one budget
    try:
        for _ in range(50):
            assert run_xdp(prog_fd, packet).action == "drop"
    finally:
        os.sched_setaffinity(0, cpus)
    reader.poll(100)
    reader.close()
    assert fastpath.event_stats() == {"emitted": 5, "suppressed": 45, "ring_full": 0}
    assert len(received) == 5 and {r["reason"] for r in received} == {"blocklist_ip"}


def test_no_events_when_rate_is_zero(detached: tuple[FastPath, int]) -> None:
    fastpath, prog_fd = detached
    fastpath.apply(PolicyCompiler(fastpath.abi, fastpath.capacities()).compile(parse_policy(POLICY)))
    fastpath.set_event_rate(0)
    run_xdp(prog_fd, bytes(Ether() / IP(src="198.51.100.42", dst=HOST_V4) / UDP(dport=9)))
    assert fastpath.event_stats() == {"emitted": 0, "suppressed": 0, "ring_full": 0}


def test_collector_reads_maps_at_scrape_time(detached: tuple[FastPath, int]) -> None:
    fastpath, prog_fd = detached
    fastpath.apply(PolicyCompiler(fastpath.abi, fastpath.capacities()).compile(parse_policy(POLICY)))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FastPathCollector(fastpath))
    packet = bytes(Ether() / IP(src="198.51.100.42", dst=HOST_V4) / UDP(dport=9))
    for expected in (1, 2, 3):
        run_xdp(prog_fd, packet)
        samples, _ = parse_metrics(generate_latest(registry).decode())
        assert value(samples, "hyperion_fastpath_drops_total", reason="blocklist_ip") == expected


@pytest.mark.parametrize("text,expected", [
    ("127.0.0.1:2112", ("127.0.0.1", 2112)), ("[::1]:9000", ("::1", 9000)), (":2112", ("0.0.0.0", 2112)),
])
def test_listen_address_parsing(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(text) == expected


@pytest.mark.parametrize("text", ["2112", "localhost:http", "127.0.0.1:70000"])
def test_bad_listen_address(text: str) -> None:
    from hyperion.errors import HyperionError

    with pytest.raises(HyperionError, match="expected HOST:PORT"):
        parse_listen_address(text)
