"""The reference classifier checked against the Linux stack itself (issue 12).

Over a veth with NO XDP program, frames are written onto the client's end (AF_PACKET) and the
host namespace's stack decides. What it delivers is observed exactly:
- a UDP datagram: received by a UDP socket bound on its destination port (the socket reads it,
  so its length and checksum passed the stack's checks);
- an ICMP/ICMPv6 echo request: answered (Icmp OutEchoReps / Icmp6 OutEchoReplies in the host
  namespace's /proc/net/snmp{,6}).
Each item (one frame, or the fragments of one datagram) is followed by a barrier datagram on the
same path, from a sender pinned to one CPU: once the barrier is read, everything the item caused
has happened. Every frame of a delivered item must be classified `pass` by the reference
classifier and by the XDP program with an empty policy (BPF_PROG_TEST_RUN). TCP is not used as
evidence: whether the stack accepted a segment is not observable exactly without a connection.

Frames: the public captures in ../shared/captures, every address rewritten into the
documentation ranges before sending (IPv4 sources into 198.51.100.0/24, IPv6 sources into
2001:db8:ff00::/40, destinations to the host's own address, Ethernet addresses to the link's,
VLAN tags removed since the host has no VLAN device; checksums adjusted incrementally, RFC 1624,
so a correct one stays correct and a wrong one stays wrong). Frames whose headers carry more
addresses (ICMP errors quoting a datagram, IP-in-IP, ND/MLD) are not sent. Then hypothesis
frames: UDP and echo requests with IPv4 options, IPv6 extension-header chains (within the
documented limit of 8), UDP lengths shorter than the payload, zero UDP lengths and checksums,
trailing padding, and fragmentation at any 8-byte boundary in any order.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import itertools
import os
import random
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from hyperion.fastpath.program import FastPath
from hyperion.kernel.testrun import run_xdp
from hyperion.lab.sandbox import CLIENT_V4, HOST_V4, HOST_V6, Sandbox, entered_netns
from hyperion.policy.loading import parse_policy
from hyperion.replay import read_frames
from tests.support.kernel import program_with_policy
from tests.support.paths import CAPTURES
from tests.support.reference_classifier import ReferenceFastPath

pytestmark = [pytest.mark.kernel, pytest.mark.netns]

EMPTY_POLICY = "fast_path: {}\n"
HYPOTHESIS_FRAMES = int(os.environ.get("HYPERION_STACK_FRAMES", "300"))
MAX_CAPTURE_ITEMS = 1500  # per capture: keeps the run under a minute
BARRIER_PORT = 9
UDP, TCP, ICMP, ICMPV6 = 17, 6, 1, 58
V6_EXT = (0, 43, 60, 44)
HOST4 = ipaddress.IPv4Address(HOST_V4).packed
HOST6 = ipaddress.IPv6Address(HOST_V6).packed


# ---- checksums ---------------------------------------------------------------------------

def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def checksum(data: bytes) -> int:
    s = _sum16(data)
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def adjust(old: int, removed: bytes, added: bytes) -> int:
    """RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), for 16-bit-aligned fields."""
    s = (~old & 0xFFFF) + sum(~w & 0xFFFF for w in struct.unpack(f"!{len(removed) // 2}H", removed)) + _sum16(added)
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


# ---- frames: parsing just enough to rewrite and to know what the stack will do with them ----

@dataclass
class Layout:
    version: int
    l3: int                 # offset of the IP header
    protocol: int           # L4 protocol (after IPv6 extension headers)
    l4: int | None          # offset of the L4 header; None in a non-first fragment
    fragment_key: tuple[int, int] | None = None  # (offset of the ID field, its size) when fragmented
    icmp_type: int | None = None


def layout(frame: bytes) -> Layout | None:
    """None for what this test does not send (non-IP, truncated, other protocols)."""
    if len(frame) < 14:
        return None
    ethertype, pos = struct.unpack_from("!H", frame, 12)[0], 14
    if ethertype == 0x0800 and len(frame) >= pos + 20 and frame[pos] >> 4 == 4:
        ihl = (frame[pos] & 0xF) * 4
        if ihl < 20 or len(frame) < pos + ihl:
            return None
        flags_offset = struct.unpack_from("!H", frame, pos + 6)[0]
        fragmented = (flags_offset & 0x3FFF) != 0
        out = Layout(4, pos, frame[pos + 9], None if flags_offset & 0x1FFF else pos + ihl,
                     (pos + 4, 2) if fragmented else None)
    elif ethertype == 0x86DD and len(frame) >= pos + 40 and frame[pos] >> 4 == 6:
        nexthdr, cur, key, nonfirst = frame[pos + 6], pos + 40, None, False
        for _ in range(9):
            if nexthdr not in V6_EXT or cur + 8 > len(frame):
                break
            if nexthdr == 44:
                key, nonfirst = (cur + 4, 4), bool(struct.unpack_from("!H", frame, cur + 2)[0] & 0xFFF8)
                nexthdr, cur = frame[cur], cur + 8
                if nonfirst:
                    break
            else:
                nexthdr, cur = frame[cur], cur + (frame[cur + 1] + 1) * 8
        out = Layout(6, pos, nexthdr, None if nonfirst else cur, key)
    else:
        return None
    if out.protocol not in (UDP, TCP, ICMP, ICMPV6):
        return None  # IP-in-IP, GRE, ESP...: more addresses inside, or nothing to observe
    if out.l4 is not None and out.protocol in (ICMP, ICMPV6):
        if out.l4 >= len(frame):
            return None
        out.icmp_type = frame[out.l4]
        if out.icmp_type not in ((8, 0) if out.protocol == ICMP else (128, 129)):
            return None  # errors quote a datagram's addresses; ND/MLD would configure the host
    return out


def _source_for(original: bytes, version: int) -> bytes:
    h = int.from_bytes(hashlib.sha256(original).digest()[:4], "big")
    if version == 4:
        return ipaddress.IPv4Address(f"198.51.100.{20 + h % 200}").packed
    return (ipaddress.IPv6Address("2001:db8:ff00::") + h).packed


def rewrite(frame: bytes, host_mac: bytes, client_mac: bytes, fragment_id: int | None = None) -> bytes | None:
    """The frame with documentation addresses, the link's MACs, no VLAN tags, checksums adjusted."""
    data = bytearray(frame)
    while len(data) >= 18 and struct.unpack_from("!H", data, 12)[0] in (0x8100, 0x88A8):
        del data[12:16]
    shape = layout(bytes(data))
    if shape is None:
        return None
    data[0:12] = host_mac + client_mac
    p = shape.l3
    if shape.version == 4:
        old = bytes(data[p + 12:p + 20])
        new = _source_for(old[:4], 4) + HOST4
        data[p + 12:p + 20] = new
        removed, added = old, new
        if fragment_id is not None and shape.fragment_key:
            removed, added = removed + bytes(data[p + 4:p + 6]), added + fragment_id.to_bytes(2, "big")
            data[p + 4:p + 6] = fragment_id.to_bytes(2, "big")
        data[p + 10:p + 12] = adjust(struct.unpack_from("!H", data, p + 10)[0], removed, added).to_bytes(2, "big")
    else:
        old = bytes(data[p + 8:p + 40])
        new = _source_for(old[:16], 6) + HOST6
        data[p + 8:p + 40] = new
        if fragment_id is not None and shape.fragment_key:
            at = shape.fragment_key[0]
            data[at:at + 4] = fragment_id.to_bytes(4, "big")
    l4 = shape.l4
    # The pseudo-header's addresses are in the TCP/UDP/ICMPv6 checksum (ICMPv4 has none).
    at = {UDP: 6, TCP: 16, ICMPV6: 2}.get(shape.protocol)
    if l4 is not None and at is not None and l4 + at + 2 <= len(data):
        value = struct.unpack_from("!H", data, l4 + at)[0]
        if not (shape.protocol == UDP and value == 0):  # 0: no checksum (IPv4)
            value = adjust(value, old, new)
            if shape.protocol == UDP and value == 0:
                value = 0xFFFF  # a computed 0 is sent as 0xFFFF: 0 means "no checksum"
            data[l4 + at:l4 + at + 2] = value.to_bytes(2, "big")
    return bytes(data)


def udp_port(frame: bytes) -> int | None:
    shape = layout(frame)
    if shape is None or shape.protocol != UDP or shape.l4 is None or shape.l4 + 4 > len(frame):
        return None
    return int(struct.unpack_from("!H", frame, shape.l4 + 2)[0])


# ---- the host's stack as the judge ----------------------------------------------------------

def _snmp(path: str, names: tuple[str, str]) -> int:
    lines = Path(path).read_text().splitlines()
    if path.endswith("snmp6"):
        return int(dict(line.split() for line in lines)[names[1]])
    for header, values in zip(lines[::2], lines[1::2], strict=True):
        keys, vals = header.split()[1:], values.split()[1:]
        if header.startswith(names[0] + ":"):
            return int(dict(zip(keys, vals, strict=True))[names[1]])
    raise KeyError(names)


@dataclass
class Stack:
    sb: Sandbox
    host_mac: bytes
    client_mac: bytes
    tx: socket.socket
    barrier: socket.socket
    sockets: dict[tuple[int, int], socket.socket] = field(default_factory=dict)
    # 16-bit IDs, fresh for each fragmented item (the captures and hypothesis use < 2,000).
    sequence: int = 0
    next_id: int = 0x4000

    def fresh_id(self) -> int:
        self.next_id = (self.next_id + 1) & 0xFFFF or 1
        return self.next_id

    def _socket(self, version: int, port: int) -> socket.socket | None:
        key = (version, port)
        if key not in self.sockets:
            if len(self.sockets) > 200:  # bounded: the captures use many ports
                for old in self.sockets.values():
                    old.close()
                self.sockets.clear()
            with entered_netns(self.sb.host_ns):
                sock = socket.socket(socket.AF_INET if version == 4 else socket.AF_INET6, socket.SOCK_DGRAM)
            try:
                sock.bind((HOST_V4 if version == 4 else HOST_V6, port))
            except OSError:
                sock.close()
                return None
            sock.setblocking(False)
            self.sockets[key] = sock
        return self.sockets[key]

    def echo_replies(self) -> int:
        with entered_netns(self.sb.host_ns):
            return (_snmp("/proc/thread-self/net/snmp", ("Icmp", "OutEchoReps"))
                    + _snmp("/proc/thread-self/net/snmp6", ("", "Icmp6OutEchoReplies")))

    def delivered(self, frames: list[bytes]) -> bool | None:
        """Sends one item; True if the stack delivered it (a socket read it, or an echo was answered),
        None if it cannot be observed (a UDP port this test already uses)."""
        shape = layout(frames[0])
        assert shape is not None
        port = next((p for p in map(udp_port, frames) if p is not None), None)
        sock = None
        if port is not None:
            if (shape.version, port) == (4, BARRIER_PORT):
                return None
            sock = self._socket(shape.version, port)
            if sock is None:
                return None
        replies = self.echo_replies()
        for frame in frames:
            self.tx.send(frame)
        self.sequence += 1
        marker = self.sequence.to_bytes(4, "big")
        self.tx.send(barrier_frame(self.host_mac, self.client_mac, marker))
        deadline = time.monotonic() + 5
        while True:  # earlier markers may still be queued: read up to this one
            self.barrier.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                if self.barrier.recv(64) == marker:
                    break
            except TimeoutError:
                raise AssertionError(f"barrier {self.sequence} not delivered within 5 s") from None
        got = 0
        if sock is not None:
            with contextlib.suppress(BlockingIOError):
                while True:
                    sock.recv(70000)
                    got += 1
        return got > 0 or self.echo_replies() > replies

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()
        self.tx.close()
        self.barrier.close()


def barrier_frame(host_mac: bytes, client_mac: bytes, marker: bytes) -> bytes:
    udp = struct.pack("!HHHH", 40000, BARRIER_PORT, 8 + len(marker), 0) + marker
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, UDP, 0,
                               ipaddress.IPv4Address(CLIENT_V4).packed, HOST4))
    ip[10:12] = checksum(bytes(ip)).to_bytes(2, "big")
    return host_mac + client_mac + b"\x08\x00" + bytes(ip) + udp


@dataclass
class Judges:
    stack: Stack
    reference: ReferenceFastPath
    fastpath: FastPath
    prog_fd: int
    checked: dict[str, int] = field(default_factory=dict)
    disagreements: list[str] = field(default_factory=list)

    def check(self, label: str, frames: list[bytes]) -> None:
        delivered = self.stack.delivered(frames)
        if delivered is None:
            self.checked["unobservable"] = self.checked.get("unobservable", 0) + 1
            return
        if not delivered:
            self.checked["not delivered"] = self.checked.get("not delivered", 0) + 1
            return
        self.checked["delivered"] = self.checked.get("delivered", 0) + 1
        if len(frames) > 1:
            self.checked["delivered fragmented"] = self.checked.get("delivered fragmented", 0) + 1
        for i, frame in enumerate(frames):
            verdict, reason = self.reference.judge(frame)
            action = run_xdp(self.prog_fd, frame).action
            if verdict != "pass" or action != "pass":
                self.disagreements.append(f"the stack delivered it; reference {verdict}/{reason}, program {action}: "
                                          f"frame {i} of {label[:600]}; {frame.hex()[:400]}")


@pytest.fixture(scope="module")
def judges(kernel: None) -> Iterator[Judges]:
    sb = Sandbox().up()
    try:
        host_mac = bytes.fromhex(sb.mac(sb.host_ns, sb.host_if).replace(":", ""))
        client_mac = bytes.fromhex(sb.mac(sb.client_ns, sb.client_if).replace(":", ""))
        with entered_netns(sb.client_ns):
            tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        tx.bind((sb.client_if, 0))
        with entered_netns(sb.host_ns):
            barrier = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        barrier.bind((HOST_V4, BARRIER_PORT))
        stack = Stack(sb, host_mac, client_mac, tx, barrier)
        # One CPU for every send: the items and their barriers share one backlog queue, in order.
        affinity = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(affinity)})
        try:
            with program_with_policy(EMPTY_POLICY) as (fastpath, prog_fd):
                yield Judges(stack, ReferenceFastPath(parse_policy(EMPTY_POLICY)), fastpath, prog_fd)
        finally:
            os.sched_setaffinity(0, affinity)
            stack.close()
    finally:
        sb.down()


# ---- captures --------------------------------------------------------------------------------

def capture_items(path: Path, host_mac: bytes, client_mac: bytes,
                  fresh_id: Callable[[], int] | None = None) -> Iterator[list[bytes]]:
    """Rewritten frames, one item per whole frame and one per fragmented datagram (in capture order)."""
    groups: dict[bytes, list[bytes]] = {}
    order: list[bytes | list[bytes]] = []
    for frame in read_frames(path):
        shape = layout(frame)
        if shape is None or shape.protocol == TCP or (shape.l4 is None and shape.fragment_key is None):
            continue
        if shape.fragment_key is None:
            out = rewrite(frame, host_mac, client_mac)
            if out is not None and out != b"":
                order.append([out])
            continue
        at, size = shape.fragment_key
        p = shape.l3
        key = frame[p + 8:p + 40] if shape.version == 6 else frame[p + 9:p + 10] + frame[p + 12:p + 20]
        key = bytes([shape.version]) + key + frame[at:at + size]
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(frame)
    count = 0
    for entry in order:
        if count >= MAX_CAPTURE_ITEMS:
            return
        count += 1
        if isinstance(entry, list):
            yield entry
            continue
        # A fragment ID of its own: no two groups (nor a group and an old incomplete one) can merge.
        fragment_id = fresh_id() if fresh_id else random.Random(entry).randrange(1, 0xFFFF)
        rewritten = [rewrite(f, host_mac, client_mac, fragment_id) for f in groups[entry]]
        yield [f for f in rewritten if f is not None]


CAPTURE_FILES = sorted(p.name for p in CAPTURES.glob("*.pcap*")) if CAPTURES.is_dir() else []


@pytest.mark.skipif(not CAPTURES.is_dir(), reason="../shared/captures is not beside the project")
def test_captures_delivered_by_the_stack_pass_reference_and_program(judges: Judges) -> None:
    judges.checked.clear()
    judges.disagreements.clear()
    per_file: dict[str, int] = {}
    for name in CAPTURE_FILES:
        before = judges.checked.get("delivered", 0)
        items = capture_items(CAPTURES / name, judges.stack.host_mac, judges.stack.client_mac, judges.stack.fresh_id)
        for i, item in enumerate(items):
            if item:
                judges.check(f"{name} item {i}", item)
        per_file[name] = judges.checked.get("delivered", 0) - before
    assert not judges.disagreements, "\n".join(judges.disagreements)
    # Not vacuous: the stack delivered DNS, fragmented datagrams (v4 and v6) and echo requests.
    assert per_file["Dns.pcap"] > 0 and per_file["ip-frag.pcap"] > 0 and per_file["ipv6-frag.pcap"] > 0
    assert per_file["IcmpPackets.pcap"] > 0 and per_file["IcmpV6_EchoMessages.pcap"] > 0
    assert judges.checked.get("delivered fragmented", 0) > 0, judges.checked


# ---- hypothesis frames -------------------------------------------------------------------------

@st.composite
def v4_options(draw: st.DrawFn) -> bytes:
    """Options the stack accepts on receipt: NOP, End, Record Route with room, Router Alert, unknown."""
    parts: list[bytes] = []
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["nop", "rr", "ra", "unknown"]))
        if kind == "nop":
            parts.append(b"\x01")
        elif kind == "rr":
            slots = draw(st.integers(1, 3))
            parts.append(bytes([7, 3 + 4 * slots, 4]) + b"\0" * 4 * slots)
        elif kind == "ra":
            parts.append(b"\x94\x04\x00\x00")
        else:
            length = draw(st.integers(2, 6))
            parts.append(bytes([draw(st.sampled_from([0x1E, 0x5E, 0x9E])), length]) + b"z" * (length - 2))
    options = b"".join(parts)
    if len(options) > 40:
        options = b""
    return options + b"\0" * (-len(options) % 4)


@st.composite
def v6_ext_chain(draw: st.DrawFn) -> list[tuple[int, bytes]]:
    """(type, body without next-header) of extension headers before the L4 header: hop-by-hop only
    first, destination options and routing headers with no segments left; at most 7 (a fragment
    header may still be added, within the documented limit of 8)."""
    chain: list[tuple[int, bytes]] = []
    if draw(st.booleans()):
        chain.append((0, _options_body(draw)))
    for _ in range(draw(st.integers(0, 3))):
        if draw(st.booleans()):
            chain.append((60, _options_body(draw)))
        else:
            rtype = draw(st.sampled_from([0, 2, 3, 4, 253]))
            addresses = draw(st.integers(0, 2))
            body = bytes([2 * addresses, rtype, 0]) + b"\0" * 4 + b"\0" * 16 * addresses
            chain.append((43, body))
    return chain


def _options_body(draw: st.DrawFn) -> bytes:
    """Options area of a hop-by-hop/destination header, padded to a multiple of 8 with the length byte."""
    opts = b""
    for _ in range(draw(st.integers(0, 2))):
        length = draw(st.integers(0, 6))
        opts += bytes([draw(st.sampled_from([0x1E, 0x3E])), length]) + b"o" * length
    pad = -(2 + len(opts)) % 8  # next header and length bytes, then the options
    if pad == 1:
        opts += b"\x00"
    elif pad > 1:
        opts += bytes([1, pad - 2]) + b"\0" * (pad - 2)
    return bytes([(2 + len(opts)) // 8 - 1]) + opts


def _header(kind: int, body: bytes, nexthdr: int) -> bytes:
    return bytes([nexthdr]) + body


@dataclass(frozen=True)
class Spec:
    version: int
    echo: bool
    payload: bytes
    udp_len_delta: int       # UDP length = 8 + payload - delta (kernel trims the rest)
    zero_udp_len: bool       # IPv6: length 0, the stack takes the datagram's
    zero_checksum: bool      # IPv4 UDP: no checksum
    options: bytes           # IPv4
    chain: tuple[tuple[int, bytes], ...]  # IPv6
    padding: int             # Ethernet bytes after the datagram
    fragment_at: tuple[int, ...]  # offsets (multiples of 8) into the fragmentable part; () whole
    atomic: bool             # IPv6: a fragment header with offset 0 and M clear
    order_seed: int


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    version = draw(st.sampled_from([4, 6]))
    echo = draw(st.integers(0, 4)) == 0
    payload = draw(st.binary(max_size=64)) + b"p" * draw(st.sampled_from([0, 0, 100, 1500, 3000]))
    length = 8 + len(payload)
    cuts: tuple[int, ...] = ()
    # Fragments fit the 1500-byte MTU (at most 1400 bytes of data each), at most ~20 of them.
    if length > 1400 or (length > 16 and draw(st.booleans())):
        first = draw(st.integers(1, min(175, (length - 1) // 8))) * 8
        step = draw(st.integers(max(1, length // (8 * 20)), 175)) * 8
        cuts = tuple(range(first, length, step))
    return Spec(version, echo, payload, draw(st.sampled_from([0, 0, 0, 1, 7])) if len(payload) > 8 else 0,
                version == 6 and not echo and draw(st.integers(0, 5)) == 0,
                version == 4 and draw(st.booleans()), draw(v4_options()) if version == 4 else b"",
                tuple(draw(v6_ext_chain())) if version == 6 else (), draw(st.sampled_from([0, 0, 3, 20])),
                cuts, version == 6 and not cuts and draw(st.integers(0, 5)) == 0, draw(st.integers(0, 1000)))


SRC4 = ipaddress.IPv4Address("198.51.100.77").packed
SRC6 = ipaddress.IPv6Address("2001:db8:ff00::77").packed


def build(spec: Spec, host_mac: bytes, client_mac: bytes, port: int, ident: int) -> list[bytes]:
    """The frames of one datagram as the spec says (our own fragmenter: any 8-byte boundary)."""
    src, dst = (SRC4, HOST4) if spec.version == 4 else (SRC6, HOST6)
    if spec.echo:
        proto = ICMP if spec.version == 4 else ICMPV6
        l4 = bytearray(bytes([8 if spec.version == 4 else 128, 0, 0, 0]) + struct.pack("!HH", ident, 1) + spec.payload)
        pseudo = b"" if spec.version == 4 else src + dst + struct.pack("!IxxxB", len(l4), ICMPV6)
        l4[2:4] = checksum(pseudo + bytes(l4)).to_bytes(2, "big")
    else:
        proto = UDP
        udp_len = 8 + len(spec.payload) - spec.udp_len_delta
        field_len = 0 if spec.zero_udp_len else udp_len
        l4 = bytearray(struct.pack("!HHHH", 40000, port, field_len, 0) + spec.payload)
        covered = len(l4) if spec.zero_udp_len else udp_len
        pseudo = (src + dst + struct.pack("!xBH", UDP, covered) if spec.version == 4
                  else src + dst + struct.pack("!IxxxB", covered, UDP))
        if not spec.zero_checksum:
            l4[6:8] = (checksum(pseudo + bytes(l4[:covered])) or 0xFFFF).to_bytes(2, "big")
    eth_type = b"\x08\x00" if spec.version == 4 else b"\x86\xdd"
    l2 = host_mac + client_mac + eth_type
    if spec.version == 4:
        return _frames4(spec, l2, src, dst, proto, bytes(l4), ident)
    return _frames6(spec, l2, src, dst, proto, bytes(l4), ident)


def _order(spec: Spec, frames: list[bytes]) -> list[bytes]:
    return random.Random(spec.order_seed).sample(frames, len(frames)) if spec.order_seed % 3 else frames


def _frames4(spec: Spec, l2: bytes, src: bytes, dst: bytes, proto: int, l4: bytes, ident: int) -> list[bytes]:
    bounds = [0, *spec.fragment_at, len(l4)]
    frames = []
    for start, end in itertools.pairwise(bounds):
        more = end < len(l4)
        flags = (0x2000 if more else 0) | (start // 8) | (0x4000 if not spec.fragment_at else 0)
        ihl = 5 + len(spec.options) // 4
        header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + end - start, ident, flags, 64,
                                       proto, 0, src, dst) + spec.options)
        header[10:12] = checksum(bytes(header)).to_bytes(2, "big")
        frames.append(l2 + bytes(header) + l4[start:end] + b"\0" * spec.padding)
    return _order(spec, frames)


def _frames6(spec: Spec, l2: bytes, src: bytes, dst: bytes, proto: int, l4: bytes, ident: int) -> list[bytes]:
    # Hop-by-hop, then routing/destination headers: the unfragmentable part (RFC 8200 4.5).
    types = [t for t, _ in spec.chain]
    fragmented = bool(spec.fragment_at) or spec.atomic
    unfrag = b""
    for i, (_, body) in enumerate(spec.chain):
        nxt = types[i + 1] if i + 1 < len(types) else (44 if fragmented else proto)
        unfrag += _header(types[i], body, nxt)
    first = types[0] if types else (44 if fragmented else proto)
    if not fragmented:
        return [l2 + _ipv6(src, dst, first, unfrag + l4) + b"\0" * spec.padding]
    bounds = [0, *spec.fragment_at, len(l4)]
    frames = []
    for start, end in itertools.pairwise(bounds):
        more = end < len(l4)
        frag = struct.pack("!BBHI", proto, 0, start | int(more), ident)
        frames.append(l2 + _ipv6(src, dst, first, unfrag + frag + l4[start:end]) + b"\0" * spec.padding)
    return _order(spec, frames)


def _ipv6(src: bytes, dst: bytes, nexthdr: int, payload: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), nexthdr, 64, src, dst) + payload


def test_hypothesis_frames_delivered_by_the_stack_pass_reference_and_program(judges: Judges) -> None:
    judges.checked.clear()
    judges.disagreements.clear()
    counter = {"n": 0}

    @seed(20261201)
    @settings(max_examples=HYPOTHESIS_FRAMES, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(spec=specs())
    def explore(spec: Spec) -> None:
        counter["n"] += 1
        frames = build(spec, judges.stack.host_mac, judges.stack.client_mac, 7000, judges.stack.fresh_id())
        judges.check(f"hypothesis {spec}", frames)

    started = time.monotonic()
    explore()
    assert not judges.disagreements, "\n".join(judges.disagreements)
    assert time.monotonic() - started < 60
    # Not vacuous: most generated frames are legal, and the stack delivered fragmented ones.
    assert judges.checked.get("delivered", 0) > HYPOTHESIS_FRAMES // 2, judges.checked
    assert judges.checked.get("delivered fragmented", 0) > 0, judges.checked
