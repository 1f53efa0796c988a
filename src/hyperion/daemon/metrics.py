"""Prometheus metrics, read from the BPF maps at scrape time.

A custom Collector: no thread copies counters in the background, so a
scrape always shows what the kernel holds at that moment. Per-CPU values are
summed. Label values are the ABI's enumerator names (see hyperion_abi.h).
"""

from __future__ import annotations

import logging
import platform
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from hyperion import __version__
from hyperion.errors import HyperionError
from hyperion.fastpath.program import FastPath
from hyperion.protocols import protocol_name
from hyperion.slowpath.supervisor import SlowPath
from hyperion.slowpath.watchdog import STATES

log = logging.getLogger("hyperion.metrics")
# What serve_metrics returns: shutdown() and server_close() stop it.
MetricsServer = WSGIServer


@dataclass
class ReloadStats:
    """The daemon's reload outcomes (the kernel holds the rest)."""

    results: dict[str, int] = field(default_factory=lambda: {"success": 0, "error": 0})
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, ok: bool) -> None:
        with self.lock:
            self.results["success" if ok else "error"] += 1


def class_label(protocol: int, port: int) -> str:
    return f"{protocol_name(protocol)}/{port}"


class FastPathCollector(Collector):
    def __init__(self, fastpath: FastPath, reloads: ReloadStats | None = None,
                 slowpath: Callable[[], SlowPath | None] | None = None,
                 attached: Callable[[], bool] | None = None,
                 dns_rules: Callable[[], Mapping[tuple[str, str], int]] | None = None) -> None:
        """dns_rules: (rule label, action) -> queries decided in XDP by that name rule, over the policy's
        generations (the daemon's Daemon.dns_rule_matches, which knows each generation's policy)."""
        self.fastpath = fastpath
        self.dns_rules = dns_rules or dict
        # The daemon passes what its periodic check last saw (it logs each change before exporting it).
        self.attached = attached or fastpath.is_attached
        self.reloads = reloads or ReloadStats()
        self.slowpath = slowpath or (lambda: None)
        # Serialises scrapes: map reads are not reentrant on one FastPath.
        self._lock = threading.Lock()

    def describe(self) -> Iterator[Metric]:
        return iter(())  # unchecked collector: families are produced at scrape time

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            try:
                families = list(self._collect())
            except HyperionError as exc:
                # The fast path was detached under us: say so instead of failing the scrape.
                log.warning("scrape could not read the fast path: %s", exc)
                families = [GaugeMetricFamily("hyperion_fastpath_up", "1 if the fast path's maps could be read.",
                                              value=0)]
        yield from families

    def _collect(self) -> Iterator[Metric]:
        fp = self.fastpath
        counters = fp.counters()
        up = GaugeMetricFamily("hyperion_fastpath_up", "1 if the fast path's maps could be read.")
        up.add_metric([], 1)
        yield up
        yield GaugeMetricFamily("hyperion_fastpath_attached",
                                "1 while the program is attached to the interface (0 after an external detach, "
                                "or a deleted or re-created netdev).", value=1 if self.attached() else 0)

        packets = CounterMetricFamily("hyperion_fastpath_packets", "Packets by fast-path verdict and reason.",
                                      labels=["verdict", "reason"])
        octets = CounterMetricFamily("hyperion_fastpath_bytes", "Bytes by fast-path verdict and reason.",
                                     labels=["verdict", "reason"])
        drops = CounterMetricFamily("hyperion_fastpath_drops", "Packets dropped by the fast path, by reason.",
                                    labels=["reason"])
        for verdict in fp.abi.verdicts.values():
            for reason in fp.abi.reasons.values():
                n, b = counters.get((verdict, reason), (0, 0))
                packets.add_metric([verdict, reason], n)
                octets.add_metric([verdict, reason], b)
                if verdict == "drop":
                    drops.add_metric([reason], n)
        yield from (packets, octets, drops)

        redirected = CounterMetricFamily("hyperion_redirects", "Packets redirected to AF_XDP, by class.",
                                         labels=["class"])
        failures = CounterMetricFamily(
            "hyperion_redirect_failures", "Redirect-class packets whose queue had no AF_XDP socket (fallback taken).",
            labels=["class"])
        for (protocol, port), c in sorted(fp.class_counters().items()):
            redirected.add_metric([class_label(protocol, port)], c["redirected"])
            failures.add_metric([class_label(protocol, port)], c["failed"])
        yield from (redirected, failures)

        queue_families = {
            name: CounterMetricFamily(f"hyperion_rx_queue_{name}", f"Fast-path {name.replace('_', ' ')} per rx queue.",
                                      labels=["queue"])
            for name in ("packets", "drops", "redirects", "redirect_failures", "fenced")
        }
        for queue, c in sorted(fp.queue_counters().items()):
            for name, family in queue_families.items():
                family.add_metric([str(queue)], c[name])
        yield from queue_families.values()

        # Only the rules that decided something: a million name rules must not make a million series.
        dns = CounterMetricFamily("hyperion_dns_rule_matches", "Queries decided in XDP by a DNS name rule, by rule "
                                  "and action (rules without matches are left out).", labels=["rule", "action"])
        for (rule, action), hits in sorted(self.dns_rules().items()):
            if hits > 0:
                dns.add_metric([rule, action], hits)
        yield dns

        yield from _slowpath_families_of(self.slowpath())

        events = CounterMetricFamily("hyperion_events", "Drop events: emitted, or lost to the rate budget or a "
                                     "full ring.", labels=["outcome"])
        for outcome, n in fp.event_stats().items():
            events.add_metric([outcome], n)
        yield events
        yield CounterMetricFamily(
            "hyperion_dynamic_block_evictions", "Dynamic blocks a full table evicted to make room for blocks added "
            "by `hyperion block add` or the FastPath API (not counted for the slow path's block_source).",
            value=fp.dynamic_block_evictions())

        settings = fp.settings()
        modes = {v: k for k, v in fp.abi.modes.items()}
        yield GaugeMetricFamily("hyperion_policy_generation", "Generation of the active policy (0: none).",
                                value=int(settings.generation))
        info = GaugeMetricFamily("hyperion_policy_info", "The active policy's mode.", labels=["mode"])
        if settings.generation:
            info.add_metric([modes.get(settings.mode, str(settings.mode))], 1)
        yield info
        yield GaugeMetricFamily("hyperion_policy_last_reload_timestamp_seconds",
                                "When the active policy was applied (Unix time).",
                                value=settings.applied_at_ns / 1e9)
        reloads = CounterMetricFamily("hyperion_policy_reload", "Policy reloads by this daemon, by result.",
                                      labels=["result"])
        with self.reloads.lock:
            for result, n in self.reloads.results.items():
                reloads.add_metric([result], n)
        yield reloads

        entries = GaugeMetricFamily("hyperion_map_entries", "Entries in each map.", labels=["map"])
        capacity = GaugeMetricFamily("hyperion_map_capacity", "Capacity of each map.", labels=["map"])
        for name, (n, cap) in fp.map_fill().items():
            entries.add_metric([name], n)
            capacity.add_metric([name], cap)
        yield from (entries, capacity)
        build = GaugeMetricFamily("hyperion_build_info", "Hyperion version and kernel.", labels=["version", "kernel"])
        build.add_metric([__version__, platform.release()], 1)
        yield build


SLOWPATH_OUTCOMES = ("passed", "dropped", "alerted", "nxdomain", "refused", "blocked_sources", "malformed_dns",
                     "not_parsed", "deliver_errors", "block_errors", "tx_failed", "events_lost")
# hyperion_slowpath_block_source_total's outcomes -> the worker counter behind each.
BLOCK_SOURCE_OUTCOMES = {"blocked": "blocked_sources", "never_block": "block_never_block",
                         "rate_limited": "block_rate_limited", "not_established": "block_not_established",
                         "error": "block_errors"}
# Checksums of delivered packets: completed (an offloading sender's partial one), bad (neither valid
# nor partial: delivered unchanged, for the stack to drop and count). Worker stat csum_<outcome>.
CHECKSUM_OUTCOMES = ("completed", "bad")
# DNS over TCP in the workers (tcp_stream.c): worker stat dns_tcp_<outcome>.
DNS_TCP_OUTCOMES = ("messages", "midstream", "out_of_order", "ended", "answered", "handoff", "expired", "evicted")
XDP_STATISTICS = ("rx_dropped", "rx_ring_full", "rx_fill_ring_empty_descs", "rx_invalid_descs", "tx_invalid_descs")


def _slowpath_families_of(slowpath: SlowPath | None) -> Iterator[Metric]:
    """Slow-path families; registered (empty) when no slow path runs."""
    drops = CounterMetricFamily("hyperion_slowpath_drops", "Packets a slow-path rule kept from their destination "
                                "(drop, block_source).", labels=["rule"])
    verdicts = CounterMetricFamily("hyperion_slowpath_rule_matches", "Slow-path rule matches, by action.",
                                   labels=["rule", "action"])
    pressure = GaugeMetricFamily("hyperion_afxdp_rx_queue_pressure", "AF_XDP RX ring occupancy fraction.",
                                 labels=["queue"])
    inspected = CounterMetricFamily("hyperion_slowpath_inspected", "Packets the slow path inspected.",
                                    labels=["queue"])
    outcomes = CounterMetricFamily("hyperion_slowpath_packets", "Slow-path outcomes per queue.",
                                   labels=["queue", "outcome"])
    block_source = CounterMetricFamily(
        "hyperion_slowpath_block_source", "block_source matches per queue by what happened to the source: blocked, "
        "or not because it is in never_block, over its rule's max_blocks_per_second, on a TCP flow not established, "
        "or a map error (the packet is dropped in every case).", labels=["queue", "outcome"])
    checksums = CounterMetricFamily("hyperion_slowpath_checksums", "Checksums of the packets the slow path "
                                    "delivered: completed (partial, from checksum offload) or bad (left "
                                    "for the stack to drop).", labels=["queue", "outcome"])
    dns_tcp = CounterMetricFamily(
        "hyperion_slowpath_dns_tcp", "DNS over TCP in the workers, per queue: messages judged; payload segments "
        "dropped because the connection is unknown (midstream), not at the stream position where the next "
        "query starts (out_of_order) or ended; in-stream answers (answered, then the stream ends); connections "
        "handed over by XDP (handoff), forgotten idle (expired) or to make room (evicted).",
        labels=["queue", "outcome"])
    free = GaugeMetricFamily("hyperion_afxdp_free_frames", "UMEM frames not posted to the fill ring.",
                             labels=["queue"])
    kernel = {name: CounterMetricFamily(f"hyperion_afxdp_{name}", f"XDP_STATISTICS {name} of the AF_XDP socket.",
                                        labels=["queue"]) for name in XDP_STATISTICS}
    events_dropped = CounterMetricFamily(
        "hyperion_slowpath_events_dropped", "Slow-path and lifecycle events refused because the queue waiting "
        "for the event sink was full.")
    latency = HistogramMetricFamily("hyperion_slowpath_inspection_latency_seconds",
                                    "Per-packet inspection time (a batch's time divided among its packets).",
                                    labels=["queue"])
    if slowpath is not None:
        events_dropped.add_metric([], slowpath.events_dropped)
        for rule, (action, hits) in slowpath.rule_hits().items():
            verdicts.add_metric([rule, action], hits)
            if action in ("drop", "block_source"):
                drops.add_metric([rule], hits)
        for queue, st in slowpath.queue_stats().items():
            label = [str(queue)]
            pressure.add_metric(label, st["rx_ring_level"] / st["ring_size"])
            inspected.add_metric(label, st["rx"])
            free.add_metric(label, st["free_frames"])
            for outcome in SLOWPATH_OUTCOMES:
                outcomes.add_metric([str(queue), outcome], st[outcome])
            for outcome, stat in BLOCK_SOURCE_OUTCOMES.items():
                block_source.add_metric([str(queue), outcome], st.get(stat, 0))
            for outcome in CHECKSUM_OUTCOMES:
                checksums.add_metric([str(queue), outcome], st.get(f"csum_{outcome}", 0))
            for outcome in DNS_TCP_OUTCOMES:
                dns_tcp.add_metric([str(queue), outcome], st.get(f"dns_tcp_{outcome}", 0))
            for name, family in kernel.items():
                family.add_metric(label, st.get(f"xdp_{name}", 0))
            cumulative, buckets = 0, []
            for bound, count in st["latency_buckets"]:
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            latency.add_metric(label, buckets, sum_value=st["busy_ns"] / 1e9)
    yield from (drops, verdicts, pressure, inspected, outcomes, block_source, checksums, dns_tcp, free,
                *kernel.values(), latency, events_dropped)
    yield from _lifecycle_families_of(slowpath)


def _lifecycle_families_of(slowpath: SlowPath | None) -> Iterator[Metric]:
    """The queues' lifecycle (hyperion.lifecycle): state, transitions, dwell, detection, recoveries."""
    state = GaugeMetricFamily("hyperion_queue_state", "1 for the queue's current lifecycle state, 0 for the others.",
                              labels=["queue", "state"])
    transitions = CounterMetricFamily("hyperion_queue_transitions", "Lifecycle transitions of a queue.",
                                      labels=["queue", "from", "to"])
    dwell = HistogramMetricFamily("hyperion_queue_state_dwell_seconds",
                                  "Time a queue spent in a state, observed when it left it.", labels=["queue", "state"])
    detection = HistogramMetricFamily("hyperion_watchdog_detection_seconds",
                                      "From a fault's onset (last good heartbeat or sample) to its detection.",
                                      labels=["detection"])
    recoveries = CounterMetricFamily("hyperion_queue_recoveries", "Recoveries of a queue by kind and result.",
                                     labels=["queue", "kind", "result"])
    interface = CounterMetricFamily("hyperion_interface_recoveries",
                                    "Interface-wide recoveries (escalations: link down/up).", labels=["result"])
    heartbeat = GaugeMetricFamily("hyperion_worker_heartbeat_age_seconds",
                                  "Time since the queue worker's loop last ran.", labels=["queue"])
    if slowpath is not None:
        data = slowpath.lifecycle_metrics()
        for queue, q in sorted(data["queues"].items()):
            label = str(queue)
            for name in STATES:
                state.add_metric([label, name], 1.0 if q["state"] == name else 0.0)
            for (src, dst), count in sorted(q["transitions"].items()):
                transitions.add_metric([label, src, dst], count)
            for name, histogram in sorted(q["dwell"].items()):
                dwell.add_metric([label, name], histogram.buckets(), sum_value=histogram.total)
            for (kind, result), count in sorted(q["recoveries"].items()):
                recoveries.add_metric([label, kind, result], count)
            if q["heartbeat_age"] is not None:
                heartbeat.add_metric([label], q["heartbeat_age"])
        for reason, histogram in sorted(data["detections"].items()):
            detection.add_metric([reason], histogram.buckets(), sum_value=histogram.total)
        for result, count in sorted(data["interface_recoveries"].items()):
            interface.add_metric([result], count)
    yield from (state, transitions, dwell, detection, recoveries, interface, heartbeat)


def parse_listen_address(text: str) -> tuple[str, int]:
    """'127.0.0.1:2112', '[::1]:2112' or ':2112' (all addresses) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise HyperionError(f"--metrics-addr {text!r}: expected HOST:PORT, e.g. 127.0.0.1:2112")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def serve_metrics(collector: FastPathCollector, listen: str) -> MetricsServer:
    """Starts the /metrics HTTP server in a daemon thread; returns the server (shutdown() to stop)."""
    host, port = parse_listen_address(listen)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise HyperionError(f"cannot serve metrics on {listen}: {exc.strerror}") from None
    return server
