"""The AF_XDP slow path: one worker process, socket and UMEM per RX queue, and their supervisor.

The per-packet loop is native (hyperion._slowpath), run by `hyperion.slowpath.worker`
processes. This module supervises the workers: it starts and
stops them in a safe order, runs the watchdog that fences a queue whose worker
died, stalled or starved and recovers it (hyperion.slowpath.recovery acts,
hyperion.slowpath.watchdog has the state machine), and turns their counters and
events into telemetry (merged by hyperion.slowpath.telemetry).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import logging
import mmap
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any

from hyperion.errors import SlowPathError
from hyperion.fastpath.program import FastPath
from hyperion.kernel.netdev import (
    descriptor_convergence,
    driver_queue_counters,
    rss_indirection,
    run_checked,
    rx_queue_count,
    set_channels,
)
from hyperion.policy.model import Policy
from hyperion.protocols import PROTOCOL_NAMES
from hyperion.slowpath.confinement import DEFAULT_WORKER_USER, resolve_worker_user
from hyperion.slowpath.delivery import Delivery, DeliveryKind, open_delivery
from hyperion.slowpath.protocol import (
    CONTROL_BYTES,
    PIPE_MESSAGE_MAX,
    REQUIRED_SEALS,
    WORKER_MAP_FDS,
    Command,
    ControlBlock,
    Error,
    Event,
    Exiting,
    ProtocolError,
    Ready,
    Report,
    Retired,
    RuleHits,
    RulesApplied,
    RulesOffer,
    WorkerMessage,
    decode_message,
    encode_command,
    encode_rules,
)
from hyperion.slowpath.recovery import ActionResult, QueueWatchdog
from hyperion.slowpath.rules import ACTION_NAMES, CompiledRules, compile_rules
from hyperion.slowpath.telemetry import (
    DESCRIPTOR_STATS,
    DescriptorPlane,
    LifecycleMetrics,
    QueueStatus,
    Stats,
    add_counters,
    add_hits,
    copy_histogram,
    queue_totals,
)
from hyperion.slowpath.watchdog import (
    DEFAULT_DEADLINE,
    SERVING_STATES,
    QueueAction,
    QueueHealth,
    QueueReason,
    QueueState,
    QueueStateMachine,
    Transition,
)

log = logging.getLogger("hyperion.slowpath")


def _utc_now() -> str:
    """When the event was taken from the worker (within 200 ms of the packet)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class SlowPathOptions:
    queues: list[int] | None = None      # default: every RX queue
    cpus: list[int] | None = None        # worker i pinned to cpus[i % len(cpus)]
    zerocopy: str = "off"                # off | auto | on
    frames: int = 4096
    ring_size: int = 2048
    tun_name: str | None = None
    # wire: passed frames re-enter through the real interface (a helper veth and a TC program);
    # tun: the fallback, a TUN device (the daemon picks it when the fast path runs in generic mode).
    delivery: DeliveryKind = "wire"
    deadline: float = DEFAULT_DEADLINE   # watchdog detection deadline, seconds
    max_queue_restarts: int = 3          # failed queue-local recoveries in a row before escalating
    escalate: str = "none"               # none | interface (link down/up: interrupts all traffic)
    start_timeout: float = 15.0          # a fresh worker must be ready within this
    stable_after: float = 10.0           # an active worker this old resets the failure count
    # The workers' entry point (`python -m`); the lab's chaos runs its fault worker instead.
    worker_module: str = "hyperion.slowpath.worker"
    # A worker must acknowledge a reload's rules within this, or the watchdog fences it and starts a
    # fresh one with the new rules (building them from serialized databases takes milliseconds).
    reload_deadline: float = 2.0
    # Once its socket is bound a worker runs as this user, with no capability and a seccomp
    # allowlist (hyperion.slowpath.confinement.confine_worker); None: workers keep the daemon's privileges.
    worker_user: str | None = DEFAULT_WORKER_USER


# Slow-path events waiting for the sink (pump_events) at most; beyond it they are counted in
# events_dropped (hyperion_slowpath_events_dropped_total), so a stalled sink cannot grow the daemon.
MAX_PENDING_EVENTS = 10_000


def served_queues(rx_queues: int, requested: list[int] | None, capacity: int) -> list[int]:
    """The queues the slow path serves: those requested (each must be within the fast path's queue
    capacity), else every RX queue below the capacity. Redirect-class packets on the queues above
    it take their class's fallback in the program, counted as queue_over_capacity."""
    if requested is not None:
        beyond = [q for q in requested if q >= capacity]
        if beyond:
            raise SlowPathError(f"queue {beyond[0]} is beyond the fast path's capacity of {capacity} RX queues "
                                f"(HYP_CAP_QUEUES; queues 0..{capacity - 1} can be served)")
        return list(requested)
    if rx_queues > capacity:
        log.warning("%d RX queues but the fast path has room for %d (HYP_CAP_QUEUES): the slow path serves "
                    "queues 0..%d; redirect-class packets on queues %d..%d take their class's on_failure "
                    "fallback, counted as queue_over_capacity (lower the channel count with ethtool -L to "
                    "inspect everything)", rx_queues, capacity, capacity - 1, capacity, rx_queues - 1)
    return list(range(min(rx_queues, capacity)))


class RulesBlob:
    """One generation's rules as workers take them: spec and serialized Hyperscan databases in a sealed
    memfd (compiled once, here; sealed, so no one can change it while a worker parses it), passed to
    a worker at start or over its rules socket. Never through a pipe."""

    def __init__(self, generation: int, compiled: CompiledRules) -> None:
        self.generation = generation
        data = encode_rules(generation, compiled.spec, compiled.rules.serialize())
        self.size = len(data)
        self.fd = os.memfd_create(f"hyp-rules-{generation}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, REQUIRED_SEALS)
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass
class WorkerProcess:
    """One worker process and what the supervisor knows of it."""
    proc: subprocess.Popen[str]
    control: mmap.mmap
    started: float
    ready: threading.Event = field(default_factory=threading.Event)
    exited: threading.Event = field(default_factory=threading.Event)  # its stdout closed
    report: dict[str, Any] | None = None
    live_hits: dict[int, RuleHits] = field(default_factory=dict)     # generation -> hits
    error: str | None = None
    exiting: str | None = None        # the worker said it is exiting on this signal
    zerocopy: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    channel: socket.socket | None = None  # the supervisor's end of the worker's rules socket (non-blocking)
    applied_generation: int = 0           # the rules generation it started with or acknowledged
    offered_generation: int = 0           # the last generation offered to it
    offered_at: float = 0.0
    compiles: int | None = None           # Hyperscan compiles the worker did to start (its "ready")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def heartbeat(self) -> float | None:
        """Monotonic time of the native loop's last iteration (None before the first)."""
        ns = ControlBlock(self.control).heartbeat_ns()
        return ns / 1e9 if ns else None

    def stats(self) -> dict[str, Any]:
        """The last report (levels, XDP_STATISTICS) with the counters as the native loop holds them
        now, read from the shared control block: exact at any moment, also after the process exited."""
        return {**(self.report or {}), **ControlBlock(self.control).counters()}

    def send(self, command: Command) -> bool:
        """A small command on stdin, never blocking: a pipe write of at most PIPE_BUF bytes either
        goes in whole or fails with EAGAIN (the worker is not reading: the watchdog's business)."""
        data = encode_command(command)
        if len(data) > PIPE_MESSAGE_MAX:
            log.error("worker %d: a %d-byte command does not fit a pipe write; not sent", self.pid, len(data))
            return False
        try:
            with self.lock:
                assert self.proc.stdin is not None
                return os.write(self.proc.stdin.fileno(), data) == len(data)
        except (BrokenPipeError, OSError, ValueError):
            return False

    def offer_rules(self, generation: int, blob: RulesBlob) -> bool:
        """Offers a generation's rules without blocking; the worker answers "rules_applied" (the
        watchdog fences it if it does not, whether or not this send went through)."""
        self.offered_generation, self.offered_at = generation, time.monotonic()
        if self.channel is None:
            return False
        try:
            socket.send_fds(self.channel, [RulesOffer(generation).encode()], [blob.fd], socket.MSG_DONTWAIT)
            return True
        except OSError:
            return False


@dataclass
class ManagedQueue:
    queue_id: int
    position: int
    machine: QueueStateMachine
    worker: WorkerProcess | None = None
    health: QueueHealth | None = None
    restarts: int = 0                 # queue-local recoveries started
    failures: int = 0                 # failed recoveries in a row
    next_attempt: float = 0.0
    failure_baseline: int = 0         # fast-path redirect failures when the worker went active
    retired_stats: Stats = field(default_factory=dict)  # the counters of its workers that are gone
    recoveries: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, result) -> count
    convergence: str = ""


class SlowPath:
    """Supervises one worker process per RX queue, with the watchdog that fences and recovers them.

    Threads: the watchdog thread makes every lifecycle change once start() returned;
    reader threads (one per worker) only record what workers report; other threads
    ask for changes through request().
    """

    def __init__(self, fastpath: FastPath, ifname: str, policy: Policy, options: SlowPathOptions | None = None,
                 event_sink: Callable[[dict[str, Any]], None] | None = None,
                 compiled: CompiledRules | None = None) -> None:
        self.fastpath = fastpath
        self.ifname = ifname
        self.policy = policy
        self.options = options or SlowPathOptions()
        self.event_sink = event_sink
        self.rules: CompiledRules = compiled or compile_rules(policy)
        self.generation = 1
        # Generation -> its rules while a live worker may still report it (see _prune_generations).
        self._rules_by_generation: dict[int, CompiledRules] = {1: self.rules}
        self._blob: RulesBlob | None = None  # the current generation's, for workers that start
        self._update_lock = threading.Lock()  # one update at a time; never held by the watchdog
        self.queues: dict[int, ManagedQueue] = {}
        self.delivery: Delivery | None = None
        self._retired_hits: dict[str, int] = {}
        self._lock = threading.RLock()     # lifecycle: held by the watchdog while it acts
        self._data = threading.Lock()      # telemetry from the workers: never held while waiting on one
        self._stopping = threading.Event()
        self.watchdog = QueueWatchdog(self.queues, self.options, _SupervisorPlane(self), self._lock, self._stopping,
                                      ifname)
        self._watchdog_thread: threading.Thread | None = None
        self._pending_events: list[dict[str, Any]] = []
        self.events_dropped = 0  # events refused because MAX_PENDING_EVENTS were waiting
        self._worker_ids = resolve_worker_user(self.options.worker_user) if self.options.worker_user else None

    # ---- start and stop -------------------------------------------------------------------

    def start(self) -> None:
        """Starts a worker per queue and waits until each is ready, then the watchdog."""
        requested = self.options.queues
        queues = served_queues(rx_queue_count(self.ifname) if requested is None else 0, requested,
                               self.fastpath.abi.capacity["queues"])
        self.delivery = open_delivery(self.options.delivery, self.ifname, self.options.tun_name)
        try:
            for position, queue_id in enumerate(queues):
                mq = ManagedQueue(queue_id, position, QueueStateMachine(queue_id))
                self.queues[queue_id] = mq
                self.watchdog.begin_recovery(mq, QueueReason.STARTING)
            deadline = time.monotonic() + self.options.start_timeout
            for mq in self.queues.values():
                assert mq.worker is not None
                if not self._wait_ready(mq.worker, deadline - time.monotonic()):
                    raise SlowPathError(f"queue {mq.queue_id}: worker not ready: {mq.worker.error or 'timed out'}")
                self.watchdog.activate(mq)
        except BaseException:
            self.stop()
            raise
        self._watchdog_thread = threading.Thread(target=self.watchdog.run, name="queue-watchdog", daemon=True)
        self._watchdog_thread.start()
        log.info("slow path on %s: %d worker process(es), delivery through %s, watchdog deadline %.0f ms",
                 self.ifname, len(self.queues), self.delivery.name, self.options.deadline * 1000)

    def stop(self) -> None:
        """Ordered teardown per queue: fence (state, then xsk_map entry), stop the worker, which closes
        its socket and then its UMEM; the delivery (helper veth or TUN device) last."""
        self._stopping.set()
        if self._watchdog_thread is not None:
            self._watchdog_thread.join(timeout=5)
            self._watchdog_thread = None
        with self._lock:
            for mq in self.queues.values():
                if mq.machine.state != QueueState.FENCED or mq.worker is not None:
                    self.watchdog.fence(mq, QueueReason.SHUTDOWN, graceful=True)
            self.queues.clear()
            if self._blob is not None:
                self._blob.close()
                self._blob = None
        if self.delivery is not None:
            self.delivery.close()
            self.delivery = None

    # ---- workers --------------------------------------------------------------------------

    def _current_blob(self) -> RulesBlob:
        if self._blob is None or self._blob.generation != self.generation:
            if self._blob is not None:
                self._blob.close()
            self._blob = RulesBlob(self.generation, self.rules)
        return self._blob

    def _spawn(self, mq: ManagedQueue) -> WorkerProcess:
        assert self.delivery is not None
        blob = self._current_blob()
        control_fd = os.memfd_create(f"hyp-q{mq.queue_id}-control")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            os.ftruncate(control_fd, CONTROL_BYTES)
            control = mmap.mmap(control_fd, CONTROL_BYTES)
            maps = self.fastpath.maps
            fds = {option: maps[name].fd for option, name in WORKER_MAP_FDS.items() if name in maps}
            fds |= {"deliver-fd": self.delivery.fd, "control-fd": control_fd, "rules-memfd": blob.fd,
                    "rules-socket": theirs.fileno()}
            argv = [sys.executable, "-m", self.options.worker_module, "--ifname", self.ifname,
                    "--queue", str(mq.queue_id),
                    "--frames", str(self.options.frames), "--ring-size", str(self.options.ring_size),
                    "--zerocopy", self.options.zerocopy]
            argv += [arg for name, fd in fds.items() for arg in (f"--{name}", str(fd))]
            if self.event_sink is not None:
                argv.append("--events")
            if self.delivery.frames:
                argv.append("--deliver-frames")
            if self.options.cpus:
                argv += ["--cpu", str(self.options.cpus[mq.position % len(self.options.cpus)])]
            if self._worker_ids is not None:
                argv += ["--run-as", "{}:{}".format(*self._worker_ids)]
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                    pass_fds=tuple(fds.values()), bufsize=1)
        except BaseException:
            ours.close()
            raise
        finally:
            os.close(control_fd)
            theirs.close()
        assert proc.stdin is not None
        os.set_blocking(proc.stdin.fileno(), False)  # nothing the supervisor writes to a worker may block
        ours.setblocking(False)
        worker = WorkerProcess(proc, control, time.monotonic(), channel=ours, applied_generation=blob.generation,
                               offered_generation=blob.generation)
        threading.Thread(target=self._read, args=(mq.queue_id, worker), name=f"worker-q{mq.queue_id}",
                         daemon=True).start()
        return worker

    @staticmethod
    def _wait_ready(worker: WorkerProcess, timeout: float) -> bool:
        end = time.monotonic() + max(timeout, 0.0)
        while not worker.ready.is_set():
            if worker.exited.is_set() or time.monotonic() > end:
                return False
            worker.ready.wait(0.05)
        return True

    def _read(self, queue_id: int, worker: WorkerProcess) -> None:
        """A worker's messages, until its stdout closes."""
        assert worker.proc.stdout is not None
        try:
            for line in worker.proc.stdout:
                try:
                    message = decode_message(line)
                except ProtocolError as exc:
                    log.warning("queue %d worker: %s", queue_id, exc)
                    continue
                self._on_message(queue_id, worker, message)
        except (OSError, ValueError, KeyError, TypeError):
            pass
        finally:
            with contextlib.suppress(OSError):
                worker.proc.stdout.close()  # its EOF: the worker is gone
            worker.exited.set()

    def _on_message(self, queue_id: int, worker: WorkerProcess, message: WorkerMessage) -> None:
        if isinstance(message, Ready):
            worker.zerocopy = message.zerocopy
            worker.compiles = message.compiles
            worker.ready.set()
        elif isinstance(message, RulesApplied):
            with self._data:
                worker.applied_generation = max(worker.applied_generation, message.generation)
                self._prune_generations()
        elif isinstance(message, Report):
            with self._data:
                worker.report = message.stats
                worker.live_hits[message.generation] = message.hits
                self._queue_events(queue_id, message.generation, message.events)
        elif isinstance(message, Retired):
            with self._data:
                self._retire(message.generation, message.hits)
                worker.live_hits.pop(message.generation, None)
                self._prune_generations()
        elif isinstance(message, Exiting):
            worker.exiting = f"exiting on {message.signal}"
        elif isinstance(message, Error):
            worker.error = message.message
            log.error("queue %d worker: %s", queue_id, worker.error)

    def _end_worker(self, mq: ManagedQueue, graceful: bool) -> None:
        """Stops the worker (SIGTERM when it can still act, SIGKILL otherwise) and folds its counts in.

        mq.worker is cleared only when its counts are folded (both under _data), so a scrape in
        between still sees them: from the shared control block, final once the process is gone."""
        worker = mq.worker
        if worker is None:
            return
        proc = worker.proc
        if proc.poll() is None:
            if graceful:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    proc.kill()
            else:
                proc.kill()  # stalled or untrusted: it cannot drain anything
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log.error("queue %d: worker %d did not exit", mq.queue_id, proc.pid)
        # The reader thread ends at EOF on stdout and closes nothing; closing stdout under it would
        # wait for its read (the file's lock), forever if the process is stuck in the kernel.
        reader_done = worker.exited.wait(1)
        for stream in (proc.stdin, proc.stdout if reader_done else None, worker.channel):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        with self._data:
            for generation, hits in worker.live_hits.items():
                self._retire(generation, hits)
            worker.live_hits.clear()
            self._prune_generations()
            mq.retired_stats = add_counters(mq.retired_stats, worker.stats())
            mq.worker = None
            worker.control.close()  # under _data: queue_stats() reads it there

    def _lifecycle_event(self, transition: Transition) -> None:
        if self.event_sink is not None:
            with self._data:
                self._pend_event({**transition.as_dict(), "time": _utc_now(), "source": "lifecycle"})

    def request(self, action: QueueAction | str, queue_id: int | None = None, timeout: float = 10.0) -> ActionResult:
        """An operator's request, served by the watchdog thread (QueueWatchdog.request)."""
        return self.watchdog.request(action, queue_id, timeout)

    # ---- policy ---------------------------------------------------------------------------

    def update(self, policy: Policy, compiled: CompiledRules | None = None) -> int:
        """New rules for every worker; returns their generation once every worker that serves (or is
        about to) holds it.

        Compiled first (a bad set changes nothing) and written to a sealed memfd, outside any lock
        the watchdog takes; each worker is then offered it without blocking. A worker that does not
        acknowledge it within options.reload_deadline is fenced by the watchdog and replaced by a
        fresh one, which starts with the new rules. SlowPathError when some queue still serves an
        older generation after reload_deadline + start_timeout: the caller decides what to keep
        (the daemon offers the previous rules again and keeps its running policy).
        """
        compiled = compiled or compile_rules(policy)
        with self._update_lock:
            generation = self.generation + 1
            blob = RulesBlob(generation, compiled)
            with self._lock:
                with self._data:
                    self.generation = generation
                    self._rules_by_generation[generation] = compiled
                    self.rules, self.policy = compiled, policy
                old, self._blob = self._blob, blob
                for mq in self.queues.values():
                    if mq.worker is not None and not mq.worker.offer_rules(generation, blob):
                        log.warning("queue %d: worker %d not reachable for rules generation %d",
                                    mq.queue_id, mq.worker.pid, generation)
            if old is not None:
                old.close()  # every worker started with it has its own reference
            with self._data:
                self._prune_generations()
            self._wait_for_generation(generation)
        return generation

    def _behind(self, generation: int) -> list[int]:
        """Queues whose worker serves, or is starting to, an older generation. Read without the
        lifecycle lock, which the watchdog may hold for seconds while it replaces a worker."""
        return [q for q, mq in list(self.queues.items())
                if (mq.machine.state in SERVING_STATES or mq.machine.state == QueueState.RECOVERING)
                and (worker := mq.worker) is not None and worker.applied_generation < generation]

    def _wait_for_generation(self, generation: int) -> None:
        timeout = self.options.reload_deadline + self.options.start_timeout + self.options.deadline
        end = time.monotonic() + timeout
        while behind := self._behind(generation):
            if self._stopping.is_set() or time.monotonic() > end:
                raise SlowPathError(f"rules generation {generation} not taken within {timeout:.1f} s by "
                                    + ", ".join(f"queue {q}" for q in behind))
            time.sleep(0.02)

    def _prune_generations(self) -> None:
        """Keeps (under _data) only the rules of generations a live worker may still report, and the
        current one; the hits of the others are in _retired_hits already."""
        keep = {self.generation}
        for mq in list(self.queues.values()):
            worker = mq.worker
            if worker is not None:
                keep.add(worker.applied_generation)
                keep.update(worker.live_hits)
        for generation in [g for g in self._rules_by_generation if g not in keep]:
            del self._rules_by_generation[generation]

    def _retire(self, generation: int, hits: RuleHits) -> None:
        compiled = self._rules_by_generation.get(generation)
        if compiled is not None:
            add_hits(self._retired_hits, compiled.labels, hits)

    # ---- telemetry ------------------------------------------------------------------------

    def rule_hits(self) -> dict[str, tuple[str, int]]:
        """rule label -> (action, matches), across reloads and worker restarts."""
        with self._data:
            totals = dict(self._retired_hits)
            for mq in self.queues.values():
                if mq.worker is None:
                    continue
                for generation, hits in mq.worker.live_hits.items():
                    compiled = self._rules_by_generation.get(generation)
                    add_hits(totals, compiled.labels if compiled else [], hits)
            return {label: (action, totals.get(label, 0))
                    for label, action in zip(self.rules.labels, self.rules.actions, strict=True)}

    def queue_stats(self) -> dict[int, Stats]:
        """queue -> worker counters (summed over the queue's successive workers) and current levels."""
        result = {}
        with self._data:
            for queue_id, mq in self.queues.items():
                worker = mq.worker  # read once: _end_worker clears it
                current = worker.stats() if worker is not None else {}
                if not current and not mq.retired_stats:
                    continue
                result[queue_id] = queue_totals(mq.retired_stats, current, self.options.ring_size)
        return result

    def lifecycle(self) -> dict[int, ManagedQueue]:
        return dict(self.queues)

    def lifecycle_metrics(self) -> LifecycleMetrics:
        """What the metrics collector exports of the queues' lifecycle, copied under the lock."""
        with self._lock:
            now = time.monotonic()
            return {
                "queues": {q: {"state": mq.machine.state, "transitions": dict(mq.machine.transition_counts),
                               "dwell": {s: copy_histogram(h) for s, h in mq.machine.dwell.items()},
                               "recoveries": dict(mq.recoveries), "restarts": mq.restarts,
                               "heartbeat_age": None if mq.worker is None or mq.worker.heartbeat() is None
                               else now - (mq.worker.heartbeat() or now)}
                           for q, mq in self.queues.items()},
                "detections": {r: copy_histogram(h) for r, h in self.watchdog.detection_times.items()},
                "interface_recoveries": dict(self.watchdog.interface_recoveries),
            }

    def queue_status(self) -> list[QueueStatus]:
        """Every plane of every queue, for `hyperion queues` (JSON-ready)."""
        with self._lock:
            channels = self.watchdog.channels
            fast = self.fastpath.queue_counters()
            stats = self.queue_stats()
            result: list[QueueStatus] = []
            for queue_id, mq in sorted(self.queues.items()):
                worker = mq.worker
                beat = worker.heartbeat() if worker is not None else None
                st = stats.get(queue_id, {})
                redirect_plane: dict[str, str | bool | int] = {
                    "bpf_state": self.fastpath.queue_state(queue_id)["state"],
                    "xsk_map_entry": worker is not None and worker.ready.is_set() and not mq.machine.fenced}
                redirect_plane.update(fast.get(queue_id, {}))
                descriptors: DescriptorPlane = {
                    "worker_pid": worker.pid if worker is not None else None,
                    "umem_bound": worker is not None and worker.ready.is_set(),
                    "zerocopy": worker.zerocopy if worker is not None else None,
                    "rules_generation": worker.applied_generation if worker is not None else None,
                    "rule_compiles": worker.compiles if worker is not None else None,
                    "heartbeat_age_ms": None if beat is None else round((time.monotonic() - beat) * 1000, 1),
                    "umem_frames": self.options.frames}
                for name in DESCRIPTOR_STATS:
                    if name in st:
                        descriptors[name] = st[name]
                result.append({
                    "queue": queue_id,
                    "state": mq.machine.state,
                    "reason": mq.machine.reason,
                    "in_state_seconds": round(time.monotonic() - mq.machine.since, 3),
                    "restarts": mq.restarts,
                    "failures_in_a_row": mq.failures,
                    "steering": {"active_channels": channels,
                                 "steered": channels is None or queue_id < channels,
                                 "rss": ""},        # below
                    "redirect": redirect_plane,
                    "descriptors": descriptors,
                    "convergence": mq.convergence or None,
                    "transitions": [t.as_dict() for t in list(mq.machine.history)[-10:]],
                    "driver": "",                   # below
                })
        # The driver's view comes from ethtool, outside the lock: a status request must never
        # hold up the watchdog.
        rss = rss_indirection(self.ifname)
        for queue in result:
            queue["steering"]["rss"] = rss
            queue["driver"] = driver_queue_counters(self.ifname, queue["queue"]) or "no driver counters"
        return result

    def pump_events(self) -> int:
        """Moves pending worker and lifecycle events to the sink; returns how many."""
        if self.event_sink is None:
            return 0
        with self._data:
            events, self._pending_events = self._pending_events, []
        for event in events:
            self.event_sink(event)
        return len(events)

    def _pend_event(self, event: dict[str, Any]) -> None:
        """One event for the sink, unless MAX_PENDING_EVENTS are waiting (then counted). Under _data."""
        if len(self._pending_events) >= MAX_PENDING_EVENTS:
            self.events_dropped += 1
        else:
            self._pending_events.append(event)

    def _queue_events(self, queue_id: int, generation: int, events: list[Event]) -> None:
        if self.event_sink is None:
            return
        labels = self._rules_by_generation.get(generation, self.rules).labels
        for event in events:
            if len(self._pending_events) >= MAX_PENDING_EVENTS:
                self.events_dropped += 1
                continue
            rule = event.rule
            self._pending_events.append({
                "time": _utc_now(), "source": "slowpath", "queue": queue_id,
                "action": ACTION_NAMES.get(event.action, str(event.action)),
                "reason": "malformed_dns" if event.malformed else "rule",
                "rule": labels[rule] if rule is not None and rule < len(labels) else None,
                "src": str(ip_address(event.saddr)) if event.ip_version else None,
                "dst": str(ip_address(event.daddr)) if event.ip_version else None,
                "protocol": PROTOCOL_NAMES.get(event.protocol, event.protocol), "src_port": event.src_port,
                "dst_port": event.dst_port, "qname": event.qname or None, "qtype": event.qtype or None,
            })


class _SupervisorPlane:
    """The watchdog's QueuePlane: the fast path's maps, the interface (ethtool, iproute2) and the
    supervisor's workers."""

    def __init__(self, slowpath: SlowPath) -> None:
        self._sp = slowpath

    def set_queue_state(self, queue: int, state: QueueState, reason: QueueReason, worker_pid: int,
                        restarts: int) -> None:
        self._sp.fastpath.set_queue_state(queue, state, reason, worker_pid, restarts)

    def unmap_socket(self, queue: int) -> None:
        self._sp.fastpath.maps["xsk_map"].delete(queue.to_bytes(4, "little"))

    def redirect_failures(self, queue: int) -> int:
        return int(self._sp.fastpath.queue_counter(queue).get("redirect_failures", 0))

    def rx_queue_count(self) -> int:
        return rx_queue_count(self._sp.ifname)

    def set_channels(self, count: int) -> None:
        set_channels(self._sp.ifname, count)

    def bounce_link(self) -> None:
        run_checked(["ip", "link", "set", "dev", self._sp.ifname, "down"])
        run_checked(["ip", "link", "set", "dev", self._sp.ifname, "up"])

    def descriptor_convergence(self, queue: int) -> str:
        return descriptor_convergence(self._sp.ifname, queue, self._sp.options.deadline)

    # Through the instance at call time: a test may replace _spawn on it.
    def spawn(self, mq: ManagedQueue) -> WorkerProcess:
        return self._sp._spawn(mq)

    def end_worker(self, mq: ManagedQueue, graceful: bool) -> None:
        self._sp._end_worker(mq, graceful)

    def transitioned(self, transition: Transition) -> None:
        self._sp._lifecycle_event(transition)
