"""The AF_XDP slow path: one worker process, socket and UMEM per RX queue, and their supervisor.

The per-packet loop is native (hyperion._slowpath), run by `hyperion.slowpath.worker`
processes. This module supervises the workers: it starts and
stops them in a safe order, runs the watchdog that fences a queue whose worker
died, stalled or starved and recovers it (hyperion.slowpath.watchdog has the state
machine), and turns their counters and events into telemetry.
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

from hyperion.daemon.privileges import DEFAULT_WORKER_USER, resolve_worker_user
from hyperion.errors import HyperionError, SlowPathError
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
from hyperion.slowpath.delivery import TunDevice
from hyperion.slowpath.protocol import (
    CONTROL_BYTES,
    PIPE_MESSAGE_MAX,
    REQUIRED_SEALS,
    Command,
    ControlBlock,
    Error,
    Event,
    Exiting,
    ProtocolError,
    Ready,
    Report,
    Retired,
    RulesApplied,
    RulesOffer,
    WorkerMessage,
    decode_message,
    encode_command,
    encode_rules,
)
from hyperion.slowpath.rules import ACTION_NAMES, CompiledRules, compile_rules
from hyperion.slowpath.watchdog import (
    DEFAULT_DEADLINE,
    DETECTION_BOUNDS,
    FENCED_STATES,
    SERVING_STATES,
    Detection,
    Histogram,
    Observation,
    QueueHealth,
    QueueStateMachine,
)

log = logging.getLogger("hyperion.slowpath")


PROTOCOLS = {6: "tcp", 17: "udp"}


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
    deadline: float = DEFAULT_DEADLINE   # watchdog detection deadline, seconds
    max_queue_restarts: int = 3          # failed queue-local recoveries in a row before escalating
    escalate: str = "none"               # none | interface (link down/up: interrupts all traffic)
    start_timeout: float = 15.0          # a fresh worker must be ready within this
    stable_after: float = 10.0           # an active worker this old resets the failure count
    fault_injection: bool = False        # workers accept SIGUSR1 (starve the fill ring), for `hyperion chaos`
    # A worker must acknowledge a reload's rules within this, or the watchdog fences it and starts a
    # fresh one with the new rules (building them from serialized databases takes milliseconds).
    reload_deadline: float = 2.0
    # Once its socket is bound a worker runs as this user, with no capability and a seccomp
    # allowlist (hyperion.privileges.confine_worker); None: workers keep the daemon's privileges.
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


# Worker stats that are levels, not counters: not summed across a queue's successive workers.
LEVELS = frozenset({"rx_ring_level", "ring_size", "free_frames", "tx_outstanding", "fill_ring_level"})


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
    live_hits: dict[int, list[int]] = field(default_factory=dict)     # generation -> hits
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
    retired_stats: dict[str, Any] = field(default_factory=dict)
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
        # Generation -> its rules (labels) while a live worker may still report it (see _prune_labels).
        self._labels: dict[int, CompiledRules] = {1: self.rules}
        self._blob: RulesBlob | None = None  # the current generation's, for workers that start
        self._update_lock = threading.Lock()  # one update at a time; never held by the watchdog
        self.queues: dict[int, ManagedQueue] = {}
        self.tun: TunDevice | None = None
        self._retired_hits: dict[str, int] = {}
        self._lock = threading.RLock()     # lifecycle: held by the watchdog while it acts
        self._data = threading.Lock()      # telemetry from the workers: never held while waiting on one
        self._requests: list[tuple[str, int | None, threading.Event, dict[str, Any]]] = []
        self._stopping = threading.Event()
        self._watchdog: threading.Thread | None = None
        self._pending_events: list[dict[str, Any]] = []
        self.events_dropped = 0  # events refused because MAX_PENDING_EVENTS were waiting
        self.detection_times: dict[str, Histogram] = {}  # detection reason -> seconds from fault to detection
        self._channels: int | None = None
        self._last_steering_check = 0.0
        self.interface_recoveries: dict[str, int] = {}
        self._worker_ids = resolve_worker_user(self.options.worker_user) if self.options.worker_user else None

    # ---- start and stop -------------------------------------------------------------------

    def start(self) -> None:
        """Starts a worker per queue and waits until each is ready, then the watchdog."""
        requested = self.options.queues
        queues = served_queues(rx_queue_count(self.ifname) if requested is None else 0, requested,
                               self.fastpath.abi.capacity["queues"])
        self.tun = TunDevice(self.options.tun_name or f"hyp{os.getpid() % 100000}t", mirror_addresses_of=self.ifname)
        try:
            for position, queue_id in enumerate(queues):
                mq = ManagedQueue(queue_id, position, QueueStateMachine(queue_id))
                self.queues[queue_id] = mq
                self._begin_recovery(mq, "starting")
            deadline = time.monotonic() + self.options.start_timeout
            for mq in self.queues.values():
                assert mq.worker is not None
                if not self._wait_ready(mq.worker, deadline - time.monotonic()):
                    raise SlowPathError(f"queue {mq.queue_id}: worker not ready: {mq.worker.error or 'timed out'}")
                self._activate(mq)
        except BaseException:
            self.stop()
            raise
        self._watchdog = threading.Thread(target=self._watch, name="queue-watchdog", daemon=True)
        self._watchdog.start()
        log.info("slow path on %s: %d worker process(es), delivery through %s, watchdog deadline %.0f ms",
                 self.ifname, len(self.queues), self.tun.name, self.options.deadline * 1000)

    def stop(self) -> None:
        """Ordered teardown per queue: fence (state, then xsk_map entry), stop the worker, which closes
        its socket and then its UMEM; the TUN device last."""
        self._stopping.set()
        if self._watchdog is not None:
            self._watchdog.join(timeout=5)
            self._watchdog = None
        with self._lock:
            for mq in self.queues.values():
                if mq.machine.state != "fenced" or mq.worker is not None:
                    self._fence(mq, "shutdown", graceful=True)
            self.queues.clear()
            if self._blob is not None:
                self._blob.close()
                self._blob = None
        if self.tun is not None:
            self.tun.close()
            self.tun = None

    # ---- workers --------------------------------------------------------------------------

    def _current_blob(self) -> RulesBlob:
        if self._blob is None or self._blob.generation != self.generation:
            if self._blob is not None:
                self._blob.close()
            self._blob = RulesBlob(self.generation, self.rules)
        return self._blob

    def _spawn(self, mq: ManagedQueue) -> WorkerProcess:
        assert self.tun is not None
        blob = self._current_blob()
        control_fd = os.memfd_create(f"hyp-q{mq.queue_id}-control")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            os.ftruncate(control_fd, CONTROL_BYTES)
            control = mmap.mmap(control_fd, CONTROL_BYTES)
            maps = self.fastpath.maps
            fds = {"xsk-map-fd": maps["xsk_map"].fd, "dyn4-fd": maps["hyp_dyn4"].fd, "dyn6-fd": maps["hyp_dyn6"].fd,
                   "deliver-fd": self.tun.fd, "control-fd": control_fd, "rules-memfd": blob.fd,
                   "rules-socket": theirs.fileno()}
            argv = [sys.executable, "-m", "hyperion.slowpath.worker", "--ifname", self.ifname,
                    "--queue", str(mq.queue_id),
                    "--frames", str(self.options.frames), "--ring-size", str(self.options.ring_size),
                    "--zerocopy", self.options.zerocopy]
            argv += [arg for name, fd in fds.items() for arg in (f"--{name}", str(fd))]
            if self.event_sink is not None:
                argv.append("--events")
            if self.options.fault_injection:
                argv.append("--fault-injection")
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
            worker.exited.set()

    def _on_message(self, queue_id: int, worker: WorkerProcess, message: WorkerMessage) -> None:
        if isinstance(message, Ready):
            worker.zerocopy = message.zerocopy
            worker.compiles = message.compiles
            worker.ready.set()
        elif isinstance(message, RulesApplied):
            with self._data:
                worker.applied_generation = max(worker.applied_generation, message.generation)
                self._prune_labels()
        elif isinstance(message, Report):
            with self._data:
                worker.report = message.stats
                worker.live_hits[message.generation] = message.hits
                self._queue_events(queue_id, message.generation, message.events)
        elif isinstance(message, Retired):
            with self._data:
                self._retire(message.generation, message.hits)
                worker.live_hits.pop(message.generation, None)
                self._prune_labels()
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
        worker.exited.wait(1)
        for stream in (proc.stdin, proc.stdout, worker.channel):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        with self._data:
            for generation, hits in worker.live_hits.items():
                self._retire(generation, hits)
            worker.live_hits.clear()
            self._prune_labels()
            for name, value in worker.stats().items():
                if name == "latency_buckets":
                    old = mq.retired_stats.get(name) or [(bound, 0) for bound, _ in value]
                    mq.retired_stats[name] = [(b, c + o) for (b, c), (_, o) in zip(value, old, strict=True)]
                elif isinstance(value, int) and name not in LEVELS:
                    mq.retired_stats[name] = mq.retired_stats.get(name, 0) + value
            mq.worker = None
            worker.control.close()  # under _data: queue_stats() reads it there

    # ---- transitions ----------------------------------------------------------------------

    def _move(self, mq: ManagedQueue, to_state: str, reason: str, detail: str = "",
              detection_seconds: float | None = None) -> None:
        """The one place a queue changes state: the BPF map first, so the program acts on it at once."""
        pid = mq.worker.pid if mq.worker is not None else 0
        transition = mq.machine.move(to_state, reason, detail, detection_seconds)
        self.fastpath.set_queue_state(mq.queue_id, to_state, reason, pid, mq.restarts)
        if detection_seconds is not None and to_state in ("fenced", "pressured", "degraded"):
            self.detection_times.setdefault(reason, Histogram(DETECTION_BOUNDS)).observe(detection_seconds)
        log_at = logging.WARNING if to_state in ("fenced", "degraded", "failed") else logging.INFO
        log.log(log_at, "queue %d: %s -> %s (%s%s)%s", mq.queue_id, transition.from_state, to_state, reason,
                f": {detail}" if detail else "",
                "" if detection_seconds is None else f", detected in {detection_seconds * 1000:.0f} ms")
        if self.event_sink is not None:
            with self._data:
                self._pend_event({**transition.as_dict(), "time": _utc_now(), "source": "lifecycle"})

    def _fence(self, mq: ManagedQueue, reason: str, detail: str = "", detection_seconds: float | None = None,
               graceful: bool = False) -> None:
        """Fence first (queue state, then the xsk_map entry), then the worker and its socket, then its UMEM."""
        self._move(mq, "fenced", reason, detail, detection_seconds)
        self.fastpath.maps["xsk_map"].delete(mq.queue_id.to_bytes(4, "little"))
        self._end_worker(mq, graceful)
        mq.health = None
        mq.convergence = descriptor_convergence(self.ifname, mq.queue_id, self.options.deadline)

    def _begin_recovery(self, mq: ManagedQueue, reason: str) -> None:
        self._move(mq, "recovering", reason)
        mq.worker = self._spawn(mq)
        self.fastpath.set_queue_state(mq.queue_id, "recovering", reason, mq.worker.pid, mq.restarts)

    def _activate(self, mq: ManagedQueue) -> None:
        """The worker's socket is in xsk_map (it registers itself last): unfence."""
        mq.failure_baseline = self._redirect_failures(mq.queue_id)
        mq.health = QueueHealth(self.options.deadline)
        self._move(mq, "active", "ready")

    def _recovery_failed(self, mq: ManagedQueue, kind: str, detail: str) -> None:
        mq.failures += 1
        mq.recoveries[(kind, "failed")] = mq.recoveries.get((kind, "failed"), 0) + 1
        self._fence(mq, "recovery_failed", detail)
        if mq.failures >= self.options.max_queue_restarts:
            if self.options.escalate == "interface":
                self._recover_interface(f"queue {mq.queue_id}: {mq.failures} queue-local recoveries failed")
                return
            self._move(mq, "failed", "recovery_failed",
                       f"{mq.failures} queue-local recoveries failed; escalation not allowed (--escalate none)")
            return
        mq.next_attempt = time.monotonic() + min(0.1 * 2 ** mq.failures, 2.0)

    def _recover_interface(self, why: str) -> None:
        """Escalation: every queue fenced and its worker stopped, the link bounced, workers started again."""
        log.warning("interface-wide recovery of %s: %s", self.ifname, why)
        for mq in self.queues.values():
            if mq.machine.state != "fenced" or mq.worker is not None:
                self._fence(mq, "recovery_failed", "interface-wide recovery")
        result = "ok"
        try:
            run_checked(["ip", "link", "set", "dev", self.ifname, "down"])
            run_checked(["ip", "link", "set", "dev", self.ifname, "up"])
        except SlowPathError as exc:
            log.error("interface-wide recovery: %s", exc)
            result = "failed"
        self.interface_recoveries[result] = self.interface_recoveries.get(result, 0) + 1
        for mq in self.queues.values():
            mq.failures = 0
            mq.next_attempt = 0.0
            mq.restarts += 1
            self._begin_recovery(mq, "starting")

    # ---- the watchdog ---------------------------------------------------------------------

    def _watch(self) -> None:
        interval = self.options.deadline / 4
        while not self._stopping.wait(interval):
            try:
                with self._lock:
                    self._serve_requests()
                    self._check_steering()
                    for mq in list(self.queues.values()):
                        self._check(mq)
            except Exception:  # the watchdog must outlive any one bad sample
                log.exception("queue watchdog")

    def _check(self, mq: ManagedQueue) -> None:
        now = time.monotonic()
        state = mq.machine.state
        worker = mq.worker
        if state == "recovering":
            assert worker is not None
            if worker.ready.is_set():
                mq.recoveries[("queue_local", "ok")] = mq.recoveries.get(("queue_local", "ok"), 0) + 1
                self._activate(mq)
            elif worker.exited.is_set() or worker.proc.poll() is not None:
                self._recovery_failed(mq, "queue_local", f"worker exited: {worker.error or _exit_detail(worker)}")
            elif now - worker.started > self.options.start_timeout:
                self._recovery_failed(mq, "queue_local", "worker not ready in time")
            return
        if state == "fenced":
            if mq.machine.reason != "not_steered" and now >= mq.next_attempt and not self._stopping.is_set():
                mq.restarts += 1
                self._begin_recovery(mq, "starting")
            return
        if state not in SERVING_STATES or worker is None or mq.health is None:
            return
        if mq.failures and now - mq.machine.since > self.options.stable_after:
            mq.failures = 0
        if worker.offered_generation > worker.applied_generation and \
                now - max(worker.offered_at, mq.machine.since) > self.options.reload_deadline:
            # It serves an older rule set than the policy: replaced by a worker started with the new one.
            self._fence(mq, "rules_not_applied",
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
            redirect_failures=self._redirect_failures(mq.queue_id) - mq.failure_baseline,
            steered=self._channels is None or mq.queue_id < self._channels,
            exit_detail="" if alive else worker.exiting or _exit_detail(worker),
        )
        detection = mq.health.observe(observation, state)
        if detection is None:
            return
        if detection.reason == "xsk_map_entry_missing":
            # A dying worker's socket leaves xsk_map before the process is reaped: tell them apart
            # (the kernel marks a task exiting before it closes its files).
            exiting = _process_exiting(worker.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(timeout=0.2 if exiting else 0.05)
                exiting = True
            if exiting:
                detection = Detection("fenced", "worker_exited", worker.exiting or _exit_detail(worker),
                                      detection.detection_seconds)
        if detection.to_state == "fenced":
            self._fence(mq, detection.reason, detection.detail, detection.detection_seconds)
            mq.next_attempt = now
        else:
            self._move(mq, detection.to_state, detection.reason, detection.detail, detection.detection_seconds)

    def _check_steering(self) -> None:
        now = time.monotonic()
        if now - self._last_steering_check < 1.0:
            return
        self._last_steering_check = now
        try:
            self._channels = rx_queue_count(self.ifname)
        except SlowPathError:
            return
        for mq in self.queues.values():
            if mq.machine.state == "fenced" and mq.machine.reason == "not_steered" and mq.queue_id < self._channels:
                mq.restarts += 1
                self._begin_recovery(mq, "starting")

    def _redirect_failures(self, queue_id: int) -> int:
        return int(self.fastpath.queue_counter(queue_id).get("redirect_failures", 0))

    # ---- operator requests ----------------------------------------------------------------

    def request(self, action: str, queue_id: int | None = None, timeout: float = 10.0) -> dict[str, Any]:
        """Asks the watchdog thread to act: restart (queue-local recovery with a fresh socket and UMEM),
        withdraw (fence and take the queue out of steering), restore (all channels back)."""
        if action not in ("restart", "withdraw", "restore"):
            raise SlowPathError(f"unknown queue action {action!r}")
        if action != "restore" and queue_id not in self.queues:
            raise SlowPathError(f"queue {queue_id} is not managed by the slow path (managed: {sorted(self.queues)})")
        done = threading.Event()
        result: dict[str, Any] = {}
        with self._lock:
            self._requests.append((action, queue_id, done, result))
        if not done.wait(timeout):
            raise SlowPathError(f"{action}: no answer from the watchdog in {timeout:.0f} s")
        if "error" in result:
            raise SlowPathError(result["error"])
        return result

    def _serve_requests(self) -> None:
        requests, self._requests = self._requests, []
        for action, queue_id, done, result in requests:
            try:
                if action == "restart":
                    assert queue_id is not None
                    mq = self.queues[queue_id]
                    self._fence(mq, "operator", "restart requested", graceful=True)
                    mq.next_attempt = 0.0
                    mq.failures = 0
                    result["state"] = mq.machine.state
                elif action == "withdraw":
                    assert queue_id is not None
                    result.update(self._withdraw(queue_id))
                else:
                    result.update(self._restore())
            except HyperionError as exc:
                result["error"] = str(exc)
            finally:
                done.set()

    def _withdraw(self, queue_id: int) -> dict[str, Any]:
        """Steering plane: fences queue_id and every queue above it, then sets the channel count to queue_id
        (channels are counted, so a queue can only leave steering with the ones above it)."""
        total = rx_queue_count(self.ifname)
        if queue_id == 0:
            raise SlowPathError("queue 0 cannot be withdrawn: an interface keeps at least one channel")
        for mq in self.queues.values():
            if mq.queue_id >= queue_id and mq.machine.state not in FENCED_STATES:
                self._fence(mq, "not_steered", "withdrawn by the operator", graceful=True)
            elif mq.queue_id >= queue_id:
                self._move(mq, "fenced", "not_steered", "withdrawn by the operator")
        # The kernel releases a closed socket's hold on its queue asynchronously; until then it
        # refuses fewer channels ("too low for existing ... AF_XDP sockets"): retry for 2 s.
        for attempt in range(20):
            try:
                set_channels(self.ifname, queue_id)
                break
            except SlowPathError:
                if attempt == 19:
                    raise
                time.sleep(0.1)
        self._channels = queue_id
        return {"channels": queue_id, "was": total}

    def _restore(self) -> dict[str, Any]:
        wanted = max(self.queues) + 1 if self.queues else 1
        set_channels(self.ifname, wanted)
        self._last_steering_check = 0.0  # recovers the withdrawn queues on this tick
        self._check_steering()
        return {"channels": wanted}

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
                    self._labels[generation] = compiled
                    self.rules, self.policy = compiled, policy
                old, self._blob = self._blob, blob
                for mq in self.queues.values():
                    if mq.worker is not None and not mq.worker.offer_rules(generation, blob):
                        log.warning("queue %d: worker %d not reachable for rules generation %d",
                                    mq.queue_id, mq.worker.pid, generation)
            if old is not None:
                old.close()  # every worker started with it has its own reference
            with self._data:
                self._prune_labels()
            self._wait_for_generation(generation)
        return generation

    def _behind(self, generation: int) -> list[int]:
        """Queues whose worker serves, or is starting to, an older generation. Read without the
        lifecycle lock, which the watchdog may hold for seconds while it replaces a worker."""
        return [q for q, mq in list(self.queues.items())
                if (mq.machine.state in SERVING_STATES or mq.machine.state == "recovering")
                and (worker := mq.worker) is not None and worker.applied_generation < generation]

    def _wait_for_generation(self, generation: int) -> None:
        timeout = self.options.reload_deadline + self.options.start_timeout + self.options.deadline
        end = time.monotonic() + timeout
        while behind := self._behind(generation):
            if self._stopping.is_set() or time.monotonic() > end:
                raise SlowPathError(f"rules generation {generation} not taken within {timeout:.1f} s by "
                                    + ", ".join(f"queue {q}" for q in behind))
            time.sleep(0.02)

    def _prune_labels(self) -> None:
        """Keeps (under _data) only the rules of generations a live worker may still report, and the
        current one; the hits of the others are in _retired_hits already."""
        keep = {self.generation}
        for mq in list(self.queues.values()):
            worker = mq.worker
            if worker is not None:
                keep.add(worker.applied_generation)
                keep.update(worker.live_hits)
        for generation in [g for g in self._labels if g not in keep]:
            del self._labels[generation]

    def _retire(self, generation: int, hits: list[int]) -> None:
        compiled = self._labels.get(generation)
        if compiled is None:
            return
        for label, count in zip(compiled.labels, hits, strict=False):
            self._retired_hits[label] = self._retired_hits.get(label, 0) + count

    # ---- telemetry ------------------------------------------------------------------------

    def rule_hits(self) -> dict[str, tuple[str, int]]:
        """rule label -> (action, matches), across reloads and worker restarts."""
        with self._data:
            totals = dict(self._retired_hits)
            for mq in self.queues.values():
                if mq.worker is None:
                    continue
                for generation, hits in mq.worker.live_hits.items():
                    compiled = self._labels.get(generation)
                    for label, count in zip(compiled.labels if compiled else [], hits, strict=False):
                        totals[label] = totals.get(label, 0) + count
            return {label: (action, totals.get(label, 0))
                    for label, action in zip(self.rules.labels, self.rules.actions, strict=True)}

    def queue_stats(self) -> dict[int, dict[str, Any]]:
        """queue -> worker counters (summed over the queue's successive workers) and current levels."""
        result = {}
        with self._data:
            for queue_id, mq in self.queues.items():
                worker = mq.worker  # read once: _end_worker clears it
                current = worker.stats() if worker is not None else {}
                if not current and not mq.retired_stats:
                    continue
                merged: dict[str, Any] = {"rx_ring_level": 0, "ring_size": self.options.ring_size,
                                          "free_frames": 0, "fill_ring_level": 0, "tx_outstanding": 0}
                merged.update(mq.retired_stats)
                for name, value in current.items():
                    if name == "latency_buckets" and "latency_buckets" in mq.retired_stats:
                        merged[name] = [(b, c + o) for (b, c), (_, o) in
                                        zip(value, mq.retired_stats[name], strict=True)]
                    elif isinstance(value, int) and name not in LEVELS:
                        merged[name] = mq.retired_stats.get(name, 0) + value
                    else:
                        merged[name] = value
                result[queue_id] = merged
        return result

    def lifecycle(self) -> dict[int, ManagedQueue]:
        return dict(self.queues)

    def lifecycle_metrics(self) -> dict[str, Any]:
        """What the metrics collector exports of the queues' lifecycle, copied under the lock."""
        with self._lock:
            now = time.monotonic()
            return {
                "queues": {q: {"state": mq.machine.state, "transitions": dict(mq.machine.transition_counts),
                               "dwell": {s: Histogram(h.bounds, list(h.counts), h.total)
                                         for s, h in mq.machine.dwell.items()},
                               "recoveries": dict(mq.recoveries), "restarts": mq.restarts,
                               "heartbeat_age": None if mq.worker is None or mq.worker.heartbeat() is None
                               else now - (mq.worker.heartbeat() or now)}
                           for q, mq in self.queues.items()},
                "detections": {r: Histogram(h.bounds, list(h.counts), h.total)
                               for r, h in self.detection_times.items()},
                "interface_recoveries": dict(self.interface_recoveries),
            }

    def queue_status(self) -> list[dict[str, Any]]:
        """Every plane of every queue, for `hyperion queues` (JSON-ready)."""
        with self._lock:
            channels = self._channels
            fast = self.fastpath.queue_counters()
            stats = self.queue_stats()
            result: list[dict[str, Any]] = []
            for queue_id, mq in sorted(self.queues.items()):
                worker = mq.worker
                beat = worker.heartbeat() if worker is not None else None
                st = stats.get(queue_id, {})
                redirect_plane: dict[str, Any] = {
                    "bpf_state": self.fastpath.queue_state(queue_id)["state"],
                    "xsk_map_entry": worker is not None and worker.ready.is_set() and not mq.machine.fenced}
                redirect_plane.update(fast.get(queue_id, {}))
                descriptors: dict[str, Any] = {
                    "worker_pid": worker.pid if worker is not None else None,
                    "umem_bound": worker is not None and worker.ready.is_set(),
                    "zerocopy": worker.zerocopy if worker is not None else None,
                    "rules_generation": worker.applied_generation if worker is not None else None,
                    "rule_compiles": worker.compiles if worker is not None else None,
                    "heartbeat_age_ms": None if beat is None else round((time.monotonic() - beat) * 1000, 1),
                    "umem_frames": self.options.frames}
                descriptors.update({k: st[k] for k in ("free_frames", "fill_ring_level", "rx_ring_level",
                                                       "tx_outstanding", "xdp_rx_dropped", "xdp_rx_ring_full",
                                                       "xdp_rx_fill_ring_empty_descs") if k in st})
                result.append({
                    "queue": queue_id,
                    "state": mq.machine.state,
                    "reason": mq.machine.reason,
                    "in_state_seconds": round(time.monotonic() - mq.machine.since, 3),
                    "restarts": mq.restarts,
                    "failures_in_a_row": mq.failures,
                    "steering": {"active_channels": channels,
                                 "steered": channels is None or queue_id < channels},
                    "redirect": redirect_plane,
                    "descriptors": descriptors,
                    "convergence": mq.convergence or None,
                    "transitions": [t.as_dict() for t in list(mq.machine.history)[-10:]],
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
        labels = self._labels.get(generation, self.rules).labels
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
                "protocol": PROTOCOLS.get(event.protocol, event.protocol), "src_port": event.src_port,
                "dst_port": event.dst_port, "qname": event.qname or None, "qtype": event.qtype or None,
            })


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
