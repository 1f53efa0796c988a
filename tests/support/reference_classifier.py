"""A Python model of the fast path's judgement, for differential testing of the XDP program.

Written from the documented semantics (README "Stages and reasons", docs/security.md, the
comments of bpf/include/hyperion_abi.h and bpf/lib/parsing.h), reading the frame's bytes with
struct. It shares no code with the BPF program: the only input it takes from Hyperion is the
validated Policy (the lists it names).

Parsing, in order (each failure is a drop with its own reason):
- Ethernet: 14 bytes. Up to two VLAN tags (0x8100, 0x88a8), 4 bytes each, else truncated_vlan;
  a third tag is too_many_vlans. Ethertypes other than IPv4/IPv6 pass as non_ip.
- IPv4: 20 bytes (truncated_ipv4), version 4 (bad_ip_version), IHL >= 5 (bad_ihl), the IHL's
  header within the frame (truncated_ipv4), header <= total length <= frame (bad_ip_length).
  Fragment offset != 0: a non-first fragment, whose L4 header is not parsed. Offset 0 with
  More Fragments set: a first fragment (below).
- IPv6: 40 bytes (truncated_ipv6), version 6, 40 + payload length within the frame
  (bad_ip_length). Extension headers (hop-by-hop 0, routing 43, destination options 60, AH 51,
  fragment 44) are walked, at most HYP_IPV6_EXT_MAX of them (too_many_exthdrs beyond), each
  whole (truncated_exthdr). A fragment header with a non-zero offset makes the packet a
  non-first fragment; offset 0 with M set a first fragment; offset 0 with M clear is an
  atomic fragment (RFC 6946), a whole datagram.
- L4 of first fragments and whole packets, within the IP datagram (the IP header's length, not
  the frame): TCP 20 bytes and data offset >= 5 with the options inside (truncated_tcp,
  bad_tcp_offset), UDP 8 bytes and 8 <= length <= datagram (truncated_udp, bad_udp_length),
  ICMP/ICMPv6 4 bytes (truncated_icmp). Other protocols have no ports.
  A first fragment's UDP length and TCP data offset describe the reassembled datagram (RFC 768,
  RFC 791, RFC 8200 4.5; the Linux stack checks them after reassembly): in a first fragment the
  UDP length is only checked to be >= 8 and the TCP options may extend past the fragment. The
  fixed UDP/TCP header itself must be in the first fragment (the ports classify it). An IPv6 UDP
  length of 0 means the rest of the datagram (RFC 2675; the Linux stack accepts it at any size).

Stages: allowlist (pass) -> CIDR blocklist -> exact-IP blocklist -> dynamic blocklist (an
unexpired entry) -> non-first fragments pass (fragment) -> redirect class by (protocol,
destination port) -> pass (no_match). A redirect class without an AF_XDP socket on the queue
takes its on_failure fallback (redirect_failed). Monitor mode reports drops and redirects as
would_drop / would_redirect and passes everything.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from hyperion.policy.model import Policy

ETH_HLEN = 14
VLAN_ETHERTYPES = (0x8100, 0x88A8)
VLAN_MAX_DEPTH = 2
IPV6_EXT_MAX = 8
# Extension headers with a length byte: hop-by-hop, routing, destination options, AH.
IPV6_OPTION_HEADERS = (0, 43, 60, 51)
IPV6_FRAGMENT = 44
IPPROTO_AH = 51
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# XDP action of each verdict (monitor-mode verdicts pass).
ACTION_OF_VERDICT = {"pass": "pass", "drop": "drop", "redirect": "redirect", "would_drop": "pass",
                     "would_redirect": "pass"}


class Malformed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Parsed:
    version: int  # 4, 6; 0 for non-IP frames
    source: IPAddress | None = None
    protocol: int = 0
    dst_port: int = 0
    nonfirst_fragment: bool = False
    first_fragment: bool = False


def _u16(frame: bytes, offset: int) -> int:
    return int(struct.unpack_from("!H", frame, offset)[0])


def parse(frame: bytes) -> Parsed:
    """The parse stage; raises Malformed with the reason."""
    if len(frame) < ETH_HLEN:
        raise Malformed("truncated_eth")
    ethertype, pos = _u16(frame, 12), ETH_HLEN
    for _ in range(VLAN_MAX_DEPTH):
        if ethertype not in VLAN_ETHERTYPES:
            break
        if pos + 4 > len(frame):
            raise Malformed("truncated_vlan")
        ethertype, pos = _u16(frame, pos + 2), pos + 4
    if ethertype in VLAN_ETHERTYPES:
        raise Malformed("too_many_vlans")
    if ethertype == 0x0800:
        parsed, l4, end = _ipv4(frame, pos)
    elif ethertype == 0x86DD:
        parsed, l4, end = _ipv6(frame, pos)
    else:
        return Parsed(0)
    if parsed.nonfirst_fragment:
        return parsed
    return _l4(frame, parsed, l4, end)


def _ipv4(frame: bytes, pos: int) -> tuple[Parsed, int, int]:
    if pos + 20 > len(frame):
        raise Malformed("truncated_ipv4")
    if frame[pos] >> 4 != 4:
        raise Malformed("bad_ip_version")
    header = (frame[pos] & 0x0F) * 4
    if header < 20:
        raise Malformed("bad_ihl")
    if pos + header > len(frame):
        raise Malformed("truncated_ipv4")
    total = _u16(frame, pos + 2)
    if total < header or pos + total > len(frame):
        raise Malformed("bad_ip_length")
    flags_offset = _u16(frame, pos + 6)
    nonfirst = (flags_offset & 0x1FFF) != 0
    first = not nonfirst and bool(flags_offset & 0x2000)  # offset 0, More Fragments
    source = ipaddress.IPv4Address(frame[pos + 12:pos + 16])
    return Parsed(4, source, frame[pos + 9], 0, nonfirst, first), pos + header, pos + total


def _ipv6(frame: bytes, pos: int) -> tuple[Parsed, int, int]:
    if pos + 40 > len(frame):
        raise Malformed("truncated_ipv6")
    if frame[pos] >> 4 != 6:
        raise Malformed("bad_ip_version")
    end = pos + 40 + _u16(frame, pos + 4)
    if end > len(frame):
        raise Malformed("bad_ip_length")
    source = ipaddress.IPv6Address(frame[pos + 8:pos + 24])
    bound = end  # extension headers must fit in the datagram its header claims
    nexthdr, cur, first = frame[pos + 6], pos + 40, False
    for _ in range(IPV6_EXT_MAX + 1):  # up to IPV6_EXT_MAX headers, then the upper layer
        if nexthdr in IPV6_OPTION_HEADERS:
            if cur + 2 > bound:
                raise Malformed("truncated_exthdr")
            length = (frame[cur + 1] + 2) * 4 if nexthdr == IPPROTO_AH else (frame[cur + 1] + 1) * 8
            if cur + length > bound:
                raise Malformed("truncated_exthdr")
            nexthdr, cur = frame[cur], cur + length
        elif nexthdr == IPV6_FRAGMENT:
            if cur + 8 > bound:
                raise Malformed("truncated_exthdr")
            nexthdr, cur = frame[cur], cur + 8
            offset_m = _u16(frame, cur - 8 + 2)
            if offset_m & 0xFFF8:  # non-first: fragment data follows, not headers
                return Parsed(6, source, nexthdr, 0, True), cur, end
            first = first or bool(offset_m & 1)  # M clear: an atomic fragment, a whole datagram
        else:
            return Parsed(6, source, nexthdr, 0, False, first), cur, end
    raise Malformed("too_many_exthdrs")


def _l4(frame: bytes, parsed: Parsed, pos: int, end: int) -> Parsed:
    protocol, dst_port = parsed.protocol, 0
    if protocol == TCP:
        if pos + 20 > end:
            raise Malformed("truncated_tcp")
        offset = frame[pos + 12] >> 4
        if offset < 5:
            raise Malformed("bad_tcp_offset")
        if pos + offset * 4 > end and not parsed.first_fragment:
            raise Malformed("truncated_tcp")
        dst_port = _u16(frame, pos + 2)
    elif protocol == UDP:
        if pos + 8 > end:
            raise Malformed("truncated_udp")
        length = _u16(frame, pos + 4)
        if length == 0 and parsed.version == 6:  # RFC 2675: the rest of the datagram; Linux takes it
            length = end - pos
        if length < 8 or (pos + length > end and not parsed.first_fragment):
            raise Malformed("bad_udp_length")
        dst_port = _u16(frame, pos + 2)
    elif protocol in (ICMP, ICMPV6) and pos + 4 > end:
        raise Malformed("truncated_icmp")
    return Parsed(parsed.version, parsed.source, protocol, dst_port, False)


@dataclass
class ReferenceFastPath:
    """The stages of one policy, plus the dynamic blocklist as the test set it."""

    policy: Policy
    # address -> still in force (False: an entry whose expiry has passed, ignored by the program)
    dynamic_blocks: Mapping[IPAddress, bool] = field(default_factory=dict)
    socket_on_queue: bool = False

    def __post_init__(self) -> None:
        fast = self.policy.fast_path
        self._allow: tuple[IPNetwork, ...] = tuple(fast.allow_cidrs)
        self._drop_cidrs: tuple[IPNetwork, ...] = tuple(fast.drop_cidrs)
        self._drop_ips = frozenset(fast.drop_ips)
        self._classes = {(c.protocol, c.port): c.on_failure for c in fast.redirect_ports}
        self._monitor = self.policy.mode == "monitor"
        slow = self.policy.slow_path
        if slow.dns_name_rules == "xdp" and any(c.protocol in (UDP, TCP) and c.port in slow.dns_ports
                                                for c in fast.redirect_ports):
            # The DNS stage has a reference of its own (tests/support/dns_maps.py, dnspython-based,
            # in tests/kernel/test_xdp_dns.py and test_xdp_dns_tcp.py); this one models the stages before it.
            raise ValueError("the reference classifier does not model the XDP DNS stage: a UDP or TCP class "
                             "on a DNS port needs slow_path.dns_name_rules: slow_path here")

    @staticmethod
    def _within(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
        return any(address.version == n.version and address in n for n in networks)

    def judge(self, frame: bytes) -> tuple[str, str]:
        """(verdict, reason) the program must count for this frame."""
        verdict, reason = self._judge(frame)
        if self._monitor:
            verdict = {"drop": "would_drop", "redirect": "would_redirect"}.get(verdict, verdict)
        return verdict, reason

    def _judge(self, frame: bytes) -> tuple[str, str]:
        try:
            packet = parse(frame)
        except Malformed as exc:
            return "drop", exc.reason
        if packet.version == 0 or packet.source is None:
            return "pass", "non_ip"
        source = packet.source
        if self._within(source, self._allow):
            return "pass", "allowlist"
        if self._within(source, self._drop_cidrs):
            return "drop", "blocklist_cidr"
        if source in self._drop_ips:
            return "drop", "blocklist_ip"
        if self.dynamic_blocks.get(source, False):
            return "drop", "blocklist_dynamic"
        if packet.nonfirst_fragment:
            return "pass", "fragment"
        on_failure = self._classes.get((packet.protocol, packet.dst_port))
        if on_failure is None:
            return "pass", "no_match"
        if self._monitor or self.socket_on_queue:
            return "redirect", "redirect_class"
        return on_failure, "redirect_failed"
