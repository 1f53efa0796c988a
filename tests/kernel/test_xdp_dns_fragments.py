"""Fragmented DNS to a DNS class (issue 14 part 6), under BPF_PROG_TEST_RUN.

Fragments are cut by scapy (fragment(), fragment6()), queries built with dnspython and padded with
EDNS padding (RFC 7830) so that the datagram is longer than a fragment. A first fragment carries
the ports, the rest do not (RFC 791, RFC 8200 4.5): with the default policy (dns_fragments: drop)
the first fragment to a DNS class is dropped and counted; with `judge` it is judged by the question
it holds. Non-first fragments keep the fast path's `fragment` pass: without their first the
kernel's reassembly discards them.
"""

from __future__ import annotations

from collections.abc import Iterator

import dns.edns
import dns.message
import pytest
from scapy.layers.inet import IP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from hyperion.fastpath.program import FastPath
from hyperion.kernel.testrun import run_xdp
from tests.support.dns_maps import DNS_ONLY, Action, ClassFlag, DnsClass, DnsMaps, delta, exact

CLIENT4, SERVER4 = "198.51.100.10", "192.0.2.53"
CLIENT6, SERVER6 = "2001:db8:c::10", "2001:db8:53::53"
MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
FRAG_DROP, FRAG_JUDGE = 0, 1  # enum hyp_dns_fragment_policy
# A plain redirect class: its first fragments are redirected as before (no socket here: the fallback).
OTHER_PORT = DnsClass(17, 5353, ClassFlag.SLOWPATH, class_id=2)


@pytest.fixture
def maps(detached: tuple[FastPath, int]) -> Iterator[tuple[DnsMaps, int]]:
    fastpath, prog_fd = detached
    writer = DnsMaps(fastpath)
    try:
        yield writer, prog_fd
    finally:
        writer.close()


def padded_query(name: str) -> bytes:
    """A query of about 1,200 bytes: EDNS padding to a 1,200-byte block."""
    msg = dns.message.make_query(name, "A", use_edns=0, pad=1200)
    msg.id = 0x4242
    return msg.to_wire()


def fragments4(name: str, port: int = 53) -> list[bytes]:
    datagram = IP(src=CLIENT4, dst=SERVER4, id=0x1234) / UDP(sport=40000, dport=port) / Raw(padded_query(name))
    return [bytes(Ether(**MACS) / f) for f in fragment(datagram, fragsize=512)]


def fragments6(name: str, port: int = 53) -> list[bytes]:
    datagram = (IPv6(src=CLIENT6, dst=SERVER6) / IPv6ExtHdrFragment(id=0x1234) / UDP(sport=40000, dport=port)
                / Raw(padded_query(name)))
    return [bytes(Ether(**MACS) / f) for f in fragment6(datagram, 600)]


def run(writer: DnsMaps, prog_fd: int, frame: bytes) -> tuple[str, dict[tuple[str, str], tuple[int, int]]]:
    before = writer.fastpath.counters()
    result = run_xdp(prog_fd, frame)
    return result.action, delta(before, writer.fastpath.counters())


@pytest.mark.parametrize("cut", [fragments4, fragments6], ids=["ipv4", "ipv6"])
def test_first_fragment_to_a_dns_class_is_dropped_by_default(maps: tuple[DnsMaps, int], cut: object) -> None:
    writer, fd = maps
    writer.install([DNS_ONLY], [exact("evil.example", Action.DROP)])
    frames = cut("good.example")  # type: ignore[operator]
    assert len(frames) >= 3
    first, rest = frames[0], frames[1:]
    assert run(writer, fd, first) == ("drop", {("drop", "dns_fragment"): (1, len(first))})
    for frame in rest:
        assert run(writer, fd, frame) == ("pass", {("pass", "fragment"): (1, len(frame))})


@pytest.mark.parametrize("cut", [fragments4, fragments6], ids=["ipv4", "ipv6"])
def test_judge_judges_the_question_of_the_first_fragment(maps: tuple[DnsMaps, int], cut: object) -> None:
    writer, fd = maps
    writer.install([DNS_ONLY], [exact("evil.example", Action.DROP)], fragments=FRAG_JUDGE)
    blocked = cut("evil.example")[0]  # type: ignore[operator]
    allowed = cut("good.example")[0]  # type: ignore[operator]
    assert run(writer, fd, blocked) == ("drop", {("drop", "dns_drop"): (1, len(blocked))})
    assert run(writer, fd, allowed) == ("pass", {("pass", "dns_no_match"): (1, len(allowed))})


def test_a_question_cut_by_the_fragment_is_malformed_under_judge(maps: tuple[DnsMaps, int]) -> None:
    """8-byte fragments: the first holds the UDP header and nothing of the question."""
    writer, fd = maps
    writer.install([DNS_ONLY], [exact("evil.example", Action.DROP)], fragments=FRAG_JUDGE)
    datagram = IP(src=CLIENT4, dst=SERVER4, id=7) / UDP(sport=40000, dport=53) / Raw(padded_query("evil.example"))
    first = bytes(Ether(**MACS) / fragment(datagram, fragsize=8)[0])
    assert run(writer, fd, first) == ("drop", {("drop", "dns_malformed"): (1, len(first))})


def test_fragments_outside_dns_classes_are_untouched(maps: tuple[DnsMaps, int]) -> None:
    writer, fd = maps
    writer.install([DNS_ONLY, OTHER_PORT], [])
    first = fragments4("good.example", port=5353)[0]
    assert run(writer, fd, first) == ("pass", {("pass", "redirect_failed"): (1, len(first))})


def test_an_unfragmented_query_is_judged_as_before(maps: tuple[DnsMaps, int]) -> None:
    """An IPv6 atomic fragment (offset 0, M clear; RFC 8200 4.5) is a whole datagram, not a fragment."""
    writer, fd = maps
    writer.install([DNS_ONLY], [exact("evil.example", Action.DROP)])
    whole = bytes(Ether(**MACS) / IP(src=CLIENT4, dst=SERVER4) / UDP(sport=40000, dport=53)
                  / Raw(padded_query("evil.example")))
    atomic = bytes(Ether(**MACS) / IPv6(src=CLIENT6, dst=SERVER6) / IPv6ExtHdrFragment(m=0, offset=0)
                   / UDP(sport=40000, dport=53) / Raw(padded_query("evil.example")))
    assert run(writer, fd, whole) == ("drop", {("drop", "dns_drop"): (1, len(whole))})
    assert run(writer, fd, atomic) == ("drop", {("drop", "dns_drop"): (1, len(atomic))})
