"""The DNS name-rule maps in the kernel across policy generations: contents, sizes, and per-rule hits
that the metric keeps across reloads.

The program's DNS stage counts hits in hyp_dns_rule.hits; here the test writes that field itself (as
the program would) so that the control plane's side is checked on its own. Expected keys come from an
encoder written from the key format (hyperion_abi.h), expected values from the header's enums.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from hyperion.daemon.daemon import Daemon, DaemonOptions
from hyperion.daemon.metrics import FastPathCollector
from hyperion.fastpath.program import FastPath
from hyperion.kernel import libbpf
from hyperion.policy.loading import parse_policy
from tests.support.paths import BPF_DIR
from tests.support.telemetry import parse_metrics

HEADER = (BPF_DIR / "include" / "hyperion_abi.h").read_text()
SHORT_KEY = struct.Struct("<HBx32s")
RULE = struct.Struct("<IBBxxQ")


def _enum(name: str) -> dict[str, int]:
    body = re.search(rf"enum {name} {{(.*?)}};", HEADER, re.S)
    assert body, name
    return {m[0]: int(m[1]) for m in re.findall(r"^\s*(HYP_\w+)\s*=\s*(\d+),", body[1], re.M)}


ACTION, KIND = _enum("hyp_dns_action"), _enum("hyp_dns_kind")
PMAP = _enum("hyp_policy_map")


def key(name: str, kind: str = "HYP_DNS_EXACT", qtype: int = 0) -> bytes:
    labels = name.split(".")[::-1]
    return SHORT_KEY.pack(qtype, KIND[kind], b"".join(bytes([len(x)]) + x.encode() for x in labels))


def policy_text(names: list[str]) -> str:
    rules = "".join(f"    - {{match: '{n}', action: drop}}\n" for n in names)
    return f"fast_path:\n  redirect_ports: [{{protocol: udp, port: 53}}]\nslow_path:\n  dns_rules:\n{rules}"


@pytest.fixture
def daemon(detached: tuple[FastPath, int], tmp_path: Path) -> Iterator[Daemon]:
    """A daemon's policy logic over a detached program: no interface, no slow path."""
    fastpath, _ = detached
    d = Daemon(DaemonOptions(ifname="unused", policy_path=tmp_path / "p.yaml", slowpath=False))
    d.fastpath = fastpath
    yield d
    d.fastpath = None


def inner(fastpath: FastPath, name: str, slot: int) -> libbpf.MapFd:
    m = fastpath.adapter.inner_map(name, slot)
    assert m is not None
    return m


def contents(m: libbpf.MapFd) -> dict[bytes, tuple[int, int, int, int]]:
    keys, values, count = m.lookup_batch(max(1, libbpf.map_info(m.fd).max_entries))
    return {keys[i * m.key_size:(i + 1) * m.key_size]: RULE.unpack_from(values, i * RULE.size) for i in range(count)}


def add_hits(fastpath: FastPath, slot: int, name: str, n: int) -> None:
    """What the program does when a rule decides a query: hits += n."""
    m = inner(fastpath, "hyp_dns_short", slot)
    try:
        k = key(name)
        raw = m.lookup(k)
        assert raw is not None, name
        rule_id, action, flags, hits = RULE.unpack(raw)
        m.update(k, RULE.pack(rule_id, action, flags, hits + n))
    finally:
        m.close()


def scrape(fastpath: FastPath, daemon: Daemon) -> dict[str, float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FastPathCollector(fastpath, dns_rules=daemon.dns_rule_matches))
    samples, families = parse_metrics(generate_latest(registry).decode())
    assert "hyperion_dns_rule_matches" in families
    return {dict(labels)["rule"]: v for (name, labels), v in samples.items()
            if name == "hyperion_dns_rule_matches_total"}


def test_generations_of_different_sizes_and_hits_across_reloads(detached: tuple[FastPath, int],
                                                              daemon: Daemon) -> None:
    fastpath, _ = detached
    small = ["evil.test", "c2.evil.test", "x.example"]
    big = [f"n{i}.big.test" for i in range(2000)] + ["evil.test"]

    daemon.apply_policy(parse_policy(policy_text(small)), "")
    slot1 = fastpath.active_slot()
    m = inner(fastpath, "hyp_dns_short", slot1)
    try:
        # Sized by content: 3 entries, not the template's 2M; the kernel took it into the outer map.
        assert libbpf.map_info(m.fd).max_entries == 3
        assert contents(m) == {key(n): (i, ACTION["HYP_DNS_DROP"], 0, 0) for i, n in enumerate(small, start=1)}
    finally:
        m.close()
    empty = inner(fastpath, "hyp_dns_long", slot1)
    try:
        assert libbpf.map_info(empty.fd).max_entries == 1 and contents(empty) == {}
    finally:
        empty.close()
    settings = fastpath.settings()
    assert settings.entries[PMAP["HYP_PMAP_DNS_SHORT"]] == 3 and settings.entries[PMAP["HYP_PMAP_DNS_LONG"]] == 0
    assert settings.dns_exact_labels == (1 << 2) | (1 << 3) and settings.dns_suffix_labels == 0
    assert settings.dns_malformed == ACTION["HYP_DNS_DROP"]
    assert scrape(fastpath, daemon) == {}  # no hits, no series

    add_hits(fastpath, slot1, "evil.test", 5)
    add_hits(fastpath, slot1, "x.example", 2)
    first = "slow_path.dns_rules[0] match=evil.test action=drop"
    third = "slow_path.dns_rules[2] match=x.example action=drop"
    assert scrape(fastpath, daemon) == {first: 5, third: 2}

    # Generation 2, in the other slot, 2001 entries: the kernel swaps in an inner map of another size.
    daemon.apply_policy(parse_policy(policy_text(big)), "")
    slot2 = fastpath.active_slot()
    assert slot2 != slot1
    m = inner(fastpath, "hyp_dns_short", slot2)
    try:
        assert libbpf.map_info(m.fd).max_entries == 2001
        got = contents(m)
        assert len(got) == 2001 and got[key("evil.test")] == (2001, ACTION["HYP_DNS_DROP"], 0, 0)
    finally:
        m.close()
    # The previous generation's hits still count (its slot is inactive, not yet replaced).
    assert scrape(fastpath, daemon) == {first: 5, third: 2}
    add_hits(fastpath, slot2, "evil.test", 7)
    last = "slow_path.dns_rules[2000] match=evil.test action=drop"
    assert scrape(fastpath, daemon) == {first: 5, third: 2, last: 7}

    # Generation 3 replaces generation 1's maps: their hits are retired, not lost.
    daemon.apply_policy(parse_policy(policy_text(small)), "")
    assert fastpath.active_slot() == slot1
    m = inner(fastpath, "hyp_dns_short", slot1)
    try:
        assert libbpf.map_info(m.fd).max_entries == 3
        assert all(hits == 0 for *_, hits in contents(m).values())  # a fresh generation
    finally:
        m.close()
    assert scrape(fastpath, daemon) == {first: 5, third: 2, last: 7}
    add_hits(fastpath, slot1, "evil.test", 1)  # the same rule label as generation 1's: one series
    assert scrape(fastpath, daemon) == {first: 6, third: 2, last: 7}

    # Generation 4 retires generation 2; generation 3's hits stay in the inactive slot.
    daemon.apply_policy(parse_policy(policy_text(["other.test"])), "")
    assert scrape(fastpath, daemon) == {first: 6, third: 2, last: 7}


def test_dns_verdicts_and_reasons_are_in_the_fastpath_families(detached: tuple[FastPath, int]) -> None:
    """From the object's BTF, nothing listed by hand: every (verdict, reason) pair is a series, at 0 here."""
    fastpath, _ = detached
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FastPathCollector(fastpath))
    samples, _ = parse_metrics(generate_latest(registry).decode())
    packets = {(dict(labels)["verdict"], dict(labels)["reason"]) for (name, labels), _ in samples.items()
               if name == "hyperion_fastpath_packets_total"}
    for reason in ("dns_no_match", "dns_drop", "dns_nxdomain", "dns_refused", "dns_unanswerable", "dns_allow",
                   "dns_alert", "dns_malformed", "dns_qdcount", "dns_not_query"):
        assert ("answer", reason) in packets and ("would_answer", reason) in packets and ("drop", reason) in packets
    assert {k: v for k, v in samples.items() if k[0] == "hyperion_dns_rule_matches_total"} == {}


def test_dns_hits_of_a_slot_sum_both_maps(detached: tuple[FastPath, int], daemon: Daemon) -> None:
    fastpath, _ = detached
    long_name = "a" * 40 + ".test"
    daemon.apply_policy(parse_policy(policy_text(["short.test", long_name])), "")
    slot = fastpath.active_slot()
    add_hits(fastpath, slot, "short.test", 3)
    m = inner(fastpath, "hyp_dns_long", slot)
    try:
        raw_key, raw_value = next(iter(contents(m).items()))
        rule_id, action, flags, _ = raw_value
        assert rule_id == 2
        m.update(raw_key, RULE.pack(rule_id, action, flags, 4))
    finally:
        m.close()
    assert fastpath.dns_hits(slot) == {1: 3, 2: 4}
    assert fastpath.dns_hits(slot ^ 1) == {}  # never filled
