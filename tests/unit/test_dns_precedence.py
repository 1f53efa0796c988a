"""Name-rule precedence in the native engine (DESIGN14 "Semantics"), without sockets.

The reference (tests/support/dns_rules.py) is written from the documented rules, with dnspython
doing the name arithmetic (case-insensitive equality, is_subdomain), not from the engine:
- among the name rules (match:) that match a query, the most specific wins: the exact rule on the
  whole name, then `*.x` rules by decreasing length of x (`*.x` matches strict subdomains of x only);
- on the same (kind, name), a rule whose qtype equals the query's beats one without qtype;
- identical (kind, name, qtype): the first in the policy;
- regex rules only when no name rule matches, the first in the policy among them.
Queries go through Rules.inspect() as Ethernet frames built with scapy around dnspython's wire format.
"""

from __future__ import annotations

import dns.message
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperion import _slowpath
from tests.support.dns_rules import AAAA, MX, NAME, NAME_RULE, QTYPES, REGEX_RULE, A, Rule, compiled, frame, reference

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
