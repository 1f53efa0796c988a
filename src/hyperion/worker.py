"""One AF_XDP worker process: `python -m hyperion.worker`, started by the slow path's supervisor.

A worker is a process of its own, not a thread of the daemon, so that a crash, a
hang or a stop signal hits one queue and the supervisor can see it, fence the
queue and start a fresh worker, socket and UMEM in its place.

Channels with the supervisor:
- file descriptors it passes: xsk_map, the dynamic blocklists, the TUN device,
  and a shared control block (memfd) whose heartbeat word the native loop
  writes every iteration, so the watchdog sees a stalled loop, not just a
  stalled process;
- stdin: JSON commands, one per line ({"cmd": "rules", "spec": ...}, {"cmd": "register"},
  {"cmd": "stop"}); end of file (the supervisor died) stops the worker;
- stdout: JSON messages, one per line: "ready", then a "report" (stats, rule
  hits, events) every REPORT_INTERVAL, and "retired" with the final hits of a
  replaced rule set.
SIGTERM stops the loop and closes the socket before exiting.
"""

from __future__ import annotations

import argparse
import json
import mmap
import signal
import sys
import threading
from types import FrameType
from typing import IO, Any

from hyperion import _slowpath

REPORT_INTERVAL = 0.1
CONTROL_BYTES = 4096
CONTROL_HEARTBEAT, CONTROL_FLAGS, CONTROL_LOOPS = 0, 1, 2
FLAG_STARVE_FILL = 1


class Worker:
    def __init__(self, args: argparse.Namespace, out: IO[str]) -> None:
        self.args = args
        self.out = out
        self._out_lock = threading.Lock()
        self.control = mmap.mmap(args.control_fd, CONTROL_BYTES)
        self.generation = 0
        self.rules: Any = None
        self.queue: Any = None
        self.stopping = threading.Event()

    def send(self, message: dict[str, Any]) -> None:
        with self._out_lock:
            self.out.write(json.dumps(message, separators=(",", ":")) + "\n")
            self.out.flush()

    @staticmethod
    def compile(command: dict[str, Any]) -> Any:
        """The supervisor validated and compiled the policy once; this only builds the native
        rule set from its arguments (tuples arrive as JSON lists)."""
        rules, names, dns_regex, classes, malformed_action = command["spec"]
        return _slowpath.Rules([tuple(r) for r in rules], [tuple(n) for n in names],
                               [tuple(d) for d in dns_regex],
                               [(p, port, [tuple(x) for x in pats]) for p, port, pats in classes], malformed_action)

    def open_queue(self, rules: Any, zerocopy: bool) -> Any:
        a = self.args
        return _slowpath.Queue(a.ifname, a.queue, a.xsk_map_fd, rules, dyn4_fd=a.dyn4_fd, dyn6_fd=a.dyn6_fd,
                               deliver_fd=a.deliver_fd, frames=a.frames, ring_size=a.ring_size, zerocopy=zerocopy,
                               events=a.events, control=self.control)

    def start(self, first: dict[str, Any]) -> None:
        self.rules = self.compile(first)
        self.generation = first["generation"]
        mode = self.args.zerocopy
        try:
            self.queue = self.open_queue(self.rules, zerocopy=mode in ("on", "auto"))
            zerocopy = mode != "off"
        except OSError:
            if mode != "auto":
                raise
            self.queue = self.open_queue(self.rules, zerocopy=False)
            zerocopy = False
        confine(self.args)  # bound and in xsk_map: nothing privileged is left to do
        self.send({"type": "ready", "zerocopy": zerocopy, "generation": self.generation})

    def handle(self, command: dict[str, Any]) -> None:
        if command["cmd"] == "rules":
            rules = self.compile(command)
            old, old_generation = self.rules, self.generation
            self.queue.set_rules(rules)
            self.rules, self.generation = rules, command["generation"]
            # After set_rules no batch uses the old set: its hits are final.
            self.send({"type": "retired", "generation": old_generation, "hits": old.hits()})
        elif command["cmd"] == "register":
            self.queue.register()
            self.send({"type": "registered"})
        elif command["cmd"] == "stop":
            self.stop()

    def stop(self, signum: int = 0, frame: FrameType | None = None) -> None:
        if signum and not self.stopping.is_set():
            # Before the socket closes (which removes its xsk_map entry): the supervisor then
            # knows why redirects start failing.
            self.send({"type": "exiting", "signal": signal.Signals(signum).name})
        self.stopping.set()
        if self.queue is not None:
            self.queue.stop()

    def starve(self, signum: int = 0, frame: FrameType | None = None) -> None:
        """Fault injection (SIGUSR1, only with --fault-injection): toggles refilling the fill ring."""
        flags = int.from_bytes(self.control[8:16], "little") ^ FLAG_STARVE_FILL
        self.control[8:16] = flags.to_bytes(8, "little")

    def report(self) -> None:
        events = self.queue.drain_events() if self.args.events else []
        self.send({
            "type": "report", "generation": self.generation, "stats": self.queue.stats(),
            "hits": self.rules.hits(),
            "events": [[*e[:8], e[8].hex(), e[9].hex(), e[10]] for e in events],
        })

    def reporter(self) -> None:
        while not self.stopping.wait(REPORT_INTERVAL):
            self.report()

    def commands(self, stdin: IO[str]) -> None:
        for line in stdin:
            try:
                self.handle(json.loads(line))
            except Exception as exc:  # a bad command is reported, the loop keeps running
                self.send({"type": "error", "message": f"{type(exc).__name__}: {exc}"})
        self.stop()  # end of file: the supervisor is gone


def confine(args: argparse.Namespace) -> None:
    """Drops to --run-as with no capabilities, no_new_privs and the seccomp allowlist
    (hyperion.privileges.confine_worker); without --run-as the worker keeps what it inherited."""
    if args.run_as is None:
        return
    from hyperion.privileges import confine_worker

    uid, _, gid = args.run_as.partition(":")
    confine_worker(int(uid), int(gid))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hyperion.worker")
    parser.add_argument("--ifname", required=True)
    parser.add_argument("--queue", type=int, required=True)
    for name in ("xsk-map-fd", "dyn4-fd", "dyn6-fd", "deliver-fd", "control-fd"):
        parser.add_argument(f"--{name}", type=int, required=True)
    parser.add_argument("--frames", type=int, default=4096)
    parser.add_argument("--ring-size", type=int, default=2048)
    parser.add_argument("--zerocopy", choices=("off", "auto", "on"), default="off")
    parser.add_argument("--events", action="store_true")
    parser.add_argument("--cpu", type=int)
    parser.add_argument("--fault-injection", action="store_true")
    parser.add_argument("--run-as", metavar="UID:GID", help="confine the worker once its socket is bound")
    args = parser.parse_args(argv)

    import os

    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    worker = Worker(args, sys.stdout)
    signal.signal(signal.SIGTERM, worker.stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides (Ctrl-C reaches the process group)
    if args.fault_injection:
        signal.signal(signal.SIGUSR1, worker.starve)
    first = sys.stdin.readline()
    if not first:
        return 0
    try:
        worker.start(json.loads(first))
    except Exception as exc:
        worker.send({"type": "error", "message": f"{type(exc).__name__}: {exc}", "fatal": True})
        return 1
    loop = threading.Thread(target=worker.queue.run, name="xsk-loop", daemon=True)
    loop.start()
    threading.Thread(target=worker.commands, args=(sys.stdin,), name="commands", daemon=True).start()
    threading.Thread(target=worker.reporter, name="reporter", daemon=True).start()
    # The main thread only waits, so that signal handlers run promptly.
    while loop.is_alive():
        loop.join(0.1)
    worker.stopping.set()
    worker.report()  # the final counts
    worker.queue.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
