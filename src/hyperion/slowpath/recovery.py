"""The watchdog thread: it samples every queue, fences the ones whose worker died, stalled, starved
or kept old rules, recovers them (escalating to the interface when allowed), follows the interface's
steering, and serves the operator's requests (restart, withdraw, restore).

hyperion.slowpath.watchdog decides (pure: state machine and detections); this module acts, on the
kernel and the workers only through a QueuePlane: the supervisor's in production, fakes in the unit
tests (tests/unit/test_watchdog.py), so none of this needs root.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from hyperion.errors import HyperionError, SlowPathError
from hyperion.slowpath.watchdog import (
    DETECTION_BOUNDS,
    FENCED_STATES,
    SERVING_STATES,
    Detection,
    Histogram,
    Observation,
    QueueAction,
    QueueHealth,
    QueueReason,
    QueueState,
    Transition,
)

if TYPE_CHECKING:
    from hyperion.slowpath.supervisor import ManagedQueue, SlowPathOptions, WorkerProcess

log = logging.getLogger("hyperion.slowpath")


class QueuePlane(Protocol):
    """What the watchdog acts on: the fast path's maps, the interface and the worker processes."""

    def set_queue_state(self, queue: int, state: QueueState, reason: QueueReason, worker_pid: int,
                        restarts: int) -> None:
        """The queue's state in the BPF map: the program acts on it at once."""

    def unmap_socket(self, queue: int) -> None:
        """Deletes the queue's xsk_map entry."""

    def redirect_failures(self, queue: int) -> int:
        """The fast path's count of redirects to this queue that found no socket."""

    def rx_queue_count(self) -> int:
        """The interface's active RX channels (SlowPathError when it cannot be read)."""

    def set_channels(self, count: int) -> None:
        """Sets the interface's channel count (SlowPathError when refused)."""

    def bounce_link(self) -> None:
        """Link down and up (SlowPathError when refused)."""

    def descriptor_convergence(self, queue: int) -> str:
        """After a fence: whether the queue's driver AF_XDP counters stopped moving."""

    def spawn(self, mq: ManagedQueue) -> WorkerProcess:
        """Starts a worker for the queue (it registers its socket in xsk_map once ready)."""

    def end_worker(self, mq: ManagedQueue, graceful: bool) -> None:
        """Stops the queue's worker, folds its counts in and clears mq.worker."""

    def transitioned(self, transition: Transition) -> None:
        """A lifecycle transition happened (for the event sink)."""


# What an operator's request answers: {"state": ...} (restart), {"channels": n, "was": m} (withdraw),
# {"channels": n} (restore).
ActionResult = dict[str, int | str]


@dataclass
class _Request:
    action: QueueAction
    queue: int | None
    done: threading.Event = field(default_factory=threading.Event)
    result: ActionResult = field(default_factory=dict)
    error: str | None = None


class QueueWatchdog:
    """Makes every lifecycle change of the queues once the supervisor started them; holds `lock`
    while it acts. The supervisor shares its queues, options, lock and stop event with it."""

    def __init__(self, queues: dict[int, ManagedQueue], options: SlowPathOptions, plane: QueuePlane,
                 lock: threading.RLock, stopping: threading.Event, ifname: str) -> None:
        self.queues = queues
        self.options = options
        self.plane = plane
        self.lock = lock
        self.stopping = stopping
        self.ifname = ifname
        self.channels: int | None = None  # the interface's active channels, as last read
        self.detection_times: dict[QueueReason, Histogram] = {}  # detection reason -> seconds from fault to detection
        self.interface_recoveries: dict[str, int] = {}   # result -> count
        self._requests: list[_Request] = []
        self._last_steering_check = 0.0

    def run(self) -> None:
        """The watchdog thread: a tick every quarter deadline until stopping is set."""
        interval = self.options.deadline / 4
        while not self.stopping.wait(interval):
            try:
                self.tick()
            except Exception:  # the watchdog must outlive any one bad sample
                log.exception("queue watchdog")

    def tick(self) -> None:
        with self.lock:
            self.serve_requests()
            self.check_steering()
            for mq in list(self.queues.values()):
                self.check(mq)

    # ---- transitions ----------------------------------------------------------------------

    def _move(self, mq: ManagedQueue, to_state: QueueState, reason: QueueReason, detail: str = "",
              detection_seconds: float | None = None) -> None:
        """The one place a queue changes state: the BPF map first, so the program acts on it at once."""
        pid = mq.worker.pid if mq.worker is not None else 0
        transition = mq.machine.move(to_state, reason, detail, detection_seconds)
        self.plane.set_queue_state(mq.queue_id, to_state, reason, pid, mq.restarts)
        if detection_seconds is not None and to_state in (QueueState.FENCED, QueueState.PRESSURED,
                                                          QueueState.DEGRADED):
            self.detection_times.setdefault(reason, Histogram(DETECTION_BOUNDS)).observe(detection_seconds)
        log_at = logging.WARNING if to_state in (QueueState.FENCED, QueueState.DEGRADED,
                                                 QueueState.FAILED) else logging.INFO
        log.log(log_at, "queue %d: %s -> %s (%s%s)%s", mq.queue_id, transition.from_state, to_state, reason,
                f": {detail}" if detail else "",
                "" if detection_seconds is None else f", detected in {detection_seconds * 1000:.0f} ms")
        self.plane.transitioned(transition)

    def fence(self, mq: ManagedQueue, reason: QueueReason, detail: str = "",
              detection_seconds: float | None = None, graceful: bool = False) -> None:
        """Fence first (queue state, then the xsk_map entry), then the worker and its socket, then its UMEM."""
        self._move(mq, QueueState.FENCED, reason, detail, detection_seconds)
        self.plane.unmap_socket(mq.queue_id)
        self.plane.end_worker(mq, graceful)
        mq.health = None
        mq.convergence = self.plane.descriptor_convergence(mq.queue_id)

    def begin_recovery(self, mq: ManagedQueue, reason: QueueReason) -> None:
        self._move(mq, QueueState.RECOVERING, reason)
        mq.worker = self.plane.spawn(mq)
        self.plane.set_queue_state(mq.queue_id, QueueState.RECOVERING, reason, mq.worker.pid, mq.restarts)

    def activate(self, mq: ManagedQueue) -> None:
        """The worker's socket is in xsk_map (it registers itself last): unfence."""
        mq.failure_baseline = self.plane.redirect_failures(mq.queue_id)
        mq.health = QueueHealth(self.options.deadline)
        self._move(mq, QueueState.ACTIVE, QueueReason.READY)

    def _recovery_failed(self, mq: ManagedQueue, kind: str, detail: str) -> None:
        mq.failures += 1
        mq.recoveries[(kind, "failed")] = mq.recoveries.get((kind, "failed"), 0) + 1
        self.fence(mq, QueueReason.RECOVERY_FAILED, detail)
        if mq.failures >= self.options.max_queue_restarts:
            if self.options.escalate == "interface":
                self._recover_interface(f"queue {mq.queue_id}: {mq.failures} queue-local recoveries failed")
                return
            self._move(mq, QueueState.FAILED, QueueReason.RECOVERY_FAILED,
                       f"{mq.failures} queue-local recoveries failed; escalation not allowed (--escalate none)")
            return
        mq.next_attempt = time.monotonic() + min(0.1 * 2 ** mq.failures, 2.0)

    def _recover_interface(self, why: str) -> None:
        """Escalation: every queue fenced and its worker stopped, the link bounced, workers started again."""
        log.warning("interface-wide recovery of %s: %s", self.ifname, why)
        for mq in self.queues.values():
            if mq.machine.state != QueueState.FENCED or mq.worker is not None:
                self.fence(mq, QueueReason.RECOVERY_FAILED, "interface-wide recovery")
        result = "ok"
        try:
            self.plane.bounce_link()
        except SlowPathError as exc:
            log.error("interface-wide recovery: %s", exc)
            result = "failed"
        self.interface_recoveries[result] = self.interface_recoveries.get(result, 0) + 1
        for mq in self.queues.values():
            mq.failures = 0
            mq.next_attempt = 0.0
            mq.restarts += 1
            self.begin_recovery(mq, QueueReason.STARTING)

    # ---- sampling -------------------------------------------------------------------------

    def check(self, mq: ManagedQueue) -> None:
        """One queue's share of a tick (under lock)."""
        now = time.monotonic()
        state = mq.machine.state
        worker = mq.worker
        if state == QueueState.RECOVERING:
            assert worker is not None
            if worker.ready.is_set():
                mq.recoveries[("queue_local", "ok")] = mq.recoveries.get(("queue_local", "ok"), 0) + 1
                self.activate(mq)
            elif worker.exited.is_set() or worker.proc.poll() is not None:
                self._recovery_failed(mq, "queue_local", f"worker exited: {worker.error or _exit_detail(worker)}")
            elif now - worker.started > self.options.start_timeout:
                self._recovery_failed(mq, "queue_local", "worker not ready in time")
            return
        if state == QueueState.FENCED:
            if mq.machine.reason != QueueReason.NOT_STEERED and now >= mq.next_attempt \
                    and not self.stopping.is_set():
                mq.restarts += 1
                self.begin_recovery(mq, QueueReason.STARTING)
            return
        if state not in SERVING_STATES or worker is None or mq.health is None:
            return
        if mq.failures and now - mq.machine.since > self.options.stable_after:
            mq.failures = 0
        if worker.offered_generation > worker.applied_generation and \
                now - max(worker.offered_at, mq.machine.since) > self.options.reload_deadline:
            # It serves an older rule set than the policy: replaced by a worker started with the new one.
            self.fence(mq, QueueReason.RULES_NOT_APPLIED,
                       f"rules generation {worker.offered_generation} not acknowledged within "
                       f"{self.options.reload_deadline * 1000:.0f} ms (it holds {worker.applied_generation})")
            mq.next_attempt = now
            return
        stats = worker.report or {}
        alive = worker.proc.poll() is None and not worker.exited.is_set() and worker.exiting is None
        observation = Observation(
            now=now, alive=alive, heartbeat=worker.heartbeat(),
            fill_ring_empty=stats.get("xdp_rx_fill_ring_empty_descs", 0),
            fill_ring_level=stats.get("fill_ring_level", 0),
            received=stats.get("rx", 0),
            rx_overflow=stats.get("xdp_rx_ring_full", 0) + stats.get("xdp_rx_dropped", 0),
            redirect_failures=self.plane.redirect_failures(mq.queue_id) - mq.failure_baseline,
            steered=self.channels is None or mq.queue_id < self.channels,
            exit_detail="" if alive else worker.exiting or _exit_detail(worker),
        )
        detection = mq.health.observe(observation, state)
        if detection is None:
            return
        if detection.reason == QueueReason.XSK_MAP_ENTRY_MISSING:
            # A dying worker's socket leaves xsk_map before the process is reaped: tell them apart
            # (the kernel marks a task exiting before it closes its files).
            exiting = _process_exiting(worker.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(timeout=0.2 if exiting else 0.05)
                exiting = True
            if exiting:
                detection = Detection(QueueState.FENCED, QueueReason.WORKER_EXITED,
                                      worker.exiting or _exit_detail(worker), detection.detection_seconds)
        if detection.to_state == QueueState.FENCED:
            self.fence(mq, detection.reason, detection.detail, detection.detection_seconds)
            mq.next_attempt = now
        else:
            self._move(mq, detection.to_state, detection.reason, detection.detail, detection.detection_seconds)

    def check_steering(self) -> None:
        """At most once a second: the interface's channel count; queues back in it are recovered."""
        now = time.monotonic()
        if now - self._last_steering_check < 1.0:
            return
        self._last_steering_check = now
        try:
            self.channels = self.plane.rx_queue_count()
        except SlowPathError:
            return
        for mq in self.queues.values():
            if mq.machine.state == QueueState.FENCED and mq.machine.reason == QueueReason.NOT_STEERED \
                    and mq.queue_id < self.channels:
                mq.restarts += 1
                self.begin_recovery(mq, QueueReason.STARTING)

    # ---- operator requests ----------------------------------------------------------------

    def request(self, action: QueueAction | str, queue_id: int | None = None,
                timeout: float = 10.0) -> ActionResult:
        """Asks the watchdog thread to act: restart (queue-local recovery with a fresh socket and UMEM),
        withdraw (fence and take the queue out of steering), restore (all channels back)."""
        try:
            action = QueueAction(action)
        except ValueError:
            raise SlowPathError(f"unknown queue action {action!r}") from None
        if action != QueueAction.RESTORE and queue_id not in self.queues:
            raise SlowPathError(f"queue {queue_id} is not managed by the slow path (managed: {sorted(self.queues)})")
        pending = _Request(action, queue_id)
        with self.lock:
            self._requests.append(pending)
        if not pending.done.wait(timeout):
            raise SlowPathError(f"{action}: no answer from the watchdog in {timeout:.0f} s")
        if pending.error is not None:
            raise SlowPathError(pending.error)
        return pending.result

    def serve_requests(self) -> None:
        requests, self._requests = self._requests, []
        for pending in requests:
            try:
                if pending.action == QueueAction.RESTART:
                    assert pending.queue is not None
                    mq = self.queues[pending.queue]
                    self.fence(mq, QueueReason.OPERATOR, "restart requested", graceful=True)
                    mq.next_attempt = 0.0
                    mq.failures = 0
                    pending.result["state"] = mq.machine.state
                elif pending.action == QueueAction.WITHDRAW:
                    assert pending.queue is not None
                    pending.result.update(self._withdraw(pending.queue))
                else:
                    pending.result.update(self._restore())
            except HyperionError as exc:
                pending.error = str(exc)
            finally:
                pending.done.set()

    def _withdraw(self, queue_id: int) -> dict[str, int]:
        """Steering plane: fences queue_id and every queue above it, then sets the channel count to queue_id
        (channels are counted, so a queue can only leave steering with the ones above it)."""
        total = self.plane.rx_queue_count()
        if queue_id == 0:
            raise SlowPathError("queue 0 cannot be withdrawn: an interface keeps at least one channel")
        for mq in self.queues.values():
            if mq.queue_id >= queue_id and mq.machine.state not in FENCED_STATES:
                self.fence(mq, QueueReason.NOT_STEERED, "withdrawn by the operator", graceful=True)
            elif mq.queue_id >= queue_id:
                self._move(mq, QueueState.FENCED, QueueReason.NOT_STEERED, "withdrawn by the operator")
        # The kernel releases a closed socket's hold on its queue asynchronously; until then it
        # refuses fewer channels ("too low for existing ... AF_XDP sockets"): retry for 2 s.
        for attempt in range(20):
            try:
                self.plane.set_channels(queue_id)
                break
            except SlowPathError:
                if attempt == 19:
                    raise
                time.sleep(0.1)
        self.channels = queue_id
        return {"channels": queue_id, "was": total}

    def _restore(self) -> dict[str, int]:
        wanted = max(self.queues) + 1 if self.queues else 1
        self.plane.set_channels(wanted)
        self._last_steering_check = 0.0  # recovers the withdrawn queues on this tick
        self.check_steering()
        return {"channels": wanted}


_PF_EXITING = 0x00000004


def _process_exiting(pid: int) -> bool:
    """The task is gone or in do_exit (PF_EXITING in /proc/PID/stat's flags, field 9)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return fields[0] in ("Z", "X") or bool(int(fields[6]) & _PF_EXITING)


def _exit_detail(worker: WorkerProcess) -> str:
    code = worker.proc.poll()
    if code is None:
        return "stdout closed"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"
