"""DNS over TCP in XDP under BPF_PROG_TEST_RUN (DESIGN14B "In XDP"): the connection's state in
hyp_dns_tcp from the client's SYN, a whole query at the stream position judged by the name rules,
everything else of the connection to the slow path, and the in-stream answer with FIN.

References: RFC 1035 4.2.2 and RFC 7766 (each message after a 2-byte length), RFC 9293 (sequence
numbers: a SYN and a FIN take one each, the next byte of the stream is seq + payload length),
RFC 7323 (timestamps: the answer echoes the query's TSval and sends the peer's TSecr as its own),
scapy for frames and checksums, dnspython for messages. The map contents are written by the
test-side writer (tests/support/dns_maps.py)."""

from __future__ import annotations

import ctypes
import enum
import ipaddress
import socket
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet, Raw

from hyperion.daemon.events import EventDecoder, EventReader
from hyperion.fastpath.program import FastPath
from hyperion.kernel.testrun import run_xdp
from hyperion.lab.sandbox import HOST_V4, Sandbox, entered_netns
from tests.support.dns_maps import Action, ClassFlag, DnsClass, DnsMaps, Rule, delta, exact, query, suffix

CLIENT4, SERVER4 = "198.51.100.10", "192.0.2.53"
CLIENT6, SERVER6 = "2001:db8:c::10", "2001:db8:53::53"
CLIENT_MAC, SERVER_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
TCP_P = 6
SPORT = 40000
ISN, SERVER_NEXT = 0x1000_0000, 0x2000_0001  # the client's initial sequence number; the server's next
TSVAL, TSECR = 0x0A0B0C0D, 0x01020304
# What a Linux client puts on its data segments (net/ipv4/tcp_output.c: NOP NOP TS).
LINUX_OPTIONS: list[tuple[str, object]] = [("NOP", None), ("NOP", None), ("Timestamp", (TSVAL, TSECR))]

# The DNS class over TCP as the compiler writes it: judged here, the rest to the slow path. Without
# an AF_XDP socket (BPF_PROG_TEST_RUN) a redirect takes the class's fallback: drop, redirect_failed.
TCP_DNS = DnsClass(TCP_P, 53, ClassFlag.DNS | ClassFlag.SLOWPATH, on_failure_drop=True, class_id=7)
REDIRECTED = ("drop", "drop", "redirect_failed")


class State(enum.IntEnum):
    """enum hyp_dns_tcp_state (bpf/include/hyperion_abi.h)"""

    XDP = 1
    SLOWPATH = 2
    ENDED = 3


@dataclass(frozen=True)
class Family:
    name: str
    client: str
    server: str
    vlan: bool = False

    def ip(self, *, src: str | None = None, dst: str | None = None, **fields: object) -> Packet:
        src, dst = src or self.client, dst or self.server
        if ":" in self.client:
            return IPv6(src=src, dst=dst, hlim=33, **fields)
        return IP(src=src, dst=dst, ttl=33, id=77, **fields)


IPV4 = Family("ipv4", CLIENT4, SERVER4)
IPV6 = Family("ipv6", CLIENT6, SERVER6)
VLAN = Family("vlan", CLIENT4, SERVER4, vlan=True)
FAMILIES = [IPV4, IPV6, VLAN]


def segment(payload: bytes = b"", *, flags: str = "PA", seq: int = ISN + 1, ack: int = SERVER_NEXT,
            family: Family = IPV4, tcp_options: Sequence[tuple[str, object]] | None = None, window: int = 502,
            chksum: int | None = None, ext: Packet | None = None, dst_mac: str = SERVER_MAC,
            sport: int = SPORT, **ip: object) -> bytes:
    """A client segment to the server's port 53; Linux's NOP NOP TS options unless told."""
    tcp = TCP(sport=sport, dport=53, flags=flags, seq=seq % 2**32, ack=ack % 2**32, window=window,
              options=list(LINUX_OPTIONS if tcp_options is None else tcp_options))
    if chksum is not None:
        tcp.chksum = chksum
    l3 = family.ip(**ip)
    if ext is not None:
        l3 = l3 / ext
    l2 = Ether(src=CLIENT_MAC, dst=dst_mac)
    if family.vlan:
        l2 = l2 / Dot1Q(vlan=42)
    return bytes(l2 / l3 / tcp / Raw(payload)) if payload else bytes(l2 / l3 / tcp)


def framed(message: bytes) -> bytes:
    """RFC 1035 4.2.2: the message after its length, two bytes, network order."""
    return struct.pack("!H", len(message)) + message


@pytest.fixture
def maps(detached: tuple[FastPath, int]) -> Iterator[tuple[DnsMaps, int]]:
    fastpath, prog_fd = detached
    writer = DnsMaps(fastpath)
    try:
        yield writer, prog_fd
    finally:
        writer.close()


def expect(writer: DnsMaps, fd: int, frame: bytes, action: str, verdict: str, reason: str) -> bytes:
    """Runs the frame; exactly one (verdict, reason) counter moved, by this frame. Returns the output."""
    before = writer.fastpath.counters()
    result = run_xdp(fd, frame)
    assert (result.action, delta(before, writer.fastpath.counters())) == (action, {(verdict, reason): (1, len(frame))})
    return result.data_out


def flow_key(writer: DnsMaps, family: Family = IPV4, sport: int = SPORT) -> bytes:
    key = writer.abi.btf.struct("hyp_dns_tcp_key")()
    client, server = ipaddress.ip_address(family.client).packed, ipaddress.ip_address(family.server).packed
    ctypes.memmove(key.saddr, client, len(client))
    ctypes.memmove(key.daddr, server, len(server))
    key.sport, key.dport, key.family = sport, 53, 6 if len(client) == 16 else 4
    return bytes(key)


def flow(writer: DnsMaps, family: Family = IPV4, sport: int = SPORT) -> tuple[int, State] | None:
    """(next, state) of the connection's entry, or None."""
    raw = writer.fastpath.maps["hyp_dns_tcp"].lookup(flow_key(writer, family, sport))
    if raw is None:
        return None
    value = writer.abi.btf.struct("hyp_dns_tcp_flow").from_buffer_copy(raw)
    return int(value.next), State(value.state)


def connect(writer: DnsMaps, fd: int, family: Family = IPV4, isn: int = ISN, sport: int = SPORT) -> int:
    """The client's SYN: passed, and the connection tracked from the byte after it. Returns next."""
    expect(writer, fd, segment(flags="S", seq=isn, ack=0, family=family, sport=sport,
                               tcp_options=[("MSS", 1460), ("SAckOK", b""), ("Timestamp", (TSVAL, 0)), ("NOP", None),
                                        ("WScale", 7)]),
           "pass", "pass", "dns_tcp_no_data")
    assert flow(writer, family, sport) == ((isn + 1) % 2**32, State.XDP)
    return (isn + 1) % 2**32


RULES = [exact("drop.example", Action.DROP), exact("nx.example", Action.NXDOMAIN),
         exact("refuse.example", Action.REFUSE), exact("ok.example", Action.ALLOW),
         suffix("watch.example", Action.ALERT), exact("source.example", Action.SLOWPATH)]


# ---- the connection's lifecycle -------------------------------------------------------------------

def test_syn_creates_the_connection_and_a_new_syn_starts_over(maps: tuple[DnsMaps, int]) -> None:
    writer, fd = maps
    writer.install([TCP_DNS], RULES)
    assert flow(writer) is None
    connect(writer, fd)
    # Another connection on the reused 4-tuple (a new SYN) starts over, whatever the old state.
    writer.fastpath.maps["hyp_dns_tcp"].update(flow_key(writer), struct.pack("=II", 5, State.ENDED))
    connect(writer, fd, isn=0x7777_0000)
    # The client's sequence space wraps (RFC 9293 3.4): the SYN at 2^32 - 1 puts the first byte at 0.
    connect(writer, fd, isn=0xFFFF_FFFF)
    assert flow(writer) == (0, State.XDP)


@pytest.mark.parametrize("flags", ["A", "FA", "R", "RA", "SA", "F"])
def test_segments_without_payload_pass(maps: tuple[DnsMaps, int], flags: str) -> None:
    writer, fd = maps
    writer.install([TCP_DNS], RULES)
    expect(writer, fd, segment(flags=flags), "pass", "pass", "dns_tcp_no_data")  # untracked
    assert flow(writer) is None
    next_seq = connect(writer, fd)
    expect(writer, fd, segment(flags=flags, seq=next_seq), "pass", "pass", "dns_tcp_no_data")
    assert flow(writer) == (next_seq, State.XDP)


def test_a_reload_keeps_the_connections(maps: tuple[DnsMaps, int]) -> None:
    """hyp_dns_tcp is outside the policy generations: a new generation judges the same streams."""
    writer, fd = maps
    writer.install([TCP_DNS], RULES)
    position = connect(writer, fd)
    writer.install([TCP_DNS], [exact("ok.example", Action.DROP)])
    expect(writer, fd, segment(framed(query("ok.example")), seq=position), "drop", "drop", "dns_drop")
    assert flow(writer) == (position, State.XDP)


def test_payload_without_the_syn_is_dropped_as_midstream(maps: tuple[DnsMaps, int]) -> None:
    writer, fd = maps
    writer.install([TCP_DNS], RULES)
    for payload in (framed(query("ok.example")), framed(query("drop.example")), b"\x00"):
        expect(writer, fd, segment(payload), "drop", "drop", "dns_tcp_midstream")
    assert flow(writer) is None
    # Another client's connection is its own.
    connect(writer, fd, sport=40001)
    expect(writer, fd, segment(framed(query("ok.example"))), "drop", "drop", "dns_tcp_midstream")


def test_syn_with_data_goes_to_the_slow_path(maps: tuple[DnsMaps, int]) -> None:
    """TCP Fast Open (RFC 7413): data on the SYN; the slow path reassembles from the byte after it."""
    writer, fd = maps
    writer.install([TCP_DNS], RULES)
    expect(writer, fd, segment(framed(query("ok.example")), flags="S", seq=ISN, ack=0), *REDIRECTED)
    assert flow(writer) == (ISN + 1, State.SLOWPATH)


# ---- whole queries at the stream position --------------------------------------------------------

@pytest.mark.parametrize("name,action,verdict,reason,rule,advances,state", [
    ("ok.example", "pass", "pass", "dns_allow", 4, True, State.XDP),
    ("a.watch.example", "pass", "pass", "dns_alert", 5, True, State.XDP),
    ("other.example", "pass", "pass", "dns_no_match", None, True, State.XDP),
    ("drop.example", "drop", "drop", "dns_drop", 1, False, State.XDP),
    ("nx.example", "tx", "answer", "dns_nxdomain", 2, False, State.ENDED),
    ("refuse.example", "tx", "answer", "dns_refused", 3, False, State.ENDED),
    ("source.example", *REDIRECTED, 6, False, State.SLOWPATH),
])
def test_a_whole_query_at_next_is_judged(maps: tuple[DnsMaps, int], name: str, action: str, verdict: str,
                                         reason: str, rule: int | None, advances: bool, state: State) -> None:
    writer, fd = maps
    writer.install([TCP_DNS], RULES)
    next_seq = connect(writer, fd)
    payload = framed(query(name))
    expect(writer, fd, segment(payload, seq=next_seq), action, verdict, reason)
    # Passed: the server reads the next query after this one; otherwise the stream stays where it was.
    assert flow(writer) == ((next_seq + len(payload) if advances else next_seq), state)
    assert [writer.hits(r) for r in RULES] == [1 if i + 1 == rule else 0 for i in range(len(RULES))]


def test_queries_follow_each_other_and_a_dropped_one_is_dropped_again(maps: tuple[DnsMaps, int]) -> None:
    writer, fd = maps
    writer.install([TCP_DNS], RULES)
    position = connect(writer, fd, isn=0xFFFF_FFF0)  # the stream wraps past 2^32 below
    for name, reason in (("ok.example", "dns_allow"), ("other.example", "dns_no_match"),
                         ("b.watch.example", "dns_alert")):
        payload = framed(query(name))
        expect(writer, fd, segment(payload, seq=position), "pass", "pass", reason)
        position = (position + len(payload)) % 2**32
        assert flow(writer) == (position, State.XDP)
    assert position < 0x100  # wrapped
    dropped = segment(framed(query("drop.example")), seq=position)
    expect(writer, fd, dropped, "drop", "drop", "dns_drop")
    expect(writer, fd, dropped, "drop", "drop", "dns_drop")  # the client's retransmission
    assert flow(writer) == (position, State.XDP)
    assert writer.hits(RULES[0]) == 2
    # The client gives up on that query and sends another from the same position.
    expect(writer, fd, segment(framed(query("ok.example")), seq=position), "pass", "pass", "dns_allow")


@pytest.mark.parametrize("setting,action,verdict,advances", [(Action.DROP, "drop", "drop", False),
                                                             (Action.ALLOW, "pass", "pass", True)])
def test_malformed_messages_take_the_malformed_action(maps: tuple[DnsMaps, int], setting: Action, action: str,
                                                      verdict: str, advances: bool) -> None:
    writer, fd = maps
    writer.install([TCP_DNS], RULES, malformed=setting)
    position = connect(writer, fd)
    for message, reason in ((query("ok.example")[:8], "dns_malformed"),
                            (struct.pack("!6H", 1, 0x0100, 0, 0, 0, 0), "dns_qdcount"),
                            (b"", "dns_malformed")):  # a zero length: a message of no bytes
        payload = framed(message)
        expect(writer, fd, segment(payload, seq=position), action, verdict, reason)
        position = position + len(payload) if advances else position
        assert flow(writer) == (position, State.XDP)


def test_a_response_on_the_stream_is_not_judged(maps: tuple[DnsMaps, int]) -> None:
    writer, fd = maps
    writer.install([TCP_DNS], RULES)
    position = connect(writer, fd)
    response = bytearray(query("drop.example"))
    response[2] |= 0x80  # QR
    expect(writer, fd, segment(framed(bytes(response)), seq=position), "pass", "pass", "dns_not_query")
    assert flow(writer) == (position + 2 + len(response), State.XDP)


# ---- what XDP cannot judge goes to the slow path -----------------------------------------------------

def _cases(position: int) -> list[tuple[str, bytes]]:
    one, two = framed(query("ok.example")), framed(query("drop.example"))
    return [
        ("partial: the length says more than the segment holds", segment(one[:-3], seq=position)),
        ("the length alone", segment(one[:2], seq=position)),
        ("one byte", segment(one[:1], seq=position)),
        ("pipelined: two whole queries", segment(one + two, seq=position)),
        ("a whole query and the start of the next", segment(one + two[:5], seq=position)),
        ("out of order: after a gap", segment(two, seq=position + len(one))),
        ("before the stream position: a retransmission of delivered data", segment(one, seq=position - len(one))),
        ("overlapping the stream position", segment(b"\x00\x00\x00" + two, seq=position - 3)),
    ]


@pytest.mark.parametrize("index", range(8), ids=[c[0] for c in _cases(ISN + 1)])
def test_anything_but_one_whole_query_at_next_goes_to_the_slow_path(maps: tuple[DnsMaps, int], index: int) -> None:
    writer, fd = maps
    writer.install([TCP_DNS], RULES)
    position = connect(writer, fd)
    if index == 7:  # overlapping: a passed query first, so the position is past the SYN's byte
        payload = framed(query("ok.example"))
        expect(writer, fd, segment(payload, seq=position), "pass", "pass", "dns_allow")
        position += len(payload)
    expect(writer, fd, _cases(position)[index][1], *REDIRECTED)
    assert flow(writer) == (position, State.SLOWPATH)  # the slow path starts at next
    # From now on every payload segment is the slow path's, a whole query at next included;
    # segments without payload still pass.
    expect(writer, fd, segment(framed(query("drop.example")), seq=position), *REDIRECTED)
    expect(writer, fd, segment(flags="A", seq=position), "pass", "pass", "dns_tcp_no_data")
    assert flow(writer) == (position, State.SLOWPATH)
    assert writer.hits(RULES[0]) == 0


def test_the_slow_path_without_a_socket_takes_the_class_fallback(maps: tuple[DnsMaps, int]) -> None:
    writer, fd = maps
    writer.install([DnsClass(TCP_P, 53, ClassFlag.DNS | ClassFlag.SLOWPATH, on_failure_drop=False)], RULES)
    position = connect(writer, fd)
    expect(writer, fd, segment(framed(query("ok.example"))[:-1], seq=position), "pass", "pass", "redirect_failed")


# ---- ended -----------------------------------------------------------------------------------------

def test_after_an_answer_the_connection_is_ended(maps: tuple[DnsMaps, int]) -> None:
    writer, fd = maps
    writer.install([TCP_DNS], RULES)
    position = connect(writer, fd)
    blocked = framed(query("nx.example"))
    expect(writer, fd, segment(blocked, seq=position), "tx", "answer", "dns_nxdomain")
    assert flow(writer) == (position, State.ENDED)
    # The server never saw that query: nothing more of this stream reaches it.
    for frame in (segment(framed(query("ok.example")), seq=position + len(blocked)),
                  segment(blocked, seq=position),                       # the query again
                  segment(framed(query("ok.example")), seq=position)):
        expect(writer, fd, frame, "drop", "drop", "dns_tcp_ended")
    expect(writer, fd, segment(flags="A", seq=position + len(blocked)), "pass", "pass", "dns_tcp_no_data")
    expect(writer, fd, segment(flags="FA", seq=position + len(blocked)), "pass", "pass", "dns_tcp_no_data")
    assert flow(writer) == (position, State.ENDED)
    assert writer.hits(RULES[1]) == 1
    # The client's new connection (RFC 7766 6.2.3) is judged afresh.
    position = connect(writer, fd, isn=0x5000_0000)
    expect(writer, fd, segment(framed(query("ok.example")), seq=position), "pass", "pass", "dns_allow")


# ---- the in-stream answer ---------------------------------------------------------------------------

def pseudo_sum(family: Family, length: int) -> int:
    """The folded pseudo-header sum an offloading sender leaves in the checksum field."""
    src, dst = ipaddress.ip_address(family.client).packed, ipaddress.ip_address(family.server).packed
    words = src + dst + (struct.pack("!HH", TCP_P, length) if len(src) == 4 else struct.pack("!IHH", length, 0, TCP_P))
    total = sum(struct.unpack(f"!{len(words) // 2}H", words))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def expected_options(raw: bytes) -> bytes:
    """The query's option bytes as the answer must carry them: each option (RFC 9293 3.2: kind,
    length, data; NOP and EOL one byte) turned into NOPs, except the timestamps (RFC 7323 3.2),
    whose values swap."""
    out, i = bytearray(b"\x01" * len(raw)), 0
    while i < len(raw) and raw[i] != 0:
        if raw[i] == 1:
            i += 1
            continue
        length = raw[i + 1]
        if raw[i] == 8 and length == 10:
            out[i:i + 10] = raw[i:i + 2] + raw[i + 6:i + 10] + raw[i + 2:i + 6]
        i += length
    return bytes(out)


def check_tcp_answer(query_frame: bytes, out: bytes, rcode: int, family: Family) -> None:
    q, a = Ether(query_frame), Ether(out)
    assert (a.src, a.dst) == (q.dst, q.src)
    if family.vlan:
        assert a[Dot1Q].vlan == q[Dot1Q].vlan
    ipv6 = family is IPV6
    ip_q, ip_a = (q[IPv6], a[IPv6]) if ipv6 else (q[IP], a[IP])
    assert (ip_a.src, ip_a.dst) == (ip_q.dst, ip_q.src)
    tq, ta = q[TCP], a[TCP]
    assert (ta.sport, ta.dport) == (tq.dport, tq.sport)
    query_payload = bytes(tq.payload)
    if not ipv6:
        query_payload = query_payload[:ip_q.len - ip_q.ihl * 4 - tq.dataofs * 4]  # no Ethernet padding
    # RFC 9293: the server's next byte is what the query acknowledged; it acknowledges the whole
    # query, and the query's FIN if it had one.
    assert ta.seq == tq.ack
    assert ta.ack == (tq.seq + len(query_payload) + (1 if "F" in tq.flags else 0)) % 2**32
    assert ta.flags == "FPA"
    assert (ta.window, ta.dataofs, ta.urgptr, ta.reserved) == (tq.window, tq.dataofs, 0, 0)
    hlen = tq.dataofs * 4
    assert bytes(ta)[20:hlen] == expected_options(bytes(tq)[20:hlen])
    ts_q = [v for k, v in tq.options if k == "Timestamp"]
    ts_a = [v for k, v in ta.options if k == "Timestamp"]
    assert ts_a == [(v[1], v[0]) for v in ts_q[:1]]
    # The payload: the length, then the answer (the header and the question, RFC 1035 4.2.2).
    payload = bytes(ta.payload)
    assert struct.unpack("!H", payload[:2])[0] == len(payload) - 2
    qmsg, amsg = query_payload[2:], payload[2:]
    parsed_q, parsed_a = dns.message.from_wire(qmsg), dns.message.from_wire(amsg)
    assert parsed_a.id == parsed_q.id
    assert parsed_a.flags & dns.flags.QR and parsed_a.flags & dns.flags.RA
    assert bool(parsed_a.flags & dns.flags.RD) == bool(parsed_q.flags & dns.flags.RD)
    assert not parsed_a.flags & (dns.flags.AA | dns.flags.TC)
    assert parsed_a.opcode() == dns.opcode.QUERY and parsed_a.rcode() == rcode
    assert parsed_a.question == parsed_q.question
    assert not parsed_a.answer and not parsed_a.authority and not parsed_a.additional and parsed_a.edns == -1
    question_end = 12 + len(parsed_q.question[0].name.to_wire()) + 4
    assert len(amsg) == question_end and amsg[12:] == qmsg[12:question_end]
    segment_len = hlen + 2 + question_end
    if ipv6:
        assert ip_a.plen == segment_len and ip_a.hlim == 64
    else:
        assert (ip_a.len, ip_a.ttl, ip_a.flags, ip_a.frag, ip_a.ihl) == (20 + segment_len, 64, "DF", 0, 5)
    assert len(out) == (18 if family.vlan else 14) + (40 if ipv6 else 20) + segment_len  # nothing after it
    # Checksums as scapy computes them over the output frame.
    rebuilt = a.copy()
    if not ipv6:
        del rebuilt[IP].chksum
    del rebuilt[TCP].chksum
    rebuilt = Ether(bytes(rebuilt))
    if not ipv6:
        assert a[IP].chksum == rebuilt[IP].chksum
    assert a[TCP].chksum == rebuilt[TCP].chksum


@pytest.mark.parametrize("rule,rcode,reason", [(RULES[1], dns.rcode.NXDOMAIN, "dns_nxdomain"),
                                               (RULES[2], dns.rcode.REFUSED, "dns_refused")])
@pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])
@pytest.mark.parametrize("checksum", ["full", "partial", "bogus"])
def test_the_answer_in_the_stream(maps: tuple[DnsMaps, int], rule: Rule, rcode: int, reason: str,
                                  family: Family, checksum: str) -> None:
    writer, fd = maps
    writer.install([TCP_DNS], RULES)
    position = connect(writer, fd, family)
    payload = framed(query(rule.name.upper(), 28, edns=True))
    length = 32 + len(payload)  # the TCP header with NOP NOP TS, and the payload
    chk = {"full": None, "partial": pseudo_sum(family, length), "bogus": 0x1234}[checksum]
    frame = segment(payload, seq=position, family=family, chksum=chk)
    out = expect(writer, fd, frame, "tx", "answer", reason)
    check_tcp_answer(frame, out, rcode, family)
    assert flow(writer, family) == (position, State.ENDED)


@pytest.mark.parametrize("description,options", [
    ("no options", []),
    ("timestamps first, then end of list", [("Timestamp", (TSVAL, TSECR)), ("EOL", None)]),
    ("SACK blocks and timestamps", [("NOP", None), ("NOP", None), ("SAck", (1000, 2000, 3000, 4000)),
                                    ("NOP", None), ("NOP", None), ("Timestamp", (TSVAL, TSECR))]),
    ("an unknown option and timestamps", [(30, b"\xaa\xbb\xcc\xdd"), ("Timestamp", (TSVAL, TSECR)), ("NOP", None),
                                          ("NOP", None)]),
    ("the longest header: 40 bytes of options", [(30, b"\x01" * 14), ("NOP", None), ("NOP", None),
                                                 ("Timestamp", (TSVAL, TSECR)), (253, b"\x02" * 10)]),
])
def test_the_answer_keeps_only_the_timestamps(maps: tuple[DnsMaps, int], description: str,
                                              options: list[tuple[object, object]]) -> None:
    writer, fd = maps
    writer.install([TCP_DNS], RULES)
    position = connect(writer, fd)
    frame = segment(framed(query("nx.example")), seq=position, tcp_options=options)  # type: ignore[arg-type]
    out = expect(writer, fd, frame, "tx", "answer", "dns_nxdomain")
    check_tcp_answer(frame, out, dns.rcode.NXDOMAIN, IPV4)


def test_a_query_with_fin_is_acknowledged_with_it(maps: tuple[DnsMaps, int]) -> None:
    writer, fd = maps
    writer.install([TCP_DNS], RULES)
    position = connect(writer, fd)
    frame = segment(framed(query("refuse.example", rd=False)), seq=position, flags="FPA") + b"\0" * 20  # padding
    out = expect(writer, fd, frame, "tx", "answer", "dns_refused")
    check_tcp_answer(frame, out, dns.rcode.REFUSED, IPV4)
    assert Ether(out)[TCP].ack == position + len(framed(query("refuse.example"))) + 1


@pytest.mark.parametrize("description,family,fields", [
    ("IPv4 options", IPV4, {"options": b"\x01\x01\x01\x00"}),
    ("IPv6 extension header", IPV6, {"ext": IPv6ExtHdrHopByHop()}),
    ("broadcast MAC", IPV4, {"dst_mac": "ff:ff:ff:ff:ff:ff"}),
])
def test_unanswerable_queries_are_dropped(maps: tuple[DnsMaps, int], description: str, family: Family,
                                          fields: dict[str, object]) -> None:
    writer, fd = maps
    writer.install([TCP_DNS], RULES)
    position = connect(writer, fd, family)
    frame = segment(framed(query("nx.example")), seq=position, family=family, **fields)  # type: ignore[arg-type]
    expect(writer, fd, frame, "drop", "drop", "dns_unanswerable")
    assert flow(writer, family) == (position, State.XDP)  # dropped: the stream did not move
    assert writer.hits(RULES[1]) == 1


@pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])
def test_each_family_is_tracked_and_judged(maps: tuple[DnsMaps, int], family: Family) -> None:
    writer, fd = maps
    writer.install([TCP_DNS], RULES)
    position = connect(writer, fd, family)
    payload = framed(query("ok.example"))
    expect(writer, fd, segment(payload, seq=position, family=family), "pass", "pass", "dns_allow")
    expect(writer, fd, segment(framed(query("drop.example")), seq=position + len(payload), family=family),
           "drop", "drop", "dns_drop")
    assert flow(writer, family) == (position + len(payload), State.XDP)
    other = IPV6 if family is not IPV6 else IPV4
    assert flow(writer, other) is None


# ---- monitor mode, classes, events ----------------------------------------------------------------

def test_monitor_mode_passes_everything_and_follows_the_stream(maps: tuple[DnsMaps, int]) -> None:
    """In monitor mode every segment reaches the server, so the stream position moves with it."""
    writer, fd = maps
    writer.install([TCP_DNS], RULES, monitor=True)
    expect(writer, fd, segment(framed(query("ok.example"))), "pass", "would_drop", "dns_tcp_midstream")
    position = connect(writer, fd)
    for name, verdict, reason in (("nx.example", "would_answer", "dns_nxdomain"),
                                  ("drop.example", "would_drop", "dns_drop"),
                                  ("ok.example", "pass", "dns_allow")):
        payload = framed(query(name))
        frame = segment(payload, seq=position)
        assert expect(writer, fd, frame, "pass", verdict, reason) == frame
        position += len(payload)
        assert flow(writer) == (position, State.XDP)


def test_a_tcp_class_without_the_dns_flag_is_redirected_whole(maps: tuple[DnsMaps, int]) -> None:
    """dns_name_rules: slow_path (or a class the compiler keeps whole): no state, every segment redirected."""
    writer, fd = maps
    writer.install([DnsClass(TCP_P, 53, ClassFlag.SLOWPATH, on_failure_drop=True)], RULES)
    expect(writer, fd, segment(flags="S", seq=ISN, ack=0), *REDIRECTED)
    expect(writer, fd, segment(framed(query("drop.example"))), *REDIRECTED)
    assert flow(writer) is None


def test_events_carry_the_class_or_the_rule(maps: tuple[DnsMaps, int]) -> None:
    """Connection drops (midstream, ended) are sampled with the class id; the name rules' verdicts with
    the dns_rules position, as over UDP."""
    writer, fd = maps
    writer.install([TCP_DNS], RULES)
    writer.fastpath.set_event_rate(1000)
    received: list[dict[str, object]] = []
    reader = EventReader(writer.fastpath.maps["hyp_events"].fd, EventDecoder(writer.abi),
                         lambda record: received.append(dict(record)))
    try:
        run_xdp(fd, segment(framed(query("ok.example"))))                        # midstream
        position = connect(writer, fd)
        run_xdp(fd, segment(framed(query("drop.example")), seq=position))         # rule 1
        run_xdp(fd, segment(framed(query("nx.example")), seq=position))           # rule 2, ended
        run_xdp(fd, segment(framed(query("ok.example")), seq=position))           # ended
        reader.poll(100)
    finally:
        reader.close()
    got = [(r["verdict"], r["reason"], r["rule_id"], r["src"], r["dst"], r["src_port"], r["dst_port"])
           for r in received]
    assert got == [("drop", "dns_tcp_midstream", 7, CLIENT4, SERVER4, SPORT, 53),
                   ("drop", "dns_drop", 1, CLIENT4, SERVER4, SPORT, 53),
                   ("answer", "dns_nxdomain", 2, CLIENT4, SERVER4, SPORT, 53),
                   ("drop", "dns_tcp_ended", 7, CLIENT4, SERVER4, SPORT, 53)]


# ---- a SYN on a connection this host holds open ----------------------------------------------------
# The server answers such a SYN with a challenge ACK and keeps its stream (RFC 5961 4, RFC 9293
# 3.10.7.4); if the program restarted its position from that SYN, the client could send a "whole
# query" over bytes the server already holds, and the server would read a hidden query from its own
# position. The open connection is a real one (the Linux stack's, in a test namespace), found by the
# program's socket lookup; frames go through BPF_PROG_TEST_RUN from a thread in that namespace.

LOCAL = Family("local", HOST_V4, HOST_V4)  # both ends on this host: the stack holds both sockets
OTHER_ISN = 0x5555_0000


@pytest.fixture
def host(kernel: None) -> Iterator[Sandbox]:
    sb = Sandbox().up()
    try:
        yield sb
    finally:
        sb.down()


def test_a_syn_on_an_open_connection_keeps_the_stream_position(maps: tuple[DnsMaps, int], host: Sandbox) -> None:
    writer, fd = maps
    writer.install([TCP_DNS], RULES)
    with entered_netns(host.host_ns):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.bind((HOST_V4, 53))
            listener.listen(1)
            client.connect((HOST_V4, 53))
            served, _ = listener.accept()
            sport = client.getsockname()[1]

            def syn(isn: int) -> None:
                expect(writer, fd, segment(flags="S", seq=isn, ack=0, family=LOCAL, sport=sport,
                                           tcp_options=[("MSS", 1460)]), "pass", "pass", "dns_tcp_no_data")

            syn(ISN)  # no entry yet: tracked from this SYN
            assert flow(writer, LOCAL, sport) == (ISN + 1, State.XDP)
            first = framed(query("ok.example"))
            expect(writer, fd, segment(first, seq=ISN + 1, family=LOCAL, sport=sport), "pass", "pass", "dns_allow")
            position = ISN + 1 + len(first)
            assert flow(writer, LOCAL, sport) == (position, State.XDP)
            # The connection is open here: a second SYN moves nothing.
            syn(OTHER_ISN)
            assert flow(writer, LOCAL, sport) == (position, State.XDP)
            # A "whole query" where that SYN would have put the position is not judged here.
            expect(writer, fd, segment(framed(query("ok.example")), seq=OTHER_ISN + 1, family=LOCAL, sport=sport),
                   "drop", "drop", "redirect_failed")
            assert flow(writer, LOCAL, sport) == (position, State.SLOWPATH)
            served.close()
        finally:
            client.close()
            listener.close()
        # Closed (the listener too: no socket for the 4-tuple): a SYN starts a new connection.
        syn(OTHER_ISN)
        assert flow(writer, LOCAL, sport) == (OTHER_ISN + 1, State.XDP)
