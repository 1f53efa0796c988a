"""The workers' checksum step before delivery (complete_checksum), against scapy's checksums.

An offloading sender leaves the folded pseudo-header sum in the L4 checksum
field (RFC 768, RFC 9293, RFC 8200 section 8.1 define the pseudo-header); the
step must turn exactly that into the checksum scapy computes, leave valid ones
alone, and leave every other value unchanged.
"""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, IPOption_NOP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet, Raw
from scapy.utils import checksum

from hyperion import _slowpath

V4 = ("198.51.100.7", "192.0.2.1")
V6 = ("2001:db8:ff::7", "2001:db8:1::1")


def eth() -> Packet:
    # Explicit addresses: scapy would otherwise resolve them (ARP, with a timeout).
    return Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")


def frame(version: int, tcp: bool, payload: bytes, options: int = 0, vlan: bool = False,
          ext: tuple[str, ...] = ()) -> Packet:
    l2 = eth() / Dot1Q(vlan=7) if vlan else eth()
    if version == 4:
        l3: Packet = IP(src=V4[0], dst=V4[1], options=[IPOption_NOP()] * options)
    else:
        l3 = IPv6(src=V6[0], dst=V6[1])
        for name in ext:
            l3 = l3 / {"hbh": IPv6ExtHdrHopByHop(), "dst": IPv6ExtHdrDestOpt()}[name]
    l4 = TCP(sport=40000, dport=8080, flags="PA", seq=7, ack=9) if tcp else UDP(sport=40000, dport=9999)
    return Ether(bytes(l2 / l3 / l4 / Raw(payload)))  # built: scapy's own checksums filled in


def l4_of(pkt: Packet) -> Packet:
    layer: Packet = pkt[TCP] if TCP in pkt else pkt[UDP]
    return layer


def partial_value(pkt: Packet) -> int:
    """The folded pseudo-header sum, as Linux leaves it (~csum_tcpudp_magic(..., 0))."""
    l4 = l4_of(pkt)
    length, proto = len(bytes(l4)), 6 if TCP in pkt else 17
    if IP in pkt:
        ip = pkt[IP]
        pseudo = (ipaddress.ip_address(ip.src).packed + ipaddress.ip_address(ip.dst).packed
                  + struct.pack("!BBH", 0, proto, length))
    else:
        ip6 = pkt[IPv6]
        pseudo = (ipaddress.ip_address(ip6.src).packed + ipaddress.ip_address(ip6.dst).packed
                  + struct.pack("!IxxxB", length, proto))
    return ~checksum(pseudo) & 0xFFFF


def with_checksum(pkt: Packet, value: int) -> bytes:
    copy = Ether(bytes(pkt))
    l4_of(copy).chksum = value
    return bytes(copy)


shapes = st.fixed_dictionaries({
    "version": st.sampled_from([4, 6]),
    "tcp": st.booleans(),
    "payload": st.binary(max_size=1400),
    "vlan": st.booleans(),
    "options": st.sampled_from([0, 4, 8]),
    "ext": st.sampled_from([(), ("hbh",), ("dst",), ("hbh", "dst")]),
})


@settings(max_examples=300, deadline=None)
@given(shapes)
def test_valid_checksums_are_left_alone(shape: dict[str, object]) -> None:
    pkt = frame(**shape)  # type: ignore[arg-type]
    outcome, out = _slowpath.complete_checksum(bytes(pkt))
    assert (outcome, out) == ("valid", bytes(pkt))


@settings(max_examples=300, deadline=None)
@given(shapes)
def test_partial_checksums_become_the_full_one(shape: dict[str, object]) -> None:
    pkt = frame(**shape)  # type: ignore[arg-type]
    sent = with_checksum(pkt, partial_value(pkt))
    outcome, out = _slowpath.complete_checksum(sent)
    if sent == bytes(pkt):  # the partial value happens to verify (about 1 in 65,535): nothing to do
        assert outcome == "valid"
        return
    assert (outcome, out) == ("completed", bytes(pkt))


@settings(max_examples=300, deadline=None)
@given(shapes, st.integers(min_value=1, max_value=0xFFFE))
def test_any_other_checksum_is_bad_and_unchanged(shape: dict[str, object], value: int) -> None:
    pkt = frame(**shape)  # type: ignore[arg-type]
    good, partial = int(l4_of(pkt).chksum), partial_value(pkt)
    # One's complement has two zeros: 0xFFFF and 0 are the same checksum for TCP.
    if value % 0xFFFF in (good % 0xFFFF, partial % 0xFFFF):
        return
    sent = with_checksum(pkt, value)
    assert _slowpath.complete_checksum(sent) == ("bad", sent)


def test_udp_zero_checksum_is_absent_over_ipv4_and_bad_over_ipv6() -> None:
    v4 = with_checksum(frame(4, False, b"zero"), 0)
    v6 = with_checksum(frame(6, False, b"zero"), 0)
    assert _slowpath.complete_checksum(v4) == ("absent", v4)   # RFC 768: no checksum
    assert _slowpath.complete_checksum(v6) == ("bad", v6)      # RFC 8200 8.1: not allowed


def test_tcp_partial_zero_and_ffff_are_one_value() -> None:
    """A TCP segment whose pseudo-header folds to 0xFFFF: a field of 0 (the other one's-complement
    zero) is then the partial value too."""
    def segment(last: int) -> Packet:
        src = str(ipaddress.ip_address(V6[0]) + last)
        return Ether(bytes(eth() / IPv6(src=src, dst=V6[1]) / TCP(dport=8080) / Raw(b"payload")))

    pkt = segment(0xFFFF - partial_value(segment(0)))  # the source's last word shifts the sum by as much
    assert partial_value(pkt) == 0xFFFF
    sent = with_checksum(pkt, 0)
    expected = "valid" if sent == bytes(pkt) else "completed"
    assert _slowpath.complete_checksum(sent) == (expected, bytes(pkt))


def test_fragments_are_left_to_the_stack() -> None:
    first_v4 = bytes(eth() / IP(src=V4[0], dst=V4[1], flags="MF") / TCP(dport=8080, chksum=0x1234)
                     / Raw(b"a" * 32))
    first_v6 = bytes(eth() / IPv6(src=V6[0], dst=V6[1]) / IPv6ExtHdrFragment(offset=0, m=1)
                     / TCP(dport=8080, chksum=0x1234) / Raw(b"a" * 32))
    assert _slowpath.complete_checksum(first_v4) == ("not_checked", first_v4)
    assert _slowpath.complete_checksum(first_v6) == ("not_checked", first_v6)


def test_truncated_and_odd_frames_never_crash() -> None:
    pkt = bytes(frame(6, True, b"payload", ext=("hbh", "dst")))
    for cut in range(len(pkt)):
        outcome, out = _slowpath.complete_checksum(pkt[:cut])
        assert out == pkt[:cut] and outcome in ("not_parsed", "bad")
