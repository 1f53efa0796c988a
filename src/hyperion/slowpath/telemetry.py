"""Telemetry merging: a queue's counters and a rule's hits summed across the workers and rules
generations that produced them, and the typed snapshots the metrics collector and `hyperion queues`
read. Pure functions and types: the supervisor holds the data and the locks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, TypedDict

from hyperion.slowpath.watchdog import Histogram, QueueReason, QueueState, TransitionRecord

# A worker's stats (hyperion.slowpath.worker's report plus the control block's counters): ints,
# and latency_buckets, a list of (bound, count).
Stats = dict[str, Any]

# Worker stats that are levels, not counters: not summed across a queue's successive workers.
LEVELS = frozenset({"rx_ring_level", "ring_size", "free_frames", "tx_outstanding", "fill_ring_level"})


def _is_counter(name: str, value: object) -> bool:
    return name == "latency_buckets" or (isinstance(value, int) and name not in LEVELS)


def add_counters(total: Mapping[str, Any], stats: Mapping[str, Any]) -> Stats:
    """total plus the counters of stats (latency buckets bucket by bucket); levels are left out."""
    result = dict(total)
    for name, value in stats.items():
        if name == "latency_buckets":
            old = total.get(name) or [(bound, 0) for bound, _ in value]
            result[name] = [(b, c + o) for (b, c), (_, o) in zip(value, old, strict=True)]
        elif _is_counter(name, value):
            result[name] = total.get(name, 0) + value
    return result


def queue_totals(retired: Mapping[str, Any], current: Mapping[str, Any], ring_size: int) -> Stats:
    """A queue's stats: the counters of its retired workers plus the current worker's, and the
    current worker's levels (zero without one)."""
    merged: Stats = {"rx_ring_level": 0, "ring_size": ring_size, "free_frames": 0, "fill_ring_level": 0,
                     "tx_outstanding": 0}
    merged.update(retired)
    merged.update({name: value for name, value in current.items() if not _is_counter(name, value)})
    merged.update(add_counters(retired, current))
    return merged


def add_hits(totals: dict[str, int], labels: Sequence[str], hits: Iterable[tuple[int, int]]) -> None:
    """Adds one worker's hits for one rules generation ((rule index, matches) pairs) to totals by
    label; an index beyond the generation's rules is nobody's."""
    for index, count in hits:
        if 0 <= index < len(labels):
            totals[labels[index]] = totals.get(labels[index], 0) + count


def copy_histogram(histogram: Histogram) -> Histogram:
    return Histogram(histogram.bounds, list(histogram.counts), histogram.total)


class QueueLifecycle(TypedDict):
    """One queue's lifecycle figures, as the metrics collector exports them."""
    state: QueueState
    transitions: dict[tuple[QueueState, QueueState], int]
    dwell: dict[QueueState, Histogram]
    recoveries: dict[tuple[str, str], int]  # (kind, result) -> count
    restarts: int
    heartbeat_age: float | None


class LifecycleMetrics(TypedDict):
    queues: dict[int, QueueLifecycle]
    detections: dict[QueueReason, Histogram]  # detection reason -> seconds from fault to detection
    interface_recoveries: dict[str, int]   # result -> count


class SteeringPlane(TypedDict):
    active_channels: int | None
    steered: bool
    rss: str | list[int]


class DescriptorPlane(TypedDict, total=False):
    worker_pid: int | None
    umem_bound: bool
    zerocopy: bool | None
    rules_generation: int | None
    rule_compiles: int | None
    heartbeat_age_ms: float | None
    umem_frames: int
    # From the worker's stats, when it reported them:
    free_frames: int
    fill_ring_level: int
    rx_ring_level: int
    tx_outstanding: int
    xdp_rx_dropped: int
    xdp_rx_ring_full: int
    xdp_rx_fill_ring_empty_descs: int


# The worker stats `hyperion queues` shows in the descriptor plane.
DescriptorStat = Literal["free_frames", "fill_ring_level", "rx_ring_level", "tx_outstanding", "xdp_rx_dropped",
                         "xdp_rx_ring_full", "xdp_rx_fill_ring_empty_descs"]
DESCRIPTOR_STATS: tuple[DescriptorStat, ...] = ("free_frames", "fill_ring_level", "rx_ring_level", "tx_outstanding",
                                                "xdp_rx_dropped", "xdp_rx_ring_full", "xdp_rx_fill_ring_empty_descs")


class QueueStatus(TypedDict):
    """Every plane of one queue (`hyperion queues --json`); keys in the order they are shown."""
    queue: int
    state: QueueState
    reason: QueueReason
    in_state_seconds: float
    restarts: int
    failures_in_a_row: int
    steering: SteeringPlane
    redirect: dict[str, str | bool | int]   # bpf_state, xsk_map_entry and the fast path's queue counters
    descriptors: DescriptorPlane
    convergence: str | None
    transitions: list[TransitionRecord]     # newest last
    driver: dict[str, int] | str            # the driver's AF_XDP counters, or why there are none
