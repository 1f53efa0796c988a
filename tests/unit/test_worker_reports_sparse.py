"""A worker's periodic report carries the hits of the rules that matched, not one number per rule:
with a million name rules a report every REPORT_INTERVAL listing every rule kept the worker and the
supervisor busy on an idle machine (and the metrics endpoint with them)."""

from __future__ import annotations

import dns.message
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from hyperion.policy.model import DnsRule, RedirectClass, SlowPathSection
from hyperion.slowpath.protocol import Report, Retired, decode_message, encode_message
from hyperion.slowpath.rules import compile_slow_path_rules
from hyperion.slowpath.telemetry import add_hits

RULES = 100_000


def frame(name: str) -> bytes:
    wire = dns.message.make_query(name, "A").to_wire()
    return bytes(Ether() / IP(src="198.51.100.1", dst="192.0.2.1") / UDP(sport=40000, dport=53) / Raw(wire))


def compiled_many() -> tuple[object, list[str]]:
    rules = tuple(DnsRule.model_construct(match=f"n{i}.example", action="drop", qtype=None, regex=None,
                                          ttl_seconds=None, max_blocks_per_second=None) for i in range(RULES))
    slow = SlowPathSection.model_construct(**{**SlowPathSection(dns_name_rules="slow_path").__dict__,
                                              "dns_rules": rules})
    compiled = compile_slow_path_rules(slow, (RedirectClass(protocol=17, port=53),), never_block=[])
    return compiled.rules, compiled.labels


def test_a_report_lists_only_the_rules_that_matched() -> None:
    rules, labels = compiled_many()
    for name in ("n7.example", "n7.example", f"n{RULES - 1}.example"):
        rules.inspect(frame(name))  # type: ignore[attr-defined]
    hits = rules.matched()  # type: ignore[attr-defined]
    assert hits == [(7, 2), (RULES - 1, 1)]
    line = encode_message(Report(3, {}, hits))
    assert len(line) < 200, f"a report of {len(line)} bytes for 2 matched rules of {RULES}"
    decoded = decode_message(line)
    assert isinstance(decoded, Report) and decoded.hits == hits
    retired = decode_message(encode_message(Retired(3, hits)))
    assert isinstance(retired, Retired) and retired.hits == hits
    totals: dict[str, int] = {}
    add_hits(totals, labels, decoded.hits)
    assert totals == {labels[7]: 2, labels[RULES - 1]: 1}


def test_hits_beyond_the_generations_rules_are_nobodys() -> None:
    totals: dict[str, int] = {}
    add_hits(totals, ["a", "b"], [(0, 2), (1, 3), (2, 99)])
    assert totals == {"a": 2, "b": 3}
