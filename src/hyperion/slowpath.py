"""The AF_XDP slow path: one socket and worker thread per RX queue.

The per-packet loop is native (hyperion._slowpath): each worker thread calls
Queue.run(), which releases the GIL and processes batches until stopped.
This module compiles the policy's slow_path section into a Rules object,
sets up the delivery device, starts and stops the workers in a safe order,
and turns their counters and events into telemetry.

Delivery: packets that pass inspection are written to a TUN device owned by
Hyperion, so the local stack receives them as if they had come off the wire
and hands them to the listening service; its replies leave normally. The TUN
device gets loose reverse-path filtering (rp_filter=2), since the sources it
delivers are routed through the real interface.
"""

from __future__ import annotations

import ctypes
import datetime
import fcntl
import json
import logging
import os
import re
import socket
import struct
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any

from hyperion import _slowpath
from hyperion.errors import HyperionError, PolicyError
from hyperion.fastpath import FastPath
from hyperion.policy import Policy

log = logging.getLogger("hyperion.slowpath")

ACTIONS = {
    "drop": _slowpath.DROP, "pass": _slowpath.PASS, "alert": _slowpath.ALERT,
    "nxdomain": _slowpath.NXDOMAIN, "refuse": _slowpath.REFUSE, "block_source": _slowpath.BLOCK_SOURCE,
}
ACTION_NAMES = {v: k for k, v in ACTIONS.items()}
# Actions after which the packet does not reach its destination.
STOPPING_ACTIONS = {"drop", "block_source", "nxdomain", "refuse"}
PROTOCOLS = {6: "tcp", 17: "udp"}

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000


class SlowPathError(HyperionError):
    """The slow path could not be set up."""


@dataclass(frozen=True)
class CompiledRules:
    rules: Any                  # _slowpath.Rules
    labels: list[str]           # rule index -> "slow_path.dns_rules[0] match=evil.com action=drop"
    actions: list[str]          # rule index -> action name


def _literal_pattern(literal: str) -> str:
    """A literal as a Hyperscan pattern: every byte escaped, so nothing in it is syntax."""
    return "".join(f"\\x{b:02x}" for b in literal.encode())


def _hyperscan_regex(pattern: str) -> str:
    """Python's (?i) prefix is understood by Hyperscan as well; nothing else is translated."""
    return pattern


def compile_rules(policy: Policy) -> CompiledRules:
    """slow_path -> Rules. Hyperscan refusals become PolicyErrors naming the rule."""
    slow = policy.slow_path
    rules: list[tuple[int, int, float]] = []
    labels: list[str] = []
    actions: list[str] = []
    names: list[tuple[int, int, str]] = []
    dns_regex: list[tuple[int, str]] = []
    for i, rule in enumerate(slow.dns_rules):
        index = len(rules)
        rules.append((ACTIONS[rule.action], rule.qtype or 0, rule.ttl_seconds or 0.0))
        labels.append(f"slow_path.dns_rules[{i}] {rule.describe()}")
        actions.append(rule.action)
        if rule.match is not None:
            if rule.match.startswith("*."):
                names.append((index, _slowpath.SUFFIX, rule.match[2:]))
            else:
                names.append((index, _slowpath.EXACT, rule.match))
        elif rule.regex is not None:
            dns_regex.append((index, _hyperscan_regex(rule.regex)))
    by_class: dict[tuple[int, int], list[tuple[int, str]]] = {}
    for i, sig in enumerate(slow.signatures):
        index = len(rules)
        rules.append((ACTIONS[sig.action], 0, sig.ttl_seconds or 0.0))
        labels.append(f"slow_path.signatures[{i}] {sig.describe()}")
        actions.append(sig.action)
        pattern = _literal_pattern(sig.literal) if sig.literal is not None else _hyperscan_regex(sig.regex or "")
        by_class.setdefault((sig.class_.protocol, sig.class_.port), []).append((index, pattern))
    classes = [(protocol, port, patterns) for (protocol, port), patterns in by_class.items()]
    try:
        compiled = _slowpath.Rules(rules, names, dns_regex, classes, ACTIONS[slow.malformed_dns_action])
    except ValueError as exc:
        raise PolicyError(f"slow_path: {_name_failing_rule(str(exc), dns_regex, by_class, labels)}") from None
    return CompiledRules(compiled, labels, actions)


def _name_failing_rule(message: str, dns_regex: list[tuple[int, str]],
                       by_class: dict[tuple[int, int], list[tuple[int, str]]], labels: list[str]) -> str:
    """Hyperscan names the failing pattern by its position in one database; map it to the rule."""
    found = re.match(r"(DNS regex|signatures of (\d+)/(\d+)): pattern (-?\d+): (.*)", message)
    if not found:
        return message
    position = int(found[4])
    patterns = dns_regex if found[2] is None else by_class.get((int(found[2]), int(found[3])), [])
    if 0 <= position < len(patterns):
        return f"{labels[patterns[position][0]]}: Hyperscan cannot compile it: {found[5]}"
    return message


class TunDevice:
    """The device passing packets are written to (IP datagrams, no packet-info header).

    Reverse-path filtering: the sources it delivers are routed through the real
    interface, so the device itself gets rp_filter=0, and a copy of the real
    interface's IPv4 addresses (as /32) because the kernel rejects every source
    on a device without an IPv4 address when the effective mode, the maximum of
    conf.all and the device's, is not 0. With conf.all.rp_filter=1 (strict)
    nothing delivered this way is accepted: use 2 (loose).
    """

    def __init__(self, name: str, mirror_addresses_of: str) -> None:
        self.name = name
        self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.ioctl(self.fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
            _run(["sysctl", "-qw", f"net.ipv4.conf.{name}.rp_filter=0"])
            for address in _ipv4_addresses(mirror_addresses_of):
                _run(["ip", "addr", "add", f"{address}/32", "dev", name, "noprefixroute"])
            _run(["ip", "link", "set", name, "up"])
        except BaseException:
            os.close(self.fd)
            raise
        with open("/proc/sys/net/ipv4/conf/all/rp_filter") as f:
            if f.read().strip() == "1":
                log.warning("net.ipv4.conf.all.rp_filter=1 (strict): packets the slow path passes will be "
                            "dropped by the kernel; set it to 2 (loose)")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # the device goes away with its last fd
            self.fd = -1


def _utc_now() -> str:
    """When the event was taken from the worker (within 200 ms of the packet)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _ipv4_addresses(ifname: str) -> list[str]:
    out = subprocess.run(["ip", "-j", "-4", "addr", "show", "dev", ifname], capture_output=True, text=True)
    if out.returncode:
        raise SlowPathError(f"interface {ifname!r}: {out.stderr.strip()}")
    return [a["local"] for link in json.loads(out.stdout) for a in link.get("addr_info", [])]


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode:
        raise SlowPathError(f"{' '.join(argv)}: {proc.stderr.strip()}")


_SIOCETHTOOL = 0x8946
_ETHTOOL_GCHANNELS = 0x0000003C


def rx_queue_count(ifname: str) -> int:
    """Active RX queues: the driver's channel counts (ETHTOOL_GCHANNELS in this namespace), else
    iproute2's num_rx_queues. sysfs would show another namespace's devices."""
    request = struct.pack("9I", _ETHTOOL_GCHANNELS, *([0] * 8))
    buf = bytearray(request)
    ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(ctypes.c_char.from_buffer(buf)))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            fcntl.ioctl(sock.fileno(), _SIOCETHTOOL, ifreq)
            rx_count, combined_count = struct.unpack_from("9I", buf)[5], struct.unpack_from("9I", buf)[8]
            if rx_count + combined_count:
                return int(rx_count + combined_count)
        except OSError:
            pass
    out = subprocess.run(["ip", "-d", "-j", "link", "show", "dev", ifname], capture_output=True, text=True)
    if out.returncode:
        raise SlowPathError(f"interface {ifname!r}: {out.stderr.strip()}")
    return int(json.loads(out.stdout)[0].get("num_rx_queues", 1))


@dataclass
class Worker:
    queue_id: int
    queue: Any                     # _slowpath.Queue
    thread: threading.Thread
    cpu: int | None = None


@dataclass
class SlowPathOptions:
    queues: list[int] | None = None      # default: every RX queue
    cpus: list[int] | None = None        # worker i pinned to cpus[i % len(cpus)]
    zerocopy: str = "off"                # off | auto | on
    frames: int = 4096
    ring_size: int = 2048
    tun_name: str | None = None


@dataclass
class SlowPath:
    fastpath: FastPath
    ifname: str
    policy: Policy
    options: SlowPathOptions = field(default_factory=SlowPathOptions)
    event_sink: Callable[[dict[str, Any]], None] | None = None
    compiled: CompiledRules | None = None

    def __post_init__(self) -> None:
        self.rules: CompiledRules = self.compiled or compile_rules(self.policy)
        self.workers: list[Worker] = []
        self.tun: TunDevice | None = None
        # Hits of rule sets replaced by reloads, by rule label, so counters never go back.
        self._retired_hits: dict[str, int] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        queues = self.options.queues if self.options.queues is not None else list(range(rx_queue_count(self.ifname)))
        self.tun = TunDevice(self.options.tun_name or f"hyp{os.getpid() % 100000}t{len(self.workers)}",
                             mirror_addresses_of=self.ifname)
        try:
            for position, queue_id in enumerate(queues):
                self._start_worker(queue_id, position)
        except BaseException:
            self.stop()
            raise
        log.info("slow path on %s: %d AF_XDP socket(s), delivery through %s", self.ifname, len(self.workers),
                 self.tun.name)

    def _open_queue(self, queue_id: int, zerocopy: bool) -> Any:
        assert self.tun is not None
        return _slowpath.Queue(
            self.ifname, queue_id, self.fastpath.maps["xsk_map"].fd, self.rules.rules,
            dyn4_fd=self.fastpath.maps["hyp_dyn4"].fd, dyn6_fd=self.fastpath.maps["hyp_dyn6"].fd,
            deliver_fd=self.tun.fd, frames=self.options.frames, ring_size=self.options.ring_size,
            zerocopy=zerocopy, events=self.event_sink is not None,
        )

    def _start_worker(self, queue_id: int, position: int) -> None:
        mode = self.options.zerocopy
        try:
            queue = self._open_queue(queue_id, zerocopy=mode in ("on", "auto"))
        except OSError as exc:
            if mode != "auto":
                raise SlowPathError(str(exc)) from None
            log.info("queue %d: zero-copy unavailable (%s); using copy mode", queue_id, exc.strerror or exc)
            try:
                queue = self._open_queue(queue_id, zerocopy=False)
            except OSError as exc2:
                raise SlowPathError(str(exc2)) from None
        cpu = self.options.cpus[position % len(self.options.cpus)] if self.options.cpus else None
        thread = threading.Thread(target=self._work, args=(queue, cpu), name=f"xsk-q{queue_id}", daemon=True)
        self.workers.append(Worker(queue_id, queue, thread, cpu))
        thread.start()

    @staticmethod
    def _work(queue: Any, cpu: int | None) -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})  # this thread only
        queue.run()

    def update(self, policy: Policy, compiled: CompiledRules | None = None) -> None:
        """Swaps in the rules of a new policy (compiled first: a bad one changes nothing)."""
        compiled = compiled or compile_rules(policy)
        with self._lock:
            self._retire_hits()
            for worker in self.workers:
                worker.queue.set_rules(compiled.rules)
            self.rules, self.policy = compiled, policy

    def _retire_hits(self) -> None:
        for label, hits in zip(self.rules.labels, self.rules.rules.hits(), strict=True):
            self._retired_hits[label] = self._retired_hits.get(label, 0) + hits

    def stop(self) -> None:
        """Ordered teardown: fence the redirect plane (xsk_map entry) first, then stop the
        worker, then close the socket and its UMEM; the TUN device last."""
        for worker in self.workers:
            self.fastpath.maps["xsk_map"].delete(worker.queue_id.to_bytes(4, "little"))
            worker.queue.stop()
        for worker in self.workers:
            worker.thread.join(timeout=5)
            self._drain(worker)
            worker.queue.close()
        self.workers.clear()
        if self.tun is not None:
            self.tun.close()
            self.tun = None

    # ---- telemetry ------------------------------------------------------------------------

    def rule_hits(self) -> dict[str, tuple[str, int]]:
        """rule label -> (action, matches), across reloads."""
        with self._lock:
            return {label: (action, self._retired_hits.get(label, 0) + hits)
                    for label, action, hits in zip(self.rules.labels, self.rules.actions,
                                                   self.rules.rules.hits(), strict=True)}

    def queue_stats(self) -> dict[int, dict[str, Any]]:
        return {worker.queue_id: worker.queue.stats() for worker in self.workers}

    def pump_events(self) -> int:
        """Moves pending worker events to the sink; returns how many."""
        return sum(self._drain(worker) for worker in self.workers)

    def _drain(self, worker: Worker) -> int:
        if self.event_sink is None:
            return 0
        events = worker.queue.drain_events()
        for rule, action, malformed, version, protocol, sport, dport, qtype, saddr, daddr, qname in events:
            self.event_sink({
                "time": _utc_now(), "source": "slowpath", "queue": worker.queue_id,
                "action": ACTION_NAMES.get(action, str(action)),
                "reason": "malformed_dns" if malformed else "rule",
                "rule": self.rules.labels[rule] if rule is not None and rule < len(self.rules.labels) else None,
                "src": str(ip_address(saddr)) if version else None, "dst": str(ip_address(daddr)) if version else None,
                "protocol": PROTOCOLS.get(protocol, protocol), "src_port": sport, "dst_port": dport,
                "qname": qname or None, "qtype": qtype or None,
            })
        return len(events)
