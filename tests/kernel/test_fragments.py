"""Fragmented UDP (issue 12, defect 1): the first fragment's UDP length is the reassembled datagram's.

References: RFC 768 (the UDP length counts the whole datagram, header included, so at least 8),
RFC 791 and RFC 8200 (a datagram larger than the path MTU is fragmented; the first fragment,
offset 0 with More Fragments set, carries the UDP header of the reassembled datagram). The
Linux stack reassembles before UDP sees the datagram, so a first fragment whose UDP length
exceeds its own payload is legal; only a length below 8 can never be valid. An IPv6 "atomic
fragment" (offset 0, M clear, RFC 6946) is a whole datagram and keeps the unfragmented checks.

The cases are judged three ways, each of which must give the expected answer: the XDP program
(BPF_PROG_TEST_RUN), the reference classifier and, for the slow path's parser, Rules.inspect().
A netns test then has the client's own stack send 3000-byte datagrams through Hyperion.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from hyperion import _slowpath
from hyperion.fastpath.program import FastPath
from hyperion.kernel.testrun import run_xdp
from hyperion.lab.sandbox import CLIENT_V4, CLIENT_V6, HOST_V4, HOST_V6, Sandbox, entered_netns
from hyperion.policy.loading import parse_policy
from hyperion.slowpath.rules import compile_rules
from tests.conftest import program_with_policy
from tests.netutil import Daemon, counter, hyperion, status, wait_for
from tests.reference_classifier import ReferenceFastPath

POLICY = """
fast_path:
  drop_cidrs: ["203.0.113.0/24", "2001:db8:bad::/48"]
  redirect_ports:
    - {protocol: udp, port: 53, on_failure: drop}
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
    # size (found by tests/test_reference_vs_stack.py: program and reference both dropped it).
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


@pytest.fixture(scope="module")
def loaded(kernel: None) -> Iterator[tuple[FastPath, int]]:
    with program_with_policy(POLICY) as loaded_program:
        yield loaded_program


def _delta(before: dict[tuple[str, str], tuple[int, int]],
           after: dict[tuple[str, str], tuple[int, int]]) -> dict[tuple[str, str], int]:
    return {k: v[0] - before.get(k, (0, 0))[0] for k, v in after.items() if v[0] != before.get(k, (0, 0))[0]}


@pytest.mark.parametrize("case", CASES, ids=[c.description for c in CASES])
def test_program(loaded: tuple[FastPath, int], case: Case) -> None:
    fastpath, prog_fd = loaded
    before = fastpath.counters()
    action = run_xdp(prog_fd, case.frame).action
    assert _delta(before, fastpath.counters()) == {(case.verdict, case.reason): 1}
    assert action == ("pass" if case.verdict == "pass" else "drop")


@pytest.mark.parametrize("case", CASES, ids=[c.description for c in CASES])
def test_reference(case: Case) -> None:
    assert ReferenceFastPath(parse_policy(POLICY)).judge(case.frame) == (case.verdict, case.reason)


# ---- the slow path's parser --------------------------------------------------------------

RULES = compile_rules(parse_policy(POLICY + """
slow_path:
  dns_rules:
    - {match: "evil.test", action: drop}
"""))


def dns_query_fragments4(name: str) -> list[bytes]:
    """A DNS query padded past the MTU (an EDNS-sized query), fragmented by scapy."""
    pkt = (IP(src=CLEAN4, dst=DST4, id=7) / UDP(sport=40000, dport=53)
           / DNS(rd=1, qd=DNSQR(qname=name)) / Raw(b"\0" * 2000))
    return [bytes(ETH / f) for f in fragment(IP(bytes(pkt)), fragsize=1480)]


def dns_query_fragments6(name: str) -> list[bytes]:
    pkt = (IPv6(src=CLEAN6, dst=DST6) / IPv6ExtHdrFragment(id=7) / UDP(sport=40000, dport=53)
           / DNS(rd=1, qd=DNSQR(qname=name)) / Raw(b"\0" * 2000))
    return [bytes(ETH / f) for f in fragment6(IPv6(bytes(pkt)), 1500)]


@pytest.mark.parametrize("build", [dns_query_fragments4, dns_query_fragments6], ids=["v4", "v6"])
def test_slow_path_inspects_the_question_of_a_first_fragment(build: Callable[[str], list[bytes]]) -> None:
    """The question is in the first fragment: it is judged on what this fragment holds."""
    first = build("evil.test")[0]
    result = RULES.rules.inspect(first)
    assert result["parsed"] and result["dns"] and result["qname"] == "evil.test"
    assert result["action"] == _slowpath.DROP
    assert RULES.rules.inspect(build("fine.test")[0])["action"] == _slowpath.PASS


@pytest.mark.parametrize("build", [dns_query_fragments4, dns_query_fragments6], ids=["v4", "v6"])
def test_slow_path_first_fragment_cut_anywhere_never_reads_past_it(build: Callable[[str], list[bytes]]) -> None:
    """Every prefix of a first fragment, with the IP length made to agree: no crash, and a cut
    question is never reported as a name."""
    first = build("evil.test")[0]
    for length in range(14, len(first) + 1):
        frame = bytearray(first[:length])
        if length >= 34 and frame[14] >> 4 == 4:
            frame[16:18] = (length - 14).to_bytes(2, "big")
        elif length >= 54 and frame[14] >> 4 == 6:
            frame[18:20] = (length - 54).to_bytes(2, "big")
        result = RULES.rules.inspect(bytes(frame))
        if result["dns"]:
            assert result["qname"] == "evil.test"


# ---- the client's own stack, through Hyperion ------------------------------------------------

NETNS_POLICY = """
fast_path:
  drop_cidrs: ["203.0.113.0/24", "2001:db8:bad::/48"]
"""


@pytest.fixture
def attached(sandbox: Sandbox, tmp_path: Path) -> Iterator[Sandbox]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(NETNS_POLICY)
    hyperion(sandbox, "attach", "--iface", sandbox.host_if, "--policy", str(policy))
    yield sandbox
    hyperion(sandbox, "detach", "--iface", sandbox.host_if, check=False)


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


@pytest.mark.parametrize("family,src,dst", [(socket.AF_INET, CLIENT_V4, HOST_V4),
                                            (socket.AF_INET6, CLIENT_V6, HOST_V6)], ids=["v4", "v6"])
def test_3000_byte_datagram_from_the_client_stack_arrives_whole(attached: Sandbox, family: socket.AddressFamily,
                                                                src: str, dst: str) -> None:
    sb = attached
    before = status(sb)
    payload = (bytes(range(256)) * 12)[:DATAGRAM]  # three fragments at MTU 1500, v4 and v6
    got = exchange(sb, family, src, dst, payload, count=5)
    assert got == [payload] * 5
    # Each datagram: its first fragment classified (no_match), two more passed as fragments.
    wait_for(lambda: counter(status(sb), "pass", "fragment") - counter(before, "pass", "fragment") >= 10, 5)
    after = status(sb)
    assert counter(after, "pass", "fragment") - counter(before, "pass", "fragment") == 10
    assert counter(after, "drop", "bad_udp_length") == counter(before, "drop", "bad_udp_length")


def test_slow_path_inspects_an_ipv6_datagram_with_udp_length_0() -> None:
    """The fast path classifies it (the stack delivers it), so the slow path must inspect it:
    not parsed would mean passed uninspected."""
    frame = bytes(ETH / IPv6(src=CLEAN6, dst=DST6) / UDP(sport=40000, dport=53, len=0)
                  / DNS(rd=1, qd=DNSQR(qname="evil.test")))
    result = RULES.rules.inspect(frame)
    assert result["parsed"] and result["qname"] == "evil.test" and result["action"] == _slowpath.DROP


SLOW_POLICY = r"""
fast_path:
  drop_cidrs: ["203.0.113.0/24", "2001:db8:bad::/48"]
  redirect_ports:
    - {protocol: udp, port: 9999, on_failure: pass}
slow_path:
  signatures:
    - {class: {protocol: udp, port: 9999}, regex: "(?i)union\\s+select", action: drop}
"""


@pytest.mark.parametrize("family,src,dst", [(socket.AF_INET, CLIENT_V4, HOST_V4),
                                            (socket.AF_INET6, CLIENT_V6, HOST_V6)], ids=["v4", "v6"])
def test_fragmented_datagram_of_a_redirected_class_through_the_slow_path(
        sandbox: Sandbox, tmp_path: Path, family: socket.AddressFamily, src: str, dst: str) -> None:
    """The first fragment goes through the worker (inspected on what it holds, then delivered),
    the others straight to the stack, which reassembles them. A signature in the first fragment
    drops it, and with it the whole datagram."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(SLOW_POLICY)
    daemon = Daemon(sandbox, policy).start()
    try:
        before = status(sandbox)
        clean = (b"clean " + bytes(range(256)) * 12)[:DATAGRAM]
        attack = (b"1 UNION SELECT password " + bytes(range(256)) * 12)[:DATAGRAM]
        # The last clean datagram follows the attack on the same path: once it is read, the
        # attack has been judged.
        got = exchange(sandbox, family, src, dst, [clean, clean, attack, clean], count=4, port=9999, expect=3)
        assert got == [clean, clean, clean]
        after = status(sandbox)
        assert counter(after, "redirect", "redirect_class") - counter(before, "redirect", "redirect_class") == 4
        assert counter(after, "drop", "bad_udp_length") == counter(before, "drop", "bad_udp_length")
    finally:
        daemon.stop()
