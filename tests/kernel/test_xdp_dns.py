"""The XDP DNS stage under BPF_PROG_TEST_RUN: name rules written straight into hyp_dns_short /
hyp_dns_long (tests/support/dns_maps.py, from the ABI's key format), queries built with dnspython
and scapy. Every case asserts the XDP action and the exact (verdict, reason) counter delta; answers
are parsed back with scapy and dnspython and their checksums recomputed by scapy."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet, Raw

from hyperion.daemon.events import EventDecoder, EventReader
from hyperion.fastpath.program import FastPath
from hyperion.kernel.testrun import run_xdp
from tests.support.dns_maps import (
    DNS_ONLY,
    Action,
    ClassFlag,
    DnsClass,
    DnsMaps,
    Entry,
    Kind,
    Rule,
    delta,
    exact,
    key_name,
    query,
    reference_match,
    suffix,
)

CLIENT4, SERVER4 = "198.51.100.10", "192.0.2.53"
CLIENT6, SERVER6 = "2001:db8:c::10", "2001:db8:53::53"
CLIENT_MAC, SERVER_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
UDP_P, TCP_P = 17, 6
A, AAAA, MX, TXT = 1, 28, 15, 16

DNS_SLOW = DnsClass(UDP_P, 53, ClassFlag.DNS | ClassFlag.SLOWPATH, on_failure_drop=True)
DNS_SLOW_OPEN = DnsClass(UDP_P, 53, ClassFlag.DNS | ClassFlag.SLOWPATH, on_failure_drop=False)
LEGACY = DnsClass(UDP_P, 53, 0, on_failure_drop=True)  # flags 0: a class from before the DNS stage


@pytest.fixture
def maps(detached: tuple[FastPath, int]) -> Iterator[tuple[DnsMaps, int]]:
    fastpath, prog_fd = detached
    writer = DnsMaps(fastpath)
    try:
        yield writer, prog_fd
    finally:
        writer.close()


def frame4(payload: bytes, *, dst: str = SERVER4, dst_mac: str = SERVER_MAC, chksum: int | None = None,
           **ip: object) -> bytes:
    udp = UDP(sport=40000, dport=53) if chksum is None else UDP(sport=40000, dport=53, chksum=chksum)
    return bytes(Ether(src=CLIENT_MAC, dst=dst_mac) / IP(src=CLIENT4, dst=dst, id=77, ttl=33, **ip) / udp
                 / Raw(payload))


def frame6(payload: bytes, *, dst: str = SERVER6, chksum: int | None = None, ext: Packet | None = None) -> bytes:
    udp = UDP(sport=40000, dport=53) if chksum is None else UDP(sport=40000, dport=53, chksum=chksum)
    ip = IPv6(src=CLIENT6, dst=dst, hlim=33)
    return bytes(Ether(src=CLIENT_MAC, dst=SERVER_MAC) / (ip / ext if ext is not None else ip) / udp / Raw(payload))


def frame_vlan(payload: bytes) -> bytes:
    return bytes(Ether(src=CLIENT_MAC, dst=SERVER_MAC) / Dot1Q(vlan=42) / IP(src=CLIENT4, dst=SERVER4, ttl=33)
                 / UDP(sport=40000, dport=53) / Raw(payload))


def counters(fastpath: FastPath) -> dict[tuple[str, str], tuple[int, int]]:
    return fastpath.counters()


@dataclass(frozen=True)
class Outcome:
    action: str
    counted: dict[tuple[str, str], tuple[int, int]]
    data_out: bytes


def run(writer: DnsMaps, prog_fd: int, frame: bytes) -> Outcome:
    before = counters(writer.fastpath)
    result = run_xdp(prog_fd, frame)
    return Outcome(result.action, delta(before, counters(writer.fastpath)), result.data_out)


def expect(writer: DnsMaps, prog_fd: int, frame: bytes, action: str, verdict: str, reason: str) -> Outcome:
    outcome = run(writer, prog_fd, frame)
    assert (outcome.action, outcome.counted) == (action, {(verdict, reason): (1, len(frame))})
    return outcome


# ---- matching ------------------------------------------------------------------------------

def test_exact_match_drops(maps: tuple[DnsMaps, int]) -> None:
    writer, fd = maps
    rules = [exact("evil.example", Action.DROP)]
    writer.install([DNS_ONLY], rules)
    expect(writer, fd, frame4(query("evil.example")), "drop", "drop", "dns_drop")
    expect(writer, fd, frame4(query("www.evil.example")), "pass", "pass", "dns_no_match")
    expect(writer, fd, frame4(query("example")), "pass", "pass", "dns_no_match")
    expect(writer, fd, frame4(query("nevil.example")), "pass", "pass", "dns_no_match")
    assert writer.hits(rules[0]) == 1


def test_suffix_matches_subdomains_not_the_apex(maps: tuple[DnsMaps, int]) -> None:
    writer, fd = maps
    writer.install([DNS_ONLY], [suffix("evil.example", Action.DROP)])
    for name in ("www.evil.example", "a.b.c.evil.example"):
        expect(writer, fd, frame4(query(name)), "drop", "drop", "dns_drop")
    for name in ("evil.example", "example", "notevil.example", "evil.example.org"):
        expect(writer, fd, frame4(query(name)), "pass", "pass", "dns_no_match")


def test_most_specific_rule_wins(maps: tuple[DnsMaps, int]) -> None:
    writer, fd = maps
    rules = [
        suffix("example", Action.DROP),             # 1
        suffix("good.example", Action.ALLOW),       # 2: longer suffix beats rule 1
        exact("bad.good.example", Action.DROP),     # 3: exact beats the suffixes
        suffix("bad.good.example", Action.ALERT),   # 4: below it
        exact("x.example", Action.ALLOW),           # 5
        exact("x.example", Action.DROP),            # 6: identical (kind, name, qtype): the first wins
    ]
    writer.install([DNS_ONLY], rules)
    expect(writer, fd, frame4(query("other.example")), "drop", "drop", "dns_drop")
    expect(writer, fd, frame4(query("www.good.example")), "pass", "pass", "dns_allow")
    expect(writer, fd, frame4(query("bad.good.example")), "drop", "drop", "dns_drop")
    expect(writer, fd, frame4(query("a.bad.good.example")), "pass", "pass", "dns_alert")
    expect(writer, fd, frame4(query("x.example")), "pass", "pass", "dns_allow")
    assert [writer.hits(r) for r in rules[:5]] == [1, 1, 1, 1, 1]


def test_qtype_rule_beats_any_and_placeholder_falls_through(maps: tuple[DnsMaps, int]) -> None:
    writer, fd = maps
    rules = [
        exact("mail.example", Action.DROP),                    # 1: any qtype
        exact("mail.example", Action.ALLOW, qtype=MX),         # 2: MX beats 1
        suffix("example", Action.ALERT),                       # 3
        suffix("q.example", Action.NXDOMAIN, qtype=TXT),       # 4: only a qtype rule: placeholder for any
    ]
    writer.install([DNS_ONLY], rules)
    expect(writer, fd, frame4(query("mail.example", MX)), "pass", "pass", "dns_allow")
    expect(writer, fd, frame4(query("mail.example", A)), "drop", "drop", "dns_drop")
    expect(writer, fd, frame4(query("www.q.example", TXT)), "tx", "answer", "dns_nxdomain")
    # Not TXT: the placeholder on q.example decides nothing, the shorter *.example does.
    expect(writer, fd, frame4(query("www.q.example", A)), "pass", "pass", "dns_alert")
    assert [writer.hits(r) for r in rules] == [1, 1, 1, 1]
    placeholder = writer.dns_key(Kind.SUFFIX, key_name(dns.name.from_text("q.example")), 0)
    raw = writer.active_map(placeholder[0]).lookup(placeholder[1])
    assert raw is not None and writer.abi.btf.struct("hyp_dns_rule").from_buffer_copy(raw).hits == 0


def test_matching_is_case_insensitive(maps: tuple[DnsMaps, int]) -> None:
    writer, fd = maps
    writer.install([DNS_ONLY], [exact("Evil.Example", Action.DROP), suffix("sub.EXAMPLE", Action.DROP)])
    for name in ("EVIL.EXAMPLE", "eViL.example", "WWW.Sub.Example"):
        expect(writer, fd, frame4(query(dns.name.from_text(name))), "drop", "drop", "dns_drop")


def test_long_names_use_the_long_map(maps: tuple[DnsMaps, int]) -> None:
    writer, fd = maps
    long_label = "l" * 40                                     # 41 key bytes: the long map
    name_253 = ".".join(["abcdefghi"] * 25) + ".abc"         # 25 * 10 + 3 = 253 characters
    one_char = ".".join(["a"] * 127)                          # 127 labels, 254 wire bytes plus the root
    suffix_100 = ".".join(["a"] * 100)
    assert len(name_253) == 253 and len(key_name(dns.name.from_text(name_253))) == 254
    rules = [
        exact(f"{long_label}.example", Action.DROP),
        suffix(f"{long_label}.example", Action.REFUSE),
        exact(name_253, Action.DROP),
        exact(one_char, Action.ALLOW),
        suffix(suffix_100, Action.ALERT),
    ]
    writer.install([DNS_ONLY], rules)
    assert writer.dns_key(Kind.EXACT, key_name(dns.name.from_text(one_char)), 0)[0] == "hyp_dns_long"
    expect(writer, fd, frame4(query(f"{long_label}.example")), "drop", "drop", "dns_drop")
    expect(writer, fd, frame4(query(f"x.{long_label}.example")), "tx", "answer", "dns_refused")
    expect(writer, fd, frame4(query(name_253)), "drop", "drop", "dns_drop")
    expect(writer, fd, frame4(query(one_char)), "pass", "pass", "dns_allow")
    # 126 labels: not the exact 127-label rule; a strict subdomain of the 100-label suffix.
    expect(writer, fd, frame4(query(".".join(["a"] * 126))), "pass", "pass", "dns_alert")
    expect(writer, fd, frame4(query(suffix_100)), "pass", "pass", "dns_no_match")
    assert [writer.hits(r) for r in rules] == [1, 1, 1, 1, 1]


def test_label_bitmaps_gate_the_lookups(maps: tuple[DnsMaps, int]) -> None:
    """The program looks up only label counts the settings list: with the bits cleared, nothing matches."""
    writer, fd = maps
    writer.install([DNS_ONLY], [exact("a.b.example", Action.DROP), suffix("example", Action.DROP)])
    expect(writer, fd, frame4(query("a.b.example")), "drop", "drop", "dns_drop")
    writer.set_label_bits(exact_bits=1 << 2, suffix_bits=1 << 1)  # wrong count for the exact rule
    expect(writer, fd, frame4(query("a.b.example")), "drop", "drop", "dns_drop")  # via *.example
    writer.set_label_bits(exact_bits=1 << 3, suffix_bits=1 << 2)
    expect(writer, fd, frame4(query("a.b.example")), "drop", "drop", "dns_drop")  # exact again
    expect(writer, fd, frame4(query("c.d.example")), "pass", "pass", "dns_no_match")


# ---- answers ---------------------------------------------------------------------------------

def pseudo_sum(src: bytes, dst: bytes, length: int) -> int:
    """The folded, uncomplemented pseudo-header sum: what an offloading sender leaves in the field."""
    words = src + dst + struct.pack("!HH", UDP_P, length)
    total = sum(struct.unpack(f"!{len(words) // 2}H", words))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def check_answer(query_frame: bytes, out: bytes, rcode: int, *, ipv6: bool = False, vlan: bool = False) -> None:
    q, a = Ether(query_frame), Ether(out)
    assert (a.src, a.dst) == (q.dst, q.src)
    if vlan:
        assert a[Dot1Q].vlan == q[Dot1Q].vlan
    ip_q, ip_a = (q[IPv6], a[IPv6]) if ipv6 else (q[IP], a[IP])
    assert (ip_a.src, ip_a.dst) == (ip_q.dst, ip_q.src)
    assert (a[UDP].sport, a[UDP].dport) == (q[UDP].dport, q[UDP].sport)
    qmsg = bytes(q[UDP].payload)[:q[UDP].len - 8]  # without any Ethernet padding
    amsg = bytes(a[UDP].payload)
    parsed_q = dns.message.from_wire(qmsg)
    parsed_a = dns.message.from_wire(amsg)
    assert parsed_a.id == parsed_q.id
    assert parsed_a.flags & dns.flags.QR
    assert parsed_a.flags & dns.flags.RA
    assert bool(parsed_a.flags & dns.flags.RD) == bool(parsed_q.flags & dns.flags.RD)
    assert not parsed_a.flags & (dns.flags.AA | dns.flags.TC)
    assert parsed_a.opcode() == dns.opcode.QUERY
    assert parsed_a.rcode() == rcode
    assert parsed_a.question == parsed_q.question
    assert not parsed_a.answer and not parsed_a.authority and not parsed_a.additional
    assert parsed_a.edns == -1  # no OPT record either
    # The question byte for byte: the answer is the header plus the query's question.
    question_end = 12 + len(parsed_q.question[0].name.to_wire()) + 4
    assert len(amsg) == question_end and amsg[12:] == qmsg[12:question_end]
    assert struct.unpack("!4H", amsg[4:12]) == (1, 0, 0, 0)
    assert a[UDP].len == 8 + question_end
    if ipv6:
        assert ip_a.plen == 8 + question_end and ip_a.hlim == 64
    else:
        assert ip_a.len == 20 + 8 + question_end and ip_a.ttl == 64 and ip_a.flags == "DF" and ip_a.frag == 0
        assert ip_a.ihl == 5
    assert len(out) == (18 if vlan else 14) + (40 if ipv6 else 20) + 8 + question_end  # nothing after it
    # Checksums as scapy computes them on the same packet.
    rebuilt = a.copy()
    if not ipv6:
        del rebuilt[IP].chksum
    del rebuilt[UDP].chksum
    rebuilt = Ether(bytes(rebuilt))
    if not ipv6:
        assert a[IP].chksum == rebuilt[IP].chksum
    assert a[UDP].chksum == rebuilt[UDP].chksum and a[UDP].chksum != 0


@pytest.mark.parametrize("action,rcode,reason", [(Action.NXDOMAIN, dns.rcode.NXDOMAIN, "dns_nxdomain"),
                                                 (Action.REFUSE, dns.rcode.REFUSED, "dns_refused")])
@pytest.mark.parametrize("family", ["ipv4", "ipv6", "vlan"])
@pytest.mark.parametrize("checksum", ["full", "partial", "bogus"])
def test_answers(maps: tuple[DnsMaps, int], action: Action, rcode: int, reason: str, family: str,
                 checksum: str) -> None:
    writer, fd = maps
    rules = [suffix("blocked.example", action)]
    writer.install([DNS_ONLY], rules)
    payload = query("www.Blocked.example", AAAA, edns=True)  # an OPT record after the question
    length = 8 + len(payload)
    if family == "ipv6":
        partial = pseudo_sum(ipaddress.ip_address(CLIENT6).packed, ipaddress.ip_address(SERVER6).packed, length)
        chk = {"full": None, "partial": partial, "bogus": 0x1234}[checksum]
        frame = frame6(payload, chksum=chk)
    else:
        partial = pseudo_sum(ipaddress.ip_address(CLIENT4).packed, ipaddress.ip_address(SERVER4).packed, length)
        chk = {"full": None, "partial": partial, "bogus": 0x1234}[checksum]
        frame = frame4(payload, chksum=chk) if family == "ipv4" else frame_vlan(payload)
        if family == "vlan" and chk is not None:
            pkt = Ether(frame)
            pkt[UDP].chksum = chk
            frame = bytes(pkt)
    outcome = expect(writer, fd, frame, "tx", "answer", reason)
    check_answer(frame, outcome.data_out, rcode, ipv6=family == "ipv6", vlan=family == "vlan")
    assert writer.hits(rules[0]) == 1


def test_answer_keeps_rd_clear_and_drops_padding(maps: tuple[DnsMaps, int]) -> None:
    writer, fd = maps
    writer.install([DNS_ONLY], [exact("blocked.example", Action.NXDOMAIN)])
    frame = frame4(query("blocked.example", rd=False)) + b"\0" * 30  # Ethernet padding after the datagram
    outcome = expect(writer, fd, frame, "tx", "answer", "dns_nxdomain")
    check_answer(frame, outcome.data_out, dns.rcode.NXDOMAIN)


@pytest.mark.parametrize("description,frame", [
    ("IPv4 options", frame4(query("blocked.example"), options=b"\x01\x01\x01\x00")),
    ("IPv4 multicast destination", frame4(query("blocked.example"), dst="224.0.0.251")),
    ("IPv4 limited broadcast", frame4(query("blocked.example"), dst="255.255.255.255")),
    ("broadcast MAC", frame4(query("blocked.example"), dst_mac="ff:ff:ff:ff:ff:ff")),
    ("multicast MAC", frame4(query("blocked.example"), dst_mac="01:00:5e:00:00:fb")),
    ("IPv6 multicast destination", frame6(query("blocked.example"), dst="ff02::fb")),
    ("IPv6 extension header", frame6(query("blocked.example"), ext=IPv6ExtHdrHopByHop())),
])
def test_unanswerable_is_dropped(maps: tuple[DnsMaps, int], description: str, frame: bytes) -> None:
    writer, fd = maps
    rules = [exact("blocked.example", Action.REFUSE)]
    writer.install([DNS_ONLY], rules)
    expect(writer, fd, frame, "drop", "drop", "dns_unanswerable")
    assert writer.hits(rules[0]) == 1


def test_monitor_mode_passes_unchanged(maps: tuple[DnsMaps, int]) -> None:
    writer, fd = maps
    writer.install([DNS_ONLY], [exact("answer.example", Action.NXDOMAIN), exact("drop.example", Action.DROP),
                                exact("refuse.example", Action.REFUSE)], monitor=True)
    for name, verdict, reason in (("answer.example", "would_answer", "dns_nxdomain"),
                                  ("refuse.example", "would_answer", "dns_refused"),
                                  ("drop.example", "would_drop", "dns_drop")):
        frame = frame4(query(name))
        outcome = expect(writer, fd, frame, "pass", verdict, reason)
        assert outcome.data_out == frame


# ---- malformed and unsupported queries ------------------------------------------------------------

def header(qdcount: int = 1, flags: int = 0x0100) -> bytes:
    return struct.pack("!6H", 0x4242, flags, qdcount, 0, 0, 0)


QUESTION_TAIL = struct.pack("!HH", A, 1)
MALFORMED = [
    ("truncated header", header()[:8]),
    ("compression pointer in the question", header() + b"\xc0\x0c" + QUESTION_TAIL),
    ("pointer after a label", header() + b"\x03www\xc0\x0c" + QUESTION_TAIL),
    ("label past the end", header() + b"\x05ab"),
    ("root label missing", header() + b"\x03www"),
    ("question past the end", header() + b"\x03www\x00\x00\x01\x00"),
    ("name longer than 255 bytes", header() + (b"\x3f" + b"a" * 63) * 4 + b"\x00" + QUESTION_TAIL),
    ("reserved label type 0x40", header() + b"\x41a\x00" + QUESTION_TAIL),
    ("reserved label type 0x80", header() + b"\x81a\x00" + QUESTION_TAIL),
    ("NUL in a label", header() + b"\x03a\x00b\x00" + QUESTION_TAIL),
    ("dot in a label", header() + b"\x03a.b\x07example\x00" + QUESTION_TAIL),
]


@pytest.mark.parametrize("description,payload", MALFORMED, ids=[m[0] for m in MALFORMED])
@pytest.mark.parametrize("setting,action,verdict", [(Action.DROP, "drop", "drop"), (Action.ALLOW, "pass", "pass"),
                                                    (Action.ALERT, "pass", "pass")])
def test_malformed(maps: tuple[DnsMaps, int], description: str, payload: bytes, setting: Action, action: str,
                   verdict: str) -> None:
    writer, fd = maps
    writer.install([DNS_SLOW], [suffix("example", Action.DROP)], malformed=setting)
    writer.fastpath.set_event_rate(1000)
    events = writer.fastpath.event_stats()["emitted"]
    expect(writer, fd, frame4(payload), action, verdict, "dns_malformed")
    assert writer.fastpath.event_stats()["emitted"] - events == (0 if setting == Action.ALLOW else 1)


def test_name_of_255_bytes_is_not_malformed(maps: tuple[DnsMaps, int]) -> None:
    """The limit's other side: 254 name bytes and the root label (RFC 1035 2.3.4) are fine, 255 are not."""
    writer, fd = maps
    writer.install([DNS_ONLY], [suffix("example", Action.DROP)])
    labels = (b"\x3f" + b"a" * 63) * 3
    longest = labels + b"\x3d" + b"a" * 61
    assert len(longest) == 254
    expect(writer, fd, frame4(header() + longest + b"\x00" + QUESTION_TAIL), "pass", "pass", "dns_no_match")
    too_long = labels + b"\x3e" + b"a" * 62
    expect(writer, fd, frame4(header() + too_long + b"\x00" + QUESTION_TAIL), "drop", "drop", "dns_malformed")


@pytest.mark.parametrize("qdcount", [0, 2])
@pytest.mark.parametrize("setting,action,verdict", [(Action.DROP, "drop", "drop"), (Action.ALLOW, "pass", "pass"),
                                                    (Action.ALERT, "pass", "pass")])
def test_qdcount(maps: tuple[DnsMaps, int], qdcount: int, setting: Action, action: str, verdict: str) -> None:
    writer, fd = maps
    writer.install([DNS_SLOW], [exact("evil.example", Action.DROP)], malformed=setting)
    payload = header(qdcount) + query("evil.example")[12:] * (1 if qdcount < 2 else 2)
    expect(writer, fd, frame4(payload), action, verdict, "dns_qdcount")


@pytest.mark.parametrize("flags", [0x8180, 0x2100], ids=["response", "opcode notify"])
def test_not_a_query(maps: tuple[DnsMaps, int], flags: int) -> None:
    writer, fd = maps
    payload = header(flags=flags) + query("evil.example")[12:]
    writer.install([DNS_ONLY], [exact("evil.example", Action.DROP)])
    expect(writer, fd, frame4(payload), "pass", "pass", "dns_not_query")
    # With something for the slow path, it goes there (no socket here: the class's fallback).
    writer.install([DNS_SLOW], [exact("evil.example", Action.DROP)])
    expect(writer, fd, frame4(payload), "drop", "drop", "redirect_failed")


# ---- allow, alert, the slow path ---------------------------------------------------------------

def test_allow_and_alert_pass_and_alert_emits_an_event(maps: tuple[DnsMaps, int]) -> None:
    writer, fd = maps
    writer.install([DNS_SLOW], [exact("ok.example", Action.ALLOW), exact("watch.example", Action.ALERT),
                                suffix("example", Action.DROP)])
    writer.fastpath.set_event_rate(1000)
    before = writer.fastpath.event_stats()["emitted"]
    expect(writer, fd, frame4(query("ok.example")), "pass", "pass", "dns_allow")
    assert writer.fastpath.event_stats()["emitted"] == before
    expect(writer, fd, frame4(query("watch.example")), "pass", "pass", "dns_alert")
    assert writer.fastpath.event_stats()["emitted"] == before + 1


def test_slowpath_entry_and_no_match_redirect_only_with_the_slowpath_flag(maps: tuple[DnsMaps, int]) -> None:
    writer, fd = maps
    rules = [exact("source.example", Action.SLOWPATH), exact("drop.example", Action.DROP)]
    # No AF_XDP socket in BPF_PROG_TEST_RUN: a redirect takes the class's fallback.
    writer.install([DNS_SLOW], rules)
    expect(writer, fd, frame4(query("source.example")), "drop", "drop", "redirect_failed")
    expect(writer, fd, frame4(query("other.example")), "drop", "drop", "redirect_failed")
    expect(writer, fd, frame4(query("drop.example")), "drop", "drop", "dns_drop")
    writer.install([DNS_SLOW_OPEN], rules)
    expect(writer, fd, frame4(query("other.example")), "pass", "pass", "redirect_failed")
    writer.install([DNS_ONLY], rules)
    expect(writer, fd, frame4(query("other.example")), "pass", "pass", "dns_no_match")
    # A tcp DNS class: its connections are judged segment by segment (tests/kernel/test_xdp_dns_tcp.py),
    # with or without the slow-path flag: a SYN passes. A tcp class without the DNS flag is redirected.
    writer.install([DnsClass(TCP_P, 53, ClassFlag.DNS, on_failure_drop=True)], rules)
    tcp = bytes(Ether(src=CLIENT_MAC, dst=SERVER_MAC) / IP(src=CLIENT4, dst=SERVER4) / TCP(dport=53))
    expect(writer, fd, tcp, "pass", "pass", "dns_tcp_no_data")
    writer.install([DnsClass(TCP_P, 53, ClassFlag.DNS | ClassFlag.SLOWPATH, on_failure_drop=True)], rules)
    expect(writer, fd, tcp, "pass", "pass", "dns_tcp_no_data")
    writer.install([DnsClass(TCP_P, 53, ClassFlag.SLOWPATH, on_failure_drop=True)], rules)
    expect(writer, fd, tcp, "drop", "drop", "redirect_failed")


def test_class_without_flags_behaves_as_before(maps: tuple[DnsMaps, int]) -> None:
    """flags 0 (a control plane from before the DNS stage): redirected, no DNS stage, whatever the rules."""
    writer, fd = maps
    writer.install([LEGACY], [exact("drop.example", Action.DROP)])
    expect(writer, fd, frame4(query("drop.example")), "drop", "drop", "redirect_failed")


def test_hits_count_each_decided_query(maps: tuple[DnsMaps, int]) -> None:
    writer, fd = maps
    rules = [suffix("example", Action.ALLOW), exact("a.example", Action.DROP), exact("a.example", Action.ALERT, MX)]
    writer.install([DNS_ONLY], rules)
    for _ in range(5):
        run(writer, fd, frame4(query("a.example")))
    for _ in range(3):
        run(writer, fd, frame4(query("a.example", MX)))
    for _ in range(7):
        run(writer, fd, frame4(query("b.example")))
    run(writer, fd, frame4(query("example")))  # the apex: nothing decides
    assert [writer.hits(r) for r in rules] == [7, 5, 3]


# ---- against a reference --------------------------------------------------------------------

# Letters of both cases, the bytes next to A-Z and a-z, and their high-bit twins (0xC1 = 0x80 | 'A'):
# what a lower-casing that is not ASCII-only, or off by one, would confuse. Labels past 8 bytes span
# several of the program's 8-byte chunks.
LABEL_ALPHABET = st.sampled_from([b"a", b"b", b"A", b"B", b"z", b"Z", b"-", b"0", b"@", b"[", b"`", b"{",
                                  b"\xc1", b"\xe1", b"\xc3"])
label_bytes = st.one_of(st.lists(LABEL_ALPHABET, min_size=1, max_size=3).map(b"".join),
                        st.lists(LABEL_ALPHABET, min_size=7, max_size=18).map(b"".join))
raw_label = st.one_of(st.binary(min_size=1, max_size=4),
                      st.lists(st.sampled_from([b".", b"\0", b"A", b"z", b"\xff", b"\x80", b"-"]), min_size=1,
                               max_size=4).map(b"".join))
names = st.lists(label_bytes, min_size=1, max_size=4)


@dataclass(frozen=True)
class Scenario:
    rules: tuple[Rule, ...]
    queries: tuple[tuple[tuple[bytes, ...], int], ...]


def _text(labels: tuple[bytes, ...]) -> str:
    return dns.name.Name((*labels, b"")).to_text()


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    base = draw(st.lists(names, min_size=1, max_size=5))
    rules = []
    for _ in range(draw(st.integers(1, 8))):
        labels = tuple(draw(st.sampled_from(base)))
        labels = labels[draw(st.integers(0, len(labels) - 1)):]
        kind = draw(st.sampled_from([Kind.EXACT, Kind.SUFFIX]))
        action = draw(st.sampled_from([Action.DROP, Action.ALLOW, Action.ALERT, Action.NXDOMAIN]))
        qtype = draw(st.sampled_from([0, 0, A, MX]))
        rules.append(Rule(kind, _text(labels), action, qtype))
    queries = []
    for _ in range(draw(st.integers(1, 6))):
        labels = list(draw(st.sampled_from(base)))
        labels = draw(st.lists(label_bytes, max_size=2)) + labels[draw(st.integers(0, len(labels) - 1)):]
        if draw(st.booleans()):  # random bytes, upper case, maybe a dot or NUL inside a label
            labels[0] = draw(raw_label)
        labels = [draw(st.sampled_from([label, label.upper(), label.lower()])) for label in labels]
        queries.append((tuple(labels), draw(st.sampled_from([A, MX, TXT]))))
    return Scenario(tuple(rules), tuple(queries))


def _wire_query(labels: tuple[bytes, ...], qtype: int) -> bytes:
    wire = b"".join(bytes([len(label)]) + label for label in labels) + b"\0"
    return header() + wire + struct.pack("!HH", qtype, 1)


def test_program_agrees_with_a_dnspython_reference(maps: tuple[DnsMaps, int]) -> None:
    writer, fd = maps
    action_reason = {Action.DROP: ("drop", "drop", "dns_drop"), Action.ALLOW: ("pass", "pass", "dns_allow"),
                     Action.ALERT: ("pass", "pass", "dns_alert"), Action.NXDOMAIN: ("tx", "answer", "dns_nxdomain")}
    checked = {"queries": 0, "matched": 0, "malformed": 0}

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(scenario=scenarios())
    def explore(scenario: Scenario) -> None:
        writer.install([DNS_ONLY], list(scenario.rules))
        for labels, qtype in scenario.queries:
            frame = frame4(_wire_query(labels, qtype))
            checked["queries"] += 1
            if any(b"." in label or b"\0" in label for label in labels):
                checked["malformed"] += 1
                expect(writer, fd, frame, "drop", "drop", "dns_malformed")
                continue
            qname = dns.name.Name((*labels, b""))
            reference = reference_match(scenario.rules, qname, qtype)
            hits_before = {r: writer.hits(r) for r in scenario.rules}
            if reference is None:
                expect(writer, fd, frame, "pass", "pass", "dns_no_match")
                assert {r: writer.hits(r) for r in scenario.rules} == hits_before
                continue
            checked["matched"] += 1
            rule_id, action = reference
            expect(writer, fd, frame, *action_reason[action])
            rule = scenario.rules[rule_id - 1]
            # Exactly the deciding rule's entry counted it (identical rules share one entry).
            after = {r: writer.hits(r) for r in scenario.rules}
            moved = {r for r in scenario.rules if after[r] != hits_before[r]}
            same = {r for r in scenario.rules if (r.kind, key_name(r.dns_name), r.qtype)
                    == (rule.kind, key_name(rule.dns_name), rule.qtype)}
            assert moved == same and all(after[r] == hits_before[r] + 1 for r in moved)

    explore()
    unmatched = checked["queries"] - checked["matched"] - checked["malformed"]
    assert checked["matched"] > 50 and checked["malformed"] > 5 and unmatched > 50, checked


def test_raw_entries_match_by_stored_name_only(maps: tuple[DnsMaps, int]) -> None:
    """A hit is the stored name itself: a different name of the same length never matches."""
    writer, fd = maps
    name = key_name(dns.name.from_text("evil.example"))
    writer.install([DNS_ONLY], [exact("evil.example", Action.DROP)],
                   raw_entries={(Kind.EXACT, name, 0): Entry(9, Action.DROP)})
    expect(writer, fd, frame4(query("evil.example")), "drop", "drop", "dns_drop")
    expect(writer, fd, frame4(query("evjl.example")), "pass", "pass", "dns_no_match")
    expect(writer, fd, frame4(query("example.evil")), "pass", "pass", "dns_no_match")


def test_events_carry_the_rule_and_the_packet(maps: tuple[DnsMaps, int]) -> None:
    """Drops, answers, alerts and unanswerable queries are sampled with the dns_rules position as the
    rule id, and the addresses as received (an answer is built after its event)."""
    writer, fd = maps
    writer.install([DNS_ONLY], [exact("drop.example", Action.DROP), exact("nx.example", Action.NXDOMAIN),
                                exact("watch.example", Action.ALERT), exact("ok.example", Action.ALLOW)])
    writer.fastpath.set_event_rate(1000)
    received: list[dict[str, object]] = []
    reader = EventReader(writer.fastpath.maps["hyp_events"].fd, EventDecoder(writer.abi),
                         lambda record: received.append(dict(record)))
    try:
        frames = [frame4(query("drop.example")), frame4(query("nx.example")), frame4(query("watch.example")),
                  frame4(query("nx.example"), dst="224.0.0.251"), frame4(query("ok.example"))]
        for frame in frames:
            run_xdp(fd, frame)
        reader.poll(100)
    finally:
        reader.close()
    got = [(r["verdict"], r["reason"], r["rule_id"], r["src"], r["dst"], r["src_port"], r["dst_port"],
            r["length"]) for r in received]
    assert got == [
        ("drop", "dns_drop", 1, CLIENT4, SERVER4, 40000, 53, len(frames[0])),
        ("answer", "dns_nxdomain", 2, CLIENT4, SERVER4, 40000, 53, len(frames[1])),
        ("pass", "dns_alert", 3, CLIENT4, SERVER4, 40000, 53, len(frames[2])),
        ("drop", "dns_unanswerable", 2, CLIENT4, "224.0.0.251", 40000, 53, len(frames[3])),
    ]
