"""Configurable DNS ports in the native engine (DESIGN14): a DNS class is a redirect class whose port
is in slow_path.dns_ports (default [53]). The workers parse UDP DNS classes as DNS; a TCP DNS class
is carried in the rule spec but not parsed as DNS this round; any other port is not DNS at all
(its signatures still apply). Root-free: Rules.inspect() on scapy frames."""

from __future__ import annotations

import json
from typing import Any

import dns.message
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from hyperion import _slowpath
from hyperion.policy.loading import parse_policy
from hyperion.policy.model import Policy
from hyperion.slowpath.protocol import ProtocolError, RuleSpec
from hyperion.slowpath.rules import compile_rules

UDP_, TCP_ = 17, 6  # IANA protocol numbers


def with_dns_ports(policy: Policy, ports: tuple[int, ...]) -> Policy:
    """slow_path.dns_ports set without parsing it (the policy model gains the field in this round)."""
    return policy.model_copy(update={"slow_path": policy.slow_path.model_copy(update={"dns_ports": ports})})


POLICY = """
fast_path:
  redirect_ports:
    - {protocol: udp, port: 53}
    - {protocol: tcp, port: 53}
    - {protocol: udp, port: 5353}
    - {protocol: udp, port: 9999}
slow_path:
  malformed_dns_action: drop
  dns_rules:
    - {match: evil.test, action: nxdomain}
    - {regex: '^bad\\.', action: drop}
  signatures:
    - {class: {protocol: udp, port: 5353}, literal: 'evil', action: alert}
"""


def wire(name: str = "evil.test") -> bytes:
    return dns.message.make_query(name, "A").to_wire()


def udp(port: int, payload: bytes, v6: bool = False) -> bytes:
    ip = IPv6(src="2001:db8::1", dst="2001:db8::2") if v6 else IP(src="198.51.100.1", dst="192.0.2.1")
    return bytes(Ether() / ip / UDP(sport=40000, dport=port) / Raw(payload))


def tcp(port: int, payload: bytes) -> bytes:
    return bytes(Ether() / IP(src="198.51.100.1", dst="192.0.2.1") / TCP(sport=40000, dport=port, flags="PA")
                 / Raw(payload))


def judged(rules: Any, frame: bytes) -> tuple[bool, int | None, int]:
    result = rules.inspect(frame)
    return result["dns"], result["rule"], result["action"]


def test_the_default_dns_port_is_53_and_only_udp_is_parsed() -> None:
    compiled = compile_rules(parse_policy(POLICY), never_block=[])
    assert sorted(compiled.spec.dns_classes) == [(TCP_, 53), (UDP_, 53)]
    rules = compiled.rules
    assert judged(rules, udp(53, wire())) == (True, 0, _slowpath.NXDOMAIN)
    assert judged(rules, udp(53, wire(), v6=True)) == (True, 0, _slowpath.NXDOMAIN)
    # tcp/53 is a DNS class, but DNS over TCP is not parsed this round (a segment is not a message).
    assert judged(rules, tcp(53, b"\x00\x1b" + wire())) == (False, None, _slowpath.PASS)
    # udp/5353 is redirected but not a DNS port: no DNS rule, its signature applies.
    assert judged(rules, udp(5353, wire())) == (False, 2, _slowpath.ALERT)
    assert rules.inspect(udp(5353, b"\x00"))["malformed_dns"] is False


def test_dns_ports_choose_the_dns_classes() -> None:
    compiled = compile_rules(with_dns_ports(parse_policy(POLICY), (5353, 9999)), never_block=[])
    assert sorted(compiled.spec.dns_classes) == [(UDP_, 5353), (UDP_, 9999)]
    rules = compiled.rules
    assert judged(rules, udp(5353, wire())) == (True, 0, _slowpath.NXDOMAIN)
    assert judged(rules, udp(9999, wire())) == (True, 0, _slowpath.NXDOMAIN)
    # A clean query on a DNS port still meets the class's signatures.
    assert judged(rules, udp(5353, wire("evil.example"))) == (True, 2, _slowpath.ALERT)
    assert judged(rules, udp(9999, wire("bad.example"))) == (True, 1, _slowpath.DROP)
    assert judged(rules, udp(53, wire())) == (False, None, _slowpath.PASS)
    malformed = rules.inspect(udp(9999, b"\x00"))
    assert malformed["malformed_dns"] is True and malformed["action"] == _slowpath.DROP
    assert rules.inspect(udp(53, b"\x00"))["malformed_dns"] is False


def test_a_port_in_dns_ports_without_a_redirect_class_is_no_dns_class() -> None:
    compiled = compile_rules(with_dns_ports(parse_policy(POLICY), (53, 5300)), never_block=[])
    assert sorted(compiled.spec.dns_classes) == [(TCP_, 53), (UDP_, 53)]
    assert judged(compiled.rules, udp(5300, wire())) == (False, None, _slowpath.PASS)


def test_the_workers_rules_judge_the_same_dns_ports() -> None:
    compiled = compile_rules(with_dns_ports(parse_policy(POLICY), (5353,)), never_block=[])
    spec = RuleSpec.from_json(json.loads(json.dumps(compiled.spec.to_json())))
    assert spec == compiled.spec
    worker = spec.build(compiled.rules.serialize())
    assert worker.inspect(udp(5353, b"\x00"))["malformed_dns"] is True
    assert judged(worker, udp(5353, wire("bad.example"))) == (True, 1, _slowpath.DROP)
    assert judged(worker, udp(53, wire("bad.example"))) == (False, None, _slowpath.PASS)


def test_no_dns_class_means_no_dns_parsing() -> None:
    rules = _slowpath.Rules([(_slowpath.DROP, 0, 0.0)], [(0, _slowpath.EXACT, "evil.test")], [], [])
    assert judged(rules, udp(53, wire())) == (False, None, _slowpath.PASS)
    rules = _slowpath.Rules([(_slowpath.DROP, 0, 0.0)], [(0, _slowpath.EXACT, "evil.test")], [], [],
                            dns_classes=[(UDP_, 53), (UDP_, 65535)])
    assert judged(rules, udp(53, wire())) == (True, 0, _slowpath.DROP)
    assert judged(rules, udp(65535, wire())) == (True, 0, _slowpath.DROP)


@pytest.mark.parametrize(("entry", "why"), [
    ((1, 53), r"dns_classes\[1\]: protocol 1"),
    ((UDP_, 0), r"dns_classes\[1\]: port 0"),
    ((UDP_, 65536), r"dns_classes\[1\]: port 65536"),
])
def test_a_bad_dns_class_is_an_error_naming_it(entry: tuple[int, int], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        _slowpath.Rules([], [], [], [], dns_classes=[(UDP_, 53), entry])


def test_a_malformed_dns_classes_field_is_a_protocol_error() -> None:
    good = compile_rules(parse_policy(POLICY), never_block=[]).spec.to_json()
    with pytest.raises(ProtocolError, match=r"rule spec: dns_classes: malformed"):
        RuleSpec.from_json({**good, "dns_classes": [[17]]})
