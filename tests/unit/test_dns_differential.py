"""Differential check of the slow path's DNS parser (hyperion._slowpath.parse_dns) against dnspython.

tests/unit/test_slowpath_rules.py already compares short LDH names with a few qtypes. Here the
queries are what dnspython can build at the edges: labels of any bytes but '.' and NUL (the
parser refuses those inside a label, by design), labels of exactly 63 bytes, names of exactly
255 wire bytes and of 127 labels, the root name, any qtype and qclass, random header flags
and ids, with and without EDNS. For every such query the parser returns what dnspython reads
from the same bytes: the name lower-cased in ASCII only (other bytes are kept, as Latin-1) and
the qtype. Responses and non-QUERY opcodes are not inspected: None.
"""

from __future__ import annotations

import dns.flags
import dns.message
import dns.name
import dns.opcode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperion import _slowpath

MAX_WIRE = 255  # bytes of a name on the wire, the root label included
LDH = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1,
              max_size=63).map(str.encode)
ANY_BYTES = st.binary(min_size=1, max_size=63).filter(lambda b: b"." not in b and b"\0" not in b)
LABEL = st.one_of(LDH, ANY_BYTES, st.sampled_from([b"x" * 63, b"X" * 63, b"\xff" * 63]))


@st.composite
def names(draw: st.DrawFn) -> dns.name.Name:
    shape = draw(st.sampled_from(["random", "random", "random", "longest", "most_labels", "root"]))
    if shape == "root":
        return dns.name.root
    if shape == "most_labels":  # 127 one-byte labels: 255 bytes
        return dns.name.Name([draw(st.binary(min_size=1, max_size=1).filter(lambda b: b not in (b".", b"\0")))
                              for _ in range(127)] + [b""])
    labels: list[bytes] = []
    room = MAX_WIRE - 1  # the root label's length byte
    for label in draw(st.lists(LABEL, min_size=1, max_size=10)):
        if room < 2:
            break
        label = label[: room - 1]
        labels.append(label)
        room -= 1 + len(label)
    if shape == "longest":  # fill up to exactly 255 bytes
        while room >= 2:
            label = draw(LABEL)[: min(63, room - 1)]
            labels.append(label)
            room -= 1 + len(label)
    return dns.name.Name([*labels, b""])


def expected_name(name: dns.name.Name) -> str:
    return ".".join(label.lower().decode("latin-1") for label in name.labels if label)


@settings(max_examples=400, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(name=names(), qtype=st.integers(0, 65535), qclass=st.sampled_from([1, 3, 4, 254, 255, 65535]),
       flags=st.integers(0, 0xFFFF), ident=st.integers(0, 0xFFFF), edns=st.sampled_from([None, 0]),
       dnssec=st.booleans())
def test_parser_agrees_with_dnspython_at_the_edges(name: dns.name.Name, qtype: int, qclass: int, flags: int,
                                                    ident: int, edns: int | None, dnssec: bool) -> None:
    query = dns.message.make_query(name, qtype, rdclass=qclass, use_edns=edns, want_dnssec=dnssec and edns is not None)
    query.id = ident
    # Any flags and rcode bits, but a query (QR clear) with opcode QUERY.
    query.flags = flags & ~(dns.flags.QR | 0x7800)
    wire = query.to_wire()
    assert len(name.to_wire()) <= MAX_WIRE
    parsed = dns.message.from_wire(wire)
    question = parsed.question[0]
    assert (question.name, question.rdtype) == (name, qtype)
    assert _slowpath.parse_dns(wire) == (expected_name(question.name), question.rdtype)


@settings(max_examples=100, deadline=None, database=None, derandomize=True)
@given(name=names(), response=st.booleans(),
       opcode=st.sampled_from([dns.opcode.IQUERY, dns.opcode.STATUS, dns.opcode.NOTIFY, dns.opcode.UPDATE, 3, 15]))
def test_responses_and_other_opcodes_are_not_inspected(name: dns.name.Name, response: bool, opcode: int) -> None:
    query = dns.message.make_query(name, 1)
    if response:
        query.flags |= dns.flags.QR
    else:
        query.set_opcode(opcode)
    assert _slowpath.parse_dns(query.to_wire()) is None
