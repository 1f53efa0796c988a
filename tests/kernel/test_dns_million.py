"""A million name rules in the kernel, and a reload under traffic (issue 14's tests).

One thread sends queries through the program (BPF_PROG_TEST_RUN) without pause while the main
thread replaces a small policy by one with 1,000,000 exact and suffix rules. Each query must be
judged wholly by one generation: the probe name is dropped by the first policy and answered
NXDOMAIN by the second, so any other outcome (a pass, a second-generation answer before the switch,
a first-generation drop after it) would be a query judged across generations. The expected verdicts
come from the rules' meaning (RFC 1034 names; DESIGN14 precedence), the names from dnspython.
"""

from __future__ import annotations

import threading
import time

import dns.message
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from hyperion.fastpath.program import FastPath
from hyperion.kernel.testrun import run_xdp
from hyperion.policy.compiler import PolicyCompiler
from hyperion.policy.model import DnsRule, FastPathSection, Policy, RedirectClass, SlowPathSection

RULES = 1_000_000
XDP_DROP, XDP_TX = "drop", "tx"


def frame(name: str) -> bytes:
    wire = dns.message.make_query(name, "A").to_wire()
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                 / IP(src="198.51.100.10", dst="192.0.2.53") / UDP(sport=40000, dport=53) / Raw(wire))


def policy(rules: list[DnsRule]) -> Policy:
    """Built without pydantic's validation of each rule (about 18 s for a million): the rules are
    well-formed by construction; the compiler and the kernel are what is tested."""
    fast = FastPathSection(redirect_ports=(RedirectClass(protocol=17, port=53, on_failure="pass"),))
    return Policy.model_construct(mode="enforce", fast_path=fast,
                                  slow_path=SlowPathSection.model_construct(
                                      **{**SlowPathSection().__dict__, "dns_rules": tuple(rules)}))


def bulk_rules() -> list[DnsRule]:
    """The probe's nxdomain rule, then half exact names, half suffixes, all drop."""
    rules = [DnsRule.model_construct(match="probe.example", action="nxdomain", qtype=None, regex=None,
                                     ttl_seconds=None, max_blocks_per_second=None)]
    for i in range(RULES - 1):
        name = f"r{i}.bulk.example" if i % 2 else f"*.s{i}.bulk.example"
        rules.append(DnsRule.model_construct(match=name, action="drop", qtype=None, regex=None, ttl_seconds=None,
                                             max_blocks_per_second=None))
    return rules


def action_of(prog_fd: int, packet: bytes) -> str:
    return run_xdp(prog_fd, packet).action


def test_a_million_rules_and_a_reload_under_traffic(detached: tuple[FastPath, int]) -> None:
    fastpath, prog_fd = detached
    compiler = PolicyCompiler(fastpath.abi, fastpath.capacities())
    small = [DnsRule(match="probe.example", action="drop")]
    fastpath.apply(compiler.compile(policy(small)))
    probe = frame("probe.example")
    assert action_of(prog_fd, probe) == XDP_DROP

    big = compiler.compile(policy(bulk_rules()))
    assert big.images["hyp_dns_short"].count + big.images["hyp_dns_long"].count >= RULES

    outcomes: list[tuple[float, str]] = []
    stop = threading.Event()

    def traffic() -> None:
        deadline = time.monotonic() + 300  # bounded: the reload takes seconds
        while not stop.is_set() and time.monotonic() < deadline:
            outcomes.append((time.monotonic(), action_of(prog_fd, probe)))

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        while len(outcomes) < 100:  # traffic before the reload
            time.sleep(0.001)
        started = time.monotonic()
        fastpath.apply(big)
        switched = time.monotonic()
        while sum(1 for t, _ in outcomes if t > switched) < 100:  # and after it
            time.sleep(0.001)
    finally:
        stop.set()
        sender.join(30)
    assert {a for _, a in outcomes} <= {XDP_DROP, XDP_TX}, "a query judged by neither generation"
    assert all(a == XDP_DROP for t, a in outcomes if t < started)
    assert all(a == XDP_TX for t, a in outcomes if t > switched)
    assert sum(1 for t, _ in outcomes if started <= t <= switched) > 0, "no query during the reload"

    # The million rules judge as written, at both ends of the list and in both key shapes.
    assert action_of(prog_fd, frame("r1.bulk.example")) == XDP_DROP
    last_exact = max(i for i in range(RULES - 3, RULES - 1) if i % 2)  # the last rule with an odd index
    assert action_of(prog_fd, frame(f"r{last_exact}.bulk.example")) == XDP_DROP
    assert action_of(prog_fd, frame("deep.er.s0.bulk.example")) == XDP_DROP
    assert action_of(prog_fd, frame(f"x.s{RULES - 2}.bulk.example")) == XDP_DROP
    assert action_of(prog_fd, frame("s0.bulk.example")) != XDP_DROP        # "*.x" excludes the apex
    assert action_of(prog_fd, frame("r0.bulk.example")) != XDP_DROP        # r0 is a suffix rule's index
    long_name = ".".join(["a" * 60] * 3) + ".s2.bulk.example"                # a long key
    assert action_of(prog_fd, frame(long_name)) == XDP_DROP
