"""The slow path's parser walks an IPv6 Authentication Header (RFC 4302) as the XDP parser does.

The fast path walks AH to find UDP port 53 and redirects the packet; if the workers' parser stopped
at AH, the query would be passed uninspected. scapy builds the frames and is the reference for
where the upper layer starts is dpkt's dissection, an independent library (AH's length counts
4-byte units minus 2, RFC 4302 2.2; scapy does not dissect past AH, so it only builds the frames)."""

from __future__ import annotations

import dpkt
import pytest
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt
from scapy.layers.ipsec import AH
from scapy.layers.l2 import Ether

from hyperion import _slowpath
from hyperion.policy.loading import parse_policy
from hyperion.slowpath.rules import compile_rules

RULES = compile_rules(parse_policy("""
fast_path:
  redirect_ports:
    - {protocol: udp, port: 53, on_failure: drop}
slow_path:
  dns_rules:
    - {match: "evil.test", action: drop}
"""), never_block=[])

ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def _query(name: str, *headers: object) -> bytes:
    pkt = IPv6(src="2001:db8:ff::10", dst="2001:db8:1::1")
    for header in headers:
        pkt = pkt / header
    frame = bytes(ETH / pkt / UDP(sport=40000, dport=53) / DNS(rd=1, qd=DNSQR(qname=name)))
    # The reference: dpkt finds the UDP datagram and the question behind the same headers.
    datagram = dpkt.ethernet.Ethernet(frame).data.data
    assert isinstance(datagram, dpkt.udp.UDP) and datagram.dport == 53
    assert dpkt.dns.DNS(datagram.data).qd[0].name == name
    return frame


@pytest.mark.parametrize("headers", [
    (AH(nh=17, payloadlen=4, spi=0x100, seq=1, icv=b"\0" * 12),),
    (AH(nh=60, payloadlen=4, spi=0x100, seq=1, icv=b"\0" * 12), IPv6ExtHdrDestOpt(nh=17)),
    (IPv6ExtHdrDestOpt(nh=51), AH(nh=17, payloadlen=5, spi=0x100, seq=1, icv=b"\0" * 16)),
], ids=["ah", "ah-dstopts", "dstopts-ah-16-byte-icv"])
def test_question_behind_an_authentication_header_is_judged(headers: tuple[object, ...]) -> None:
    blocked = RULES.rules.inspect(_query("evil.test", *headers))
    assert blocked["parsed"] and blocked["dns"] and blocked["qname"] == "evil.test"
    assert blocked["action"] == _slowpath.DROP
    allowed = RULES.rules.inspect(_query("fine.test", *headers))
    assert allowed["parsed"] and allowed["qname"] == "fine.test" and allowed["action"] == _slowpath.PASS
