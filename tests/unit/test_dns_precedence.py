"""Name-rule precedence in the native engine (DESIGN14 "Semantics"), without sockets.

The reference below is written from the documented rules, with dnspython doing the name
arithmetic (case-insensitive equality, is_subdomain), not from the engine:
- among the name rules (match:) that match a query, the most specific wins: the exact rule on the
  whole name, then `*.x` rules by decreasing length of x (`*.x` matches strict subdomains of x only);
- on the same (kind, name), a rule whose qtype equals the query's beats one without qtype;
- identical (kind, name, qtype): the first in the policy;
- regex rules only when no name rule matches, the first in the policy among them.
Queries go through Rules.inspect() as Ethernet frames built with scapy around dnspython's wire format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import dns.message
import dns.name
import dns.rdatatype
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from hyperion import _slowpath
from hyperion.policy.model import Policy
from hyperion.slowpath.rules import compile_rules

A, AAAA, MX = dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.MX


@dataclass(frozen=True)
class Rule:
    match: str | None = None       # "a.b" or "*.b"
    regex: str | None = None       # Hyperscan and Python agree on the patterns used here
    qtype: int | None = None
    action: str = "drop"

    def to_policy(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"action": self.action}
        if self.match is not None:
            entry["match"] = self.match
        if self.regex is not None:
            entry["regex"] = self.regex
        if self.qtype is not None:
            entry["qtype"] = self.qtype
        if self.action == "block_source":
            entry["ttl"] = "1m"
        return entry


def compiled(rules: list[Rule]) -> Any:
    policy = Policy.model_validate({
        "fast_path": {"redirect_ports": [{"protocol": "udp", "port": 53}]},
        "slow_path": {"dns_rules": [rule.to_policy() for rule in rules]},
    })
    return compile_rules(policy, never_block=[])


def frame(qname: str, qtype: int) -> bytes:
    wire = dns.message.make_query(qname, qtype).to_wire()
    return bytes(Ether() / IP(src="198.51.100.1", dst="192.0.2.1") / UDP(sport=40000, dport=53) / Raw(wire))


def reference(rules: list[Rule], qname: str, qtype: int) -> int | None:
    name = dns.name.from_text(qname)
    ranked: list[tuple[int, int, int, int]] = []
    for index, rule in enumerate(rules):
        if rule.match is None or rule.qtype not in (None, qtype):
            continue
        if rule.match.startswith("*."):
            base = dns.name.from_text(rule.match[2:])
            if not (name.is_subdomain(base) and name != base):
                continue
            kind, length = 1, len(base.labels)
        else:
            if dns.name.from_text(rule.match) != name:
                continue
            kind, length = 0, len(name.labels)
        ranked.append((kind, -length, 0 if rule.qtype is not None else 1, index))
    if ranked:
        return min(ranked)[3]
    text = name.to_text(omit_final_dot=True).lower()
    for index, rule in enumerate(rules):
        if rule.regex is not None and rule.qtype in (None, qtype) and re.search(rule.regex, text, re.DOTALL):
            return index
    return None


# Each case: the rules, the query, the expected rule (the reference must agree too).
CASES: list[tuple[str, list[Rule], str, int, int | None]] = [
    ("exact-beats-an-earlier-suffix", [Rule("*.evil.test"), Rule("www.evil.test", action="nxdomain")],
     "www.evil.test", A, 1),
    ("longer-suffix-beats-an-earlier-shorter-one", [Rule("*.test"), Rule("*.evil.test", action="nxdomain")],
     "a.evil.test", A, 1),
    ("qtype-rule-beats-an-earlier-any-rule", [Rule("x.test"), Rule("x.test", qtype=AAAA, action="refuse")],
     "x.test", AAAA, 1),
    ("any-rule-when-the-qtype-differs", [Rule("x.test"), Rule("x.test", qtype=AAAA, action="refuse")],
     "x.test", A, 0),
    ("qtype-suffix-rule-beats-an-earlier-any-one", [Rule("*.test"), Rule("*.test", qtype=MX, action="alert")],
     "m.test", MX, 1),
    ("identical-rules-first-in-policy", [Rule("x.test", action="alert"), Rule("x.test")], "X.Test", A, 0),
    ("more-specific-name-beats-a-matching-qtype", [Rule("*.test", qtype=A), Rule("*.evil.test", action="alert")],
     "a.evil.test", A, 1),
    ("a-specific-rule-of-another-qtype-falls-through",
     [Rule("a.evil.test", qtype=AAAA), Rule("*.evil.test", action="nxdomain")], "a.evil.test", A, 1),
    ("name-rule-beats-an-earlier-regex", [Rule(regex="evil"), Rule("evil.test", action="alert")],
     "evil.test", A, 1),
    ("regex-when-no-name-matches", [Rule(regex="evil"), Rule("evil.test", action="alert")], "x.evil2.test", A, 0),
    ("first-regex-in-policy", [Rule(regex="^b"), Rule(regex="^a"), Rule(regex="test$")], "a.test", A, 1),
    ("regex-of-another-qtype-skipped", [Rule(regex="^a", qtype=AAAA), Rule(regex="test$")], "a.test", A, 1),
    ("apex-not-matched-by-its-wildcard", [Rule("*.evil.test")], "evil.test", A, None),
    ("apex-exact-beats-a-wildcard-above", [Rule("*.test"), Rule("evil.test", action="alert")], "EVIL.test", A, 1),
]


@pytest.mark.parametrize(("rules", "qname", "qtype", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_most_specific_name_rule_wins(rules: list[Rule], qname: str, qtype: int, expected: int | None) -> None:
    assert reference(rules, qname, qtype) == expected, "the reference itself"
    result = compiled(rules).rules.inspect(frame(qname, qtype))
    assert result["dns"] is True
    assert result["rule"] == expected


def test_the_winning_rule_sets_the_action_and_counts_the_hit() -> None:
    rules = compiled([Rule("*.evil.test", action="drop"), Rule("www.evil.test", action="nxdomain")])
    result = rules.rules.inspect(frame("www.evil.test", A))
    assert result["action"] == _slowpath.NXDOMAIN
    assert rules.rules.hits() == [0, 1]


LABELS = st.sampled_from(["a", "b", "evil", "test", "xy"])
NAME = st.lists(LABELS, min_size=1, max_size=4).map(".".join)
QTYPES = st.sampled_from([A, AAAA, MX])
ACTIONS = st.sampled_from(["drop", "pass", "alert", "nxdomain", "refuse", "block_source"])
NAME_RULE = st.builds(lambda star, name, qtype, action: Rule(("*." if star else "") + name, None, qtype, action),
                      st.booleans(), NAME, st.one_of(st.none(), QTYPES), ACTIONS)
REGEX_RULE = st.builds(lambda label, anchor, qtype, action: Rule(None, f"{anchor}{label}", qtype, action),
                       LABELS, st.sampled_from(["", "^", "\\."]), st.one_of(st.none(), QTYPES), ACTIONS)


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(rules=st.lists(st.one_of(NAME_RULE, NAME_RULE, NAME_RULE, REGEX_RULE), min_size=1, max_size=12),
       queries=st.lists(st.tuples(NAME, QTYPES, st.booleans()), min_size=1, max_size=8))
def test_engine_agrees_with_the_reference(rules: list[Rule], queries: list[tuple[str, int, bool]]) -> None:
    engine = compiled(rules).rules
    for qname, qtype, upper in queries:
        sent = qname.upper() if upper else qname
        assert engine.inspect(frame(sent, qtype))["rule"] == reference(rules, sent, qtype), (sent, qtype)
        assert _slowpath.parse_dns(dns.message.make_query(sent, qtype).to_wire()) == (qname.lower(), qtype)
