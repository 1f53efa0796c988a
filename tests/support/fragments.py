"""Fragment cases and their policy (judged by the program, the reference and the slow path), and
a client-to-host datagram exchange over the sandbox's veth."""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass

from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from hyperion.lab.sandbox import Sandbox, entered_netns

POLICY = """
fast_path:
  drop_cidrs: ["203.0.113.0/24", "2001:db8:bad::/48"]
  redirect_ports:
    - {protocol: udp, port: 53, on_failure: drop}
slow_path:
  dns_name_rules: slow_path  # the class is redirected whole, as the reference classifier models it
"""

CLEAN4, CLEAN6 = "198.51.100.10", "2001:db8:ff::10"
BLOCKED4, BLOCKED6 = "203.0.113.9", "2001:db8:bad::9"
DST4, DST6 = "192.0.2.1", "2001:db8:1::1"
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
DATAGRAM = 3000  # UDP payload bytes: three fragments at MTU 1500


def frags4(src: str = CLEAN4, dport: int = 9, size: int = DATAGRAM, udp_len: int | None = None) -> list[bytes]:
    """The fragments a 1500-MTU IPv4 stack sends for one UDP datagram (scapy computes the lengths)."""
    pkt = IP(src=src, dst=DST4, id=0x1234) / UDP(sport=40000, dport=dport, len=udp_len) / Raw(b"u" * size)
    return [bytes(ETH / f) for f in fragment(IP(bytes(pkt)), fragsize=1480)]


def frags6(src: str = CLEAN6, dport: int = 9, size: int = DATAGRAM, udp_len: int | None = None) -> list[bytes]:
    pkt = (IPv6(src=src, dst=DST6) / IPv6ExtHdrFragment(id=0x1234)
           / UDP(sport=40000, dport=dport, len=udp_len) / Raw(b"u" * size))
    return [bytes(ETH / f) for f in fragment6(IPv6(bytes(pkt)), 1500)]


def whole(pkt: Packet) -> bytes:
    return bytes(ETH / pkt)


@dataclass(frozen=True)
class Case:
    description: str
    frame: bytes
    verdict: str
    reason: str


CASES = [
    Case("IPv4 first fragment, UDP length of the whole datagram", frags4()[0], "pass", "no_match"),
    Case("IPv6 first fragment, UDP length of the whole datagram", frags6()[0], "pass", "no_match"),
    Case("IPv4 second fragment", frags4()[1], "pass", "fragment"),
    Case("IPv6 last fragment", frags6()[-1], "pass", "fragment"),
    # Classified like any packet: blocklists and redirect classes by port still apply.
    Case("IPv4 first fragment from a blocked source", frags4(BLOCKED4)[0], "drop", "blocklist_cidr"),
    Case("IPv6 first fragment from a blocked source", frags6(BLOCKED6)[0], "drop", "blocklist_cidr"),
    Case("IPv4 first fragment of udp/53 takes the class (no socket: its fallback)", frags4(dport=53)[0],
         "drop", "redirect_failed"),
    Case("IPv6 first fragment of udp/53 takes the class", frags6(dport=53)[0], "drop", "redirect_failed"),
    # A UDP length below the header's 8 bytes is malformed in any fragment (RFC 768).
    Case("IPv4 first fragment, UDP length 7", frags4(udp_len=7)[0], "drop", "bad_udp_length"),
    Case("IPv6 first fragment, UDP length 4", frags6(udp_len=4)[0], "drop", "bad_udp_length"),
    # IPv6 UDP length 0: the rest of the datagram (RFC 2675), which the Linux stack accepts at any
    # size (found by tests/kernel/test_reference_vs_stack.py: program and reference both dropped it).
    Case("IPv6 first fragment, UDP length 0", frags6(udp_len=0)[0], "pass", "no_match"),
    Case("IPv6 UDP length 0", whole(IPv6(src=CLEAN6, dst=DST6) / UDP(dport=9, len=0) / Raw(b"u" * 16)),
         "pass", "no_match"),
    Case("IPv6 udp/53 with UDP length 0 takes the class",
         whole(IPv6(src=CLEAN6, dst=DST6) / UDP(dport=53, len=0) / Raw(b"u" * 16)), "drop", "redirect_failed"),
    # TCP: the options of a first fragment may continue in the next one (RFC 8200 4.5 asks the
    # first fragment for the fixed header only; the stack checks the options after reassembly).
    Case("IPv4 first fragment, TCP options past the fragment",
         whole(IP(src=CLEAN4, dst=DST4, flags="MF", proto=6) / Raw(bytes(TCP(dport=80, dataofs=15))[:24])),
         "pass", "no_match"),
    Case("IPv6 first fragment, TCP options past the fragment",
         whole(IPv6(src=CLEAN6, dst=DST6) / IPv6ExtHdrFragment(offset=0, m=1, nh=6)
               / Raw(bytes(TCP(dport=80, dataofs=15))[:24])), "pass", "no_match"),
    Case("IPv4 first fragment, TCP data offset 4", whole(IP(src=CLEAN4, dst=DST4, flags="MF", proto=6)
                                                        / Raw(bytes(TCP(dport=80, dataofs=4)))),
         "drop", "bad_tcp_offset"),
    Case("IPv4 UDP length 0", whole(IP(src=CLEAN4, dst=DST4) / UDP(dport=9, len=0) / Raw(b"u" * 16)),
         "drop", "bad_udp_length"),
    # The whole datagram is still bounded by its IP length.
    Case("IPv4 unfragmented, UDP length beyond the datagram",
         whole(IP(src=CLEAN4, dst=DST4) / UDP(dport=9, len=300) / Raw(b"u" * 16)), "drop", "bad_udp_length"),
    Case("IPv6 atomic fragment (offset 0, M=0), UDP length beyond the datagram",
         whole(IPv6(src=CLEAN6, dst=DST6) / IPv6ExtHdrFragment(offset=0, m=0) / UDP(dport=9, len=300)
               / Raw(b"u" * 16)), "drop", "bad_udp_length"),
    Case("IPv4 DF set, offset 0, no MF: unfragmented checks",
         whole(IP(src=CLEAN4, dst=DST4, flags="DF") / UDP(dport=9, len=300) / Raw(b"u" * 16)),
         "drop", "bad_udp_length"),
]


def exchange(sb: Sandbox, family: socket.AddressFamily, src: str, dst: str, payload: bytes | list[bytes],
             count: int, port: int = 0, expect: int | None = None) -> list[bytes]:
    """Sends `count` datagrams (or the list) from the client's stack (plain sendto) to a host-side
    socket; returns what it received: up to `expect` (default: all sent) within a deadline, then
    whatever else is already queued."""
    with entered_netns(sb.host_ns):
        rx = socket.socket(family, socket.SOCK_DGRAM)
    with entered_netns(sb.client_ns):
        tx = socket.socket(family, socket.SOCK_DGRAM)
    with rx, tx:
        rx.bind((dst, port))
        rx.settimeout(0.2)
        tx.bind((src, 0))
        for data in payload if isinstance(payload, list) else [payload] * count:
            tx.sendto(data, (dst, rx.getsockname()[1]))
        got: list[bytes] = []
        deadline = time.monotonic() + 10
        while len(got) < (count if expect is None else expect) and time.monotonic() < deadline:
            try:
                got.append(rx.recv(65535))
            except TimeoutError:
                continue
        rx.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                got.append(rx.recv(65535))
        return got
