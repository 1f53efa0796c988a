"""Which rules the workers carry (DESIGN14 "Placement"): the XDP program judges the name rules of
every action but block_source, and redirects a query to the slow path only when its most specific
name rule is a block_source one or no name rule matches it. So the spec sent to workers carries
the regex rules, the signatures and the block_source name rules only, while the compiled Rules
(replay, inspect) keep the whole policy; rule indices are the same in both, so a worker's hits
count under the right labels. Root-free."""

from __future__ import annotations

import json
from typing import Any

import dns.message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from hyperion import _slowpath
from hyperion.policy.loading import parse_policy
from hyperion.slowpath.protocol import RuleSpec
from hyperion.slowpath.rules import compile_rules
from hyperion.slowpath.telemetry import add_hits
from tests.support.dns_rules import NAME, NAME_RULE, QTYPES, REGEX_RULE, Rule, compiled, frame

POLICY = r"""
fast_path:
  redirect_ports: [{protocol: udp, port: 53}, {protocol: udp, port: 9999}]
slow_path:
  dns_rules:
    - {match: drop.test, action: drop}
    - {match: '*.nx.test', action: nxdomain}
    - {match: refuse.test, action: refuse, qtype: AAAA}
    - {match: pass.test, action: pass}
    - {match: alert.test, action: alert}
    - {match: '*.c2.test', action: block_source, ttl: 10m}
    - {regex: '^[a-z]{20,}\.', action: drop}
    - {match: exact.c2.test, action: block_source, ttl: 1m, qtype: TXT}
  signatures:
    - {class: {protocol: udp, port: 9999}, literal: 'MAGIC', action: alert}
"""


def query(name: str, qtype: str = "A", port: int = 53) -> bytes:
    wire = dns.message.make_query(name, qtype).to_wire()
    return bytes(Ether() / IP(src="198.51.100.1", dst="192.0.2.1") / UDP(sport=40000, dport=port) / Raw(wire))


def payload(data: bytes) -> bytes:
    return bytes(Ether() / IP(src="198.51.100.1", dst="192.0.2.1") / UDP(sport=40000, dport=9999) / Raw(data))


# Each frame, the rule the whole policy decides (replay), and the rule a worker decides.
FRAMES: list[tuple[bytes, int | None, int | None]] = [
    (query("drop.test"), 0, None),
    (query("a.nx.test"), 1, None),
    (query("refuse.test", "AAAA"), 2, None),
    (query("pass.test"), 3, None),
    (query("alert.test"), 4, None),
    (query("host.c2.test"), 5, 5),
    (query("exact.c2.test", "TXT"), 7, 7),
    (query("exact.c2.test", "A"), 5, 5),
    (query("abcdefghijklmnopqrstuvwxyz.example"), 6, 6),
    (payload(b"..MAGIC.."), 8, 8),
    (query("good.test"), None, None),
]


def worker_rules(compiled_rules: Any) -> Any:
    """What a worker builds: the spec after its JSON trip, with the supervisor's databases."""
    spec = RuleSpec.from_json(json.loads(json.dumps(compiled_rules.spec.to_json())))
    return spec.build(compiled_rules.rules.serialize())


def test_the_worker_spec_carries_only_what_runs_in_the_slow_path() -> None:
    compiled_rules = compile_rules(parse_policy(POLICY), never_block=[])
    spec = compiled_rules.spec
    # Every rule keeps its index (and its action, qtype, TTL)...
    assert len(spec.rules) == len(compiled_rules.labels) == 9
    assert [r[0] for r in spec.rules][5:8] == [_slowpath.BLOCK_SOURCE, _slowpath.DROP, _slowpath.BLOCK_SOURCE]
    # ...but only block_source names are looked up by the workers; every regex and signature is.
    assert sorted(spec.names) == [(5, _slowpath.SUFFIX, "c2.test"), (7, _slowpath.EXACT, "exact.c2.test")]
    assert [index for index, _ in spec.dns_regex] == [6]
    assert [[index for index, _ in patterns] for _, _, patterns in spec.classes] == [[8]]


def test_replay_judges_the_whole_policy_and_a_worker_its_part() -> None:
    compiled_rules = compile_rules(parse_policy(POLICY), never_block=[])
    worker = worker_rules(compiled_rules)
    for sent, everywhere, in_worker in FRAMES:
        assert compiled_rules.rules.inspect(sent)["rule"] == everywhere
        assert worker.inspect(sent)["rule"] == in_worker


def test_a_workers_hits_count_under_the_right_labels() -> None:
    compiled_rules = compile_rules(parse_policy(POLICY), never_block=[])
    worker = worker_rules(compiled_rules)
    for _ in range(3):
        worker.inspect(query("host.c2.test"))
    worker.inspect(query("abcdefghijklmnopqrstuvwxyz.example"))
    worker.inspect(payload(b"MAGIC"))
    totals: dict[str, int] = {}
    add_hits(totals, compiled_rules.labels, worker.matched())
    assert {label: n for label, n in totals.items() if n} == {
        "slow_path.dns_rules[5] match=*.c2.test action=block_source ttl=10m": 3,
        "slow_path.dns_rules[6] regex='^[a-z]{20,}\\\\.' action=drop": 1,
        "slow_path.signatures[0] udp/9999 literal='MAGIC' action=alert": 1,
    }


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(rules=st.lists(st.one_of(NAME_RULE, NAME_RULE, REGEX_RULE), min_size=1, max_size=12),
       queries=st.lists(st.tuples(NAME, QTYPES), min_size=1, max_size=8))
def test_a_worker_decides_what_the_program_redirects_as_the_whole_policy_does(
        rules: list[Rule], queries: list[tuple[str, int]]) -> None:
    """A query reaches the workers when its deciding rule (over the whole policy) is a block_source
    name rule or no name rule matches it; then the worker's decision is the whole policy's."""
    whole = compiled(rules)
    worker = worker_rules(whole)
    for qname, qtype in queries:
        decided = whole.rules.inspect(frame(qname, qtype))["rule"]
        name_rule = decided is not None and rules[decided].match is not None
        if name_rule and rules[decided].action != "block_source":
            continue  # judged in XDP: never redirected
        assert worker.inspect(frame(qname, qtype))["rule"] == decided, (qname, qtype)
