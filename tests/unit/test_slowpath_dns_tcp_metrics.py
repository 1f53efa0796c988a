"""The workers' DNS-over-TCP counters (tcp_stream.c) reach Prometheus as
hyperion_slowpath_dns_tcp_total{queue,outcome}, one outcome per worker stat dns_tcp_<outcome>, from
the same per-queue stats (Queue.stats(), the control block) as the other slow-path families."""

from __future__ import annotations

from typing import Any

from prometheus_client.core import CollectorRegistry
from prometheus_client.exposition import generate_latest

from hyperion import _slowpath
from hyperion.daemon.metrics import _slowpath_families_of
from hyperion.slowpath.protocol import STAT_NAMES
from tests.support.telemetry import parse_metrics, value

OUTCOMES = ("messages", "midstream", "out_of_order", "ended", "answered", "handoff", "expired", "evicted")


class _SlowPath:
    """What the collector reads of a SlowPath: one queue whose stats are given."""

    events_dropped = 0

    def __init__(self, stats: dict[str, Any]) -> None:
        self._stats = stats

    def rule_hits(self) -> dict[str, tuple[str, int]]:
        return {}

    def queue_stats(self) -> dict[int, dict[str, Any]]:
        return {3: self._stats}

    def lifecycle_metrics(self) -> dict[str, Any]:
        return {"queues": {}, "detections": {}, "interface_recoveries": {}}


class _Collector:
    def __init__(self, sp: _SlowPath) -> None:
        self.sp = sp

    def collect(self) -> Any:
        return _slowpath_families_of(self.sp)  # type: ignore[arg-type]


def test_the_worker_counters_are_the_dns_tcp_family() -> None:
    assert {f"dns_tcp_{o}" for o in OUTCOMES} <= set(_slowpath.STAT_NAMES) == set(STAT_NAMES)
    stats: dict[str, Any] = dict.fromkeys(STAT_NAMES, 0)
    stats.update({f"dns_tcp_{o}": 10 + i for i, o in enumerate(OUTCOMES)})
    stats.update(rx_ring_level=0, ring_size=2048, free_frames=0, latency_buckets=[(float("inf"), 0)])
    registry = CollectorRegistry()
    registry.register(_Collector(_SlowPath(stats)))
    samples, families = parse_metrics(generate_latest(registry).decode())
    assert "hyperion_slowpath_dns_tcp" in families
    for i, outcome in enumerate(OUTCOMES):
        assert value(samples, "hyperion_slowpath_dns_tcp_total", queue="3", outcome=outcome) == 10 + i
    # The existing families keep their names.
    assert {"hyperion_slowpath_packets", "hyperion_slowpath_checksums", "hyperion_slowpath_block_source"} <= families
