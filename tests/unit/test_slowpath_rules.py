"""The slow path's native decision code, without sockets: Rules.inspect() and parse_dns().

Matching semantics (documented in the README): exact names match only
themselves; "*.x" matches strict subdomains of x, never x itself; names are
compared case-insensitively; a qtype filter narrows a rule; the most specific
name rule wins, regexes only when no name rule matches (tests/unit/test_dns_precedence.py).
"""

from __future__ import annotations

import struct
import time

import dns.message
import dns.name
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from hyperion import _slowpath
from hyperion.errors import PolicyError
from hyperion.policy.loading import parse_policy
from hyperion.slowpath.rules import compile_rules

POLICY = r"""
fast_path:
  redirect_ports: [{protocol: udp, port: 53}, {protocol: tcp, port: 8080}, {protocol: udp, port: 9999}]
slow_path:
  malformed_dns_action: drop
  dns_rules:
    - {match: "allowed.evil.com", action: pass}
    - {match: "evil.com", action: drop}
    - {match: "*.evil.com", action: nxdomain}
    - {match: "x.test", qtype: AAAA, action: refuse}
    - {match: "x.test", action: alert}
    - {regex: "^[a-z0-9]{30,}\\.", action: alert}
    - {match: "c2.test", action: block_source, ttl: 10m}
  signatures:
    - {class: {protocol: tcp, port: 8080}, literal: "root", action: drop}
    - {class: {protocol: udp, port: 9999}, regex: "(?i)union\\s+select", action: block_source, ttl: 5m}
"""

RULES = compile_rules(parse_policy(POLICY))
A = dns.rdatatype.A
DNS_CLASS = "fast_path:\n  redirect_ports: [{protocol: udp, port: 53}]\n"  # udp/53: parsed as DNS


def query(name: str, qtype: str = "A", v6: bool = False, vlan: bool = False) -> bytes:
    ip = IPv6(src="2001:db8:ff::1", dst="2001:db8:1::1") if v6 else IP(src="198.51.100.1", dst="192.0.2.1")
    l2 = Ether() / Dot1Q(vlan=5) if vlan else Ether()
    return bytes(l2 / ip / UDP(sport=40000, dport=53) / DNS(rd=1, qd=DNSQR(qname=name, qtype=qtype)))


def raw_dns(payload: bytes) -> bytes:
    return bytes(Ether() / IP(src="198.51.100.1", dst="192.0.2.1") / UDP(sport=40000, dport=53) / Raw(payload))


def decide(frame: bytes) -> tuple[str, str | None]:
    result = RULES.rules.inspect(frame)
    action = {v: k for k, v in {"drop": _slowpath.DROP, "pass": _slowpath.PASS, "alert": _slowpath.ALERT,
                                "nxdomain": _slowpath.NXDOMAIN, "refuse": _slowpath.REFUSE,
                                "block_source": _slowpath.BLOCK_SOURCE}.items()}[result["action"]]
    rule = RULES.labels[result["rule"]].split(" ", 1)[0] if result["rule"] is not None else None
    return action, rule


@pytest.mark.parametrize("frame,expected", [
    (query("evil.com"), ("drop", "slow_path.dns_rules[1]")),
    (query("EVIL.Com"), ("drop", "slow_path.dns_rules[1]")),
    (query("evil.com."), ("drop", "slow_path.dns_rules[1]")),
    (query("a.evil.com"), ("nxdomain", "slow_path.dns_rules[2]")),
    (query("a.b.c.evil.com"), ("nxdomain", "slow_path.dns_rules[2]")),
    (query("allowed.evil.com"), ("pass", "slow_path.dns_rules[0]")),   # first rule wins over *.evil.com
    (query("notevil.com"), ("pass", None)),                             # a suffix match is label-wise
    (query("evil.com.example"), ("pass", None)),
    (query("x.test", "AAAA"), ("refuse", "slow_path.dns_rules[3]")),
    (query("x.test", "A"), ("alert", "slow_path.dns_rules[4]")),       # qtype filter: next rule
    (query("a" * 40 + ".example"), ("alert", "slow_path.dns_rules[5]")),
    (query("a" * 10 + ".example"), ("pass", None)),
    (query("c2.test"), ("block_source", "slow_path.dns_rules[6]")),
    (query("evil.com", v6=True), ("drop", "slow_path.dns_rules[1]")),
    (query("evil.com", vlan=True), ("drop", "slow_path.dns_rules[1]")),
    (query("good.test"), ("pass", None)),
], ids=lambda v: v if isinstance(v, str) else None)
def test_dns_rules(frame: bytes, expected: tuple[str, str | None]) -> None:
    assert decide(frame) == expected


def test_apex_of_a_wildcard_does_not_match() -> None:
    rules = compile_rules(parse_policy(
        DNS_CLASS + "slow_path:\n  dns_rules: [{match: '*.tracker.test', action: drop}]\n"))
    assert rules.rules.inspect(query("tracker.test"))["rule"] is None
    assert rules.rules.inspect(query("a.tracker.test"))["rule"] == 0


HEADER = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)


@pytest.mark.parametrize("payload,why", [
    (b"\x12\x34\x01", "shorter than a DNS header"),
    (struct.pack("!HHHHHH", 1, 0x0100, 0, 0, 0, 0), "no question"),
    (HEADER + b"\x03abc", "name runs past the message"),
    (HEADER + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01", "reserved label type"),
    (HEADER + b"\x05ab", "label runs past the message"),
    (HEADER + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01", "name longer than 255 bytes"),
    (HEADER + b"\x03abc\x00\x00", "question runs past the message"),
    (HEADER + b"\xc0\x0c\x00\x01\x00\x01", "compression pointer not backwards"),   # points at itself
    (HEADER + b"\x01a\xc0\x0c\x00\x01\x00\x01", "compression pointer not backwards"),  # a loop
    (HEADER + b"\x01a\x01b\xc0\x0e\x00\x01\x00\x01", "compression pointer not backwards"),  # into itself
    (HEADER + b"\xc0", "truncated compression pointer"),
    (HEADER + b"\x03a.b\x00\x00\x01\x00\x01", "dot or NUL inside a label"),
    (HEADER + b"\x03a\x00b\x00\x00\x01\x00\x01", "dot or NUL inside a label"),
])
def test_malformed_dns_is_refused_with_its_reason(payload: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        _slowpath.parse_dns(payload)
    result = RULES.rules.inspect(raw_dns(payload))
    assert result["malformed_dns"] is True and result["action"] == _slowpath.DROP


def test_too_many_labels() -> None:
    with pytest.raises(ValueError, match="too many labels"):
        _slowpath.parse_dns(HEADER + b"\x01a" * 128 + b"\x00\x00\x01\x00\x01")


def test_responses_are_not_inspected() -> None:
    response = bytes(DNS(qr=1, qd=DNSQR(qname="evil.com")))
    assert _slowpath.parse_dns(response) is None
    assert decide(raw_dns(response)) == ("pass", None)


def test_malformed_action_is_configurable() -> None:
    rules = compile_rules(parse_policy(DNS_CLASS + "slow_path:\n  malformed_dns_action: alert\n"))
    assert rules.rules.inspect(raw_dns(b"\x00"))["action"] == _slowpath.ALERT


@pytest.mark.parametrize("frame,expected", [
    (bytes(Ether() / IP() / TCP(dport=8080) / Raw(b"GET /home/root HTTP/1.0")), ("drop", "slow_path.signatures[0]")),
    (bytes(Ether() / IP() / TCP(dport=8080) / Raw(b"GET / HTTP/1.0")), ("pass", None)),
    (bytes(Ether() / IP() / TCP(dport=8081) / Raw(b"root")), ("pass", None)),  # another class
    (bytes(Ether() / IP() / UDP(dport=9999) / Raw(b"1 UnIoN   SeLeCt 2")), ("block_source", "slow_path.signatures[1]")),
    (bytes(Ether() / IPv6() / UDP(dport=9999) / Raw(b"union\nselect")), ("block_source", "slow_path.signatures[1]")),
    (bytes(Ether() / IP() / UDP(dport=9999) / Raw(b"unionselect")), ("pass", None)),
], ids=["tcp-literal", "tcp-clean", "other-port", "udp-regex", "udp-regex-v6", "udp-clean"])
def test_payload_signatures(frame: bytes, expected: tuple[str, str | None]) -> None:
    assert decide(frame) == expected


def test_literal_bytes_are_not_regex_syntax() -> None:
    rules = compile_rules(parse_policy(
        "slow_path:\n  signatures: [{class: {protocol: udp, port: 9}, literal: 'a.b*', action: drop}]\n"))
    assert rules.rules.inspect(bytes(Ether() / IP() / UDP(dport=9) / Raw(b"xa.b*y")))["rule"] == 0
    assert rules.rules.inspect(bytes(Ether() / IP() / UDP(dport=9) / Raw(b"xaXbbby")))["rule"] is None


def test_regex_hyperscan_cannot_compile_is_a_policy_error_naming_the_rule() -> None:
    with pytest.raises(PolicyError, match=r"slow_path.dns_rules\[1\] regex='\(a\)\\\\1' .*Hyperscan cannot"):
        compile_rules(parse_policy(
            "fast_path:\n  redirect_ports: [{protocol: udp, port: 53}]\n"
            "slow_path:\n  dns_rules:\n    - {match: ok.test, action: drop}\n    - {regex: '(a)\\1', action: drop}\n"))


def test_hits_are_counted_per_rule() -> None:
    rules = compile_rules(parse_policy(POLICY))
    for _ in range(3):
        rules.rules.inspect(query("evil.com"))
    rules.rules.inspect(query("z.evil.com"))
    assert rules.rules.hits()[1:3] == [3, 1]


def test_100k_names_load_and_match_without_per_rule_cost() -> None:
    names = "\n".join(f"    - {{match: 'n{i}.blocked.test', action: drop}}" for i in range(100_000))
    start = time.perf_counter()
    suffix_rule = "    - {match: '*.sfx.test', action: nxdomain}"
    rules = compile_rules(parse_policy(DNS_CLASS + f"slow_path:\n  dns_rules:\n{names}\n{suffix_rule}\n"))
    print(f"100k DNS rules compiled in {time.perf_counter() - start:.2f} s")
    assert rules.rules.inspect(query("n99999.blocked.test"))["rule"] == 99_999
    assert rules.rules.inspect(query("a.b.sfx.test"))["rule"] == 100_000
    assert rules.rules.inspect(query("n100000.blocked.test"))["rule"] is None


LABEL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=20)


@settings(max_examples=300, deadline=None)
@given(labels=st.lists(LABEL, min_size=1, max_size=8), qtype=st.sampled_from([1, 2, 5, 15, 16, 28, 33, 65, 255]),
       upper=st.booleans())
def test_parser_agrees_with_dnspython(labels: list[str], qtype: int, upper: bool) -> None:
    """Differential: for valid queries, qname and qtype equal dnspython's reading of them."""
    name = ".".join(labels)
    wire = dns.message.make_query(name.upper() if upper else name, qtype).to_wire()
    parsed = dns.message.from_wire(wire)
    expected = parsed.question[0].name.to_text(omit_final_dot=True).lower()
    assert _slowpath.parse_dns(wire) == (expected, parsed.question[0].rdtype)


def test_non_ascii_label_bytes_never_break_decoding() -> None:
    result = RULES.rules.inspect(raw_dns(HEADER + b"\x02\xff\xfe\x04evil\x03com\x00\x00\x01\x00\x01"))
    assert result["qname"] == "\xff\xfe.evil.com" and result["rule"] == 2  # *.evil.com
