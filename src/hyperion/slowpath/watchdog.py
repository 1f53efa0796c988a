"""Queue lifecycle: the state machine of one RX queue's AF_XDP worker and the watchdog's detections.

Pure logic, no kernel: the watchdog (hyperion.slowpath.recovery.QueueWatchdog) feeds one
Observation per queue per watchdog tick into QueueHealth.observe(), gets back
at most one Detection, and carries it out (fence, recover, ...). The state
names are the ABI's enum hyp_queue_state_id, which the XDP program reads: from
"fenced" on, a queue's classes take their fallback at once.

    unmanaged -> recovering -> active <-> pressured <-> degraded
                     ^            \\           |           /
                     |             +---------> fenced <--+
                     +-------------------------'  |
                                 failed <---------+ (recovery given up)
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypedDict


class QueueState(StrEnum):
    """A queue's lifecycle state; the values (and their order) are the ABI's enum hyp_queue_state_id.
    A StrEnum, so metric labels, JSON and CLI output show the bare names."""
    UNMANAGED = "unmanaged"
    ACTIVE = "active"
    PRESSURED = "pressured"
    DEGRADED = "degraded"
    FENCED = "fenced"
    RECOVERING = "recovering"
    FAILED = "failed"


class QueueReason(StrEnum):
    """Why a queue is in its state: the ABI's enum hyp_queue_reason (the XDP map holds it too)."""
    NONE = "none"
    STARTING = "starting"
    READY = "ready"
    WORKER_EXITED = "worker_exited"
    HEARTBEAT_STALE = "heartbeat_stale"
    FILL_RING_STARVED = "fill_ring_starved"
    RX_RING_OVERFLOW = "rx_ring_overflow"
    SATURATED = "saturated"
    XSK_MAP_ENTRY_MISSING = "xsk_map_entry_missing"
    NOT_STEERED = "not_steered"
    OPERATOR = "operator"
    SHUTDOWN = "shutdown"
    PRESSURE_CLEARED = "pressure_cleared"
    RECOVERY_FAILED = "recovery_failed"
    RULES_NOT_APPLIED = "rules_not_applied"


class QueueAction(StrEnum):
    """What the operator can ask of the watchdog (`hyperion queues ACTION`)."""
    RESTART = "restart"    # queue-local recovery: a fresh socket and UMEM
    WITHDRAW = "withdraw"  # fenced and out of steering (with every queue above it)
    RESTORE = "restore"    # every channel back in steering


_S = QueueState  # short, for the tables below
STATES = tuple(QueueState)
FENCED_STATES = frozenset({_S.FENCED, _S.RECOVERING, _S.FAILED})
SERVING_STATES = frozenset({_S.ACTIVE, _S.PRESSURED, _S.DEGRADED})

# Allowed transitions. Fencing is allowed from every state: shutdown, the operator and a
# dead worker can happen at any time.
TRANSITIONS: dict[QueueState, frozenset[QueueState]] = {
    _S.UNMANAGED: frozenset({_S.RECOVERING, _S.FENCED}),
    _S.ACTIVE: frozenset({_S.PRESSURED, _S.FENCED}),
    _S.PRESSURED: frozenset({_S.ACTIVE, _S.DEGRADED, _S.FENCED}),
    _S.DEGRADED: frozenset({_S.ACTIVE, _S.PRESSURED, _S.FENCED}),
    _S.FENCED: frozenset({_S.RECOVERING, _S.FAILED, _S.FENCED}),
    _S.RECOVERING: frozenset({_S.ACTIVE, _S.FENCED, _S.FAILED}),
    _S.FAILED: frozenset({_S.RECOVERING, _S.FENCED}),
}

DEFAULT_DEADLINE = 0.2


DWELL_BOUNDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 600.0, 3600.0)
DETECTION_BOUNDS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)


@dataclass
class Histogram:
    """Cumulative counts for a Prometheus histogram family."""
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def observe(self, value: float) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)
        index = next((i for i, bound in enumerate(self.bounds) if value <= bound), len(self.bounds))
        self.counts[index] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, int]]:
        counts = self.counts or [0] * (len(self.bounds) + 1)
        cumulative, result = 0, []
        for bound, count in zip([*map(repr, self.bounds), "+Inf"], counts, strict=True):
            cumulative += count
            result.append((bound, cumulative))
        return result


class TransitionError(ValueError):
    """A transition the state machine does not have (a supervisor bug, never input)."""


class TransitionRecord(TypedDict):
    """A Transition as JSON (`hyperion queues`, lifecycle events)."""
    queue: int
    from_state: QueueState
    to_state: QueueState
    reason: QueueReason
    time: float
    detection_seconds: float | None
    dwell_seconds: float
    detail: str


@dataclass(frozen=True)
class Transition:
    queue: int
    from_state: QueueState
    to_state: QueueState
    reason: QueueReason
    time: float                      # wall clock (time.time())
    detection_seconds: float | None  # fault onset (last good heartbeat/sample) -> detection
    dwell_seconds: float             # time spent in from_state
    detail: str = ""

    def as_dict(self) -> TransitionRecord:
        return TransitionRecord(queue=self.queue, from_state=self.from_state, to_state=self.to_state,
                                reason=self.reason, time=self.time, detection_seconds=self.detection_seconds,
                                dwell_seconds=self.dwell_seconds, detail=self.detail)


@dataclass
class QueueStateMachine:
    """Current state of one queue, with its history and the figures metrics need."""
    queue: int
    state: QueueState = QueueState.UNMANAGED
    reason: QueueReason = QueueReason.NONE
    since: float = field(default_factory=time.monotonic)
    history: deque[Transition] = field(default_factory=lambda: deque(maxlen=64))
    transition_counts: dict[tuple[QueueState, QueueState], int] = field(default_factory=dict)
    dwell: dict[QueueState, Histogram] = field(default_factory=dict)  # time spent in a state, observed on leaving

    def move(self, to_state: QueueState, reason: QueueReason, detail: str = "", detection_seconds: float | None = None,
             now: float | None = None) -> Transition:
        if to_state not in TRANSITIONS.get(self.state, frozenset()):
            raise TransitionError(f"queue {self.queue}: no transition {self.state} -> {to_state} ({reason})")
        now = time.monotonic() if now is None else now
        transition = Transition(self.queue, self.state, to_state, reason, time.time(), detection_seconds,
                                now - self.since, detail)
        self.history.append(transition)
        key = (self.state, to_state)
        self.transition_counts[key] = self.transition_counts.get(key, 0) + 1
        self.dwell.setdefault(self.state, Histogram(DWELL_BOUNDS)).observe(transition.dwell_seconds)
        self.state, self.reason, self.since = to_state, reason, now
        return transition

    @property
    def fenced(self) -> bool:
        return self.state in FENCED_STATES


@dataclass(frozen=True)
class Observation:
    """One watchdog sample of a serving queue. Counters are cumulative for the current socket."""
    now: float                    # time.monotonic()
    alive: bool
    heartbeat: float | None       # monotonic time of the loop's last heartbeat; None before the first
    fill_ring_empty: int = 0      # XDP_STATISTICS rx_fill_ring_empty_descs
    fill_ring_level: int = 0      # descriptors posted to the fill ring
    received: int = 0             # packets the worker took off its RX ring
    rx_overflow: int = 0          # XDP_STATISTICS rx_ring_full + rx_dropped
    redirect_failures: int = 0    # the fast path's per-queue count (no socket in xsk_map)
    steered: bool = True          # the queue is among the interface's active channels
    exit_detail: str = ""


@dataclass(frozen=True)
class Detection:
    to_state: QueueState
    reason: QueueReason
    detail: str = ""
    detection_seconds: float | None = None


@dataclass
class _Episode:
    """A run of samples showing a condition: from the sample before the first that showed it until
    none has for a deadline (counters move in bursts: one quiet sample does not end it)."""
    since: float | None = None
    last_seen: float | None = None

    def sample(self, showing: bool, previous_now: float, now: float, deadline: float) -> None:
        if showing:
            self.last_seen = now
            if self.since is None:
                self.since = previous_now
        elif self.last_seen is not None and now - self.last_seen >= deadline:
            self.since = self.last_seen = None


class QueueHealth:
    """Turns observations of one worker into detections. One instance per worker (counters
    restart with each socket): create it when the worker becomes active."""

    def __init__(self, deadline: float = DEFAULT_DEADLINE) -> None:
        self.deadline = deadline
        self._previous: Observation | None = None
        self._starvation = _Episode()
        self._overflow = _Episode()

    def observe(self, obs: Observation, state: QueueState) -> Detection | None:
        previous, self._previous = self._previous, obs
        if state not in SERVING_STATES:
            return None
        last_beat = obs.heartbeat
        if not obs.alive:
            return Detection(_S.FENCED, QueueReason.WORKER_EXITED, obs.exit_detail,
                             None if last_beat is None else max(0.0, obs.now - last_beat))
        if not obs.steered:
            return Detection(_S.FENCED, QueueReason.NOT_STEERED, "the queue is no longer among the active channels")
        if last_beat is not None and obs.now - last_beat > self.deadline:
            age = obs.now - last_beat
            return Detection(_S.FENCED, QueueReason.HEARTBEAT_STALE, f"no heartbeat for {age * 1000:.0f} ms", age)
        if previous is None:
            return None
        since_sample = obs.now - previous.now
        if obs.redirect_failures > previous.redirect_failures:
            return Detection(_S.FENCED, QueueReason.XSK_MAP_ENTRY_MISSING,
                             f"{obs.redirect_failures - previous.redirect_failures} redirects found no socket",
                             since_sample)

        # Starvation is frames that do not come back: the kernel finds the fill ring empty and the
        # worker receives nothing. Under overload the fill ring reads empty too (the kernel takes
        # frames as fast as they come back), but the worker keeps receiving.
        self._starvation.sample(obs.fill_ring_empty > previous.fill_ring_empty and obs.fill_ring_level == 0
                                and obs.received == previous.received,
                                previous.now, obs.now, self.deadline)
        if obs.fill_ring_level > 0:  # frames are being posted again: the worker gives them back
            self._starvation = _Episode()
        self._overflow.sample(obs.rx_overflow > previous.rx_overflow, previous.now, obs.now, self.deadline)

        if self._starvation.since is not None:
            # Frames are not coming back: every redirected packet is lost until a fresh UMEM.
            starved_for = obs.now - self._starvation.since
            if starved_for >= self.deadline:
                return Detection(_S.FENCED, QueueReason.FILL_RING_STARVED,
                                 f"fill ring empty for {starved_for * 1000:.0f} ms", starved_for)
            if starved_for >= self.deadline / 2 and state != _S.DEGRADED:
                return Detection(_S.DEGRADED, QueueReason.FILL_RING_STARVED, "", starved_for)
            if state == _S.ACTIVE:
                return Detection(_S.PRESSURED, QueueReason.FILL_RING_STARVED, "", since_sample)
            return None
        if self._overflow.since is not None:
            # Saturation is not fenced: fencing would turn overload into bypass (fail-open) or
            # total loss (fail-closed); the ring's own drops are bounded and counted.
            overflowing_for = obs.now - self._overflow.since
            if overflowing_for >= self.deadline and state != _S.DEGRADED:
                return Detection(_S.DEGRADED, QueueReason.SATURATED,
                                 f"RX ring overflowing for {overflowing_for * 1000:.0f} ms", overflowing_for)
            if state == _S.ACTIVE:
                return Detection(_S.PRESSURED, QueueReason.RX_RING_OVERFLOW, "", since_sample)
            return None
        if state in (_S.PRESSURED, _S.DEGRADED):
            return Detection(_S.ACTIVE, QueueReason.PRESSURE_CLEARED)
        return None
