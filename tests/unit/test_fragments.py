"""Fragmented UDP (issue 12, defect 1) without root: the reference classifier and the slow path's
parser (Rules.inspect) on first fragments whose UDP length is the reassembled datagram's
(RFC 768, RFC 791, RFC 8200; RFC 6946 atomic fragments keep the unfragmented checks).

- The cases of tests/support/fragments.py judged by the reference classifier.
- The slow path inspects the DNS question of a first fragment, never reads past a first fragment
  cut anywhere, and inspects an IPv6 datagram with UDP length 0.

The same cases in the XDP program: tests/kernel/test_fragments.py; through the slow path in a
sandbox: tests/e2e/test_fragments.py.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6
from scapy.packet import Raw

from hyperion import _slowpath
from hyperion.policy.loading import parse_policy
from hyperion.slowpath.rules import compile_rules
from tests.support.fragments import CASES, CLEAN4, CLEAN6, DST4, DST6, ETH, POLICY, Case
from tests.support.reference_classifier import ReferenceFastPath


@pytest.mark.parametrize("case", CASES, ids=[c.description for c in CASES])
def test_reference(case: Case) -> None:
    assert ReferenceFastPath(parse_policy(POLICY)).judge(case.frame) == (case.verdict, case.reason)


# judge: these cases are about what the parser reads in a first fragment (the default drops it
# before: tests/unit/test_dns_fragments_policy.py).
RULES = compile_rules(parse_policy(POLICY + """
  dns_fragments: judge
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


def test_slow_path_inspects_an_ipv6_datagram_with_udp_length_0() -> None:
    """The fast path classifies it (the stack delivers it), so the slow path must inspect it:
    not parsed would mean passed uninspected."""
    frame = bytes(ETH / IPv6(src=CLEAN6, dst=DST6) / UDP(sport=40000, dport=53, len=0)
                  / DNS(rd=1, qd=DNSQR(qname="evil.test")))
    result = RULES.rules.inspect(frame)
    assert result["parsed"] and result["qname"] == "evil.test" and result["action"] == _slowpath.DROP
