"""Structure-aware fuzzing of the XDP program (BPF_PROG_TEST_RUN) against the Python reference classifier.

Hypothesis builds frames with scapy (0..4 VLAN tags, IPv4 options and fragments, bad IHL and
lengths, IPv6 chains of 0..11 extension headers, TCP/UDP/ICMP and other protocols, non-IP and
mismatched ethertypes), then cuts, overwrites and extends them. Each frame runs under one policy
(allowlist, CIDR and exact blocklists, dynamic blocks, redirect classes) in enforce and monitor
mode; per frame the XDP action matches the verdict, exactly one (verdict, reason) counter moves by
one packet and the frame's bytes, and that pair is what tests/support/reference_classifier.py
computes. Also the extension-header limit and the parser bugs the fuzzer found. CI runs 50,000
frames; HYPERION_FUZZ_PACKETS / HYPERION_FUZZ_SEED (`make fuzz-xdp`) raise or replay it.

The reference checked against the hand-written fixture table, without root: tests/unit/test_xdp_hypothesis.py.
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    PadN,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw

from hyperion.fastpath.program import FastPath
from hyperion.kernel import libbpf
from hyperion.kernel.testrun import run_xdp
from hyperion.policy.loading import parse_policy
from tests.support.kernel import program_with_policy
from tests.support.reference_classifier import (
    ACTION_OF_VERDICT,
    IPV6_EXT_MAX,
    ReferenceFastPath,
)
from tests.support.xdp_cases import CLEAN6, ETH

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)  # "no IPv6 underlayer to compute checksum"

CI_PACKETS = 50_000
PACKETS = int(os.environ.get("HYPERION_FUZZ_PACKETS", CI_PACKETS))
SEED = int(os.environ.get("HYPERION_FUZZ_SEED", "20261125" if PACKETS <= CI_PACKETS else random.randrange(2**32)))
EXAMPLES_PER_ROUND = 1500

POLICY = """
fast_path:
  allow_cidrs: ["192.0.2.0/28", "203.0.113.7", "2001:db8:1::/48"]
  drop_ips: ["198.51.100.42", "203.0.113.9", "2001:db8:ff::42"]
  drop_cidrs: ["203.0.113.0/24", "198.51.100.128/25", "2001:db8:bad::/48"]
  redirect_ports:
    - {protocol: udp, port: 53, on_failure: drop}
    - {protocol: tcp, port: 8080, on_failure: pass}
    - {protocol: udp, port: 4789, on_failure: pass}
slow_path:
  dns_name_rules: slow_path  # classes redirected whole: the DNS stage has its own reference (test_xdp_dns)
"""
# address -> in force (False: already expired when the test starts)
DYNAMIC = {"198.51.100.77": True, "2001:db8:ff::77": True, "198.51.100.78": False, "2001:db8:ff::78": False}

SOURCES4 = ["192.0.2.5", "203.0.113.7", "203.0.113.8", "203.0.113.9", "198.51.100.42", "198.51.100.43",
            "198.51.100.200", "198.51.100.77", "198.51.100.78", "198.51.100.10", "192.0.2.100"]
SOURCES6 = ["2001:db8:1::5", "2001:db8:1:ffff::1", "2001:db8:bad::1", "2001:db8:bad:1::9", "2001:db8:ff::42",
            "2001:db8:ff::43", "2001:db8:ff::77", "2001:db8:ff::78", "2001:db8:ff::10"]
DOC_NETS4 = [ipaddress.IPv4Network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]
PORTS = [53, 4789, 8080, 80, 22, 9, 0, 65535]
MACS = ("02:00:00:00:00:01", "02:00:00:00:00:02")


# ---- strategies -------------------------------------------------------------------------------
# Built once: constructing strategies inside draws is what makes hypothesis slow.

SOURCE4 = st.one_of(st.sampled_from(SOURCES4), st.tuples(st.sampled_from(DOC_NETS4), st.integers(0, 255)).map(
    lambda t: str(t[0].network_address + t[1])))
SOURCE6 = st.one_of(st.sampled_from(SOURCES6), st.tuples(
    st.sampled_from([0x1, 0xBAD, 0xFF, 0x2]), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)).map(
    lambda t: f"2001:db8:{t[0]:x}:{t[1]:x}::{t[2]:x}"))
PORT = st.one_of(st.sampled_from(PORTS), st.sampled_from(PORTS), st.integers(0, 65535))
VARIANT_PORT = st.one_of(st.sampled_from([53, 4789, 8080]), PORT)  # the redirect classes' ports, often
PAYLOAD = st.binary(max_size=48)
BYTE, U16, U32 = st.integers(0, 255), st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1)
BIT, NIBBLE = st.integers(0, 1), st.integers(0, 15)
ONE_IN_4, ONE_IN_8 = st.integers(0, 3), st.integers(0, 7)
SHORT_OR_ANY = st.one_of(st.integers(0, 80), U16)
FRAGMENT_OFFSET = st.one_of(st.just(0), st.just(0), st.just(0), st.integers(1, 8191))  # 1 in 4 non-first
L4_KIND = st.sampled_from(["tcp", "udp", "icmp", "other"])
TCP_OPTIONS, UDP_LENGTH = st.integers(0, 12), st.one_of(st.integers(0, 16), U16)
ICMP_PROTOCOL = st.sampled_from([1, 58])
OTHER_PROTOCOL = st.one_of(st.sampled_from([0, 2, 41, 47, 50, 51, 59, 60, 132, 255]), BYTE)
EXT_KINDS = st.lists(st.sampled_from(["hop", "routing", "dest", "frag", "ah"]), max_size=IPV6_EXT_MAX + 3)
PAD_LENGTH, ROUTING_ADDRESSES, ICV_WORDS = st.integers(0, 40), st.integers(0, 3), st.integers(0, 5)
IPV4_OPTIONS = st.sampled_from([0, 0, 4, 8, 40])
IPV4_FLAGS = st.sampled_from(["", "MF", "DF"])
FLOW_LABEL = st.integers(0, 2**20 - 1)
VLAN_ID, VLAN_PRIO = st.integers(0, 4095), st.integers(0, 7)
VLAN_DEPTH = st.sampled_from([0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 3, 4])  # mostly untagged; up to 4 tags
VLAN_TAG = st.sampled_from([Dot1Q, Dot1AD])
FRAME_KIND = st.sampled_from(["ipv4", "ipv4", "ipv6", "ipv6", "ipv6_as_v4", "ipv4_as_v6", "arp", "other"])
OTHER_ETHERTYPE = st.one_of(st.sampled_from([0x88CC, 0x8847, 0x88E5, 0x0000, 0x05DC, 0x0801, 0x86DC, 0x86DE,
                                             0x8100, 0x88A8]), U16)
OTHER_PAYLOAD = st.binary(max_size=64)
TRAILER = st.binary(min_size=1, max_size=40)
UP_TO_4, UP_TO_6, ONE_TO_3, ONE_IN_6 = st.integers(0, 4), st.integers(0, 6), st.integers(1, 3), st.integers(0, 5)


SHORT_OR_ANY_OFFSET = st.one_of(st.integers(0, 4), NIBBLE)  # below 5 is bad_tcp_offset: make it common


def l4_bytes(draw: st.DrawFn, version: int) -> tuple[int, bytes]:
    """(IP protocol number, the upper-layer bytes) built by scapy, lengths sometimes wrong."""
    kind = draw(L4_KIND)
    payload = Raw(draw(PAYLOAD))
    layer: Packet
    if kind == "tcp":
        layer = TCP(sport=draw(PORT), dport=draw(PORT), flags=draw(BYTE), options=[("NOP", None)] * draw(TCP_OPTIONS))
        if draw(ONE_IN_8) == 0:
            layer.dataofs = draw(SHORT_OR_ANY_OFFSET)
        return 6, bytes(layer / payload)
    if kind == "udp":
        layer = UDP(sport=draw(PORT), dport=draw(PORT))
        if draw(ONE_IN_8) == 0:
            layer.len = draw(UDP_LENGTH)
        return 17, bytes(layer / payload)
    if kind == "icmp":
        if version == 6 and draw(BIT):
            return 58, bytes(ICMPv6EchoRequest(id=draw(U16)) / payload)
        # ICMP in IPv6 and ICMPv6 in IPv4 are parsed alike: 4 bytes of type, code, checksum.
        return draw(ICMP_PROTOCOL), bytes(ICMP(type=draw(BYTE), code=draw(BYTE)) / payload)
    return draw(OTHER_PROTOCOL), bytes(payload)


def ipv6_extension_chain(draw: st.DrawFn) -> tuple[list[int], list[Packet]]:
    """0..11 extension headers (more than the program walks), as (types, unlinked scapy headers)."""
    types, headers = [], []
    for kind in draw(EXT_KINDS):
        if kind in ("hop", "dest"):
            cls = IPv6ExtHdrHopByHop if kind == "hop" else IPv6ExtHdrDestOpt
            headers.append(cls(options=[PadN(optdata=bytes(draw(PAD_LENGTH)))]))
            types.append(0 if kind == "hop" else 60)
        elif kind == "routing":
            addresses = [f"2001:db8::{i + 1:x}" for i in range(draw(ROUTING_ADDRESSES))]
            headers.append(IPv6ExtHdrRouting(addresses=addresses, segleft=len(addresses)))
            types.append(43)
        elif kind == "frag":
            headers.append(IPv6ExtHdrFragment(offset=draw(FRAGMENT_OFFSET), m=draw(BIT), id=draw(U32)))
            types.append(44)
        else:
            icv = bytes(4 * draw(ICV_WORDS))
            headers.append(AH(spi=draw(U32), seq=draw(U32), icv=icv, payloadlen=(12 + len(icv)) // 4 - 2))
            types.append(51)
    return types, headers


def _chain_bytes(types: list[int], headers: list[Packet], upper: int) -> bytes:
    out = b""
    for i, header in enumerate(headers):
        header.nh = types[i + 1] if i + 1 < len(types) else upper
        out += bytes(header)
    return out


def l3(draw: st.DrawFn, kind: str) -> tuple[int, Packet, int | None]:
    """(ethertype, IP packet with its payload, where its TCP/UDP ports are from the IP header or None)."""
    if kind in ("ipv4", "ipv6_as_v4"):
        protocol, upper = l4_bytes(draw, 4)
        if kind == "ipv6_as_v4":  # IPv4 ethertype, IPv6 header
            return 0x0800, IPv6(src=draw(SOURCE6), dst="2001:db8:1::1", nh=protocol) / Raw(upper), None
        options = bytes(draw(IPV4_OPTIONS))
        ip = IP(src=draw(SOURCE4), dst="192.0.2.1", tos=draw(BYTE), id=draw(U16), flags=draw(IPV4_FLAGS),
                ttl=draw(BYTE), frag=draw(FRAGMENT_OFFSET), proto=protocol, options=options)
        if draw(ONE_IN_8) == 0:
            ip.ihl = draw(NIBBLE)
        if draw(ONE_IN_8) == 0:
            ip.len = draw(SHORT_OR_ANY)
        return 0x0800, ip / Raw(upper), 20 + len(options) if protocol in (6, 17) else None
    protocol, upper = l4_bytes(draw, 6)
    if kind == "ipv4_as_v6":  # IPv6 ethertype, IPv4 header
        return 0x86DD, IP(src=draw(SOURCE4), dst="192.0.2.1", proto=protocol) / Raw(upper), None
    types, headers = ipv6_extension_chain(draw)
    ip6 = IPv6(src=draw(SOURCE6), dst="2001:db8:1::1", tc=draw(BYTE), fl=draw(FLOW_LABEL), hlim=draw(BYTE),
               nh=types[0] if types else protocol)
    if draw(ONE_IN_8) == 0:
        ip6.plen = draw(SHORT_OR_ANY)
    chain = _chain_bytes(types, headers, protocol)
    return 0x86DD, ip6 / Raw(chain + upper), 40 + len(chain) if protocol in (6, 17) else None


@dataclass(frozen=True)
class Sample:
    """One built frame and the frames derived from it; l3_offset locates the IP header."""

    frame: bytes
    l3_offset: int
    derived: tuple[bytes, ...]
    monitor: bool


def _consistent_cut(frame: bytes, length: int, l3: int) -> bytes:
    """The first `length` bytes, with the IP length field rewritten to agree with the cut."""
    data = bytearray(frame[:length])
    if length >= l3 + 20 and data[l3] >> 4 == 4:
        data[l3 + 2:l3 + 4] = (length - l3).to_bytes(2, "big")
    elif length >= l3 + 40 and data[l3] >> 4 == 6:
        data[l3 + 4:l3 + 6] = (length - l3 - 40).to_bytes(2, "big")
    return bytes(data)


@st.composite
def samples(draw: st.DrawFn) -> Sample:
    tags = [draw(VLAN_TAG) for _ in range(draw(VLAN_DEPTH))]
    kind = draw(FRAME_KIND)
    ports_at = None
    if kind == "arp":
        ethertype, upper = 0x0806, ARP(psrc=draw(SOURCE4), pdst="192.0.2.1")
    elif kind == "other":
        ethertype, upper = draw(OTHER_ETHERTYPE), Raw(draw(OTHER_PAYLOAD))
    else:
        ethertype, upper, ports_at = l3(draw, kind)
    l2: Packet = Ether(src=MACS[0], dst=MACS[1], type=0x8100 if tags else ethertype)
    for i, tag in enumerate(tags):
        follows = 0x8100 if i + 1 < len(tags) and tags[i + 1] is Dot1Q else 0x88A8 if i + 1 < len(tags) else ethertype
        l2 = l2 / tag(vlan=draw(VLAN_ID), prio=draw(VLAN_PRIO), type=follows)
    if tags:
        l2.type = 0x8100 if tags[0] is Dot1Q else 0x88A8
    frame = bytes(l2 / upper)
    l3_offset = 14 + 4 * len(tags)

    derived: list[bytes] = []
    if kind in ("ipv4", "ipv6"):  # the same frame from other sources and to other ports: every policy stage
        offset, sources = (l3_offset + 12, SOURCE4) if kind == "ipv4" else (l3_offset + 8, SOURCE6)
        dport = None if ports_at is None or l3_offset + ports_at + 4 > len(frame) else l3_offset + ports_at + 2
        for _ in range(draw(UP_TO_6)):
            data = bytearray(frame)
            packed, port = ipaddress.ip_address(draw(sources)).packed, draw(VARIANT_PORT)
            data[offset:offset + len(packed)] = packed
            if dport is not None:
                data[dport:dport + 2] = port.to_bytes(2, "big")
            derived.append(bytes(data))
    if draw(ONE_IN_6) == 0:  # truncation at every offset through the headers, some consistent
        end = min(len(frame), l3_offset + (ports_at or 60) + 24)
        derived += [frame[:n] for n in range(14, end)]
        derived += [_consistent_cut(frame, n, l3_offset) for n in range(l3_offset + 20, end, 3)]
    else:
        for _ in range(draw(UP_TO_4)):
            n = 14 + draw(U16) % max(1, len(frame) - 14)
            derived.append(_consistent_cut(frame, n, l3_offset) if draw(BIT) else frame[:n])
    header_end = min(len(frame), l3_offset + 120)
    for _ in range(draw(UP_TO_6)):  # header bytes overwritten: random header fields
        data = bytearray(frame)
        for _ in range(draw(ONE_TO_3)):
            data[12 + draw(U16) % max(1, header_end - 12)] = draw(BYTE)
        derived.append(bytes(data))
    if draw(BIT):  # trailing bytes: Ethernet padding or junk past the datagram
        derived.append(frame + draw(TRAILER))
    if len(tags) > 2:  # every frame derived from a frame with too many tags has too many tags
        derived = derived[:2]
    return Sample(frame, l3_offset, tuple(derived), monitor=draw(ONE_IN_4) == 0)


# ---- running frames and watching the counters ---------------------------------------------------

@dataclass
class CounterWatch:
    """hyp_counters read with one batch lookup per frame; reports which entries moved."""

    fastpath: FastPath
    labels: list[tuple[str, str]] = field(init=False)
    prev: memoryview = field(init=False)

    def __post_init__(self) -> None:
        abi = self.fastpath.abi
        self.entries = len(abi.verdicts) * abi.reason_count
        self.labels = [(abi.verdicts.get(i // abi.reason_count, "?"), abi.reasons.get(i % abi.reason_count, "?"))
                       for i in range(self.entries)]
        self.ncpus = libbpf.num_possible_cpus()
        self.stride = ((ctypes.sizeof(abi.Counter) + 7) & ~7) // 8 * self.ncpus  # u64 words per entry
        self.map = self.fastpath.maps["hyp_counters"]
        self.prev = self.read()

    def read(self) -> memoryview:
        _, values, count = self.map.lookup_batch(self.entries, self.stride * 8)
        assert count == self.entries
        return memoryview(values).cast("Q")

    def total(self, words: memoryview | None = None) -> int:
        words = words if words is not None else self.prev
        return sum(words[i] for i in range(0, len(words), 2))

    def moved(self) -> dict[tuple[str, str], tuple[int, int]]:
        now = self.read()
        delta = {}
        if now != self.prev:
            for entry in range(self.entries):
                lo, hi = entry * self.stride, (entry + 1) * self.stride
                if now[lo:hi] != self.prev[lo:hi]:
                    packets = sum(now[lo:hi:2]) - sum(self.prev[lo:hi:2])
                    octets = sum(now[lo + 1:hi:2]) - sum(self.prev[lo + 1:hi:2])
                    delta[self.labels[entry]] = (packets, octets)
        self.prev = now
        return delta


@dataclass
class Target:
    fastpath: FastPath
    prog_fd: int
    reference: ReferenceFastPath
    watch: CounterWatch


@dataclass
class Campaign:
    enforce: Target
    monitor: Target
    packets: int = 0
    by_outcome: dict[tuple[str, str], int] = field(default_factory=dict)
    mismatches: dict[str, list[bytes]] = field(default_factory=dict)

    def run(self, target: Target, frame: bytes) -> None:
        result = run_xdp(target.prog_fd, frame)
        moved = target.watch.moved()
        expected = target.reference.judge(frame)
        self.packets += 1
        self.by_outcome[expected] = self.by_outcome.get(expected, 0) + 1
        want = (ACTION_OF_VERDICT[expected[0]], {expected: (1, len(frame))})
        if (result.action, moved) != want:
            key = f"expected {want[0]} {expected}, got {result.action} {sorted(moved.items())}"
            frames = self.mismatches.setdefault(key, [])
            if len(frames) < 3:
                frames.append(frame)

    def run_sample(self, sample: Sample) -> None:
        target = self.monitor if sample.monitor else self.enforce
        self.run(target, sample.frame)
        for frame in sample.derived:
            self.run(target, frame)

    def report(self) -> str:
        lines = []
        for key, frames in sorted(self.mismatches.items()):
            lines.append(key)
            for frame in frames:
                lines.append(f"    {frame.hex()}  {Ether(frame).summary()}")
        return "\n".join(lines)


def _target(policy_text: str) -> Iterator[Target]:
    with program_with_policy(policy_text) as (fastpath, prog_fd):
        for address, active in DYNAMIC.items():
            fastpath.block_add(ipaddress.ip_address(address), ttl_seconds=3600 if active else -1.0)
        dynamic = {ipaddress.ip_address(a): active for a, active in DYNAMIC.items()}
        reference = ReferenceFastPath(parse_policy(policy_text), dynamic)
        yield Target(fastpath, prog_fd, reference, CounterWatch(fastpath))


@pytest.fixture(scope="module")
def campaign(kernel: None) -> Iterator[Campaign]:
    enforce = _target(POLICY)
    monitor = _target("mode: monitor\n" + POLICY)
    try:
        yield Campaign(next(enforce), next(monitor))
    finally:
        enforce.close()
        monitor.close()


def test_program_agrees_with_the_reference_classifier(campaign: Campaign) -> None:
    targets = (campaign.enforce, campaign.monitor)
    totals_before = [t.watch.total() for t in targets]
    started, rounds = time.monotonic(), 0
    while campaign.packets < PACKETS:
        @seed(SEED + rounds)
        @settings(max_examples=EXAMPLES_PER_ROUND, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(sample=samples())
        def explore(sample: Sample) -> None:
            if campaign.packets < PACKETS:
                campaign.run_sample(sample)

        explore()
        rounds += 1
    elapsed = time.monotonic() - started
    # The counters' sum moved by exactly the number of frames run (per frame, checked above).
    assert sum(t.watch.total() - before for t, before in zip(targets, totals_before, strict=True)) == campaign.packets
    per_reason: dict[str, int] = {}
    for (_, reason), n in campaign.by_outcome.items():
        per_reason[reason] = per_reason.get(reason, 0) + n
    reasons = sorted(per_reason)
    print(f"\nXDP fuzz: {campaign.packets} frames in {elapsed:.1f} s (seed {SEED}), "
          f"{len(campaign.by_outcome)} (verdict, reason) outcomes, "
          f"{sum(len(f) for f in campaign.mismatches.values())} mismatching frames kept; frames per reason: "
          + ", ".join(f"{r} {n}" for r, n in sorted(per_reason.items(), key=lambda kv: -kv[1])))
    assert not campaign.mismatches, "program and reference disagree:\n" + campaign.report()
    # The generator must reach every reason the policy and parser can produce (else it is too weak).
    reachable = {"no_match", "non_ip", "truncated_vlan", "too_many_vlans", "truncated_ipv4", "bad_ip_version",
                 "bad_ihl", "bad_ip_length", "truncated_ipv6", "truncated_exthdr", "too_many_exthdrs",
                 "truncated_tcp", "bad_tcp_offset", "truncated_udp", "bad_udp_length", "truncated_icmp",
                 "allowlist", "blocklist_cidr", "blocklist_ip", "blocklist_dynamic", "fragment",
                 "redirect_class", "redirect_failed"}
    assert set(reasons) == reachable, sorted(campaign.by_outcome.items())


# ---- deviations found by the fuzzer ----------------------------------------------------------

def _chain(count: int) -> bytes:
    packet: Packet = IPv6(src=CLEAN6, dst="2001:db8:1::1")
    for _ in range(count):
        packet = packet / IPv6ExtHdrDestOpt()
    return bytes(ETH / packet / UDP(dport=9))


# Documented: "IPv6 with up to 8 extension headers"; a longer chain is too_many_exthdrs.
EXTHDR_LIMIT = [(IPV6_EXT_MAX - 1, ("pass", "no_match")), (IPV6_EXT_MAX, ("pass", "no_match")),
                (IPV6_EXT_MAX + 1, ("drop", "too_many_exthdrs"))]


@pytest.fixture(scope="module")
def program(kernel: None) -> Iterator[Target]:
    target = _target(POLICY)
    try:
        yield next(target)
    finally:
        target.close()


def _judged(target: Target, frame: bytes) -> tuple[str, str]:
    result = run_xdp(target.prog_fd, frame)
    moved = target.watch.moved()
    assert len(moved) == 1, moved
    (verdict, reason), (packets, octets) = next(iter(moved.items()))
    assert (packets, octets, result.action) == (1, len(frame), ACTION_OF_VERDICT[verdict])
    return verdict, reason


@pytest.mark.parametrize("count,expected", EXTHDR_LIMIT, ids=[f"{c}-headers" for c, _ in EXTHDR_LIMIT])
def test_extension_header_limit(program: Target, count: int, expected: tuple[str, str]) -> None:
    frame = _chain(count)
    assert ReferenceFastPath(parse_policy(POLICY)).judge(frame) == expected
    assert _judged(program, frame) == expected


# A non-first fragment whose fragment header names destination options next: the bytes after it
# are fragment data (here a "header length" of 255), not a header.
NONFIRST_FRAGMENT = bytes(ETH / IPv6(src=CLEAN6, dst="2001:db8:1::1") / IPv6ExtHdrFragment(offset=10, nh=60)
                          / Raw(b"\x11\xff" + bytes(30)))
# A destination-options header of 16 bytes in a datagram whose payload length says 8, followed
# by 8 bytes of trailing padding: the header overruns the datagram, and nothing follows it.
OVERRUNNING_EXTHDR = (bytes(ETH / IPv6(src=CLEAN6, dst="2001:db8:1::1", nh=60, plen=8))
                      + bytes([59, 1]) + bytes(14))


REGRESSIONS = [(NONFIRST_FRAGMENT, ("pass", "fragment")), (OVERRUNNING_EXTHDR, ("drop", "truncated_exthdr"))]
REGRESSION_IDS = ["nonfirst-fragment-not-walked", "exthdr-beyond-payload-length"]


@pytest.mark.parametrize("frame,expected", REGRESSIONS, ids=REGRESSION_IDS)
def test_fixed_parser_bugs_stay_fixed(program: Target, frame: bytes, expected: tuple[str, str]) -> None:
    """Found by this fuzzer: the parser walked on after a non-first fragment header (reading
    fragment data as headers) and bounded extension headers by the frame, not the datagram."""
    assert ReferenceFastPath(parse_policy(POLICY)).judge(frame) == expected
    assert _judged(program, frame) == expected
