"""`hyperion run`: attach, apply the policy, keep it applied until told to stop.

The daemon owns no packet state: everything lives in pinned maps, so it can
be stopped (with --keep-on-exit) and started again while the fast path keeps
running and its counters continue.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from hyperion.compiler import PolicyCompiler
from hyperion.errors import HyperionError
from hyperion.fastpath import FastPath
from hyperion.policy import Policy, load_policy

log = logging.getLogger("hyperion.daemon")

# How often expired dynamic blocks are swept; the program ignores them anyway.
SWEEP_INTERVAL_SECONDS = 5.0


@dataclass
class DaemonOptions:
    ifname: str
    policy_path: Path
    attach_mode: str = "native"
    keep_on_exit: bool = False
    object_path: Path | None = None


class Daemon:
    def __init__(self, options: DaemonOptions) -> None:
        self.options = options
        self.fastpath: FastPath | None = None
        self._wake = threading.Event()
        self._stop_requested = False
        self._reload_requested = False

    def apply_policy(self, policy: Policy) -> int:
        assert self.fastpath is not None
        compiled = PolicyCompiler(self.fastpath.abi, self.fastpath.capacities()).compile(policy)
        return self.fastpath.apply(compiled)

    def reload(self) -> bool:
        """Validates and applies the policy file again; a bad file leaves the running policy in place."""
        try:
            generation = self.apply_policy(load_policy(self.options.policy_path))
        except HyperionError as exc:
            log.error("reload rejected, running policy kept: %s", exc)
            return False
        log.info("policy reloaded from %s: generation %d", self.options.policy_path, generation)
        return True

    def start(self) -> None:
        """Validates the policy first, then attaches and applies it: a bad policy attaches nothing."""
        policy = load_policy(self.options.policy_path)
        opts = self.options
        self.fastpath = FastPath.attach(opts.ifname, opts.attach_mode, opts.object_path)
        try:
            generation = self.apply_policy(policy)
        except BaseException:
            self.stop_fastpath()
            raise
        log.info("attached to %s (%s), policy generation %d, pins in %s",
                 opts.ifname, opts.attach_mode, generation, self.fastpath.pin_dir)

    def stop_fastpath(self) -> None:
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
        """Runs until SIGTERM/SIGINT; SIGHUP reloads the policy."""
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
            self.stop_fastpath()
