"""The XDP program under BPF_PROG_TEST_RUN: a fixture table of (description,
packet, expected XDP action, expected counter) in the style of Katran's tests.

Every case asserts the action and that exactly one counter moved, by exactly
one packet of exactly the frame's length.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw

from hyperion.errors import BpfError
from hyperion.fastpath.program import FastPath
from hyperion.kernel.testrun import run_xdp
from hyperion.policy.compiler import PolicyCompiler
from hyperion.policy.loading import parse_policy
from tests.conftest import program_with_policy

POLICY = """
fast_path:
  allow_cidrs: ["192.0.2.0/28", "203.0.113.7", "2001:db8:1::/48"]
  drop_ips: ["198.51.100.42", "2001:db8:ff::42"]
  drop_cidrs: ["203.0.113.0/24", "2001:db8:bad::/48"]
  redirect_ports:
    - {protocol: udp, port: 53, on_failure: drop}
    - {protocol: tcp, port: 8080, on_failure: pass}
"""

CLEAN4 = "198.51.100.10"   # matches no list
CLEAN6 = "2001:db8:ff::10"
DST4, DST6 = "192.0.2.1", "2001:db8:1::1"
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def v4(src: str = CLEAN4, **kw: object) -> Packet:
    return ETH / IP(src=src, dst=DST4, **kw)


def v6(src: str = CLEAN6, **kw: object) -> Packet:
    return ETH / IPv6(src=src, dst=DST6, **kw)


def raw_bytes(pkt: Packet | bytes) -> bytes:
    return pkt if isinstance(pkt, bytes) else bytes(pkt)


def patch(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new):]


def ipv4_header_byte0(version: int, ihl: int) -> bytes:
    return bytes([(version << 4) | ihl])


def cut(pkt: Packet, length: int) -> bytes:
    return bytes(pkt)[:length]


@dataclass(frozen=True)
class Case:
    description: str
    packet: Packet | bytes
    action: str
    verdict: str
    reason: str


UDP_PAYLOAD = Raw(b"x" * 16)

CASES = [
    # -- non-IP and clean traffic --------------------------------------------------------
    Case("ARP request passes", ETH / ARP(pdst=DST4), "pass", "pass", "non_ip"),
    Case("LLDP frame passes", Ether(dst="01:80:c2:00:00:0e", type=0x88CC) / Raw(b"\x02\x07" + b"\0" * 30),
         "pass", "pass", "non_ip"),
    Case("IPv4 UDP, no rule", v4() / UDP(sport=1234, dport=9) / UDP_PAYLOAD, "pass", "pass", "no_match"),
    Case("IPv4 TCP, no rule", v4() / TCP(dport=80), "pass", "pass", "no_match"),
    Case("IPv4 ICMP echo", v4() / ICMP(), "pass", "pass", "no_match"),
    Case("IPv6 UDP, no rule", v6() / UDP(dport=9) / UDP_PAYLOAD, "pass", "pass", "no_match"),
    Case("ICMPv6 echo", v6() / ICMPv6EchoRequest(), "pass", "pass", "no_match"),
    Case("IPv4 with options (IHL 6)", v4(options=b"\x01\x01\x01\x00") / UDP(dport=9), "pass", "pass", "no_match"),
    Case("Ethernet padding after the datagram",
         raw_bytes(v4() / UDP(dport=9)) + b"\0" * 20, "pass", "pass", "no_match"),
    Case("802.1Q tagged IPv4", ETH / Dot1Q(vlan=10) / IP(src=CLEAN4, dst=DST4) / UDP(dport=9),
         "pass", "pass", "no_match"),
    Case("QinQ (802.1ad + 802.1Q) IPv6",
         ETH / Dot1AD(vlan=100) / Dot1Q(vlan=10) / IPv6(src=CLEAN6, dst=DST6) / UDP(dport=9),
         "pass", "pass", "no_match"),
    Case("TCP 53 is not the udp/53 class", v4() / TCP(dport=53), "pass", "pass", "no_match"),
    # -- malformed: L2 -------------------------------------------------------------------
    Case("three VLAN tags", ETH / Dot1AD(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / IP(src=CLEAN4) / UDP(),
         "drop", "drop", "too_many_vlans"),
    Case("VLAN tag cut short", cut(ETH / Dot1Q(vlan=10) / IP(), 16), "drop", "drop", "truncated_vlan"),
    Case("second VLAN tag cut short", cut(ETH / Dot1AD(vlan=1) / Dot1Q(vlan=2) / IP(), 20),
         "drop", "drop", "truncated_vlan"),
    # -- malformed: IPv4 -----------------------------------------------------------------
    Case("IPv4 header cut short", cut(v4() / UDP(), 14 + 12), "drop", "drop", "truncated_ipv4"),
    Case("IPv4 ethertype, version 6 header", patch(raw_bytes(v4() / UDP()), 14, ipv4_header_byte0(6, 5)),
         "drop", "drop", "bad_ip_version"),
    Case("IPv4 IHL 4", patch(raw_bytes(v4() / UDP()), 14, ipv4_header_byte0(4, 4)), "drop", "drop", "bad_ihl"),
    Case("IPv4 IHL 0", patch(raw_bytes(v4() / UDP()), 14, ipv4_header_byte0(4, 0)), "drop", "drop", "bad_ihl"),
    Case("IPv4 IHL 15 beyond the frame", patch(raw_bytes(v4() / UDP()), 14, ipv4_header_byte0(4, 15)),
         "drop", "drop", "truncated_ipv4"),
    Case("IPv4 total length beyond the frame", v4(len=200) / UDP(dport=9), "drop", "drop", "bad_ip_length"),
    Case("IPv4 total length below the header", v4(len=12) / UDP(dport=9), "drop", "drop", "bad_ip_length"),
    # -- malformed: IPv6 -----------------------------------------------------------------
    Case("IPv6 header cut short", cut(v6() / UDP(), 14 + 30), "drop", "drop", "truncated_ipv6"),
    Case("IPv6 ethertype, version 4 header", patch(raw_bytes(v6() / UDP()), 14, b"\x45"),
         "drop", "drop", "bad_ip_version"),
    Case("IPv6 payload length beyond the frame", v6(plen=500) / UDP(dport=9), "drop", "drop", "bad_ip_length"),
    Case("IPv6 hop-by-hop header cut short", v6(nh=0, plen=1) / Raw(b"\x11"), "drop", "drop",
         "truncated_exthdr"),
    Case("IPv6 destination options longer than the frame",
         v6(nh=60, plen=8) / Raw(bytes([17, 5]) + b"\0" * 6), "drop", "drop", "truncated_exthdr"),
    Case("IPv6 nine extension headers", v6() / (IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt()
         / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt()
         / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt()) / UDP(dport=9), "drop", "drop", "too_many_exthdrs"),
    Case("IPv6 hop-by-hop, routing, dest-opts then UDP",
         v6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt() / UDP(dport=9),
         "pass", "pass", "no_match"),
    # -- malformed: L4 -------------------------------------------------------------------
    Case("TCP header cut short (IP length agrees)", v4(proto=6) / Raw(b"\0" * 10), "drop", "drop",
         "truncated_tcp"),
    Case("TCP data offset 4", v4() / TCP(dport=80, dataofs=4), "drop", "drop", "bad_tcp_offset"),
    Case("TCP data offset 15 beyond the datagram", v4() / TCP(dport=80, dataofs=15), "drop", "drop",
         "truncated_tcp"),
    Case("IPv6 TCP header cut short", v6(nh=6) / Raw(b"\0" * 12), "drop", "drop", "truncated_tcp"),
    Case("UDP header cut short", v4(proto=17) / Raw(b"\0" * 6), "drop", "drop", "truncated_udp"),
    Case("UDP length 4", v4() / UDP(dport=9, len=4), "drop", "drop", "bad_udp_length"),
    Case("UDP length beyond the datagram", v4() / UDP(dport=9, len=300), "drop", "drop", "bad_udp_length"),
    Case("IPv6 UDP length beyond the datagram", v6() / UDP(dport=9, len=300), "drop", "drop", "bad_udp_length"),
    Case("ICMP cut short", v4(proto=1) / Raw(b"\x08"), "drop", "drop", "truncated_icmp"),
    Case("ICMPv6 cut short", v6(nh=58) / Raw(b"\x80\x00"), "drop", "drop", "truncated_icmp"),
    # -- allowlist -----------------------------------------------------------------------
    Case("IPv4 allowlisted source", v4(src="192.0.2.5") / UDP(dport=9), "pass", "pass", "allowlist"),
    Case("IPv6 allowlisted source", v6(src="2001:db8:1:2::5") / UDP(dport=9), "pass", "pass", "allowlist"),
    Case("allowlist beats the CIDR blocklist", v4(src="203.0.113.7") / UDP(dport=9), "pass", "pass",
         "allowlist"),
    Case("allowlisted source skips redirect classes", v4(src="192.0.2.5") / UDP(dport=53), "pass", "pass",
         "allowlist"),
    # -- blocklists ----------------------------------------------------------------------
    Case("IPv4 source in blocked CIDR", v4(src="203.0.113.8") / UDP(dport=9), "drop", "drop",
         "blocklist_cidr"),
    Case("IPv6 source in blocked CIDR", v6(src="2001:db8:bad:1::1") / TCP(dport=22), "drop", "drop",
         "blocklist_cidr"),
    Case("IPv4 blocked exact IP", v4(src="198.51.100.42") / TCP(dport=22), "drop", "drop", "blocklist_ip"),
    Case("IPv6 blocked exact IP", v6(src="2001:db8:ff::42") / UDP(dport=9), "drop", "drop", "blocklist_ip"),
    Case("neighbour of a blocked IP passes", v4(src="198.51.100.43") / TCP(dport=22), "pass", "pass",
         "no_match"),
    Case("VLAN-tagged blocked source", ETH / Dot1Q(vlan=7) / IP(src="198.51.100.42", dst=DST4) / UDP(),
         "drop", "drop", "blocklist_ip"),
    Case("non-first fragment from a blocked source", v4(src="203.0.113.9", frag=100) / Raw(b"x" * 8),
         "drop", "drop", "blocklist_cidr"),
    # -- fragments and redirect classes ------------------------------------------------
    Case("IPv4 non-first fragment", v4(frag=185, proto=17) / Raw(b"x" * 16), "pass", "pass", "fragment"),
    Case("IPv6 non-first fragment", v6() / IPv6ExtHdrFragment(offset=10, nh=17) / Raw(b"x" * 16),
         "pass", "pass", "fragment"),
    Case("IPv4 first fragment of udp/53 (no socket: fail-closed)",
         v4(flags="MF") / UDP(dport=53) / Raw(b"x" * 16), "drop", "drop", "redirect_failed"),
    Case("IPv6 first fragment of udp/53 (no socket: fail-closed)",
         v6() / IPv6ExtHdrFragment(offset=0, m=1) / UDP(dport=53) / Raw(b"x" * 16), "drop", "drop",
         "redirect_failed"),
    Case("udp/53 without an AF_XDP socket: fail-closed", v4() / UDP(dport=53) / Raw(b"q" * 20), "drop",
         "drop", "redirect_failed"),
    Case("IPv6 udp/53 behind hop-by-hop, fail-closed", v6() / IPv6ExtHdrHopByHop() / UDP(dport=53),
         "drop", "drop", "redirect_failed"),
    Case("tcp/8080 without an AF_XDP socket: fail-open", v4() / TCP(dport=8080), "pass", "pass",
         "redirect_failed"),
]


@pytest.fixture(scope="module")
def loaded(kernel: None) -> Iterator[tuple[FastPath, int]]:
    """One program for the module: each case asserts its own counter delta."""
    with program_with_policy(POLICY) as loaded_program:
        yield loaded_program


def counter_delta(before: dict[tuple[str, str], tuple[int, int]],
                  after: dict[tuple[str, str], tuple[int, int]]) -> dict[tuple[str, str], tuple[int, int]]:
    delta = {}
    for key, (packets, total) in after.items():
        old_packets, old_total = before.get(key, (0, 0))
        if packets != old_packets:
            delta[key] = (packets - old_packets, total - old_total)
    return delta


def run_and_count(fastpath: FastPath, prog_fd: int, packet: bytes) -> tuple[str, dict[tuple[str, str],
                                                                                 tuple[int, int]]]:
    before = fastpath.counters()
    result = run_xdp(prog_fd, packet)
    return result.action, counter_delta(before, fastpath.counters())


@pytest.mark.parametrize("case", CASES, ids=[c.description for c in CASES])
def test_fixture(loaded: tuple[FastPath, int], case: Case) -> None:
    fastpath, prog_fd = loaded
    packet = raw_bytes(case.packet)
    action, delta = run_and_count(fastpath, prog_fd, packet)
    assert action == case.action
    assert delta == {(case.verdict, case.reason): (1, len(packet))}


def test_every_reason_has_a_case(abi: object) -> None:
    """The table covers every reason the kernel can produce here; the rest are tested below."""
    from hyperion.kernel.abi import load_abi

    covered = {c.reason for c in CASES}
    tested_elsewhere = {"truncated_eth", "blocklist_dynamic", "no_config", "redirect_class", "queue_fenced",
                        "redirect_oversize", "queue_over_capacity"}  # the last two: tests/test_limits.py
    assert set(load_abi().reasons.values()) - covered == tested_elsewhere


def test_frames_shorter_than_ethernet_are_refused_by_the_kernel(loaded: tuple[FastPath, int]) -> None:
    # truncated_eth cannot be reached through BPF_PROG_TEST_RUN (nor sent on a veth):
    # the kernel refuses frames under 14 bytes before the program runs.
    _, prog_fd = loaded
    with pytest.raises(BpfError, match="Invalid argument"):
        run_xdp(prog_fd, b"\x00" * 10)


def _consistent_cut(pkt: Packet, length: int, l2_len: int) -> bytes:
    """The first `length` bytes, with the IP length fields rewritten to agree with the cut."""
    data = bytearray(bytes(pkt)[:length])
    if length >= l2_len + 20 and data[l2_len] >> 4 == 4:
        data[l2_len + 2:l2_len + 4] = (length - l2_len).to_bytes(2, "big")
        data[l2_len + 10:l2_len + 12] = b"\0\0"  # checksum is not checked by the fast path
    if length >= l2_len + 40 and data[l2_len] >> 4 == 6:
        data[l2_len + 4:l2_len + 6] = (length - l2_len - 40).to_bytes(2, "big")
    return bytes(data)


TRUNCATION_PACKETS = [
    ("vlan-ipv4-tcp", ETH / Dot1Q(vlan=5) / IP(src=CLEAN4, dst=DST4) / TCP(dport=80), 18,
     [(14, "truncated_vlan"), (18, "truncated_ipv4"), (38, "truncated_tcp")]),
    ("ipv4-udp", v4() / UDP(dport=9), 14, [(14, "truncated_ipv4"), (34, "truncated_udp")]),
    ("ipv4-icmp", v4() / ICMP(), 14, [(14, "truncated_ipv4"), (34, "truncated_icmp")]),
    ("ipv6-hbh-udp", v6() / IPv6ExtHdrHopByHop() / UDP(dport=9), 14,
     [(14, "truncated_ipv6"), (54, "truncated_exthdr"), (62, "truncated_udp")]),
    ("ipv6-frag-tcp", v6() / IPv6ExtHdrFragment(offset=0, m=1) / TCP(dport=80), 14,
     [(14, "truncated_ipv6"), (54, "truncated_exthdr"), (62, "truncated_tcp")]),
]


@pytest.mark.parametrize("name,pkt,l2_len,boundaries", TRUNCATION_PACKETS, ids=[t[0] for t in TRUNCATION_PACKETS])
def test_truncation_at_every_offset(loaded: tuple[FastPath, int], name: str, pkt: Packet, l2_len: int,
                                    boundaries: list[tuple[int, str]]) -> None:
    """Cut at every byte from the Ethernet header's end to one byte short of the headers' end."""
    fastpath, prog_fd = loaded
    # ICMP is judged on its first 4 bytes (type, code, checksum); the rest is payload.
    full = l2_len + 24 if name.endswith("icmp") else len(bytes(pkt))
    for length in range(14, full):
        expected = [reason for start, reason in boundaries if length >= start][-1]
        data = _consistent_cut(pkt, length, l2_len)
        action, delta = run_and_count(fastpath, prog_fd, data)
        assert (action, delta) == ("drop", {("drop", expected): (1, length)}), f"cut at {length}"
    action, delta = run_and_count(fastpath, prog_fd, _consistent_cut(pkt, full, l2_len))
    assert (action, delta) == ("pass", {("pass", "no_match"): (1, full)})


def test_dynamic_block_and_expiry(loaded: tuple[FastPath, int]) -> None:
    fastpath, prog_fd = loaded
    pkt4 = raw_bytes(v4(src="198.51.100.77") / TCP(dport=22))
    pkt6 = raw_bytes(v6(src="2001:db8:ff::77") / TCP(dport=22))
    # A TTL a loaded machine cannot outrun before the blocked checks; they are checked to have run
    # before the expiry recorded in the entry, and the expiry itself is waited for.
    fastpath.block_add(ipaddress.ip_address("198.51.100.77"), ttl_seconds=2.0)
    fastpath.block_add(ipaddress.ip_address("2001:db8:ff::77"), ttl_seconds=None)
    assert run_and_count(fastpath, prog_fd, pkt4) == ("drop", {("drop", "blocklist_dynamic"): (1, len(pkt4))})
    assert run_and_count(fastpath, prog_fd, pkt6) == ("drop", {("drop", "blocklist_dynamic"): (1, len(pkt6))})

    def expires_in() -> float:
        return next(b.expires_in for b in fastpath.blocks() if str(b.address) == "198.51.100.77") or 0.0
    assert expires_in() > 0
    deadline = time.monotonic() + 30
    while expires_in() > 0:  # poll until the entry's own expiry time has passed
        assert time.monotonic() < deadline, "the entry never expired"
        time.sleep(0.05)
    # Expired: ignored by the program even before the sweep removes it.
    assert run_and_count(fastpath, prog_fd, pkt4) == ("pass", {("pass", "no_match"): (1, len(pkt4))})
    assert fastpath.sweep_expired_blocks() == 1
    assert [str(b.address) for b in fastpath.blocks()] == ["2001:db8:ff::77"]
    assert fastpath.block_delete(ipaddress.ip_address("2001:db8:ff::77"))
    assert run_and_count(fastpath, prog_fd, pkt6) == ("pass", {("pass", "no_match"): (1, len(pkt6))})


def test_allowlist_beats_dynamic_block(loaded: tuple[FastPath, int]) -> None:
    fastpath, prog_fd = loaded
    fastpath.block_add(ipaddress.ip_address("192.0.2.5"), ttl_seconds=None)
    pkt = raw_bytes(v4(src="192.0.2.5") / TCP(dport=22))
    assert run_and_count(fastpath, prog_fd, pkt) == ("pass", {("pass", "allowlist"): (1, len(pkt))})


def test_no_policy_applied_passes_everything(detached: tuple[FastPath, int]) -> None:
    fastpath, prog_fd = detached
    pkt = raw_bytes(v4(src="203.0.113.8") / UDP(dport=53))
    assert run_and_count(fastpath, prog_fd, pkt) == ("pass", {("pass", "no_config"): (1, len(pkt))})


MONITOR_CASES = [
    ("blocked CIDR", v4(src="203.0.113.8") / UDP(dport=9), "would_drop", "blocklist_cidr"),
    ("blocked IP", v4(src="198.51.100.42") / UDP(dport=9), "would_drop", "blocklist_ip"),
    ("malformed", v4() / TCP(dport=80, dataofs=4), "would_drop", "bad_tcp_offset"),
    ("redirect class", v4() / UDP(dport=53), "would_redirect", "redirect_class"),
    ("allowlisted", v4(src="192.0.2.5") / UDP(dport=9), "pass", "allowlist"),
    ("clean", v4() / UDP(dport=9), "pass", "no_match"),
]


@pytest.mark.parametrize("name,pkt,verdict,reason", MONITOR_CASES, ids=[m[0] for m in MONITOR_CASES])
def test_monitor_mode_counts_but_passes(detached: tuple[FastPath, int], name: str, pkt: Packet,
                                        verdict: str, reason: str) -> None:
    fastpath, prog_fd = detached
    policy = parse_policy("mode: monitor\n" + POLICY)
    fastpath.apply(PolicyCompiler(fastpath.abi, fastpath.capacities()).compile(policy))
    data = raw_bytes(pkt)
    assert run_and_count(fastpath, prog_fd, data) == ("pass", {(verdict, reason): (1, len(data))})


def test_reapply_switches_generation_and_keeps_counters(loaded: tuple[FastPath, int]) -> None:
    fastpath, prog_fd = loaded
    pkt = raw_bytes(v4(src="198.51.100.42") / UDP(dport=9))
    assert run_and_count(fastpath, prog_fd, pkt)[0] == "drop"
    generation = fastpath.settings().generation
    before = fastpath.counters()
    fastpath.apply(PolicyCompiler(fastpath.abi, fastpath.capacities()).compile(parse_policy("{}")))
    assert fastpath.settings().generation == generation + 1
    assert fastpath.counters() == before
    assert run_and_count(fastpath, prog_fd, pkt) == ("pass", {("pass", "no_match"): (1, len(pkt))})


@pytest.mark.parametrize("state,fenced", [("active", False), ("pressured", False), ("degraded", False),
                                          ("fenced", True), ("recovering", True), ("failed", True)])
def test_fenced_queue_takes_the_class_fallback(detached: tuple[FastPath, int], state: str, fenced: bool) -> None:
    """The watchdog's state alone decides, before xsk_map is consulted (no socket here: unfenced
    states fail over as redirect_failed, fenced ones as queue_fenced)."""
    fastpath, prog_fd = detached
    fastpath.apply(PolicyCompiler(fastpath.abi, fastpath.capacities()).compile(parse_policy(POLICY)))
    closed = raw_bytes(v4() / UDP(dport=53))    # fail-closed class
    opened = raw_bytes(v4() / TCP(dport=8080))  # fail-open class
    reason = "queue_fenced" if fenced else "redirect_failed"
    fastpath.set_queue_state(0, state, "operator")
    try:
        assert fastpath.queue_state(0)["state"] == state
        field = "fenced" if fenced else "redirect_failures"
        before = fastpath.queue_counters().get(0, {}).get(field, 0)
        assert run_and_count(fastpath, prog_fd, closed) == ("drop", {("drop", reason): (1, len(closed))})
        assert run_and_count(fastpath, prog_fd, opened) == ("pass", {("pass", reason): (1, len(opened))})
        assert fastpath.queue_counters()[0][field] - before == 2
    finally:
        fastpath.set_queue_state(0, "unmanaged", "none")
