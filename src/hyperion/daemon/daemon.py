"""`hyperion run`: attach, apply the policy, keep it applied until told to stop.

The daemon owns no packet state: everything lives in pinned maps, so it can
be stopped (with --keep-on-exit) and started again while the fast path keeps
running and its counters continue. Around that it serves /metrics, writes
drop events as JSON lines, and reloads the policy on SIGHUP or when the file
changes (inotify, including the Kubernetes ConfigMap symlink swap).

Threads: the main thread owns every change to the fast path (apply, sweep, and
the CLI's writes forwarded over the control socket, which are handed to it);
the watcher, event, control and HTTP threads only read or ask the main thread to act.
It also checks every second that the program is still attached.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Literal, cast

from hyperion.daemon.control import (
    QUEUE_ACTIONS,
    BlockAddRequest,
    BlockDelRequest,
    ControlReply,
    ControlRequest,
    ControlServer,
    PolicyApplyRequest,
    QueueActionRequest,
    socket_path,
)
from hyperion.daemon.events import EventDecoder, EventReader, RecordSink, json_lines_sink
from hyperion.daemon.metrics import FastPathCollector, MetricsServer, ReloadStats, serve_metrics
from hyperion.daemon.owner import InterfaceBusyError, InterfaceLock, OwnerRole
from hyperion.daemon.watch import PolicyWatcher
from hyperion.errors import HyperionError
from hyperion.fastpath.loader import object_capacities
from hyperion.fastpath.maps import CompiledPolicy
from hyperion.fastpath.program import FastPath
from hyperion.kernel.abi import load_abi
from hyperion.policy.compiler import PolicyCompiler, fast_path_rule_name
from hyperion.policy.loading import read_policy
from hyperion.policy.model import Policy
from hyperion.policy.neverblock import HostFacts, discover_host_facts, effective_never_block
from hyperion.policy.placement import needs_slow_path
from hyperion.slowpath.rules import CompiledRules, compile_rules
from hyperion.slowpath.supervisor import SlowPath, SlowPathOptions

log = logging.getLogger("hyperion.daemon")

# How often expired dynamic blocks are swept; the program ignores them anyway.
SWEEP_INTERVAL_SECONDS = 5.0
# How often the main loop checks that the program is still attached to the interface.
ATTACH_CHECK_SECONDS = 1.0
# A `run` that finds a one-shot CLI writer holding the interface waits this long for it.
OWNER_WAIT_SECONDS = 10.0
# How long a control request waits for the main thread to carry out a write.
MAIN_THREAD_TIMEOUT = 120.0
DEFAULT_METRICS_ADDR = "127.0.0.1:2112"
DEFAULT_EVENTS_PER_SEC = 200

# XDP attach modes (`run --mode`, `attach --mode`).
AttachMode = Literal["native", "generic"]


def open_events_file(path: str) -> IO[str]:
    """`run --events FILE`: appended to, created 0600 (events name clients and the names they
    looked up), never through a symlink (one planted at the path would aim root's writes at
    another file), and not inherited by the processes the daemon starts."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY,
                     0o600)
    except OSError as exc:
        reason = ("it is a symbolic link (give the file itself)" if exc.errno == errno.ELOOP and os.path.islink(path)
                  else exc.strerror or str(exc))
        raise HyperionError(f"--events {path}: cannot open the events file: {reason}") from None
    return os.fdopen(fd, "a", encoding="utf-8")


@dataclass
class DaemonOptions:
    ifname: str
    policy_path: Path
    attach_mode: AttachMode = "native"
    keep_on_exit: bool = False
    object_path: Path | None = None
    metrics_addr: str | None = DEFAULT_METRICS_ADDR
    events_path: str | None = None  # a file, "-" for stdout, None for no events
    events_per_sec: int = DEFAULT_EVENTS_PER_SEC
    watch_policy: bool = True
    slowpath: bool = True  # AF_XDP workers for the redirect classes
    slowpath_options: SlowPathOptions = field(default_factory=SlowPathOptions)
    # Called once attached, before any thread or worker starts (`run` drops capabilities here).
    privilege_drop: Callable[[], object] | None = None
    # The host's addresses, gateways and resolvers (never_block defaults); asked at start and every reload.
    host_facts: Callable[[], HostFacts] = discover_host_facts


def dns_rule_labels(policy: Policy, hits: dict[int, int]) -> dict[tuple[str, str], int]:
    """{rule id: hits} of a generation's DNS maps -> {(rule label, action): hits} in that generation's
    policy; the label is the one events and the slow path's metrics give the rule
    ("slow_path.dns_rules[0] match=evil.test action=drop")."""
    rules = policy.slow_path.dns_rules
    labelled: dict[tuple[str, str], int] = {}
    for rule_id, n in hits.items():
        label = fast_path_rule_name(policy, "dns_drop", rule_id)
        if label is not None and n:
            key = (label, rules[rule_id - 1].action)
            labelled[key] = labelled.get(key, 0) + n
    return labelled


@dataclass
class _MainThreadCall:
    action: Callable[[], ControlReply]
    done: threading.Event = field(default_factory=threading.Event)
    result: ControlReply = field(default_factory=lambda: ControlReply())
    error: HyperionError | None = None


class Daemon:
    def __init__(self, options: DaemonOptions) -> None:
        self.options = options
        self.fastpath: FastPath | None = None
        self.policy: Policy | None = None
        self.reloads = ReloadStats()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._stop_requested = False
        self._reload_requested = False
        self._threads: list[threading.Thread] = []
        self._metrics_server: MetricsServer | None = None
        self._events_out: IO[str] | None = None
        # Fast-path event records and the slow path's events alike, written as JSON lines.
        self._event_sink: RecordSink | None = None
        self.slowpath: SlowPath | None = None
        self._control: ControlServer | None = None
        self._owner_lock: InterfaceLock | None = None
        self._attached = False
        # Writes asked for over the control socket, carried out by the main thread (the only writer).
        self._calls: queue.Queue[_MainThreadCall] = queue.Queue()
        # Per-rule hits of the XDP name rules (hyperion_dns_rule_matches): the policy each generation slot
        # holds (its rule ids are that policy's dns_rules positions), and the hits of the generations
        # already replaced, by (rule label, action), so that the counters never go back at a reload.
        self._dns_lock = threading.Lock()
        self._dns_slots: dict[int, Policy] = {}
        self._dns_retired: dict[tuple[str, str], int] = {}

    # ---- policy -------------------------------------------------------------------------

    def apply_policy(self, policy: Policy, text: str, compiled: CompiledPolicy | None = None,
                     rules: CompiledRules | None = None) -> int:
        """Fast path and slow path switch to a new policy together, or neither does; everything is
        compiled before either changes.

        Sockets come up before the fast path starts redirecting to them, and go away only
        after it has stopped, so no class takes its fallback because of the daemon itself.
        The slow path goes first, and only once every worker that serves holds the new rules
        does the fast path switch. When the slow path cannot take them (a start that fails,
        or a queue that neither acknowledges them nor comes back with them in time) the fast
        path keeps the running policy, a new slow path is stopped and not kept, a running one
        is offered its previous rules again, and the error propagates: the reload counts as
        failed. The queue that did not take the rules has been fenced (its class's on_failure)
        and restarts with the rules in force.
        """
        assert self.fastpath is not None
        if compiled is None:
            compiled = PolicyCompiler(self.fastpath.abi, self.fastpath.capacities()).compile(policy)
        if rules is None and self._wants_slowpath(policy):
            rules = self.compile_slow_path(policy)
        started: SlowPath | None = None
        previous = self.slowpath.rules if self.slowpath is not None else None
        if rules is not None and self.slowpath is None:
            started = SlowPath(self.fastpath, self.options.ifname, policy, self._slowpath_options(),
                               event_sink=self._event_sink, compiled=rules)
            started.start()  # on failure it stopped what it began; nothing is kept
        elif rules is not None and self.slowpath is not None:
            try:
                self.slowpath.update(policy, rules)
            except BaseException:
                self._restore_slowpath(previous)
                raise
        try:
            generation = self.fastpath.apply(compiled, retire=self._retire_dns_hits)
        except BaseException:
            if started is not None:
                started.stop()
            elif rules is not None:
                self._restore_slowpath(previous)
            raise
        if started is not None:
            self.slowpath = started
        if rules is None and self.slowpath is not None:
            self.slowpath.stop()
            self.slowpath = None
        self.policy = policy
        with self._dns_lock:
            self._dns_slots[self.fastpath.active_slot()] = policy
        self.fastpath.record_applied_policy(text)
        return generation

    def _retire_dns_hits(self, slot: int, hits: dict[int, int]) -> None:
        """FastPath.apply, before it replaces the maps of `slot` (inactive since the previous flip, so
        these hits are final): they join the retired totals, under the labels of the policy they
        counted for. The slot counts no more until the new policy is in it."""
        with self._dns_lock:
            policy = self._dns_slots.pop(slot, None)
            if policy is None:  # a generation applied before this daemon: its rules are not known
                return
            for key, n in dns_rule_labels(policy, hits).items():
                self._dns_retired[key] = self._dns_retired.get(key, 0) + n

    def dns_rule_matches(self) -> dict[tuple[str, str], int]:
        """(rule label, action) -> queries decided in XDP by that name rule, monotonic across reloads:
        the retired generations' hits plus those of both slots' generations (the inactive slot holds the
        previous policy until the next reload retires it)."""
        if self.fastpath is None:
            return {}
        with self._dns_lock:
            totals = dict(self._dns_retired)
            for slot, policy in self._dns_slots.items():
                for key, n in dns_rule_labels(policy, self.fastpath.dns_hits(slot)).items():
                    totals[key] = totals.get(key, 0) + n
        return totals

    def compile_slow_path(self, policy: Policy) -> CompiledRules:
        """The slow path's rules, with never_block completed by the host's facts as they are now."""
        never_block = effective_never_block(policy, self.options.host_facts())
        log.info("never_block: %d networks (%s)", len(never_block),
                 "with the host's addresses, gateways, resolvers and allow_cidrs"
                 if policy.slow_path.never_block_defaults else "policy entries only")
        return compile_rules(policy, never_block)

    def _restore_slowpath(self, previous: CompiledRules | None) -> None:
        """After a failed switch: the running policy's rules, offered to the workers again."""
        if self.slowpath is None or previous is None or self.policy is None:
            return
        try:
            self.slowpath.update(self.policy, previous)
        except HyperionError as exc:  # the watchdog replaces whichever worker still holds other rules
            log.error("slow path: restoring the running rules: %s", exc)

    def _slowpath_options(self) -> SlowPathOptions:
        """The options, with TUN delivery in generic mode: there the program runs on the skb path,
        which a frame re-entering through the interface takes again."""
        options = self.options.slowpath_options
        if self.options.attach_mode == "generic" and options.delivery == "wire":
            log.info("fast path in generic mode: the slow path delivers through a TUN device")
            return dataclasses.replace(options, delivery="tun")
        return options

    def _wants_slowpath(self, policy: Policy) -> bool:
        """Workers only when some class sends them something: not for DNS classes whose rules all
        run in XDP (the placement's "xdp only")."""
        return self.options.slowpath and any(needs_slow_path(policy, cls) for cls in policy.fast_path.redirect_ports)

    def reload(self) -> bool:
        """Validates and applies the policy file again; a bad file leaves the running policy in place."""
        try:
            generation = self.apply_policy(*read_policy(self.options.policy_path))
        except HyperionError as exc:
            self.reloads.record(ok=False)
            log.error("reload rejected, running policy kept: %s", exc)
            return False
        except Exception:  # a bug in a loader or compiler must not take enforcement down with it
            self.reloads.record(ok=False)
            log.exception("reload failed unexpectedly, running policy kept")
            return False
        self.reloads.record(ok=True)
        log.info("policy reloaded from %s: generation %d", self.options.policy_path, generation)
        return True

    def rule_name(self, reason: str, rule_id: int) -> str | None:
        return fast_path_rule_name(self.policy, reason, rule_id) if self.policy else None

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Takes the interface (one owner), validates the policy, fills the maps, then attaches."""
        self._claim_interface()
        try:
            self._start()
        except BaseException:
            self._release_interface()
            raise

    def _claim_interface(self) -> None:
        """Before anything else: a second daemon on the interface touches nothing and names the owner."""
        try:
            self._owner_lock = InterfaceLock.acquire(self.options.ifname, OwnerRole.DAEMON, "hyperion run",
                                                     wait=OWNER_WAIT_SECONDS)
        except InterfaceBusyError as exc:
            raise InterfaceBusyError(exc.ifname, exc.owner, "a second `hyperion run` is refused and nothing was "
                                     "changed; stop that one first (`hyperion policy apply` and `hyperion block` "
                                     "go through it)") from None

    def _release_interface(self) -> None:
        if self._owner_lock is not None:
            self._owner_lock.release()
            self._owner_lock = None

    def _start(self) -> None:
        """Validates the policy first, then fills the maps and only then attaches: a bad policy
        attaches nothing, and no packet is judged before the policy is in the maps."""
        opts = self.options
        policy, text = read_policy(opts.policy_path)
        # Compiled (capacities checked) before attaching: a policy that cannot be applied
        # must not disturb a fast path left running by an earlier daemon.
        abi = load_abi(opts.object_path)
        compiled = PolicyCompiler(abi, object_capacities(abi.object_path)).compile(policy)
        # A slow-path rule Hyperscan refuses must not attach anything either.
        rules = self.compile_slow_path(policy) if self._wants_slowpath(policy) else None
        # Loaded and pinned, not attached yet (or the attachment a previous daemon left pinned).
        self.fastpath = FastPath.prepare(opts.ifname, opts.attach_mode, opts.object_path)
        try:
            if opts.events_path:
                self._events_out = sys.stdout if opts.events_path == "-" else open_events_file(opts.events_path)
                self._event_sink = json_lines_sink(self._events_out)
            if opts.privilege_drop is not None:  # from here on only what hyperion.daemon.privileges keeps
                opts.privilege_drop()
            generation = self.apply_policy(policy, text, compiled, rules)
            self.fastpath.set_event_rate(opts.events_per_sec if opts.events_path else 0)
            self.fastpath.link()  # the policy is in the maps: now the program may see packets
            self._attached = True
            if opts.metrics_addr:
                collector = FastPathCollector(self.fastpath, self.reloads, slowpath=lambda: self.slowpath,
                                              attached=lambda: self._attached, dns_rules=self.dns_rule_matches)
                self._metrics_server = serve_metrics(collector, opts.metrics_addr)
                log.info("metrics on http://%s/metrics", opts.metrics_addr)
            if opts.events_path:
                self._start_events()
            if opts.watch_policy:
                self._start_thread("policy-watch", self._watch_policy)
            self._control = ControlServer(socket_path(opts.ifname), self.control)
        except BaseException:
            self.stop()
            raise
        log.info("attached to %s (%s), policy generation %d, pins in %s",
                 opts.ifname, opts.attach_mode, generation, self.fastpath.pin_dir)

    def _start_thread(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _start_events(self) -> None:
        assert self.fastpath is not None and self._event_sink is not None
        reader = EventReader(self.fastpath.maps["hyp_events"].fd, EventDecoder(self.fastpath.abi, self.rule_name),
                             self._event_sink)

        def pump() -> None:
            try:
                while not self._stopping.is_set():
                    reader.poll(200)
                    slowpath = self.slowpath
                    if slowpath is not None:
                        slowpath.pump_events()
                reader.poll(0)  # what arrived before the stop
            finally:
                reader.close()

        self._start_thread("events", pump)

    def _watch_policy(self) -> None:
        with PolicyWatcher(self.options.policy_path) as watcher:
            while not self._stopping.is_set():
                if watcher.wait(0.5):
                    log.info("policy file %s changed", self.options.policy_path)
                    self.request_reload()

    def control(self, message: ControlRequest) -> ControlReply:
        """A control-socket request (hyperion.daemon.control): queue status, queue actions, forwarded writes."""
        slowpath = self.slowpath
        if message["cmd"] == "queues":
            return {"queues": slowpath.queue_status() if slowpath is not None else [],
                    "slowpath": slowpath is not None}
        if message["cmd"] in QUEUE_ACTIONS:
            # A queue action (its cmd is a QueueAction, which mypy cannot narrow on by value).
            action = cast(QueueActionRequest, message)
            if slowpath is None:
                raise HyperionError("no slow path is running (the policy has no redirect_ports, or --no-slowpath)")
            # The watchdog's answer: the fields ControlReply names for queue actions.
            return cast(ControlReply, slowpath.request(action["cmd"], action["queue"]))
        return self._control_write(cast(BlockAddRequest | BlockDelRequest | PolicyApplyRequest, message))

    def _check_attached(self) -> None:
        """Logs loudly when the program stops being attached (an external detach, `ip link ... xdp
        off` forced through, a deleted or re-created netdev). No re-attach: see the README."""
        assert self.fastpath is not None
        attached = self.fastpath.is_attached()
        if attached == self._attached:
            return
        if attached:
            log.warning("the XDP program is attached to %s again", self.options.ifname)
        else:
            log.error("the XDP program is NO LONGER ATTACHED to %s: nothing is enforced there; it was detached "
                      "outside this daemon (or the interface was deleted or re-created). Restart the daemon "
                      "to attach again.", self.options.ifname)
        self._attached = attached  # exported as hyperion_fastpath_attached once logged

    def _on_main_thread(self, action: Callable[[], ControlReply], timeout: float = MAIN_THREAD_TIMEOUT
                        ) -> ControlReply:
        """Hands a write to the main loop and waits for its answer: writes never race a reload."""
        call = _MainThreadCall(action)
        self._calls.put(call)
        self._wake.set()
        if self._stopping.is_set():
            self._refuse_main_thread_calls()  # stop() may have drained the queue before this put
        if not call.done.wait(timeout):
            raise HyperionError(f"the daemon's main loop did not carry out the request within {timeout:.0f} s")
        if call.error is not None:
            raise call.error
        return call.result

    def _run_main_thread_calls(self) -> None:
        while True:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                call.result = call.action()
            except HyperionError as exc:
                call.error = exc
            except Exception as exc:  # a bug answers the client instead of killing the loop
                log.exception("control request failed unexpectedly")
                call.error = HyperionError(f"the daemon failed: {exc}")
            call.done.set()

    def _refuse_main_thread_calls(self) -> None:
        while True:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                return
            call.error = HyperionError("the daemon is stopping; nothing was changed")
            call.done.set()

    def _control_write(self, message: BlockAddRequest | BlockDelRequest | PolicyApplyRequest) -> ControlReply:
        """block_add / block_del / policy_apply, forwarded by the CLI while this daemon owns the interface."""
        if message["cmd"] == "policy_apply":
            path = Path(message["path"])
            policy, text = read_policy(path)  # validated before it reaches the main thread

            def apply() -> ControlReply:
                generation = self.apply_policy(policy, text)
                log.info("policy applied from %s (hyperion policy apply): generation %d; the next reload "
                         "applies %s again", path, generation, self.options.policy_path)
                return {"generation": generation, "pid": os.getpid()}

            return self._on_main_thread(apply)
        address = ipaddress.ip_address(message["address"])
        if message["cmd"] == "block_add":
            ttl_seconds = message["ttl"]

            def add() -> ControlReply:
                assert self.fastpath is not None
                self.fastpath.block_add(address, ttl_seconds)
                return {"pid": os.getpid()}

            return self._on_main_thread(add)

        def delete() -> ControlReply:
            assert self.fastpath is not None
            return {"removed": self.fastpath.block_delete(address), "pid": os.getpid()}

        return self._on_main_thread(delete)

    def stop(self) -> None:
        self._stopping.set()
        if self._control is not None:
            self._control.close()
            self._control = None
        self._refuse_main_thread_calls()
        if self.slowpath is not None:
            # Fences its queues first, so the fast path takes each class's fallback at once.
            self.slowpath.stop()
            self.slowpath = None
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
        if self._events_out is not None and self._events_out is not sys.stdout:
            self._events_out.close()
        self._events_out = None
        if self.fastpath is None:
            self._release_interface()
            return
        linked = self.fastpath.linked
        self.fastpath.close()
        self.fastpath = None
        if self.options.keep_on_exit and linked:
            log.info("leaving the fast path attached to %s (--keep-on-exit)", self.options.ifname)
        else:
            FastPath.detach(self.options.ifname)
            log.info("detached from %s", self.options.ifname)
        self._release_interface()

    def request_stop(self, signum: int = 0, frame: FrameType | None = None) -> None:
        self._stop_requested = True
        self._wake.set()

    def request_reload(self, signum: int = 0, frame: FrameType | None = None) -> None:
        self._reload_requested = True
        self._wake.set()

    def serve(self) -> None:
        """Runs until SIGTERM/SIGINT; SIGHUP or a changed policy file reloads the policy."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, self.request_reload)
        self.start()
        try:
            next_sweep = time.monotonic() + SWEEP_INTERVAL_SECONDS
            while not self._stop_requested:
                self._wake.wait(ATTACH_CHECK_SECONDS)
                self._wake.clear()
                if self._stop_requested:
                    break
                if self._reload_requested:
                    self._reload_requested = False
                    self.reload()
                self._run_main_thread_calls()
                self._check_attached()
                assert self.fastpath is not None
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + SWEEP_INTERVAL_SECONDS
                    swept = self.fastpath.sweep_expired_blocks()
                    if swept:
                        log.info("removed %d expired dynamic blocks", swept)
        finally:
            self.stop()
