"""Drop events: read the fast path's ring buffer (libbpf ring_buffer) and write JSON lines.

The kernel samples (a per-CPU budget per second, see lib/events.h), so a flood
reaches user space as a trickle; what the budget or a full ring refused is
counted in hyp_event_state and exported as hyperion_events_total.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import socket
import time
from collections.abc import Callable, Mapping
from typing import IO, TypedDict

from hyperion.kernel import libbpf
from hyperion.kernel.abi import Abi
from hyperion.protocols import PORT_PROTOCOLS, PROTOCOL_NAMES, IpProtocol

# Named in events: the protocols the XDP parser decodes; any other is reported by its number.
PROTOCOLS = {p: PROTOCOL_NAMES[p] for p in (IpProtocol.ICMP, IpProtocol.TCP, IpProtocol.UDP, IpProtocol.ICMPV6)}
_SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)

# Names a rule from (reason, rule id); returns None when it cannot.
RuleNamer = Callable[[str, int], str | None]


class EventRecord(TypedDict):
    """One decoded struct hyp_event, JSON-ready; `run --events` writes its keys in this order."""
    time: str  # wall clock, RFC 3339 UTC with microseconds
    ifindex: int
    interface: str | None  # None: no such interface any more
    queue: int  # RX queue
    verdict: str  # the ABI's verdict name (the number as text when unknown)
    reason: str  # the ABI's reason name (likewise)
    src: str | None  # None when not IP
    dst: str | None
    protocol: str | int | None  # a name when known, else the IP protocol number; None when not IP
    src_port: int | None  # TCP and UDP only
    dst_port: int | None
    length: int  # the packet's length
    rule_id: int
    rule: str | None  # the rule's name when the policy can tell


# Where records go; takes any JSON-ready record (the slow path's events share it).
RecordSink = Callable[[Mapping[str, object]], None]


def _boottime_offset_ns() -> int:
    """CLOCK_REALTIME - CLOCK_BOOTTIME, to turn event timestamps into wall-clock time."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def _address(raw: bytes, version: int) -> str | None:
    if version == 4:
        return str(ipaddress.IPv4Address(raw[:4]))
    if version == 6:
        return str(ipaddress.IPv6Address(raw[:16]))
    return None


def _interface_name(ifindex: int) -> str | None:
    try:
        return socket.if_indextoname(ifindex)
    except OSError:
        return None


class EventDecoder:
    """Turns raw struct hyp_event bytes into an EventRecord."""

    def __init__(self, abi: Abi, rule_namer: RuleNamer | None = None) -> None:
        self.abi = abi
        self.rule_namer = rule_namer
        self.size = ctypes.sizeof(abi.Event)
        self._offset_ns = _boottime_offset_ns()

    def decode(self, raw: bytes) -> EventRecord:
        event = self.abi.Event.from_buffer_copy(raw[: self.size])
        reason = self.abi.reasons.get(event.reason, str(event.reason))
        wall_ns = event.timestamp_ns + self._offset_ns
        record: EventRecord = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall_ns // 1_000_000_000))
            + f".{wall_ns % 1_000_000_000 // 1000:06d}Z",
            "ifindex": event.ifindex,
            "interface": _interface_name(event.ifindex),
            "queue": event.rx_queue,
            "verdict": self.abi.verdicts.get(event.verdict, str(event.verdict)),
            "reason": reason,
            "src": _address(bytes(event.saddr), event.ip_version),
            "dst": _address(bytes(event.daddr), event.ip_version),
            "protocol": PROTOCOLS.get(event.protocol, event.protocol) if event.ip_version else None,
            "src_port": event.src_port if event.protocol in PORT_PROTOCOLS else None,
            "dst_port": event.dst_port if event.protocol in PORT_PROTOCOLS else None,
            "length": event.pkt_len,
            "rule_id": event.rule_id,
            "rule": self.rule_namer(reason, event.rule_id) if self.rule_namer and event.rule_id else None,
        }
        return record


class EventReader:
    """Consumes the hyp_events ring buffer; each event goes to `sink` as an EventRecord."""

    def __init__(self, ring_fd: int, decoder: EventDecoder, sink: Callable[[EventRecord], None]) -> None:
        self.decoder = decoder
        self.sink = sink
        self._callback = _SAMPLE_FN(self._on_sample)  # kept referenced for libbpf's lifetime
        self._handle = libbpf.check_ptr(libbpf.lib().ring_buffer__new(ring_fd, self._callback, None, None),
                                        "ring_buffer__new for hyp_events")
        self.received = 0

    def _on_sample(self, ctx: int | None, data: int | None, size: int) -> int:
        if data:
            self.received += 1
            self.sink(self.decoder.decode(ctypes.string_at(data, size)))
        return 0

    def poll(self, timeout_ms: int) -> int:
        """Delivers waiting events (blocking up to timeout_ms); returns how many."""
        rc = libbpf.lib().ring_buffer__poll(self._handle, timeout_ms)
        if rc < 0 and -rc != 4:  # EINTR: a signal arrived, the caller's loop goes on
            libbpf.check(rc, "ring_buffer__poll")
        return max(int(rc), 0)

    def close(self) -> None:
        if self._handle:
            libbpf.lib().ring_buffer__free(self._handle)
            self._handle = 0


def json_lines_sink(stream: IO[str]) -> RecordSink:
    def write(record: Mapping[str, object]) -> None:
        stream.write(json.dumps(record, separators=(",", ":")) + "\n")
        stream.flush()

    return write
