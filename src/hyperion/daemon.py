"""`hyperion run`: attach, apply the policy, keep it applied until told to stop.

The daemon owns no packet state: everything lives in pinned maps, so it can
be stopped (with --keep-on-exit) and started again while the fast path keeps
running and its counters continue. Around that it serves /metrics, writes
drop events as JSON lines, and reloads the policy on SIGHUP or when the file
changes (inotify, including the Kubernetes ConfigMap symlink swap).

Threads: the main thread owns every change to the fast path (apply, sweep);
the watcher, event and HTTP threads only read or ask the main thread to act.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from hyperion.abi import load_abi
from hyperion.compiler import CompiledPolicy, PolicyCompiler, fast_path_rule_name
from hyperion.control import ControlServer, socket_path
from hyperion.errors import HyperionError
from hyperion.events import EventDecoder, EventReader, json_lines_sink
from hyperion.fastpath import FastPath, object_capacities
from hyperion.metrics import FastPathCollector, ReloadStats, serve_metrics
from hyperion.policy import Policy, read_policy
from hyperion.slowpath import CompiledRules, SlowPath, SlowPathOptions, compile_rules
from hyperion.watch import PolicyWatcher

log = logging.getLogger("hyperion.daemon")

# How often expired dynamic blocks are swept; the program ignores them anyway.
SWEEP_INTERVAL_SECONDS = 5.0
DEFAULT_METRICS_ADDR = "127.0.0.1:2112"
DEFAULT_EVENTS_PER_SEC = 200


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
    attach_mode: str = "native"
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
        self._metrics_server: Any = None
        self._events_out: IO[str] | None = None
        self._event_sink: Callable[[dict[str, Any]], None] | None = None
        self.slowpath: SlowPath | None = None
        self._control: ControlServer | None = None

    # ---- policy -------------------------------------------------------------------------

    def apply_policy(self, policy: Policy, text: str, compiled: CompiledPolicy | None = None,
                     rules: CompiledRules | None = None) -> int:
        """Fast path and slow path switch to a new policy; everything is compiled before either changes.

        Sockets come up before the fast path starts redirecting to them, and go away only
        after it has stopped, so no class takes its fallback because of the daemon itself.
        """
        assert self.fastpath is not None
        if compiled is None:
            compiled = PolicyCompiler(self.fastpath.abi, self.fastpath.capacities()).compile(policy)
        if rules is None and self._wants_slowpath(policy):
            rules = compile_rules(policy)
        if rules is not None and self.slowpath is None:
            self.slowpath = SlowPath(self.fastpath, self.options.ifname, policy, self.options.slowpath_options,
                                     event_sink=self._event_sink, compiled=rules)
            self.slowpath.start()
        elif rules is not None and self.slowpath is not None:
            self.slowpath.update(policy, rules)
        generation = self.fastpath.apply(compiled)
        if rules is None and self.slowpath is not None:
            self.slowpath.stop()
            self.slowpath = None
        self.policy = policy
        self.fastpath.record_applied_policy(text)
        return generation

    def _wants_slowpath(self, policy: Policy) -> bool:
        return self.options.slowpath and bool(policy.fast_path.redirect_ports)

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
        """Validates the policy first, then attaches and applies it: a bad policy attaches nothing."""
        opts = self.options
        policy, text = read_policy(opts.policy_path)
        # Compiled (capacities checked) before attaching: a policy that cannot be applied
        # must not disturb a fast path left running by an earlier daemon.
        abi = load_abi(opts.object_path)
        compiled = PolicyCompiler(abi, object_capacities(abi.object_path)).compile(policy)
        # A slow-path rule Hyperscan refuses must not attach anything either.
        rules = compile_rules(policy) if self._wants_slowpath(policy) else None
        self.fastpath = FastPath.attach(opts.ifname, opts.attach_mode, opts.object_path)
        try:
            if opts.events_path:
                self._events_out = sys.stdout if opts.events_path == "-" else open_events_file(opts.events_path)
                self._event_sink = json_lines_sink(self._events_out)
            if opts.privilege_drop is not None:  # from here on only what hyperion.privileges keeps
                opts.privilege_drop()
            generation = self.apply_policy(policy, text, compiled, rules)
            self.fastpath.set_event_rate(opts.events_per_sec if opts.events_path else 0)
            if opts.metrics_addr:
                collector = FastPathCollector(self.fastpath, self.reloads, slowpath=lambda: self.slowpath)
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

    def control(self, message: dict[str, Any]) -> dict[str, Any]:
        """A control-socket request (hyperion.control): queue status and queue actions."""
        slowpath = self.slowpath
        command = message.get("cmd")
        if command == "queues":
            return {"queues": slowpath.queue_status() if slowpath is not None else [],
                    "slowpath": slowpath is not None}
        if command in ("restart", "withdraw", "restore"):
            if slowpath is None:
                raise HyperionError("no slow path is running (the policy has no redirect_ports, or --no-slowpath)")
            queue = message.get("queue")
            return slowpath.request(command, None if queue is None else int(queue))
        raise HyperionError(f"unknown control command {command!r}")

    def stop(self) -> None:
        self._stopping.set()
        if self._control is not None:
            self._control.close()
            self._control = None
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
            return
        self.fastpath.close()
        self.fastpath = None
        if self.options.keep_on_exit:
            log.info("leaving the fast path attached to %s (--keep-on-exit)", self.options.ifname)
        else:
            FastPath.detach(self.options.ifname)
            log.info("detached from %s", self.options.ifname)

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
            while not self._stop_requested:
                self._wake.wait(SWEEP_INTERVAL_SECONDS)
                self._wake.clear()
                if self._stop_requested:
                    break
                if self._reload_requested:
                    self._reload_requested = False
                    self.reload()
                assert self.fastpath is not None
                swept = self.fastpath.sweep_expired_blocks()
                if swept:
                    log.info("removed %d expired dynamic blocks", swept)
        finally:
            self.stop()
