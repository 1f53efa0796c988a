"""Limits with a defined, counted outcome (issue 12, defect 8), without root.

- The UMEM frame size comes from the ABI; served queues stop at the program's capacity, with a
  HyperionError beyond it.
- Slow-path events waiting for the sink are bounded; what the bound refuses is counted.
- The shared control block's layout matches the C struct, and the supervisor reads the counters
  from it, not from the last report.

The program's fallbacks: tests/kernel/test_limits.py; with real traffic: tests/e2e/test_limits.py.
"""

from __future__ import annotations

import ctypes
import mmap
from typing import Any

import pytest

from hyperion.daemon.metrics import _slowpath_families_of
from hyperion.errors import HyperionError, SlowPathError
from hyperion.kernel.abi import Abi
from hyperion.policy.loading import parse_policy
from hyperion.slowpath import supervisor as slowpath
from hyperion.slowpath.protocol import Event
from hyperion.slowpath.supervisor import SlowPath

# A DNS class for the DNS rules: a DNS rule no class sees is an error of its own.
DNS_CLASS = "fast_path:\n  redirect_ports: [{protocol: udp, port: 53}]\n"


def test_umem_frame_size_comes_from_the_abi(abi: Abi) -> None:
    """One definition: the workers' UMEM frames are the size the program checks against."""
    from hyperion import _slowpath
    assert abi.capacity["umem_frame_bytes"] == _slowpath.UMEM_FRAME_SIZE == 4096


def test_served_queues_stop_at_the_capacity() -> None:
    assert slowpath.served_queues(4, None, 256) == [0, 1, 2, 3]
    assert slowpath.served_queues(300, None, 256) == list(range(256))
    assert slowpath.served_queues(300, [0, 7], 256) == [0, 7]
    with pytest.raises(SlowPathError, match=r"queue 256 is beyond the fast path's capacity of 256 RX queues"):
        slowpath.served_queues(300, [0, 256], 256)


class _NoFastPath:
    """SlowPath's constructor keeps its fast path for later; these tests never start it."""


def _events(count: int) -> list[Event]:
    return [Event.from_json([0, 0, 0, 4, 17, 40000 + i % 1000, 53, 1, "c6336407", "c0000201", "evil.com"])
            for i in range(count)]


def test_pending_slowpath_events_are_bounded_and_what_is_refused_is_counted() -> None:
    policy = parse_policy(DNS_CLASS + "slow_path:\n  dns_rules:\n    - {match: evil.com, action: drop}\n")
    received: list[dict[str, Any]] = []
    sp = SlowPath(_NoFastPath(), "lo", policy, event_sink=received.append)  # type: ignore[arg-type]
    sp._queue_events(0, 1, _events(slowpath.MAX_PENDING_EVENTS - 5))
    sp._queue_events(0, 1, _events(25))
    assert len(sp._pending_events) == slowpath.MAX_PENDING_EVENTS
    assert sp.events_dropped == 20
    families = {f.name: f for f in _slowpath_families_of(sp)}
    [sample] = families["hyperion_slowpath_events_dropped"].samples
    assert sample.value == 20
    assert sp.pump_events() == slowpath.MAX_PENDING_EVENTS
    assert len(received) == slowpath.MAX_PENDING_EVENTS and received[0]["qname"] == "evil.com"
    # Drained: room again, and the count of refused events stays.
    sp._queue_events(0, 1, _events(3))
    assert len(sp._pending_events) == 3 and sp.events_dropped == 20


def test_served_queues_error_is_a_hyperion_error() -> None:
    with pytest.raises(HyperionError):
        slowpath.served_queues(2, [5], 4)


def test_control_block_layout_matches_the_c_struct() -> None:
    """control.h defines the layout; Python's ctypes mirror must agree field by field."""
    from hyperion import _slowpath
    from hyperion.slowpath.protocol import CONTROL_BYTES, ControlLayout
    layout = dict(_slowpath.CONTROL_LAYOUT)
    assert ctypes.sizeof(ControlLayout) == layout.pop("size") <= CONTROL_BYTES
    assert {name: getattr(ControlLayout, name).offset for name in layout} == layout
    assert len(_slowpath.STAT_NAMES) == len(ControlLayout().stats)
    assert _slowpath.LATENCY_BOUNDS[-1] == float("inf")
    assert len(_slowpath.LATENCY_BOUNDS) == len(ControlLayout().latency)


def test_supervisor_reads_counters_from_the_control_block_not_the_last_report() -> None:
    from hyperion import _slowpath
    from hyperion.slowpath.protocol import CONTROL_BYTES, ControlLayout
    from hyperion.slowpath.supervisor import WorkerProcess
    block = mmap.mmap(-1, CONTROL_BYTES)
    try:
        view = ControlLayout.from_buffer(block)
        view.stat_count = len(_slowpath.STAT_NAMES)
        view.stats[_slowpath.STAT_NAMES.index("rx")] = 7
        view.stats[_slowpath.STAT_NAMES.index("passed")] = 5
        view.latency[0] = 7
        del view  # releases the buffer, so the mmap can close
        worker = WorkerProcess(proc=None, control=block, started=0.0)  # type: ignore[arg-type]
        worker.report = {"rx": 3, "passed": 3, "rx_ring_level": 2, "xdp_rx_dropped": 1}
        stats = worker.stats()
        assert (stats["rx"], stats["passed"], stats["rx_ring_level"], stats["xdp_rx_dropped"]) == (7, 5, 2, 1)
        assert stats["latency_buckets"][0] == (_slowpath.LATENCY_BOUNDS[0], 7)
    finally:
        block.close()
