"""Telemetry: /metrics scraped over HTTP with exact values, drop events as JSON lines, event budget."""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from hyperion.daemon.events import EventDecoder, EventReader
from hyperion.daemon.metrics import FastPathCollector
from hyperion.fastpath.program import FastPath
from hyperion.kernel.testrun import run_xdp
from hyperion.lab.sandbox import HOST_V4
from hyperion.policy.compiler import PolicyCompiler
from hyperion.policy.loading import parse_policy
from tests.support.telemetry import POLICY, parse_metrics, value


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
