"""The hand-written XDP cases (frame, expected action, verdict and counter) and their policy:
judged by the program (tests/kernel/test_xdp_fixtures.py) and by the reference classifier."""

from __future__ import annotations

from dataclasses import dataclass

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

POLICY = """
fast_path:
  allow_cidrs: ["192.0.2.0/28", "203.0.113.7", "2001:db8:1::/48"]
  drop_ips: ["198.51.100.42", "2001:db8:ff::42"]
  drop_cidrs: ["203.0.113.0/24", "2001:db8:bad::/48"]
  redirect_ports:
    - {protocol: udp, port: 53, on_failure: drop}
    - {protocol: tcp, port: 8080, on_failure: pass}
slow_path:
  dns_name_rules: slow_path  # classes redirected whole: the DNS stage is tests/kernel/test_xdp_dns.py's
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
