"""DNS over TCP in the slow path (DESIGN14B, "In the slow path"), root-free: the workers' stream
engine through _slowpath.DnsTcpStreams, fed scapy-built segments.

References: RFC 7766 / RFC 1035 4.2.2 (every message preceded by a 2-byte length; several messages
per segment, a message over several segments), RFC 9293 (sequence numbers: a SYN takes one, a FIN
one), RFC 7323 3.2 (timestamps: a segment's TSecr echoes the peer's TSval); the expected answers
are read back with scapy (checksums recomputed by scapy) and dnspython.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet, Raw

from hyperion import _slowpath
from hyperion.policy.model import DnsRule, RedirectClass, Signature, SlowPathSection
from hyperion.slowpath import rules

CLIENT4, SERVER4 = "198.51.100.7", "192.0.2.1"
CLIENT6, SERVER6 = "2001:db8:2::7", "2001:db8:1::1"
CLIENT_MAC, SERVER_MAC = "02:00:00:00:00:07", "02:00:00:00:00:01"

DNS_RULES = (
    DnsRule(match="evil.test", action="drop"),
    DnsRule(match="*.tracker.test", action="nxdomain"),
    DnsRule(match="x.test", qtype="AAAA", action="refuse"),
    DnsRule.model_validate({"match": "c2.test", "action": "block_source", "ttl": "10m"}),
    DnsRule(match="watch.test", action="alert"),
    DnsRule(match="ok.tracker.test", action="pass"),
)
EVIL, TRACKER, X_AAAA, C2, WATCH, OK = range(6)


def compiled(malformed: str = "drop", signatures: tuple[Signature, ...] = ()) -> Any:
    slow = SlowPathSection(dns_name_rules="slow_path", dns_rules=DNS_RULES, malformed_dns_action=malformed,
                           signatures=signatures)
    classes = (RedirectClass(protocol=17, port=53), RedirectClass(protocol=6, port=53))
    return rules.compile_slow_path_rules(slow, classes, never_block=[]).rules


def streams(**kwargs: Any) -> _slowpath.DnsTcpStreams:
    return _slowpath.DnsTcpStreams(kwargs.pop("rules", None) or compiled(), **kwargs)


def framed(name: str, qtype: str = "A", qid: int | None = None) -> bytes:
    query = dns.message.make_query(name, qtype)
    if qid is not None:
        query.id = qid
    wire = query.to_wire()
    return len(wire).to_bytes(2, "big") + wire


@dataclass
class Client:
    """One TCP connection's client side: segments with the right sequence numbers."""

    version: int = 4
    sport: int = 40000
    isn: int = 1000
    server_isn: int = 70000
    vlan: int | None = None
    sent: int = 0   # payload bytes sent (the next seq is isn + 1 + sent)
    options: list[tuple[str, Any]] = field(default_factory=lambda: [("NOP", None), ("NOP", None),
                                                                    ("Timestamp", (4242, 777))])

    def _l3(self) -> Packet:
        eth = Ether(src=CLIENT_MAC, dst=SERVER_MAC)
        if self.vlan is not None:
            eth = eth / Dot1Q(vlan=self.vlan)
        return eth / (IP(src=CLIENT4, dst=SERVER4) if self.version == 4 else IPv6(src=CLIENT6, dst=SERVER6))

    def syn(self) -> bytes:
        return bytes(self._l3() / TCP(sport=self.sport, dport=53, flags="S", seq=self.isn))

    def segment(self, payload: bytes, seq: int | None = None, flags: str = "PA", advance: bool = True,
                **tcp: Any) -> bytes:
        pkt = self._l3() / TCP(sport=self.sport, dport=53, flags=flags, seq=self.next if seq is None else seq,
                               ack=self.server_isn + 1, window=502, options=self.options, **tcp) / Raw(payload)
        if advance and seq is None:
            self.sent += len(payload)
        return bytes(pkt)

    @property
    def next(self) -> int:
        return (self.isn + 1 + self.sent) & 0xFFFFFFFF


def opened(s: _slowpath.DnsTcpStreams, client: Client, now: float = 1.0) -> Client:
    assert s.segment(client.syn(), now=now)["cause"] == "no_data"
    return client


def judged(result: _slowpath.TcpSegmentDecision) -> tuple[str, str, int | None]:
    return result["verdict"], result["cause"], result["rule"]


# ---- whole, split and pipelined messages --------------------------------------------------------


def test_a_whole_query_in_one_segment() -> None:
    s = streams()
    c = opened(s, Client())
    ok = s.segment(c.segment(framed("good.test")), now=2)
    assert judged(ok) == ("deliver", "data", None) and ok["messages"] == 1
    dropped = s.segment(c.segment(framed("evil.test"), advance=False), now=3)
    assert judged(dropped) == ("drop", "rule", EVIL) and dropped["action"] == _slowpath.DROP
    # The connection is as before the dropped segment: its retransmission is judged (and dropped)
    # again, and a query sent in its place is read from the same position.
    again = s.segment(c.segment(framed("evil.test"), advance=False), now=4)
    assert judged(again) == ("drop", "rule", EVIL)
    assert judged(s.segment(c.segment(framed("good.test")), now=5)) == ("deliver", "data", None)
    assert s.stats()["dns_tcp_messages"] == 4


@pytest.mark.parametrize("cut", [[2], [1], [5], [1, 2], [2, 9], [1, 20]])
def test_a_query_split_over_segments(cut: list[int]) -> None:
    s = streams()
    c = opened(s, Client())
    message = framed("a.tracker.test")
    bounds = [0, *cut, len(message)]
    parts = [message[a:b] for a, b in itertools.pairwise(bounds)]
    for part in parts[:-1]:  # nothing whole yet: delivered, nothing judged
        result = s.segment(c.segment(part), now=2)
        assert judged(result) == ("deliver", "data", None) and result["messages"] == 0
    last = s.segment(c.segment(parts[-1], advance=False), now=3)
    assert judged(last) == ("answer", "rule", TRACKER) and last["qname"] == "a.tracker.test"
    # And an allowed one, split the same way, is delivered whole.
    s2 = streams()
    c2 = opened(s2, Client())
    message = framed("good.test")
    bounds = [0, *cut, len(message)]
    results = [s2.segment(c2.segment(message[a:b]), now=2) for a, b in itertools.pairwise(bounds)]
    assert [r["verdict"] for r in results] == ["deliver"] * (len(cut) + 1)
    assert [r["messages"] for r in results] == [0] * len(cut) + [1]


def test_two_pipelined_queries_in_one_segment() -> None:
    s = streams()
    c = opened(s, Client())
    both = s.segment(c.segment(framed("good.test") + framed("x.test", "A")), now=2)
    assert judged(both) == ("deliver", "data", None) and both["messages"] == 2
    # The first that is not passed decides, for the whole segment.
    mixed = s.segment(c.segment(framed("good.test") + framed("evil.test"), advance=False), now=3)
    assert judged(mixed) == ("drop", "rule", EVIL) and mixed["messages"] == 2
    answered = s.segment(c.segment(framed("good.test") + framed("b.tracker.test", qid=77) + framed("evil.test"),
                                   advance=False), now=4)
    assert judged(answered) == ("answer", "rule", TRACKER) and answered["messages"] == 2
    assert dns.message.from_wire(tcp_message(answer_of(answered))).id == 77


def test_a_query_and_the_start_of_the_next_then_its_rest() -> None:
    s = streams()
    c = opened(s, Client())
    second = framed("evil.test")
    assert s.segment(c.segment(framed("good.test") + second[:7]), now=2)["messages"] == 1
    assert judged(s.segment(c.segment(second[7:], advance=False), now=3)) == ("drop", "rule", EVIL)


def test_the_real_message_is_judged_not_a_whole_looking_second_part() -> None:
    """The first segment declares a message whose body is a blocked query followed by more bytes;
    the second segment's bytes are the rest of that body, and on their own they look like a whole
    allowed query (2-byte length and message). The server reads them as the rest of the blocked
    message, so that message is what is judged."""
    s = streams()
    c = opened(s, Client())
    hidden = framed("good.test")
    blocked = dns.message.make_query("evil.test", "A").to_wire() + hidden  # trailing bytes: still a query
    assert _slowpath.parse_dns(blocked) == ("evil.test", 1)
    head = len(blocked).to_bytes(2, "big") + blocked[:-len(hidden)]
    assert judged(s.segment(c.segment(head), now=2)) == ("deliver", "data", None)
    # What a segment-by-segment reader would take for one whole allowed query:
    assert int.from_bytes(hidden[:2], "big") == len(hidden) - 2 and _slowpath.parse_dns(hidden[2:]) == ("good.test", 1)
    result = s.segment(c.segment(hidden, advance=False), now=3)
    assert judged(result) == ("drop", "rule", EVIL) and result["messages"] == 1


# ---- positions: out of order, retransmitted, midstream, SYN, ended ------------------------------


def test_out_of_order_and_retransmitted_segments_are_dropped() -> None:
    s = streams()
    c = opened(s, Client())
    first = framed("good.test")
    assert s.segment(c.segment(first), now=2)["verdict"] == "deliver"
    ahead = s.segment(c.segment(framed("good.test"), seq=c.next + 10), now=3)
    assert judged(ahead) == ("drop", "out_of_order", None)
    retransmitted = s.segment(c.segment(first, seq=c.isn + 1), now=4)
    assert judged(retransmitted) == ("drop", "out_of_order", None)
    # Overlapping what was delivered and reaching past it: not at B either.
    overlap = s.segment(c.segment(first[-3:] + framed("evil.test"), seq=c.next - 3), now=5)
    assert judged(overlap) == ("drop", "out_of_order", None)
    assert s.stats()["dns_tcp_out_of_order"] == 3
    assert s.segment(c.segment(framed("good.test")), now=6)["verdict"] == "deliver"


def test_payload_without_a_known_connection_is_midstream() -> None:
    s = streams()
    c = Client()  # no SYN seen
    assert judged(s.segment(c.segment(framed("good.test")), now=1)) == ("drop", "midstream", None)
    assert s.stats()["dns_tcp_midstream"] == 1
    assert len(s) == 0
    # Segments without payload still pass: the handshake, ACKs, FIN, RST.
    for flags in ("A", "FA", "R"):
        assert judged(s.segment(c.segment(b"", flags=flags), now=2)) == ("deliver", "no_data", None)


def test_syn_learns_the_stream_position_and_a_new_syn_restarts_it() -> None:
    s = streams()
    c = opened(s, Client(isn=0xFFFFFFF0))  # the sequence space wraps (RFC 9293 3.4)
    assert len(s) == 1
    for _ in range(3):
        assert s.segment(c.segment(framed("good.test")), now=2)["verdict"] == "deliver"
    assert c.next < c.isn  # wrapped
    assert s.segment(c.segment(framed("evil.test"), advance=False), now=3)["rule"] == EVIL
    # A new connection on the same 4-tuple (a SYN with another ISN) starts over.
    c2 = opened(s, Client(isn=5_000_000), now=4)
    assert s.segment(c2.segment(framed("good.test")), now=5)["verdict"] == "deliver"
    assert len(s) == 1


def test_a_syn_does_not_restart_a_connection_the_server_still_has() -> None:
    """A server discards a SYN on an established connection (RFC 9293 3.10.7.4, RFC 5961 4): were
    B restarted by it, the client could then send data from a position it chose, overlapping what
    the server has, so that the server's framing and the workers' differ."""
    established = [True]
    s = streams(established=lambda: established[0])
    c = opened(s, Client())
    assert s.segment(c.segment(framed("good.test")), now=2)["verdict"] == "deliver"
    reset = Client(isn=c.next - 30)
    assert s.segment(reset.syn(), now=3)["verdict"] == "deliver"  # the server answers it with an ACK
    assert judged(s.segment(reset.segment(framed("good.test")), now=4)) == ("drop", "out_of_order", None)
    assert s.segment(c.segment(framed("good.test")), now=5)["verdict"] == "deliver"  # B is where it was
    # Once the server no longer has it, a SYN on the 4-tuple is a new connection.
    established[0] = False
    again = opened(s, Client(isn=123), now=6)
    assert s.segment(again.segment(framed("good.test")), now=7)["verdict"] == "deliver"


def test_fast_open_data_in_the_syn_is_judged_from_seq_plus_one() -> None:
    s = streams()
    c = Client()
    syn = c.segment(framed("evil.test"), seq=c.isn, flags="S")
    assert judged(s.segment(syn, now=1)) == ("drop", "rule", EVIL)
    assert judged(s.segment(c.segment(framed("good.test"), seq=c.isn, flags="S"), now=2)) == \
        ("deliver", "data", None)


def test_after_an_in_stream_answer_the_connection_is_ended() -> None:
    s = streams()
    c = opened(s, Client())
    assert s.segment(c.segment(framed("a.tracker.test")), now=2)["verdict"] == "answer"
    later = s.segment(c.segment(framed("good.test")), now=3)
    assert judged(later) == ("drop", "ended", None)
    assert s.stats()["dns_tcp_ended"] == 1
    assert s.stats()["dns_tcp_answered"] == 1
    # ACKs and the FIN still pass.
    assert s.segment(c.segment(b"", flags="FA"), now=4)["verdict"] == "deliver"


# ---- actions -------------------------------------------------------------------------------------


def test_every_action() -> None:
    cases = [("evil.test", "A", "drop", EVIL, _slowpath.DROP),
             ("a.tracker.test", "A", "answer", TRACKER, _slowpath.NXDOMAIN),
             ("x.test", "AAAA", "answer", X_AAAA, _slowpath.REFUSE),
             ("c2.test", "A", "drop", C2, _slowpath.BLOCK_SOURCE)]
    for name, qtype, verdict, rule, action in cases:
        s = streams()
        c = opened(s, Client())
        result = s.segment(c.segment(framed(name, qtype)), now=2)
        assert (result["verdict"], result["rule"], result["action"]) == (verdict, rule, action), name
    s = streams()
    c = opened(s, Client())
    # alert and pass: delivered; the alert is counted, the pass rule stops the less specific nxdomain.
    result = s.segment(c.segment(framed("watch.test") + framed("ok.tracker.test")), now=2)
    assert judged(result) == ("deliver", "data", None) and result["messages"] == 2
    assert s.stats()["alerted"] == 1
    # block_source ends the stream (its source is blocked; the query never reaches the server).
    s = streams()
    c = opened(s, Client())
    assert s.segment(c.segment(framed("c2.test")), now=2)["verdict"] == "drop"
    assert judged(s.segment(c.segment(framed("good.test")), now=3)) == ("drop", "ended", None)


def test_signatures_of_the_class_run_over_each_message() -> None:
    sig = Signature.model_validate({"class": {"protocol": "tcp", "port": 53}, "literal": "needle", "action": "drop"})
    s = streams(rules=compiled(signatures=(sig,)))
    c = opened(s, Client())
    assert s.segment(c.segment(framed("good.test")), now=2)["verdict"] == "deliver"
    # "needle" split between two segments: only the reassembled message holds it.
    message = framed("needle.good.test")
    assert s.segment(c.segment(message[:8]), now=3)["verdict"] == "deliver"
    result = s.segment(c.segment(message[8:], advance=False), now=4)
    assert judged(result) == ("drop", "rule", len(DNS_RULES))


def test_malformed_messages_take_the_malformed_action() -> None:
    bad = bytes.fromhex("123401000001000000000000") + b"\x09truncated"  # a label past the end
    for action, verdict in (("drop", "drop"), ("pass", "deliver")):
        s = streams(rules=compiled(malformed=action))
        c = opened(s, Client())
        result = s.segment(c.segment(len(bad).to_bytes(2, "big") + bad, advance=action == "pass"), now=2)
        assert result["verdict"] == verdict
        assert s.stats()["malformed_dns"] == 1
        assert s.segment(c.segment(framed("evil.test"), advance=False), now=3)["rule"] == EVIL


def test_an_oversized_length_is_malformed() -> None:
    s = streams(max_message=512)
    c = opened(s, Client())
    result = s.segment(c.segment(b"\x02\x01" + b"\x00" * 20, advance=False), now=2)  # 513 bytes declared
    assert (result["verdict"], result["cause"], result["malformed"]) == ("drop", "rule", True)
    assert s.stats()["malformed_dns"] == 1
    # With malformed_dns_action pass, the oversized message is skipped unread, over several
    # segments, and the message after it is judged.
    s = streams(rules=compiled(malformed="pass"), max_message=512)
    c = opened(s, Client())
    body = b"\x00" * 600
    assert s.segment(c.segment(len(body).to_bytes(2, "big") + body[:100]), now=2)["verdict"] == "deliver"
    assert s.segment(c.segment(body[100:400]), now=3)["messages"] == 0
    result = s.segment(c.segment(body[400:] + framed("evil.test"), advance=False), now=4)
    assert judged(result) == ("drop", "rule", EVIL)
    # A zero length is not a DNS message either.
    s = streams()
    c = opened(s, Client())
    assert s.segment(c.segment(b"\x00\x00"), now=2)["malformed"] is True


# ---- the answer frame ----------------------------------------------------------------------------


def answer_of(result: _slowpath.TcpSegmentDecision) -> bytes:
    assert result["answer"] is not None, result
    return result["answer"]


def tcp_message(frame: bytes) -> bytes:
    payload = bytes(Ether(frame)[TCP].payload)
    assert int.from_bytes(payload[:2], "big") == len(payload) - 2  # RFC 7766 framing
    return payload[2:]


def checksums_valid(frame: bytes) -> bool:
    pkt = Ether(frame)
    fresh = Ether(frame)
    if IP in fresh:
        del fresh[IP].chksum
    del fresh[TCP].chksum
    fresh = Ether(bytes(fresh))
    ok = fresh[TCP].chksum == pkt[TCP].chksum
    return ok and (IP not in pkt or fresh[IP].chksum == pkt[IP].chksum)


@pytest.mark.parametrize("version,vlan", [(4, None), (6, None), (4, 100), (6, 200)])
@pytest.mark.parametrize("fin", [False, True])
def test_the_in_stream_answer(version: int, vlan: int | None, fin: bool) -> None:
    s = streams()
    c = opened(s, Client(version=version, vlan=vlan))
    assert s.segment(c.segment(framed("good.test")), now=2)["verdict"] == "deliver"
    query = framed("Deep.Tracker.test", "MX", qid=0xBEEF)
    # The query's checksum as an offloading sender leaves it: only the answer's own sum can be right.
    segment = c.segment(query, flags="FPA" if fin else "PA", advance=False, chksum=0x1234)
    result = s.segment(segment, now=3)
    assert (result["verdict"], result["action"]) == ("answer", _slowpath.NXDOMAIN)
    frame = result["answer"]
    assert frame is not None
    q, a = Ether(segment), Ether(frame)
    assert checksums_valid(frame)
    assert (a.src, a.dst) == (SERVER_MAC, CLIENT_MAC)
    if vlan is not None:
        assert a[Dot1Q].vlan == vlan
    l3q, l3a = (q[IP], a[IP]) if version == 4 else (q[IPv6], a[IPv6])
    assert (l3a.src, l3a.dst) == (l3q.dst, l3q.src)
    if version == 4:
        assert a[IP].ihl == 5 and a[IP].flags == "DF" and a[IP].ttl == 64 and a[IP].len == len(bytes(a[IP]))
    else:
        assert a[IPv6].hlim == 64 and a[IPv6].plen == len(a[IPv6].payload)
    tq, ta = q[TCP], a[TCP]
    assert (ta.sport, ta.dport) == (53, tq.sport)
    assert ta.seq == tq.ack                                   # where the server's stream stands
    assert ta.ack == (tq.seq + len(query) + (1 if fin else 0)) & 0xFFFFFFFF  # all the client sent, its FIN
    assert ta.flags == "FPA"
    assert ta.window == tq.window and ta.dataofs == tq.dataofs
    assert ta.options == [("NOP", None), ("NOP", None), ("Timestamp", (777, 4242))]
    answer = dns.message.from_wire(tcp_message(frame))
    asked = dns.message.from_wire(query[2:])
    assert answer.id == 0xBEEF and answer.rcode() == dns.rcode.NXDOMAIN
    assert answer.question == asked.question
    assert answer.flags & dns.flags.QR and answer.flags & dns.flags.RA and answer.flags & dns.flags.RD
    assert not answer.flags & (dns.flags.AA | dns.flags.TC)
    assert answer.opcode() == dns.opcode.QUERY
    assert (len(answer.answer), len(answer.authority), len(answer.additional)) == (0, 0, 0)


def test_refused_and_other_options_become_nops() -> None:
    s = streams()
    c = opened(s, Client(options=[("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 2)), ("WScale", 7)]))
    segment = c.segment(framed("x.test", "AAAA"))
    result = s.segment(segment, now=2)
    assert result["verdict"] == "answer"
    a = Ether(answer_of(result))
    assert checksums_valid(answer_of(result))
    assert dns.message.from_wire(tcp_message(answer_of(result))).rcode() == dns.rcode.REFUSED
    opts = bytes(a[TCP])[20:a[TCP].dataofs * 4]
    q_opts = bytes(Ether(segment)[TCP])[20:Ether(segment)[TCP].dataofs * 4]
    assert len(opts) == len(q_opts)  # in place
    ts = q_opts.index(b"\x08\x0a")
    assert opts[ts:ts + 10] == b"\x08\x0a" + struct.pack("!II", 2, 1)
    assert set(opts[:ts] + opts[ts + 10:]) <= {1}  # every other byte a NOP


def test_a_query_split_is_answered_with_the_whole_question() -> None:
    s = streams()
    c = opened(s, Client())
    query = framed("long-label-name.sub.tracker.test", qid=4321)
    assert s.segment(c.segment(query[:1]), now=2)["verdict"] == "deliver"
    last = c.segment(query[1:], advance=False)
    result = s.segment(last, now=3)
    answer = dns.message.from_wire(tcp_message(answer_of(result)))
    assert answer.question[0].name == dns.name.from_text("long-label-name.sub.tracker.test")
    assert answer.id == 4321
    assert Ether(answer_of(result))[TCP].ack == Ether(last)[TCP].seq + len(query) - 1
    assert checksums_valid(answer_of(result))


def test_no_answer_with_ip_options_or_extension_headers() -> None:
    s = streams()
    c = opened(s, Client())
    pkt = Ether(c.segment(framed("a.tracker.test"), advance=False))
    pkt[IP].options = [b"\x94\x04\x00\x00"]  # router alert
    del pkt[IP].ihl, pkt[IP].len, pkt[IP].chksum
    result = s.segment(bytes(pkt), now=2)
    assert (result["verdict"], result["action"], result["answer"]) == ("drop", _slowpath.NXDOMAIN, None)
    # Not answered, so the connection is as before: the same query without options is answered.
    assert s.segment(c.segment(framed("a.tracker.test")), now=3)["verdict"] == "answer"
    from scapy.layers.inet6 import IPv6ExtHdrDestOpt
    s = streams()
    c = opened(s, Client(version=6))
    pkt = Ether(c.segment(framed("a.tracker.test"), advance=False))
    tcp = pkt[TCP]
    pkt[IPv6].remove_payload()
    pkt = pkt / IPv6ExtHdrDestOpt() / tcp
    del pkt[IPv6].plen, pkt[IPv6].nh
    assert s.segment(bytes(pkt), now=2)["verdict"] == "drop"


# ---- the table: bound, expiry, hand-off -----------------------------------------------------------


def test_the_table_is_bounded_and_evicts_the_least_recently_used() -> None:
    s = streams(capacity=8)  # one probe window: every connection competes for its 8 slots
    clients = [opened(s, Client(sport=41000 + i), now=1.0 + i) for i in range(8)]
    assert len(s) == 8
    for i, c in enumerate(clients[1:], start=1):  # all but the first one are used again
        assert s.segment(c.segment(framed("good.test")), now=20.0 + i)["verdict"] == "deliver"
    opened(s, Client(sport=42000), now=30.0)
    assert len(s) == 8
    assert s.stats()["dns_tcp_evicted"] == 1
    assert judged(s.segment(clients[0].segment(framed("good.test")), now=31)) == ("drop", "midstream", None)
    for c in clients[1:]:
        assert s.segment(c.segment(framed("good.test")), now=32)["verdict"] == "deliver"


def test_idle_connections_expire() -> None:
    s = streams(idle_timeout=5.0)
    c = opened(s, Client(), now=100.0)
    assert s.segment(c.segment(framed("good.test")), now=104.0)["verdict"] == "deliver"
    assert s.segment(c.segment(framed("good.test")), now=108.5)["verdict"] == "deliver"  # 4.5 s idle
    result = s.segment(c.segment(framed("good.test")), now=114.0)  # 5.5 s idle: forgotten
    assert judged(result) == ("drop", "midstream", None)
    assert s.stats()["dns_tcp_expired"] == 1 and len(s) == 0


def abi_key(c: Client) -> bytes:
    """struct hyp_dns_tcp_key (bpf/include/hyperion_abi.h): addresses in 16 bytes each (IPv4 in the
    first 4), ports in host order, family 4 or 6, 3 bytes of padding."""
    src, dst = (CLIENT4, SERVER4) if c.version == 4 else (CLIENT6, SERVER6)
    return struct.pack("=16s16sHHB3x", ip_address(src).packed, ip_address(dst).packed, c.sport, 53, c.version)


@pytest.mark.parametrize("version", [4, 6])
def test_a_connection_handed_over_by_xdp(version: int) -> None:
    c = Client(version=version)
    c.sent = 31  # XDP judged 31 bytes of queries itself, then handed the connection over
    table = {abi_key(c): (c.next, _slowpath.DNS_TCP_SLOWPATH)}
    asked: list[bytes] = []

    def handoff(key: bytes) -> tuple[int, int] | None:
        asked.append(key)
        return table.get(key)

    s = streams(handoff=handoff)
    message = framed("a.tracker.test")
    assert judged(s.segment(c.segment(message[:5]), now=1)) == ("deliver", "data", None)
    assert asked == [abi_key(c)] and s.stats()["dns_tcp_handoff"] == 1
    assert s.segment(c.segment(message[5:], advance=False), now=2)["verdict"] == "answer"
    assert len(asked) == 1  # local state from then on
    # Another connection XDP handed over, at a position the segment does not start at.
    other = Client(version=version, sport=40001)
    table[abi_key(other)] = (other.next + 100, _slowpath.DNS_TCP_SLOWPATH)
    assert judged(s.segment(other.segment(framed("good.test")), now=3)) == ("drop", "out_of_order", None)
    # One XDP ended, and one it does not know.
    ended = Client(version=version, sport=40002)
    table[abi_key(ended)] = (ended.next, _slowpath.DNS_TCP_ENDED)
    assert judged(s.segment(ended.segment(framed("good.test")), now=4)) == ("drop", "ended", None)
    unknown = Client(version=version, sport=40003)
    assert judged(s.segment(unknown.segment(framed("good.test")), now=5)) == ("drop", "midstream", None)


def test_a_handed_over_4_tuple_restarted_by_xdp() -> None:
    c = Client()
    table = {abi_key(c): (c.next, _slowpath.DNS_TCP_SLOWPATH)}
    s = streams(handoff=table.get)
    assert s.segment(c.segment(framed("good.test")), now=1)["verdict"] == "deliver"
    # A new connection on the 4-tuple: XDP saw its SYN and handed it over again, from its own `next`.
    c2 = Client(isn=9_000_000)
    table[abi_key(c2)] = (c2.next, _slowpath.DNS_TCP_SLOWPATH)
    assert s.segment(c2.segment(framed("evil.test"), advance=False), now=2)["rule"] == EVIL
    assert s.segment(c2.segment(framed("good.test")), now=3)["verdict"] == "deliver"


def test_not_a_tcp_dns_segment() -> None:
    s = streams()
    with pytest.raises(ValueError, match="not a TCP segment of a DNS class"):
        s.segment(bytes(Ether() / IP(src=CLIENT4, dst=SERVER4) / TCP(dport=8080) / Raw(b"x")))
    with pytest.raises(ValueError, match="capacity"):
        streams(capacity=0)
    with pytest.raises(ValueError, match="max_message"):
        streams(max_message=70000)


# ---- properties -----------------------------------------------------------------------------------

NAMES = {"good.test": None, "x.test": None, "evil.test": ("drop", EVIL), "a.tracker.test": ("answer", TRACKER)}


@settings(max_examples=150, deadline=None)
@given(names=st.lists(st.sampled_from(sorted(NAMES)), min_size=1, max_size=6), data=st.data())
def test_any_segmentation_of_a_stream_is_judged_as_the_server_reads_it(names: list[str], data: st.DataObject) -> None:
    """Reference: the stream as the server reads it (RFC 7766 framing, in order). Every segment is
    delivered until the one that completes the first blocked message, which takes that message's
    verdict; each segment judges exactly the messages that end in it."""
    stream = b"".join(framed(n) for n in names)
    ends, total = [], 0
    for n in names:
        total += len(framed(n))
        ends.append(total)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=8)))
    bounds = [0, *cuts, len(stream)]
    s = streams()
    c = opened(s, Client())
    for start, end in itertools.pairwise(bounds):
        completed = [i for i, e in enumerate(ends) if start < e <= end]
        blocked = next((i for i in completed if NAMES[names[i]]), None)
        result = s.segment(c.segment(stream[start:end]), now=2)
        if blocked is None:
            assert (result["verdict"], result["messages"]) == ("deliver", len(completed))
            continue
        verdict, rule = NAMES[names[blocked]]  # type: ignore[misc]
        assert (result["verdict"], result["rule"], result["qname"]) == (verdict, rule, names[blocked])
        assert result["messages"] == completed.index(blocked) + 1
        return


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=300), seq_offset=st.sampled_from([0, 0, 0, 1, -1, 1000]),
       flags=st.sampled_from(["PA", "A", "FPA", "S", "SA", "R", "PAU"]))
def test_arbitrary_bytes_never_break_the_engine(payload: bytes, seq_offset: int, flags: str) -> None:
    s = streams(rules=compiled(malformed="pass"), max_message=256)
    c = opened(s, Client())
    for _ in range(3):
        seq = (c.next + seq_offset) & 0xFFFFFFFF
        result = s.segment(c.segment(payload, seq=seq, flags=flags), now=2)
        assert result["verdict"] in ("deliver", "drop", "answer")
        if result["verdict"] == "deliver" and seq_offset == 0:
            c.sent += len(payload)
        if result["answer"] is not None:
            assert checksums_valid(result["answer"])


def test_with_names_judged_in_xdp_the_workers_still_judge_every_name_over_tcp() -> None:
    """dns_name_rules: xdp (the default): a query split over segments is the workers' to judge (XDP
    judges only a whole query at B), so the workers need the name rules XDP carries out too."""
    slow = SlowPathSection(dns_rules=DNS_RULES)
    classes = (RedirectClass(protocol=17, port=53), RedirectClass(protocol=6, port=53))
    compiled_rules = rules.compile_slow_path_rules(slow, classes, never_block=[])
    worker = compiled_rules.spec.build(compiled_rules.rules.serialize())  # what a worker builds
    s = streams(rules=worker)
    c = opened(s, Client())
    message = framed("evil.test")
    assert s.segment(c.segment(message[:9]), now=2)["verdict"] == "deliver"
    assert judged(s.segment(c.segment(message[9:], advance=False), now=3)) == ("drop", "rule", EVIL)
    c = opened(s, Client(sport=40100))  # the first one is stuck at the dropped query: a new connection
    split = framed("b.tracker.test")
    assert s.segment(c.segment(split[:3]), now=4)["verdict"] == "deliver"
    assert s.segment(c.segment(split[3:], advance=False), now=5)["verdict"] == "answer"
