"""DNS rule sets for the native engine's tests: a rule, the policy it is in, query frames, and the
reference decision written from the documented precedence (DESIGN14 "Semantics"), with dnspython
doing the name arithmetic (case-insensitive equality, is_subdomain), not from the engine:
- among the name rules (match:) that match a query, the most specific wins: the exact rule on the
  whole name, then `*.x` rules by decreasing length of x (`*.x` matches strict subdomains of x only);
- on the same (kind, name), a rule whose qtype equals the query's beats one without qtype;
- identical (kind, name, qtype): the first in the policy;
- regex rules only when no name rule matches, the first in the policy among them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import dns.message
import dns.name
import dns.rdatatype
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

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


LABELS = st.sampled_from(["a", "b", "evil", "test", "xy"])
NAME = st.lists(LABELS, min_size=1, max_size=4).map(".".join)
QTYPES = st.sampled_from([A, AAAA, MX])
ACTIONS = st.sampled_from(["drop", "pass", "alert", "nxdomain", "refuse", "block_source"])
NAME_RULE = st.builds(lambda star, name, qtype, action: Rule(("*." if star else "") + name, None, qtype, action),
                      st.booleans(), NAME, st.one_of(st.none(), QTYPES), ACTIONS)
REGEX_RULE = st.builds(lambda label, anchor, qtype, action: Rule(None, f"{anchor}{label}", qtype, action),
                       LABELS, st.sampled_from(["", "^", "\\."]), st.one_of(st.none(), QTYPES), ACTIONS)
