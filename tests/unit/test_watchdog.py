"""The watchdog's actions (hyperion.slowpath.recovery.QueueWatchdog) without root: a fake QueuePlane
records what it is asked to do to the maps, the interface and the workers, and fake workers report
what the test sets. The order that matters is the README's: a queue is fenced in the BPF map before
its xsk_map entry goes, and both before its worker is stopped."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from typing import Any

import pytest

from hyperion.errors import SlowPathError
from hyperion.kernel.abi import load_abi
from hyperion.slowpath.recovery import QueueWatchdog
from hyperion.slowpath.supervisor import ManagedQueue, SlowPathOptions
from hyperion.slowpath.watchdog import (
    QueueAction,
    QueueReason,
    QueueState,
    QueueStateMachine,
    Transition,
)


class FakeProc:
    def __init__(self) -> None:
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            raise subprocess.TimeoutExpired("worker", timeout or 0)
        return self.returncode


class FakeWorker:
    """What the watchdog reads of a worker: liveness, readiness, heartbeat, stats, rules generations.
    Its pid is the test's own: /proc shows a live process that is not exiting."""

    def __init__(self, ready: bool, exits: bool = False) -> None:
        self.pid = os.getpid()
        self.proc = FakeProc()
        self.ready, self.exited = threading.Event(), threading.Event()
        if ready:
            self.ready.set()
        if exits:
            self.proc.returncode = 1
            self.exited.set()
        self.started = time.monotonic()
        self.error: str | None = "bind failed" if exits else None
        self.exiting: str | None = None
        self.report: dict[str, Any] | None = None
        self.beat: float | None = None  # None: the loop is running (a fresh heartbeat)
        self.applied_generation = self.offered_generation = 1
        self.offered_at = 0.0

    def heartbeat(self) -> float | None:
        return time.monotonic() if self.beat is None else self.beat


class FakePlane:
    def __init__(self, channels: int) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.transitions: list[Transition] = []
        self.channels = channels
        self.channel_refusals = 0    # set_channels refuses this many times first
        self.link_refused = False
        self.workers_exit = False    # workers spawned from now on exit at once
        self.failures: dict[int, int] = {}
        self.threads: set[str] = set()

    def set_queue_state(self, queue: int, state: QueueState, reason: QueueReason, worker_pid: int,
                        restarts: int) -> None:
        self.calls.append(("state", queue, state, reason))

    def unmap_socket(self, queue: int) -> None:
        self.calls.append(("unmap", queue))

    def redirect_failures(self, queue: int) -> int:
        return self.failures.get(queue, 0)

    def rx_queue_count(self) -> int:
        return self.channels

    def set_channels(self, count: int) -> None:
        self.threads.add(threading.current_thread().name)
        if self.channel_refusals:
            self.channel_refusals -= 1
            raise SlowPathError("ethtool -L: too low for existing AF_XDP sockets")
        self.calls.append(("channels", count))
        self.channels = count

    def bounce_link(self) -> None:
        self.calls.append(("bounce",))
        if self.link_refused:
            raise SlowPathError("ip link set down: Operation not permitted")

    def descriptor_convergence(self, queue: int) -> str:
        return "converged"

    def spawn(self, mq: ManagedQueue) -> Any:
        worker = FakeWorker(ready=not self.workers_exit, exits=self.workers_exit)
        self.calls.append(("spawn", mq.queue_id))
        return worker

    def end_worker(self, mq: ManagedQueue, graceful: bool) -> None:
        self.calls.append(("end", mq.queue_id, graceful))
        mq.worker = None

    def transitioned(self, transition: Transition) -> None:
        self.transitions.append(transition)


def watchdog(queues: int = 1, **options: Any) -> tuple[QueueWatchdog, FakePlane]:
    """A watchdog over `queues` queues, each started and active as SlowPath.start leaves them."""
    plane = FakePlane(channels=queues)
    managed = {q: ManagedQueue(q, q, QueueStateMachine(q)) for q in range(queues)}
    wd = QueueWatchdog(managed, SlowPathOptions(**options), plane, threading.RLock(), threading.Event(), "eth0")
    for mq in managed.values():
        wd.begin_recovery(mq, QueueReason.STARTING)
        wd.activate(mq)
    plane.calls.clear()
    return wd, plane


def worker_of(wd: QueueWatchdog, queue: int) -> FakeWorker:
    worker = wd.queues[queue].worker
    assert isinstance(worker, FakeWorker)
    return worker


def test_a_dead_worker_is_fenced_in_order_and_replaced() -> None:
    wd, plane = watchdog()
    mq = wd.queues[0]
    old = worker_of(wd, 0)
    wd.check(mq)  # a first, healthy sample
    assert mq.machine.state == QueueState.ACTIVE and plane.calls == []
    old.proc.returncode = -9
    old.exited.set()
    wd.check(mq)
    assert plane.calls == [("state", 0, "fenced", "worker_exited"), ("unmap", 0), ("end", 0, False)]
    assert mq.machine.history[-1].detail == "killed by SIGKILL"  # signal 9 on Linux
    assert mq.convergence == "converged" and mq.health is None
    plane.calls.clear()
    wd.check(mq)  # next tick: a fresh worker
    assert plane.calls[:2] == [("state", 0, "recovering", "starting"), ("spawn", 0)]
    assert mq.restarts == 1 and mq.worker is not None and mq.worker is not old
    wd.check(mq)  # it is ready: unfenced
    assert mq.machine.state == QueueState.ACTIVE
    assert mq.recoveries == {("queue_local", "ok"): 1}
    assert [(t.from_state, t.to_state, t.reason) for t in plane.transitions] == [
        ("unmanaged", "recovering", "starting"), ("recovering", "active", "ready"),
        ("active", "fenced", "worker_exited"), ("fenced", "recovering", "starting"),
        ("recovering", "active", "ready")]


def test_a_stale_heartbeat_is_fenced_and_its_detection_time_observed() -> None:
    wd, plane = watchdog(deadline=0.2)
    mq = wd.queues[0]
    worker_of(wd, 0).beat = time.monotonic() - 1.0
    wd.check(mq)
    assert mq.machine.state == QueueState.FENCED and mq.machine.reason == QueueReason.HEARTBEAT_STALE
    assert plane.calls[0] == ("state", 0, "fenced", "heartbeat_stale")
    histogram = wd.detection_times["heartbeat_stale"]
    assert sum(histogram.counts) == 1 and histogram.total >= 1.0
    assert mq.next_attempt <= time.monotonic()  # recovered on the next tick, no backoff


def test_redirects_that_find_no_socket_fence_the_queue() -> None:
    wd, plane = watchdog()
    mq = wd.queues[0]
    wd.check(mq)
    plane.failures[0] = 3  # the fast path found no socket in xsk_map three times
    wd.check(mq)
    assert mq.machine.reason == QueueReason.XSK_MAP_ENTRY_MISSING
    assert mq.machine.history[-1].detail == "3 redirects found no socket"


def test_a_worker_that_does_not_take_new_rules_is_replaced() -> None:
    wd, _plane = watchdog(reload_deadline=2.0)
    mq = wd.queues[0]
    worker = worker_of(wd, 0)
    worker.offered_generation, worker.offered_at = 2, time.monotonic() - 1.0
    wd.check(mq)
    assert mq.machine.state == QueueState.ACTIVE  # within the reload deadline
    worker.offered_at = time.monotonic() - 3.0
    mq.machine.since -= 3.0
    wd.check(mq)
    assert mq.machine.reason == QueueReason.RULES_NOT_APPLIED
    assert "rules generation 2 not acknowledged within 2000 ms (it holds 1)" in mq.machine.history[-1].detail


def test_failed_recoveries_back_off_then_end_in_failed_without_escalation() -> None:
    wd, plane = watchdog(max_queue_restarts=2)
    mq = wd.queues[0]
    plane.workers_exit = True
    wd.fence(mq, QueueReason.OPERATOR)
    for _ in range(6):
        mq.next_attempt = 0.0  # no backoff in the test
        wd.check(mq)
    assert mq.machine.state == QueueState.FAILED
    assert mq.recoveries == {("queue_local", "failed"): 2}
    assert [c for c in plane.calls if c[0] == "spawn"] == [("spawn", 0)] * 2
    assert "escalation not allowed (--escalate none)" in mq.machine.history[-1].detail
    assert ("bounce",) not in plane.calls


def test_a_failed_recovery_waits_longer_each_time() -> None:
    wd, plane = watchdog(max_queue_restarts=5)
    mq = wd.queues[0]
    plane.workers_exit = True
    wd.fence(mq, QueueReason.OPERATOR)
    waits = []
    for _ in range(3):
        mq.next_attempt = 0.0
        wd.check(mq)  # recovering
        before = time.monotonic()
        wd.check(mq)  # the worker exited: fenced, next attempt later
        waits.append(mq.next_attempt - before)
    assert waits[0] > 0 and waits[0] < waits[1] < waits[2] <= 2.0


@pytest.mark.parametrize(("refused", "result"), [(False, "ok"), (True, "failed")])
def test_escalation_bounces_the_link_and_restarts_every_queue(refused: bool, result: str) -> None:
    wd, plane = watchdog(queues=2, max_queue_restarts=1, escalate="interface")
    plane.workers_exit, plane.link_refused = True, refused
    wd.fence(wd.queues[0], QueueReason.OPERATOR)
    wd.check(wd.queues[0])  # recovering, with a worker that exits
    plane.workers_exit = False
    plane.calls.clear()
    wd.check(wd.queues[0])  # the recovery failed: escalate
    assert ("bounce",) in plane.calls
    # Every queue was fenced before the link went down, and started again after it.
    bounce = plane.calls.index(("bounce",))
    assert ("state", 1, "fenced", "recovery_failed") in plane.calls[:bounce]
    assert [c for c in plane.calls[bounce:] if c[0] == "spawn"] == [("spawn", 0), ("spawn", 1)]
    assert wd.interface_recoveries == {result: 1}
    assert all(mq.machine.state == QueueState.RECOVERING and mq.failures == 0 for mq in wd.queues.values())


def test_a_queue_out_of_steering_is_fenced_and_recovered_when_steered_again() -> None:
    wd, plane = watchdog(queues=2)
    plane.channels = 1  # someone ran ethtool -L eth0 combined 1
    wd.tick()
    assert wd.channels == 1
    mq = wd.queues[1]
    assert mq.machine.state == QueueState.FENCED and mq.machine.reason == QueueReason.NOT_STEERED
    assert wd.queues[0].machine.state == QueueState.ACTIVE
    for _ in range(3):
        wd.check(mq)
    assert mq.machine.state == QueueState.FENCED  # not restarted while it cannot be steered to
    plane.channels = 2
    wd._last_steering_check = 0.0  # the next steering check is due
    wd.check_steering()
    assert mq.machine.state == QueueState.RECOVERING and mq.restarts == 1


def test_operator_requests_are_served_on_the_watchdog_thread() -> None:
    wd, plane = watchdog(queues=2, deadline=0.2)
    plane.channel_refusals = 2  # the kernel still holds the closed socket for a moment
    thread = threading.Thread(target=wd.run, name="queue-watchdog")
    thread.start()
    try:
        assert wd.request("withdraw", 1, timeout=10) == {"channels": 1, "was": 2}
        assert wd.queues[1].machine.state == QueueState.FENCED
        assert wd.queues[1].machine.reason == QueueReason.NOT_STEERED
        assert ("end", 1, True) in plane.calls  # a withdrawn worker is stopped gracefully
        assert wd.queues[0].machine.state == QueueState.ACTIVE
        assert wd.request(QueueAction.RESTORE, timeout=10) == {"channels": 2}
        assert wd.queues[1].machine.state in (QueueState.RECOVERING, QueueState.ACTIVE)
        assert wd.request("restart", 0, timeout=10) == {"state": "fenced"}
        # Fenced by the operator (the watchdog may have started its recovery since).
        assert ("active", "fenced", "operator") in [(t.from_state, t.to_state, t.reason)
                                                    for t in wd.queues[0].machine.history]
        with pytest.raises(SlowPathError, match="queue 0 cannot be withdrawn"):
            wd.request("withdraw", 0, timeout=10)
    finally:
        wd.stopping.set()
        thread.join(5)
    assert plane.threads == {"queue-watchdog"}
    assert [c for c in plane.calls if c[0] == "channels"] == [("channels", 1), ("channels", 2)]


def test_requests_the_watchdog_cannot_serve_are_refused_at_once() -> None:
    wd, _plane = watchdog()
    with pytest.raises(SlowPathError, match="unknown queue action 'reboot'"):
        wd.request("reboot", 0)
    with pytest.raises(SlowPathError, match=r"queue 7 is not managed by the slow path \(managed: \[0\]\)"):
        wd.request(QueueAction.RESTART, 7)
    with pytest.raises(SlowPathError, match="withdraw: no answer from the watchdog in 0 s"):
        wd.request("withdraw", 0, timeout=0.05)  # no watchdog thread runs


def test_states_reasons_and_actions_serialize_as_their_names() -> None:
    """Metric labels, JSON and CLI output show the bare names, as they did when they were strings."""
    record = {"state": QueueState.DEGRADED, "reason": QueueReason.RX_RING_OVERFLOW, "action": QueueAction.WITHDRAW}
    assert json.dumps(record) == '{"state": "degraded", "reason": "rx_ring_overflow", "action": "withdraw"}'
    assert f"{QueueState.FENCED} {QueueReason.NOT_STEERED}" == "fenced not_steered"
    assert str(QueueState.ACTIVE).upper() == "ACTIVE"


def test_reasons_are_the_abi_enum() -> None:
    """The XDP program's map holds the reason too: the names must be the BTF enum hyp_queue_reason's."""
    kernel = load_abi().queue_reasons
    assert [kernel[i] for i in sorted(kernel)] == list(QueueReason)
