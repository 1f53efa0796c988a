"""Action `allow` in the slow path (DESIGN14): the same native action as `pass` (the query is
delivered and no later rule applies); events and replay keep naming the native action "pass"."""

from __future__ import annotations

import dns.message
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from hyperion import _slowpath
from hyperion.policy.model import DnsRule, RedirectClass, SlowPathSection
from hyperion.slowpath import rules


def frame(name: str) -> bytes:
    wire = dns.message.make_query(name, "A").to_wire()
    return bytes(Ether() / IP(src="198.51.100.1", dst="192.0.2.1") / UDP(sport=40000, dport=53) / Raw(wire))


def test_allow_is_the_native_pass() -> None:
    assert _slowpath.ALLOW == _slowpath.PASS
    assert rules.native_action("allow") == rules.native_action("pass") == _slowpath.PASS
    assert rules.ACTION_NAMES[_slowpath.PASS] == "pass"
    assert "allow" not in rules.ACTION_NAMES.values()


def test_an_allow_rule_passes_and_stops_a_less_specific_drop() -> None:
    # Built without validation: the policy model learns "allow" in the same round (the cp part).
    slow = SlowPathSection(dns_rules=(DnsRule(match="*.evil.test", action="drop"),
                                      DnsRule.model_construct(match="ok.evil.test", action="allow")))
    compiled = rules.compile_slow_path_rules(slow, (RedirectClass(protocol=17, port=53),), never_block=[])
    assert compiled.actions == ["drop", "allow"]
    allowed = compiled.rules.inspect(frame("ok.evil.test"))
    assert (allowed["rule"], allowed["action"]) == (1, _slowpath.PASS)
    dropped = compiled.rules.inspect(frame("x.evil.test"))
    assert (dropped["rule"], dropped["action"]) == (0, _slowpath.DROP)
    assert compiled.rules.hits() == [1, 1]
