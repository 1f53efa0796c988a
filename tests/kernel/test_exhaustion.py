"""Resource exhaustion: what happens when a table, a map or the event ring is full.

(a) The dynamic blocklist is an LRU table (HYP_CAP_DYN_BLOCK entries): more blocks than that
    evict the oldest, and every eviction is counted (FastPath.dynamic_block_evictions, the
    metric hyperion_dynamic_block_evictions_total), also across processes (`block add`).
(b) A policy with more entries than a map holds is refused before anything changes, through
    `hyperion policy apply` and through the daemon's reload: same generation, same counters.
(c) An event flood that the budget lets through but the ring cannot hold: every event is either
    delivered or counted as ring_full, exactly (tests/kernel/test_telemetry.py covers the budget).
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from hyperion.daemon.daemon import Daemon, DaemonOptions
from hyperion.daemon.events import EventDecoder, EventReader
from hyperion.daemon.metrics import FastPathCollector
from hyperion.fastpath.program import FastPath
from hyperion.kernel import libbpf
from hyperion.kernel.abi import load_abi
from hyperion.kernel.testrun import run_xdp
from hyperion.lab.sandbox import HOST_V4, Sandbox, entered_netns
from hyperion.policy.compiler import PolicyCompiler
from hyperion.policy.loading import parse_policy
from tests.support.netutil import hyperion, send, status, wait_counter
from tests.support.telemetry import parse_metrics, value

DYN_BASE = int(ipaddress.IPv6Address("2001:db8:d00::"))
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


@contextlib.contextmanager
def one_cpu() -> Iterator[None]:
    """The LRU tables keep a free list per CPU: filled from one CPU, 'full' means every entry."""
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, cpus)


def scraped(fastpath: FastPath) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FastPathCollector(fastpath))
    return generate_latest(registry).decode()


def dyn6_addresses(fastpath: FastPath) -> set[ipaddress.IPv6Address]:
    """Read independently of the batch count block_add_many uses: key by key."""
    return {ipaddress.IPv6Address(key) for key in fastpath.maps["hyp_dyn6"].iter_keys()}


def judged(fastpath: FastPath, prog_fd: int, frame: bytes) -> tuple[str, dict[tuple[str, str], int]]:
    before = fastpath.counters()
    action = run_xdp(prog_fd, frame).action
    after = fastpath.counters()
    return action, {k: p - before.get(k, (0, 0))[0] for k, (p, _) in after.items() if p != before.get(k, (0, 0))[0]}


# ---- (a) the dynamic blocklist ------------------------------------------------------------------

def test_full_dynamic_blocklist_evicts_the_oldest_and_counts_it(detached: tuple[FastPath, int]) -> None:
    fastpath, prog_fd = detached
    fastpath.apply(PolicyCompiler(fastpath.abi, fastpath.capacities()).compile(parse_policy("{}")))
    capacity = libbpf.map_info(fastpath.maps["hyp_dyn6"].fd).max_entries
    assert capacity == fastpath.abi.capacity["dyn_block"] == 65536
    extra = 300
    addresses = [ipaddress.IPv6Address(DYN_BASE + i) for i in range(capacity + extra)]
    with one_cpu():
        assert fastpath.block_add_many(addresses[:capacity], ttl_seconds=None) == 0
        assert len(dyn6_addresses(fastpath)) == capacity  # full, nothing lost yet
        evicted = fastpath.block_add_many(addresses[capacity:], ttl_seconds=None)
    present = dyn6_addresses(fastpath)
    # Every new block needed room: at least `extra` went, and exactly what the table lost.
    assert evicted >= extra
    assert evicted == capacity + extra - len(present)
    # The oldest went, all of them before any newer one; the newest are all there.
    assert present == set(addresses[evicted:])
    assert fastpath.dynamic_block_evictions() == evicted
    samples, _ = parse_metrics(scraped(fastpath))
    assert value(samples, "hyperion_dynamic_block_evictions_total") == evicted
    assert value(samples, "hyperion_map_entries", map="hyp_dyn6") == len(present)
    # The program agrees: the evicted oldest passes again, the newest is still blocked.
    oldest = bytes(ETH / IPv6(src=str(addresses[0]), dst="2001:db8:1::1") / UDP(dport=9))
    newest = bytes(ETH / IPv6(src=str(addresses[-1]), dst="2001:db8:1::1") / UDP(dport=9))
    assert judged(fastpath, prog_fd, oldest) == ("pass", {("pass", "no_match"): 1})
    assert judged(fastpath, prog_fd, newest) == ("drop", {("drop", "blocklist_dynamic"): 1})


def test_evictions_from_the_cli_add_to_the_same_total(sandbox: Sandbox) -> None:
    """The total is kept beside the pins: `hyperion block add` (another process) adds to it."""
    sb = sandbox
    hyperion(sb, "attach", "--iface", sb.host_if)
    with entered_netns(sb.host_ns):
        fastpath = FastPath.open(sb.host_if)
    try:
        capacity = fastpath.abi.capacity["dyn_block"]
        with one_cpu():  # exactly full, no spare entry on any CPU's free list
            assert fastpath.block_add_many(
                [ipaddress.IPv6Address(DYN_BASE + i) for i in range(capacity)], ttl_seconds=3600) == 0
        assert fastpath.dynamic_block_evictions() == 0
        newest = ipaddress.IPv6Address(DYN_BASE + capacity)
        hyperion(sb, "block", "add", str(newest), "--iface", sb.host_if)
        after = dyn6_addresses(fastpath)
        by_cli = capacity + 1 - len(after)
        assert newest in after and ipaddress.IPv6Address(DYN_BASE) not in after
        assert by_cli >= 1
        assert fastpath.dynamic_block_evictions() == by_cli
        one_more = ipaddress.IPv6Address(DYN_BASE + capacity + 1)
        by_api = fastpath.block_add_many([one_more], ttl_seconds=None)
        assert by_api == len(after) + 1 - len(dyn6_addresses(fastpath))
        assert fastpath.dynamic_block_evictions() == by_cli + by_api
    finally:
        fastpath.close()


# ---- (b) a policy larger than a map ------------------------------------------------------------------

def _classes(count: int) -> str:
    return json.dumps({"fast_path": {"redirect_ports": [{"protocol": "udp", "port": 1000 + i}
                                                        for i in range(count)]}})


def _allowlist(count: int) -> str:
    return json.dumps({"fast_path": {"allow_cidrs": [f"2001:db8:{i:x}::/48" for i in range(count)]}})


OVERSIZED = [
    ("redirect_ports", lambda cap: _classes(cap["classes"] + 1),
     "fast_path.redirect_ports: 257 entries for map hyp_classes, which holds at most 256; nothing was changed"),
    ("allow_cidrs", lambda cap: _allowlist(cap["allow"] + 1),
     "fast_path.allow_cidrs: 16385 entries for map hyp_allow6, which holds at most 16384; nothing was changed"),
]
def policy_counters(st: dict[str, Any]) -> dict[tuple[str, str], int]:
    """Counters of the policy's stages. Link chatter (MLD reports in the first second of a link)
    passes as no_match. The maps are filled before the program is attached, so no packet can
    ever meet it unconfigured: no_config stays in, and must never appear."""
    return {(c["verdict"], c["reason"]): c["packets"] for c in st["counters"]
            if c["reason"] not in ("no_match", "non_ip")}


GOOD_POLICY = 'fast_path:\n  drop_ips: ["198.51.100.42"]\n  redirect_ports: [{protocol: udp, port: 53}]\n'


@pytest.mark.parametrize("name,document,message", OVERSIZED, ids=[o[0] for o in OVERSIZED])
def test_oversized_policy_through_the_cli_changes_nothing(sandbox: Sandbox, tmp_path: Path, name: str,
                                                          document: Any, message: str) -> None:
    sb = sandbox
    good, big = tmp_path / "good.yaml", tmp_path / "big.json"
    good.write_text(GOOD_POLICY)
    hyperion(sb, "attach", "--iface", sb.host_if, "--policy", str(good))
    sb.add_client_address("198.51.100.42")
    send(sb, "198.51.100.42", count=7)
    before = wait_counter(sb, "drop", "blocklist_ip", 7)
    assert before["policy_generation"] == 1
    assert policy_counters(before) == {("drop", "blocklist_ip"): 7}
    big.write_text(document(load_abi().capacity))
    proc = hyperion(sb, "policy", "apply", str(big), "--iface", sb.host_if, check=False)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr.strip() == f"hyperion: error: {message}"
    after = status(sb)
    assert after["policy_generation"] == 1
    assert policy_counters(after) == policy_counters(before)
    assert after["maps"] == before["maps"]
    diff = hyperion(sb, "policy", "diff", str(good), "--iface", sb.host_if).stdout
    assert diff.splitlines()[-1] == "(no changes)"  # the running policy's text is still the good one


def test_oversized_policy_through_the_daemon_reload_changes_nothing(detached: tuple[FastPath, int],
                                                                     tmp_path: Path) -> None:
    fastpath, prog_fd = detached
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD_POLICY)
    daemon = Daemon(DaemonOptions(ifname="unused0", policy_path=path, slowpath=False, metrics_addr=None,
                                  watch_policy=False))
    daemon.fastpath = fastpath
    assert daemon.reload()
    policy, generation = daemon.policy, fastpath.settings().generation
    blocked = bytes(ETH / IP(src="198.51.100.42", dst=HOST_V4) / UDP(dport=9))
    for _ in range(5):
        assert run_xdp(prog_fd, blocked).action == "drop"
    counters = fastpath.counters()
    assert counters[("drop", "blocklist_ip")] == (5, 5 * len(blocked))
    path.write_text(_classes(fastpath.abi.capacity["classes"] + 1))
    assert not daemon.reload()
    assert daemon.reloads.results == {"success": 1, "error": 1}
    assert daemon.policy is policy
    assert fastpath.settings().generation == generation
    assert fastpath.counters() == counters
    assert fastpath.map_fill()["hyp_classes"] == (1, fastpath.abi.capacity["classes"])
    assert judged(fastpath, prog_fd, blocked) == ("drop", {("drop", "blocklist_ip"): 1})


def test_class_counters_do_not_cap_the_classes_a_daemon_can_ever_install(detached: tuple[FastPath, int]) -> None:
    """Counters of classes a reload removed are pruned after the flip (found by this test: they were
    kept forever, so after 1024 distinct classes every new one was refused)."""
    fastpath, _ = detached
    compiler = PolicyCompiler(fastpath.abi, fastpath.capacities())
    per_policy = fastpath.abi.capacity["classes"]
    rounds = fastpath.abi.capacity["class_stats"] // per_policy + 1
    for round_ in range(rounds):
        classes = [{"protocol": "udp", "port": 1 + round_ * per_policy + i} for i in range(per_policy)]
        generation = fastpath.apply(compiler.compile(parse_policy(json.dumps({"fast_path": {
            "redirect_ports": classes}}))))
        assert generation == round_ + 1
        assert sorted(port for _, port in fastpath.class_counters()) == [c["port"] for c in classes]


# ---- (c) the event ring ------------------------------------------------------------------------------

def test_event_flood_beyond_the_ring_is_counted_exactly(detached: tuple[FastPath, int]) -> None:
    """A budget that allows everything, a ring nobody reads: it holds what fits, the rest is ring_full."""
    fastpath, prog_fd = detached
    fastpath.apply(PolicyCompiler(fastpath.abi, fastpath.capacities()).compile(
        parse_policy('fast_path:\n  drop_ips: ["198.51.100.42"]\n')))
    fastpath.set_event_rate(2**32 - 1)
    # A ring record: 8-byte header, then the event rounded up to 8 bytes.
    record = 8 + (ctypes.sizeof(fastpath.abi.Event) + 7) // 8 * 8
    fits = fastpath.abi.capacity["event_ring_bytes"] // record
    flood = fits + 1000
    packet = bytes(ETH / IP(src="198.51.100.42", dst=HOST_V4) / UDP(dport=9))
    received: list[dict[str, Any]] = []
    reader = EventReader(fastpath.maps["hyp_events"].fd, EventDecoder(fastpath.abi), received.append)
    try:
        assert run_xdp(prog_fd, packet, repeat=flood).action == "drop"
        assert fastpath.counters()[("drop", "blocklist_ip")][0] == flood
        assert fastpath.event_stats() == {"emitted": fits, "suppressed": 0, "ring_full": flood - fits}
        while reader.poll(100):
            pass
        assert len(received) == fits
        assert {(r["reason"], r["src"]) for r in received} == {("blocklist_ip", "198.51.100.42")}
        # Drained: the next drops are delivered again.
        assert run_xdp(prog_fd, packet, repeat=10).action == "drop"
        while reader.poll(100):
            pass
        assert len(received) == fits + 10
    finally:
        reader.close()
    samples, _ = parse_metrics(scraped(fastpath))
    assert value(samples, "hyperion_events_total", outcome="emitted") == fits + 10
    assert value(samples, "hyperion_events_total", outcome="ring_full") == flood - fits
    assert value(samples, "hyperion_events_total", outcome="suppressed") == 0
