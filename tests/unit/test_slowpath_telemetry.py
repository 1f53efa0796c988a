"""Telemetry merging (hyperion.slowpath.telemetry): a queue's counters survive its worker being
replaced, its levels are the current worker's only, and rule hits add up across generations."""

from __future__ import annotations

import math

from hyperion.slowpath.telemetry import add_counters, add_hits, queue_totals

FIRST = {"rx": 10, "drop": 2, "busy_ns": 500, "rx_ring_level": 5, "free_frames": 100, "fill_ring_level": 9,
         "tx_outstanding": 1, "ring_size": 2048, "latency_buckets": [[1e-06, 3], [math.inf, 1]]}
SECOND = {"rx": 4, "busy_ns": 20, "rx_ring_level": 7, "free_frames": 50,
          "latency_buckets": [[1e-06, 1], [math.inf, 0]]}


def test_a_retired_worker_leaves_its_counters_and_not_its_levels() -> None:
    retired = add_counters({}, FIRST)
    assert retired == {"rx": 10, "drop": 2, "busy_ns": 500, "latency_buckets": [(1e-06, 3), (math.inf, 1)]}
    # A second worker gone as well: summed, bucket by bucket.
    assert add_counters(retired, SECOND) == {"rx": 14, "drop": 2, "busy_ns": 520,
                                             "latency_buckets": [(1e-06, 4), (math.inf, 1)]}


def test_a_queue_shows_every_worker_s_counters_and_the_current_one_s_levels() -> None:
    retired = add_counters({}, FIRST)
    assert queue_totals(retired, SECOND, ring_size=4096) == {
        "rx": 14, "drop": 2, "busy_ns": 520, "latency_buckets": [(1e-06, 4), (math.inf, 1)],
        "rx_ring_level": 7, "free_frames": 50, "fill_ring_level": 0, "tx_outstanding": 0, "ring_size": 4096}


def test_a_queue_without_a_worker_has_its_counters_and_empty_levels() -> None:
    retired = add_counters({}, FIRST)
    assert queue_totals(retired, {}, ring_size=2048) == {
        "rx": 10, "drop": 2, "busy_ns": 500, "latency_buckets": [(1e-06, 3), (math.inf, 1)],
        "rx_ring_level": 0, "free_frames": 0, "fill_ring_level": 0, "tx_outstanding": 0, "ring_size": 2048}


def test_a_queue_s_first_worker_is_shown_as_it_reports() -> None:
    totals = queue_totals({}, FIRST, ring_size=2048)
    assert totals["rx"] == 10 and totals["rx_ring_level"] == 5 and totals["fill_ring_level"] == 9
    assert [tuple(b) for b in totals["latency_buckets"]] == [(1e-06, 3), (math.inf, 1)]


def test_rule_hits_add_up_by_label() -> None:
    totals = {"a": 1}
    add_hits(totals, ["a", "b"], [(0, 2), (1, 3)])
    add_hits(totals, ["b"], [(0, 4), (1, 99)])  # hits beyond the generation's rules are not anyone's
    assert totals == {"a": 3, "b": 7}
