"""One AF_XDP worker process: `python -m hyperion.slowpath.worker`, started by the slow path's supervisor.

A worker is a process of its own, not a thread of the daemon, so that a crash, a
hang or a stop signal hits one queue and the supervisor can see it, fence the
queue and start a fresh worker, socket and UMEM in its place.

Channels with the supervisor:
- file descriptors it passes: xsk_map, the dynamic blocklists, hyp_dns_tcp (XDP's hand-off of
  TCP DNS connections, protocol.WORKER_MAP_FDS), the TUN device,
  and a shared control block (memfd) whose heartbeat word the native loop
  writes every iteration, so the watchdog sees a stalled loop, not just a
  stalled process;
- stdin: JSON commands, one per line (protocol.Command: rules, register, stop); end of
  file (the supervisor died) stops the worker;
- rule sets, which can be megabytes: never through a pipe (a worker that stops
  reading would block its writer). The supervisor compiles once and writes the
  spec and the serialized Hyperscan databases into a sealed memfd
  (encode_rules). The first one is passed at start (--rules-memfd); later ones
  arrive over a unix seqpacket socket (--rules-socket), one datagram each, a
  tiny JSON (protocol.RulesOffer) carrying the memfd as SCM_RIGHTS;
- stdout: JSON messages (protocol.WorkerMessage), one per line: "ready", then a
  "report" (stats, rule hits, events) every REPORT_INTERVAL, "retired" with the
  final hits of a replaced rule set, and "rules_applied" with the generation now in force.
SIGTERM stops the loop and closes the socket before exiting.
"""

from __future__ import annotations

import argparse
import mmap
import os
import signal
import socket
import sys
import threading
from types import FrameType
from typing import IO, Any

from hyperion import _slowpath
from hyperion.slowpath.protocol import (
    CONTROL_BYTES,
    OPTIONAL_WORKER_MAPS,
    REPORT_INTERVAL,
    RULES_MESSAGE_MAX,
    WORKER_MAP_FDS,
    Command,
    Error,
    Event,
    Exiting,
    ProtocolError,
    Ready,
    RegisterCommand,
    Registered,
    Report,
    Retired,
    RulesApplied,
    RulesCommand,
    RulesOffer,
    StopCommand,
    WorkerMessage,
    decode_command,
    encode_message,
    read_rules_memfd,
)


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
        self._rules_lock = threading.Lock()  # rules from stdin and from the rules socket, one at a time

    def send(self, message: WorkerMessage) -> None:
        with self._out_lock:
            self.out.write(encode_message(message))
            self.out.flush()

    @staticmethod
    def compile(command: RulesCommand) -> Any:
        """The supervisor validated and compiled the policy once; this only builds the native
        rule set from its spec and, when the command carries them, the supervisor's serialized
        databases (then Hyperscan compiles nothing here)."""
        return command.spec.build(command.databases)

    def open_queue(self, rules: Any, zerocopy: bool) -> Any:
        a = self.args
        return _slowpath.Queue(a.ifname, a.queue, a.xsk_map_fd, rules, dyn4_fd=a.dyn4_fd, dyn6_fd=a.dyn6_fd,
                               deliver_fd=a.deliver_fd, deliver_frames=a.deliver_frames, frames=a.frames,
                               ring_size=a.ring_size, zerocopy=zerocopy,
                               events=a.events, control=self.control, dns_tcp_fd=a.dns_tcp_fd)

    def start(self, first: RulesCommand) -> None:
        self.rules = self.compile(first)
        self.generation = first.generation
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
        # compiles: Hyperscan compiles this process did (0: it took the supervisor's databases).
        self.send(Ready(zerocopy, self.generation, _slowpath.compile_count()))

    def handle(self, command: Command) -> None:
        if isinstance(command, RulesCommand):
            rules = self.compile(command)
            with self._rules_lock:
                old, old_generation = self.rules, self.generation
                self.queue.set_rules(rules)
                self.rules, self.generation = rules, command.generation
                # After set_rules no batch uses the old set: its hits are final.
                self.send(Retired(old_generation, old.matched()))
                self.send(RulesApplied(self.generation))
        elif isinstance(command, RegisterCommand):
            self.queue.register()
            self.send(Registered())
        elif isinstance(command, StopCommand):
            self.stop()

    def stop(self, signum: int = 0, frame: FrameType | None = None) -> None:
        if signum and not self.stopping.is_set():
            # Before the socket closes (which removes its xsk_map entry): the supervisor then
            # knows why redirects start failing.
            self.send(Exiting(signal.Signals(signum).name))
        self.stopping.set()
        if self.queue is not None:
            self.queue.stop()

    def report(self) -> None:
        events = self.queue.drain_events() if self.args.events else []
        # Under the rules lock: a generation's hits go out with its number, and never after its
        # "retired" message (the supervisor would count them twice).
        with self._rules_lock:
            self.send(Report(self.generation, self.queue.stats(), self.rules.matched(),
                             [Event.from_native(e) for e in events]))

    def reporter(self) -> None:
        while not self.stopping.wait(REPORT_INTERVAL):
            self.report()

    def rules_channel(self, sock: socket.socket) -> None:
        """Rule sets from the supervisor: a small JSON datagram with the sealed memfd attached."""
        while not self.stopping.is_set():
            try:
                data, fds, _flags, _addr = socket.recv_fds(sock, RULES_MESSAGE_MAX, 1)
            except OSError:
                return
            if not data:
                return  # the supervisor closed its end
            try:
                offer = RulesOffer.decode(data)
                if not fds:
                    raise ProtocolError("rules message without its memfd")
                command = read_rules_memfd(fds.pop(0))
                if command.generation != offer.generation:
                    raise ProtocolError(f"memfd holds generation {command.generation}, "
                                        f"message says {offer.generation}")
                self.handle(command)
            except Exception as exc:  # reported; no acknowledgement, so the supervisor replaces this worker
                self.send(Error(f"rules: {type(exc).__name__}: {exc}"))
            finally:
                for fd in fds:
                    os.close(fd)

    def commands(self, stdin: IO[str]) -> None:
        for line in stdin:
            try:
                self.handle(decode_command(line))
            except Exception as exc:  # a bad command is reported, the loop keeps running
                self.send(Error(f"{type(exc).__name__}: {exc}"))
        self.stop()  # end of file: the supervisor is gone


def confine(args: argparse.Namespace) -> None:
    """Drops to --run-as with no capabilities, no_new_privs and the seccomp allowlist
    (hyperion.slowpath.confinement.confine_worker); without --run-as the worker keeps what it inherited."""
    if args.run_as is None:
        return
    from hyperion.slowpath.confinement import confine_worker

    uid, _, gid = args.run_as.partition(":")
    confine_worker(int(uid), int(gid))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hyperion.slowpath.worker")
    parser.add_argument("--ifname", required=True)
    parser.add_argument("--queue", type=int, required=True)
    for name, map_name in WORKER_MAP_FDS.items():
        if map_name in OPTIONAL_WORKER_MAPS:
            parser.add_argument(f"--{name}", type=int, default=-1)
        else:
            parser.add_argument(f"--{name}", type=int, required=True)
    for name in ("deliver-fd", "control-fd"):
        parser.add_argument(f"--{name}", type=int, required=True)
    parser.add_argument("--frames", type=int, default=4096)
    parser.add_argument("--ring-size", type=int, default=2048)
    parser.add_argument("--zerocopy", choices=("off", "auto", "on"), default="off")
    parser.add_argument("--events", action="store_true")
    parser.add_argument("--deliver-frames", action="store_true",
                        help="deliver-fd takes whole frames (re-entry through the interface), not IP datagrams")
    parser.add_argument("--cpu", type=int)
    parser.add_argument("--rules-memfd", type=int, help="sealed memfd with the first rule set (else: stdin)")
    parser.add_argument("--rules-socket", type=int, help="seqpacket socket later rule sets arrive on")
    parser.add_argument("--run-as", metavar="UID:GID", help="confine the worker once its socket is bound")
    args = parser.parse_args(argv)

    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    worker = Worker(args, sys.stdout)
    signal.signal(signal.SIGTERM, worker.stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides (Ctrl-C reaches the process group)
    try:
        if args.rules_memfd is not None:
            first_command = read_rules_memfd(args.rules_memfd)
        else:
            first = sys.stdin.readline()
            if not first:
                return 0
            command = decode_command(first)
            if not isinstance(command, RulesCommand):
                raise ProtocolError(f"the first command must be rules, not {command.type.value}")
            first_command = command
        # Made before the worker confines itself: wrapping a descriptor asks the kernel for its family
        # (getsockname), which the seccomp allowlist refuses.
        channel = socket.socket(fileno=args.rules_socket) if args.rules_socket is not None else None
        worker.start(first_command)
    except Exception as exc:
        worker.send(Error(f"{type(exc).__name__}: {exc}", fatal=True))
        return 1
    loop = threading.Thread(target=worker.queue.run, name="xsk-loop", daemon=True)
    loop.start()
    threading.Thread(target=worker.commands, args=(sys.stdin,), name="commands", daemon=True).start()
    if channel is not None:
        threading.Thread(target=worker.rules_channel, args=(channel,), name="rules", daemon=True).start()
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
