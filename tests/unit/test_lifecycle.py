"""The queue state machine, the watchdog's detections and the supervisor's recovery and escalation,
without a kernel: observations are fed by hand and the fast path and workers are fakes."""

from __future__ import annotations

import subprocess
import threading
from typing import Any

import pytest

from hyperion.policy.loading import parse_policy
from hyperion.slowpath import supervisor as slowpath_module
from hyperion.slowpath.supervisor import ManagedQueue, SlowPath, SlowPathOptions
from hyperion.slowpath.watchdog import (
    FENCED_STATES,
    STATES,
    TRANSITIONS,
    Detection,
    Observation,
    QueueHealth,
    QueueStateMachine,
    TransitionError,
)


def test_states_are_the_abi_enum(abi: object) -> None:
    """The Python names are the kernel's enum hyp_queue_state_id, in order, and the program fences
    exactly the states Python calls fenced."""
    from hyperion.kernel.abi import load_abi

    kernel = load_abi().queue_states
    assert [kernel[i] for i in sorted(kernel)] == list(STATES)
    fenced_from = STATES.index("fenced")
    assert {s for s in STATES if STATES.index(s) >= fenced_from} == FENCED_STATES


def test_every_state_has_transitions_and_fencing_is_always_possible() -> None:
    assert set(TRANSITIONS) == set(STATES)
    assert all("fenced" in targets for targets in TRANSITIONS.values())


def test_state_machine_records_transitions_and_refuses_unknown_ones() -> None:
    machine = QueueStateMachine(3)
    machine.move("recovering", "starting", now=10.0)
    machine.move("active", "ready", now=10.5)
    t = machine.move("fenced", "worker_exited", "killed by SIGKILL", detection_seconds=0.03, now=12.5)
    assert (t.queue, t.from_state, t.to_state, t.reason, t.detail) == (3, "active", "fenced", "worker_exited",
                                                                        "killed by SIGKILL")
    assert t.dwell_seconds == pytest.approx(2.0)
    assert machine.transition_counts == {("unmanaged", "recovering"): 1, ("recovering", "active"): 1,
                                         ("active", "fenced"): 1}
    assert machine.fenced
    with pytest.raises(TransitionError, match="queue 3: no transition fenced -> active"):
        machine.move("active", "ready")
    assert machine.state == "fenced"


def obs(now: float, **kw: Any) -> Observation:
    base: dict[str, Any] = {"alive": True, "heartbeat": now - 0.01, "fill_ring_level": 100}
    base.update(kw)
    return Observation(now=now, **base)


def test_a_dead_worker_is_fenced_with_the_time_since_its_last_heartbeat() -> None:
    health = QueueHealth(0.2)
    assert health.observe(obs(1.0), "active") is None
    d = health.observe(obs(1.05, alive=False, heartbeat=1.0, exit_detail="killed by SIGKILL"), "active")
    assert d == Detection("fenced", "worker_exited", "killed by SIGKILL", pytest.approx(0.05))


def test_a_stale_heartbeat_is_fenced_only_past_the_deadline() -> None:
    health = QueueHealth(0.2)
    assert health.observe(obs(1.0, heartbeat=0.86), "active") is None      # 140 ms: within
    d = health.observe(obs(1.05, heartbeat=0.86), "active")                 # 190 ms: within
    assert d is None
    d = health.observe(obs(1.1, heartbeat=0.86), "active")
    assert d is not None and (d.to_state, d.reason) == ("fenced", "heartbeat_stale")
    assert d.detection_seconds == pytest.approx(0.24)


def test_fill_ring_starvation_walks_pressured_degraded_fenced() -> None:
    health = QueueHealth(0.2)
    health.observe(obs(0.0, fill_ring_empty=0, received=500), "active")
    steps = []
    state = "active"
    for i in range(1, 8):
        # The worker stopped posting frames: the kernel finds none, the worker receives nothing.
        d = health.observe(obs(0.05 * i, fill_ring_empty=10 * i, fill_ring_level=0, received=500), state)
        if d is not None:
            steps.append((round(0.05 * i, 2), d.to_state, d.reason))
            state = d.to_state
    assert steps == [(0.05, "pressured", "fill_ring_starved"), (0.1, "degraded", "fill_ring_starved"),
                     (0.2, "fenced", "fill_ring_starved")]


def test_empty_descriptors_with_frames_in_the_ring_are_not_starvation() -> None:
    """fill_ring_empty can rise in a burst while the worker still refills: not starvation."""
    health = QueueHealth(0.2)
    health.observe(obs(1.0, fill_ring_empty=0), "active")
    assert health.observe(obs(1.05, fill_ring_empty=5, fill_ring_level=1500), "active") is None


def test_overload_that_empties_the_fill_ring_is_saturation_not_starvation() -> None:
    """Under a flood the worker returns every frame at once but the kernel takes them as fast: the fill
    ring reads empty and empty-descriptor counts rise while every frame waits in the full RX ring. That
    is overload (never fenced), not a worker that stopped giving frames back."""
    health = QueueHealth(0.2)
    health.observe(obs(1.0), "active")
    state, seen = "active", set()
    for i in range(1, 41):  # two seconds of overload
        d = health.observe(obs(1.0 + 0.05 * i, fill_ring_empty=500 * i, fill_ring_level=0, received=3000 * i,
                               rx_overflow=1000 * i), state)
        if d is not None:
            seen.add((d.to_state, d.reason))
            state = d.to_state
    assert seen == {("pressured", "rx_ring_overflow"), ("degraded", "saturated")}
    assert state == "degraded"


def test_one_sample_of_an_empty_fill_ring_then_posted_frames_is_not_starvation() -> None:
    """A report taken between a batch's release and its refill shows the worker holding every frame;
    the next one shows the fill ring full again. Posted frames end a starvation episode at once (seen
    under a flood on a loaded machine, where it fenced the queue 200 ms later)."""
    health = QueueHealth(0.2)
    health.observe(obs(1.0), "active")
    state = "active"
    racy = obs(1.05, fill_ring_empty=100, fill_ring_level=0, rx_overflow=100)
    samples = [racy] + [obs(1.05 + 0.05 * i, fill_ring_empty=100 + 50 * i, fill_ring_level=1792,
                            received=3000 * i, rx_overflow=100 + 1000 * i) for i in range(1, 20)]
    for sample in samples:
        d = health.observe(sample, state)
        if d is not None:
            assert d.to_state != "fenced", d
            state = d.to_state


def test_an_empty_fill_ring_while_the_worker_receives_is_overload() -> None:
    """At a flood's start the kernel takes every posted frame at once: the fill ring reads empty and
    empty-descriptor counts rise, while the worker keeps receiving: overload, not a worker that
    stopped giving frames back (seen as the first detection under load)."""
    health = QueueHealth(0.2)
    health.observe(obs(1.0), "active")
    d = health.observe(obs(1.05, fill_ring_empty=500, fill_ring_level=0, received=3000, rx_overflow=1500),
                       "active")
    assert d is not None and (d.to_state, d.reason) == ("pressured", "rx_ring_overflow")


def test_overflow_is_pressure_then_saturation_and_clears_but_is_never_fenced() -> None:
    health = QueueHealth(0.2)
    health.observe(obs(1.0), "active")
    d = health.observe(obs(1.05, rx_overflow=100), "active")
    assert d is not None and (d.to_state, d.reason) == ("pressured", "rx_ring_overflow")
    assert health.observe(obs(1.1, rx_overflow=200), "pressured") is None
    d = health.observe(obs(1.25, rx_overflow=900), "pressured")
    assert d is not None and (d.to_state, d.reason) == ("degraded", "saturated")
    for i in range(1, 20):  # an hour of overflow would not fence it
        assert health.observe(obs(1.25 + 0.05 * i, rx_overflow=900 + 100 * i), "degraded") is None
    last = 1.25 + 0.05 * 19
    assert health.observe(obs(last + 0.1, rx_overflow=2800), "degraded") is None   # quiet for 100 ms
    d = health.observe(obs(last + 0.25, rx_overflow=2800), "degraded")               # quiet for 250 ms
    assert d == Detection("active", "pressure_cleared")


def test_redirect_failures_while_serving_mean_the_xsk_map_entry_is_gone() -> None:
    health = QueueHealth(0.2)
    health.observe(obs(1.0, redirect_failures=0), "active")
    d = health.observe(obs(1.05, redirect_failures=3), "active")
    assert d is not None and (d.to_state, d.reason) == ("fenced", "xsk_map_entry_missing")
    assert d.detail == "3 redirects found no socket"


def test_an_unsteered_queue_is_fenced_and_fenced_states_are_not_judged() -> None:
    health = QueueHealth(0.2)
    d = health.observe(obs(1.0, steered=False), "active")
    assert d is not None and d.reason == "not_steered"
    assert health.observe(obs(1.1, alive=False), "fenced") is None
    assert health.observe(obs(1.2, alive=False), "recovering") is None


# ---- the supervisor, with fakes --------------------------------------------------------------


class FakeMap:
    def __init__(self) -> None:
        self.deleted: list[bytes] = []

    def delete(self, key: bytes) -> bool:
        self.deleted.append(key)
        return True


class FakeFastPath:
    """What the supervisor uses of FastPath: the queue-state map, xsk_map and the queue counters."""

    def __init__(self) -> None:
        self.states: list[tuple[int, str, str]] = []
        self.maps = {"xsk_map": FakeMap()}

    def set_queue_state(self, queue: int, state: str, reason: str, worker_pid: int = 0, restarts: int = 0) -> None:
        self.states.append((queue, state, reason))

    def queue_counter(self, queue: int) -> dict[str, int]:
        return {}


class FakeProc:
    """A worker process that has already exited (failed to start)."""
    pid = 4242
    stdin = stdout = None

    def poll(self) -> int:
        return 1

    def wait(self, timeout: float | None = None) -> int:
        return 1


class FailingWorkers(SlowPath):
    """Every worker it starts exits at once, as one that cannot bind its queue would."""

    spawned = 0

    def _spawn(self, mq: ManagedQueue) -> Any:
        self.spawned += 1
        worker = slowpath_module.WorkerProcess(FakeProc(), _FakeControl(), 0.0)  # type: ignore[arg-type]
        worker.error = "OSError: AF_XDP socket on eth0 queue 0 (copy mode): Device or resource busy"
        worker.exited.set()
        return worker


class _FakeControl:
    def close(self) -> None:
        pass

    def __getitem__(self, item: slice) -> bytes:
        return bytes(8)


def supervisor(escalate: str = "none") -> tuple[FailingWorkers, FakeFastPath, ManagedQueue]:
    fast = FakeFastPath()
    sp = FailingWorkers(fast, "eth0", parse_policy("{}"),  # type: ignore[arg-type]
                        SlowPathOptions(max_queue_restarts=3, escalate=escalate),
                        compiled=slowpath_module.CompiledRules(None, [], []))
    mq = ManagedQueue(0, 0, QueueStateMachine(0))
    sp.queues[0] = mq
    return sp, fast, mq


def run_watchdog_ticks(sp: SlowPath, mq: ManagedQueue, ticks: int) -> None:
    for _ in range(ticks):
        mq.next_attempt = 0.0  # no backoff in the test
        sp.watchdog.check(mq)


@pytest.fixture(autouse=True)
def no_driver_counters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slowpath_module, "descriptor_convergence", lambda *a: "no driver counters")


def test_failed_recoveries_end_in_failed_without_escalation() -> None:
    sp, fast, mq = supervisor()
    sp.watchdog.begin_recovery(mq, "starting")
    run_watchdog_ticks(sp, mq, 12)
    assert mq.machine.state == "failed"
    assert sp.spawned == 3
    assert mq.recoveries == {("queue_local", "failed"): 3}
    assert fast.states[-1] == (0, "failed", "recovery_failed")
    # Every step was written to the BPF map, fenced first: no redirect to a socket being replaced.
    assert [s for _, s, _ in fast.states if s != "recovering"][:2] == ["fenced", "fenced"]
    assert "escalation not allowed" in mq.machine.history[-1].detail


def test_failed_recoveries_escalate_to_the_interface_when_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    commands: list[list[str]] = []
    monkeypatch.setattr(slowpath_module, "run_checked", lambda argv: commands.append(argv))
    sp, _fast, mq = supervisor(escalate="interface")
    sp.watchdog.begin_recovery(mq, "starting")
    run_watchdog_ticks(sp, mq, 5)  # fail, restart, fail, restart, fail: escalate
    assert commands == [["ip", "link", "set", "dev", "eth0", "down"], ["ip", "link", "set", "dev", "eth0", "up"]]
    assert sp.watchdog.interface_recoveries == {"ok": 1}
    assert mq.machine.state == "recovering" and mq.failures == 0


def test_operator_requests_are_served_by_the_watchdog_thread() -> None:
    sp, _fast, mq = supervisor()
    mq.machine.move("recovering", "starting")
    mq.machine.move("active", "ready")
    answer: dict[str, Any] = {}

    def ask() -> None:
        answer.update(sp.request("restart", 0, timeout=5))

    thread = threading.Thread(target=ask)
    thread.start()
    while not sp.watchdog._requests:
        pass
    with sp._lock:
        sp.watchdog.serve_requests()
    thread.join(5)
    assert answer == {"state": "fenced"}
    assert mq.machine.reason == "operator"
    with pytest.raises(slowpath_module.SlowPathError, match="queue 7 is not managed"):
        sp.request("restart", 7)


def test_set_channels_names_every_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 1, "", "netlink error: Invalid argument\n")

    monkeypatch.setattr(slowpath_module.subprocess, "run", refuse)
    with pytest.raises(slowpath_module.SlowPathError) as info:
        slowpath_module.set_channels("eth0", 1)
    assert str(info.value) == ("ethtool -L eth0 to 1 channels refused (rx 1 tx 1: netlink error: Invalid argument; "
                               "rx 1: netlink error: Invalid argument; combined 1: netlink error: Invalid argument)")
