"""The XDP DNS stage's cost per packet, from BPF_PROG_TEST_RUN's duration over many repeats, with
100k name rules in hyp_dns_short. A benchmark-style test: it asserts what the program decided (every
repeat counted under the expected reason), and prints ns per packet (run with -s); no timing is
asserted."""

from __future__ import annotations

import random

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from hyperion.fastpath.program import FastPath
from hyperion.kernel.testrun import run_xdp
from tests.support.dns_maps import DNS_ONLY, Action, DnsMaps, Rule, delta, exact, query, suffix

REPEAT = 100_000
RULES = 100_000


def _frame(name: str, dport: int = 53) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="198.51.100.10", dst="192.0.2.53")
                 / UDP(sport=40000, dport=dport) / Raw(query(name)))


def _rules(count: int) -> list[Rule]:
    rng = random.Random(14)
    tlds = ["com", "net", "org", "example", "test"]
    rules: list[Rule] = [suffix("tracker.example", Action.DROP), exact("www.blocked.example.com", Action.DROP)]
    while len(rules) < count:
        labels = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=rng.randint(3, 12)))
                  for _ in range(rng.randint(1, 3))]
        name = ".".join([*labels, rng.choice(tlds)])
        rules.append(exact(name, Action.DROP) if rng.random() < 0.5 else suffix(name, Action.DROP))
    return rules


@pytest.mark.parametrize("rule_count", [1, RULES])
def test_dns_stage_cost(detached: tuple[FastPath, int], rule_count: int) -> None:
    fastpath, prog_fd = detached
    writer = DnsMaps(fastpath)
    try:
        writer.install([DNS_ONLY], _rules(rule_count))
        cases = [
            ("4-label name, no rule matches", _frame("www.shop.example.com"), "pass", "pass", "dns_no_match"),
            ("4-label name, *.tracker.example drops", _frame("a.b.tracker.example"), "drop", "drop", "dns_drop"),
            ("no DNS class (udp/54): the program without the stage", _frame("www.shop.example.com", 54),
             "pass", "pass", "no_match"),
        ]
        # No answered case: the repeats run on one buffer, so the second would judge the first's answer.
        if rule_count == 1:
            cases = cases[:1] + cases[2:]
        print(f"\nXDP DNS stage, {rule_count} rules ({fastpath.settings().entries[7]} short-map entries), "
              f"BPF_PROG_TEST_RUN repeat {REPEAT}:")
        for description, frame, action, verdict, reason in cases:
            before = fastpath.counters()
            result = run_xdp(prog_fd, frame, repeat=REPEAT)
            assert result.action == action
            assert delta(before, fastpath.counters()) == {(verdict, reason): (REPEAT, REPEAT * len(frame))}
            print(f"  {description}: {result.duration_ns} ns/packet")
    finally:
        writer.close()
