"""The XDP program under BPF_PROG_TEST_RUN: a fixture table of (description,
packet, expected XDP action, expected counter) in the style of Katran's tests.

Every case asserts the action and that exactly one counter moved, by exactly
one packet of exactly the frame's length.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
)
from scapy.layers.l2 import Dot1Q
from scapy.packet import Packet

from hyperion.errors import BpfError
from hyperion.fastpath.program import FastPath
from hyperion.kernel.testrun import run_xdp
from hyperion.policy.compiler import PolicyCompiler
from hyperion.policy.loading import parse_policy
from tests.support.kernel import program_with_policy
from tests.support.xdp_cases import CASES, CLEAN4, DST4, ETH, POLICY, Case, raw_bytes, v4, v6


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
