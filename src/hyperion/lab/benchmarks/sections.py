"""The benchmark sections. Each returns a JSON-ready dict: method, configurations, per-configuration
summary (median, min-max) and every raw sample with its telemetry.

Traffic for the drop, pass-through and scale sections: IPv6/UDP frames of 64 bytes from the
live-frames generator in the client namespace, pinned to CPU 0, to the host's closed port 9.
IPv6, because a 1M-address blocklist does not fit in the IPv4 documentation ranges.
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, generate_latest

from hyperion import _slowpath
from hyperion.daemon.metrics import FastPathCollector
from hyperion.fastpath.program import FastPath
from hyperion.lab.generator import TrafficSpec
from hyperion.lab.sandbox import HOST_V4, HOST_V6, NETNS_DIR, Sandbox, entered_netns
from hyperion.policy.compiler import PolicyCompiler
from hyperion.policy.model import Policy
from hyperion.slowpath.delivery import Delivery, DeliveryKind, TunDevice, WireReentry
from hyperion.slowpath.rules import compile_rules

from .core import (
    GENERATOR_CPU,
    BaselineProgram,
    BaselineXdp,
    BenchError,
    HyperionXdp,
    IptablesRawDrop,
    KernelStack,
    NftNetdevDrop,
    Receiver,
    Sample,
    bpf_stats,
    interleaved,
    measure,
    send_from,
    spread,
    telemetry_summary,
    udp_no_ports,
    veth_xdp_drops,
)
from .memory import program_map_memory
from .telemetry import Probes, captured

Progress = Callable[[str], None]
_T = TypeVar("_T")

DROP_SOURCE = "2001:db8:ff00::7"     # the drop section's single source
DROP_NET = "2001:db8:ff00::/48"      # what iptables and nftables match
PASS_SOURCE = "2001:db8:ff01::9"     # matches no blocklist entry
SCALE_MAX_SOURCES = 4096


@dataclass(frozen=True)
class Plan:
    """Sizes, rounds and counts of one benchmark run."""

    quick: bool
    drop_sizes: tuple[int, ...]
    drop_cidrs: int
    drop_rounds: int
    drop_count: int
    cost_rounds: int
    cost_count: int
    pass_rounds: int
    pass_count: int
    pass_blocklist: int
    slow_sizes: tuple[int, ...]
    slow_rounds: int
    slow_count: int
    dns_rounds: int
    dns_queries: int                # dnsperf queries per run (a fixed count, -n 1 over a file of this many)
    dns_sizes: tuple[int, ...]      # exact+suffix name rules of the XDP and slow-path tiers
    dns_regex: int                  # regex rules added for the slow-path tier
    dns_dnsdist_size: int           # name rules given to dnsdist
    dnscost_sizes: tuple[int, ...]
    dnscost_rounds: int
    dnscost_count: int
    scale_ip_sizes: tuple[int, ...]
    scale_cidr_sizes: tuple[int, ...]
    scale_rounds: int
    scale_count: int
    reload_sizes: tuple[int, ...]
    reload_rounds: int


FULL = Plan(quick=False, drop_sizes=(1, 10_000, 1_000_000), drop_cidrs=10_000, drop_rounds=5, drop_count=1_000_000,
            cost_rounds=2, cost_count=500_000, pass_rounds=5, pass_count=500_000, pass_blocklist=10_000,
            slow_sizes=(1, 1_000, 100_000), slow_rounds=3, slow_count=1_000_000, dns_rounds=3, dns_queries=500_000,
            dns_sizes=(1, 100_000, 1_000_000), dns_regex=100, dns_dnsdist_size=100_000,
            dnscost_sizes=(1, 100_000, 1_000_000), dnscost_rounds=3, dnscost_count=500_000,
            scale_ip_sizes=(1, 1_000, 10_000, 100_000, 1_000_000), scale_cidr_sizes=(1, 1_000, 10_000, 100_000),
            scale_rounds=3, scale_count=500_000, reload_sizes=(1_000, 10_000, 100_000, 1_000_000), reload_rounds=3)
QUICK = Plan(quick=True, drop_sizes=(1, 1_000), drop_cidrs=1_000, drop_rounds=1, drop_count=50_000,
             cost_rounds=1, cost_count=50_000, pass_rounds=1, pass_count=50_000, pass_blocklist=1_000,
             slow_sizes=(1, 100), slow_rounds=1, slow_count=50_000, dns_rounds=1, dns_queries=10_000,
             dns_sizes=(1, 1_000), dns_regex=100, dns_dnsdist_size=1_000,
             dnscost_sizes=(1, 1_000), dnscost_rounds=1, dnscost_count=50_000,
             scale_ip_sizes=(1, 1_000, 10_000), scale_cidr_sizes=(1, 1_000), scale_rounds=1, scale_count=50_000,
             reload_sizes=(1_000, 10_000), reload_rounds=1)


# ---- address lists ---------------------------------------------------------------------------


def blocked_ips(size: int, include: Sequence[str] = (DROP_SOURCE,)) -> list[str]:
    """size exact IPv6 sources: include, then 2001:db8:100::/64 (formatted directly: str(IPv6Address)
    would cost more than the validation being measured)."""
    rest = size - len(include)
    return [*include][:size] + [f"2001:db8:100::{i >> 16:x}:{i & 0xFFFF:x}" for i in range(max(rest, 0))]


def blocked_cidrs(size: int, include: Sequence[str] = (DROP_NET,)) -> list[str]:
    """size IPv6 prefixes: include, then /64s in 2001:db8:1000::/36 (none overlaps another)."""
    rest = size - len(include)
    return [*include][:size] + [f"2001:db8:{0x1000 + (i >> 16):x}:{i & 0xFFFF:x}::/64" for i in range(max(rest, 0))]


def evenly(items: Sequence[_T], k: int) -> list[_T]:
    """k items spread evenly over the list."""
    k = min(k, len(items))
    return [items[i * len(items) // k] for i in range(k)]


def _frames(sb: Sandbox, sources: Sequence[str], protocol: str = "udp", dst: str = HOST_V6,
            dns_names: Sequence[str] = ()) -> list[bytes]:
    return TrafficSpec(dst=dst, dst_mac=sb.mac(sb.host_ns, sb.host_if), sources=tuple(sources),
                       protocol=protocol, dns_names=tuple(dns_names)).frames()


@contextlib.contextmanager
def prepared(sb: Sandbox, receivers: Sequence[Receiver], progress: Progress) -> Iterator[None]:
    try:
        for receiver in receivers:
            if not receiver.unavailable:
                receiver.prepare(sb)
                if receiver.setup_seconds:
                    progress(f"prepared {receiver.name}: " + ", ".join(
                        f"{k} {v:.2f} s" for k, v in receiver.setup_seconds.items()))
        yield
    finally:
        for receiver in receivers:
            receiver.close()


def napi_enabled(sb: Sandbox) -> None:
    """GRO on the host veth: veth then runs NAPI without an XDP program too, so frames sent with
    XDP_TX reach the stack in every configuration (without NAPI, veth drops them)."""
    sb.exec(sb.host_ns, ["ethtool", "-K", sb.host_if, "gro", "on"])


def _rows(samples: list[Sample], receivers: Sequence[Receiver], baseline: str | None) -> list[dict[str, Any]]:
    throughput = [s for s in samples if s.phase == "throughput"]
    cost = [s for s in samples if s.phase == "cost"]
    base = [s for s in throughput if s.config == baseline]
    base_pps = statistics.median(s.rx_pps for s in base) if base else None
    rows = []
    for receiver in receivers:
        mine = [s for s in throughput if s.config == receiver.name]
        row: dict[str, Any] = receiver.describe()
        if not mine:
            rows.append(row)
            continue
        pps = spread([s.rx_pps for s in mine])
        my_cost = [s.ns_per_pkt for s in cost if s.config == receiver.name and s.ns_per_pkt is not None]
        row.update({
            "rx_pps": pps,
            "pipeline_ns_per_pkt": 1e9 / pps["median"] if pps["median"] else None,
            "added_ns_per_pkt": 1e9 / pps["median"] - 1e9 / base_pps if pps["median"] and base_pps else None,
            "ns_per_pkt": spread(my_cost) if my_cost else None,
            "ratio": pps["median"] / base_pps if base_pps else None,
            "delivered_fraction": spread([s.received / s.sent for s in mine]),
            "counters_agree": all(s.counters_agree is not False for s in mine),
            "telemetry": telemetry_summary(mine),
        })
        rows.append(row)
    return rows


# ---- 1. drop -------------------------------------------------------------------------------


def drop_section(plan: Plan, progress: Progress) -> dict[str, Any]:
    def hyperion_ips(n: int) -> HyperionXdp:
        return HyperionXdp(f"hyperion, {n:,} blocked IP{'s' if n > 1 else ''}",
                           lambda: {"fast_path": {"drop_ips": blocked_ips(n)}},
                           "veth XDP drops (ethtool -S)", veth_xdp_drops, ("drop", "blocklist_ip"))

    receivers: list[Receiver] = [
        KernelStack("kernel stack, no filter (closed UDP port)"),
        IptablesRawDrop("iptables raw PREROUTING drop", DROP_NET),
        NftNetdevDrop("nftables netdev ingress drop", DROP_NET),
        BaselineXdp("XDP_DROP (minimal)", "xdp_drop", "baseline_drop", "veth XDP drops (ethtool -S)", veth_xdp_drops),
        *[hyperion_ips(n) for n in plan.drop_sizes],
        HyperionXdp(f"hyperion, {plan.drop_cidrs:,} blocked CIDRs",
                    lambda: {"fast_path": {"drop_cidrs": blocked_cidrs(plan.drop_cidrs)}},
                    "veth XDP drops (ethtool -S)", veth_xdp_drops, ("drop", "blocklist_cidr")),
    ]
    with Sandbox() as sb, prepared(sb, receivers, progress):
        napi_enabled(sb)
        frames = _frames(sb, [DROP_SOURCE])
        samples = interleaved(sb, "drop", receivers, frames, plan.drop_count, plan.drop_rounds, progress=progress)
        programs = [r for r in receivers if r.prog_fd is not None and not r.unavailable]
        with bpf_stats():
            samples += interleaved(sb, "drop", programs, frames, plan.cost_count, plan.cost_rounds, "cost", progress)
    return {
        "title": "Drop: frames/s dropped, by filter",
        "method": {"frame": "IPv6/UDP, 64 B, one source", "source": DROP_SOURCE, "rounds": plan.drop_rounds,
                   "frames_per_sample": plan.drop_count, "cost_rounds": plan.cost_rounds,
                   "cost_frames_per_sample": plan.cost_count, "generator_cpu": GENERATOR_CPU,
                   "iptables_nftables_match": DROP_NET},
        "baseline": "XDP_DROP (minimal)",
        "configs": _rows(samples, receivers, "XDP_DROP (minimal)"),
        "samples": [s.as_dict() for s in samples],
    }


# ---- 2. pass-through -------------------------------------------------------------------------


def pass_section(plan: Plan, progress: Progress) -> dict[str, Any]:
    n = plan.pass_blocklist
    receivers: list[Receiver] = [
        KernelStack("no XDP"),
        BaselineXdp("XDP_PASS (minimal)", "xdp_pass", "baseline_pass", "Udp6NoPorts", udp_no_ports),
        HyperionXdp(f"hyperion, non-matching traffic ({n:,} IPs + {n:,} CIDRs blocked)",
                    lambda: {"fast_path": {"drop_ips": blocked_ips(n, ()), "drop_cidrs": blocked_cidrs(n, ())}},
                    "Udp6NoPorts", udp_no_ports, ("pass", "no_match")),
    ]
    with Sandbox() as sb, prepared(sb, receivers, progress):
        napi_enabled(sb)
        frames = _frames(sb, [PASS_SOURCE])
        samples = interleaved(sb, "passthrough", receivers, frames, plan.pass_count, plan.pass_rounds,
                              progress=progress)
        programs = [r for r in receivers if r.prog_fd is not None]
        with bpf_stats():
            samples += interleaved(sb, "passthrough", programs, frames, plan.cost_count, plan.cost_rounds, "cost",
                                   progress)
    return {
        "title": "Pass-through: frames/s delivered to the stack (UDP, closed port)",
        "method": {"frame": "IPv6/UDP, 64 B, one source that matches nothing", "source": PASS_SOURCE,
                   "rounds": plan.pass_rounds, "frames_per_sample": plan.pass_count, "generator_cpu": GENERATOR_CPU},
        "baseline": "XDP_PASS (minimal)",
        "configs": _rows(samples, receivers, "XDP_PASS (minimal)"),
        "samples": [s.as_dict() for s in samples],
    }


# ---- 3. slow path ----------------------------------------------------------------------------

SLOWPATH_QUERY = "bench.blocked.test"
WORKER_CPU = 1


def _slowpath_rules(size: int) -> Any:
    """size DNS drop rules; the benchmark's query name matches the last one."""
    names = [f"n{i}.blocked.test" for i in range(size - 1)] + [SLOWPATH_QUERY]
    # The slow path's own engine (all name rules in the workers), as the section measures it.
    policy = Policy.model_validate({
        "fast_path": {"redirect_ports": [{"protocol": "udp", "port": 53}]},
        "slow_path": {"dns_name_rules": "slow_path", "dns_rules": [{"match": n, "action": "drop"} for n in names]}})
    return compile_rules(policy).rules


_XSK_KEYS = ("rx", "dropped", "xdp_rx_dropped", "xdp_rx_ring_full", "xdp_rx_fill_ring_empty_descs",
             "xdp_rx_invalid_descs")


def slowpath_section(plan: Plan, progress: Progress) -> dict[str, Any]:
    """Packets/s into AF_XDP: the minimal receive-and-drop loop (the same native socket code with
    inspection off) vs Hyperion's inspection with N DNS rules. Same sandbox, same fast path (udp/53
    redirected), same socket set-up; only the loop differs. Ground truth: the worker's rx count.
    The worker runs on CPU 1, the generator (and the veth NAPI that copies into the UMEM) on CPU 0."""
    configs: list[tuple[str, Any, bool]] = [("AF_XDP rxdrop (minimal)", _slowpath_rules(1), False)]
    for n in plan.slow_sizes:
        start = time.perf_counter()
        rules = _slowpath_rules(n)
        progress(f"compiled {n:,} DNS rules in {time.perf_counter() - start:.2f} s")
        configs.append((f"hyperion slow path, {n:,} DNS rule{'s' if n > 1 else ''}", rules, True))
    samples: list[Sample] = []
    with Sandbox() as sb:
        # Every udp/53 packet redirected to the workers (no DNS stage in front of them).
        policy = Policy.model_validate({"fast_path": {"redirect_ports": [
            {"protocol": "udp", "port": 53, "on_failure": "drop"}]}, "slow_path": {"dns_name_rules": "slow_path"}})
        with entered_netns(sb.host_ns):
            fastpath = FastPath.attach(sb.host_if)
        try:
            fastpath.apply(PolicyCompiler(fastpath.abi, fastpath.capacities()).compile(policy))
            frames = _frames(sb, ["192.0.2.2"], "dns", HOST_V4, [SLOWPATH_QUERY])
            for round_no in range(plan.slow_rounds):
                for name, rules, inspect in configs:
                    sample = _slowpath_sample(sb, fastpath, name, rules, inspect, frames, plan.slow_count, round_no)
                    samples.append(sample)
                    progress(f"slowpath r{round_no} {name}: {sample.rx_pps / 1e6:.3f} Mpps")
        finally:
            fastpath.close()
            with entered_netns(sb.host_ns):
                FastPath.detach(sb.host_if)
    base = [s.rx_pps for s in samples if s.config == configs[0][0]]
    rows = []
    for name, _, inspect in configs:
        mine = [s for s in samples if s.config == name]
        pps = spread([s.rx_pps for s in mine])
        xsk = {k: statistics.median(s.extra["xsk"].get(k, 0) for s in mine) for k in _XSK_KEYS}
        rows.append({"name": name, "kind": "hyperion" if inspect else "afxdp-minimal", "rx_pps": pps,
                     "ratio": pps["median"] / statistics.median(base) if base else None,
                     "delivered_fraction": spread([s.received / s.sent for s in mine]),
                     "xsk": xsk, "telemetry": telemetry_summary(mine)})
    return {
        "title": "Slow path: packets/s through AF_XDP (copy mode)",
        "method": {"frame": "IPv4/UDP DNS query for " + SLOWPATH_QUERY + " (matches the last rule: drop)",
                   "rounds": plan.slow_rounds, "frames_per_sample": plan.slow_count, "generator_cpu": GENERATOR_CPU,
                   "worker_cpu": WORKER_CPU, "ground_truth": "the worker's rx counter"},
        "baseline": configs[0][0],
        "configs": rows,
        "samples": [s.as_dict() for s in samples],
    }


def _slowpath_sample(sb: Sandbox, fastpath: FastPath, name: str, rules: Any, inspect: bool, frames: list[bytes],
                     count: int, round_no: int) -> Sample:
    with entered_netns(sb.host_ns):
        queue = _slowpath.Queue(sb.host_if, 0, fastpath.maps["xsk_map"].fd, rules, events=False, inspect=inspect)

    def work() -> None:
        import os

        os.sched_setaffinity(0, {WORKER_CPU})
        queue.run()

    worker = threading.Thread(target=work, name="afxdp-worker")
    worker.start()
    fenced = False
    try:
        def xsk() -> dict[str, dict[str, int]]:
            stats = queue.stats()
            return {"queue0": {k: int(stats.get(k, 0)) for k in _XSK_KEYS}}

        probes = Probes(interfaces=[(sb.client_ns, sb.client_if), (sb.host_ns, sb.host_if)], xsk=xsk)
        with captured(probes) as telemetry:
            gen = send_from(sb.client_ns, sb.client_if, frames, count)
            time.sleep(0.2)  # the worker drains its ring
        fastpath.maps["xsk_map"].delete(bytes(4))
        fenced = True
    finally:
        if not fenced:
            fastpath.maps["xsk_map"].delete(bytes(4))
        queue.stop()
        worker.join(timeout=30)
        stats = queue.stats()
        queue.close()
    xsk_delta = telemetry.get("xsk", {}).get("queue0", {})
    return Sample("slowpath", name, round_no, "throughput", gen.sent, int(stats["rx"]), gen.seconds, None, telemetry,
                  {"xsk": xsk_delta})


# ---- 3b. slow-path delivery ------------------------------------------------------------------

DELIVERY_QUERY = "passed.bench.test"  # no rule matches it: every query is passed to the stack


def delivery_section(plan: Plan, progress: Progress) -> dict[str, Any]:
    """Packets/s the slow path passes to the stack: re-entry through the real interface (the helper
    veth and its TC program, one sendmmsg per batch) against the TUN device (one write per packet),
    in the same sandbox, with the same worker loop and the same frames; only the delivery differs.
    Ground truth: the worker's passed counter (a send the kernel refused counts as deliver_errors)."""
    kinds: list[DeliveryKind] = ["wire", "tun"]
    rules = _slowpath_rules(1)
    samples: list[Sample] = []
    with Sandbox() as sb:
        policy = Policy.model_validate({"fast_path": {"redirect_ports": [
            {"protocol": "udp", "port": 53, "on_failure": "drop"}]}, "slow_path": {"dns_name_rules": "slow_path"}})
        with entered_netns(sb.host_ns):
            fastpath = FastPath.attach(sb.host_if)
        try:
            fastpath.apply(PolicyCompiler(fastpath.abi, fastpath.capacities()).compile(policy))
            frames = _frames(sb, ["192.0.2.2"], "dns", HOST_V4, [DELIVERY_QUERY])
            for round_no in range(plan.slow_rounds):
                for kind in kinds:
                    sample = _delivery_sample(sb, fastpath, kind, rules, frames, plan.slow_count, round_no)
                    samples.append(sample)
                    progress(f"delivery r{round_no} {kind}: {sample.received / sample.seconds / 1e6:.3f} Mpps passed")
        finally:
            fastpath.close()
            with entered_netns(sb.host_ns):
                FastPath.detach(sb.host_if)
    rows: list[dict[str, Any]] = []
    for kind in kinds:
        mine = [s for s in samples if s.config == kind]
        pps = spread([s.received / s.seconds for s in mine])
        rows.append({"name": kind, "passed_pps": pps,
                     "deliver_errors": sum(int(s.extra["deliver_errors"]) for s in mine),
                     "passed_fraction": spread([s.received / s.sent for s in mine])})
    tun = next(r for r in rows if r["name"] == "tun")["passed_pps"]["median"]
    for row in rows:
        row["ratio_to_tun"] = row["passed_pps"]["median"] / tun if tun else None
    return {
        "title": "Slow-path delivery: packets/s passed to the stack, re-entry vs TUN",
        "method": {"frame": f"IPv4/UDP DNS query for {DELIVERY_QUERY} (no rule: passed)",
                   "rounds": plan.slow_rounds, "frames_per_sample": plan.slow_count, "generator_cpu": GENERATOR_CPU,
                   "worker_cpu": WORKER_CPU,
                   "ground_truth": "the worker's passed counter over the generator's sending time"},
        "configs": rows,
        "samples": [s.as_dict() for s in samples],
    }


def _delivery_sample(sb: Sandbox, fastpath: FastPath, kind: DeliveryKind, rules: Any, frames: list[bytes],
                     count: int, round_no: int) -> Sample:
    with entered_netns(sb.host_ns):
        delivery: Delivery = (WireReentry(sb.host_if) if kind == "wire"
                              else TunDevice(f"hyb{os.getpid() % 100000}t", mirror_addresses_of=sb.host_if))
        try:
            queue = _slowpath.Queue(sb.host_if, 0, fastpath.maps["xsk_map"].fd, rules, events=False,
                                    deliver_fd=delivery.fd, deliver_frames=delivery.frames)
        except BaseException:
            delivery.close()
            raise

    def work() -> None:
        os.sched_setaffinity(0, {WORKER_CPU})
        queue.run()

    worker = threading.Thread(target=work, name="delivery-worker")
    worker.start()
    try:
        before = queue.stats()
        gen = send_from(sb.client_ns, sb.client_if, frames, count)
        # The worker drains its ring: until its rx count stops moving (bounded). What the ring could
        # not take is lost before delivery, for both deliveries alike (passed/sent says how much).
        deadline, last, still_since = time.monotonic() + 10, -1, time.monotonic()
        while time.monotonic() < deadline:
            rx = int(queue.stats()["rx"])
            if rx != last:
                last, still_since = rx, time.monotonic()
            elif time.monotonic() - still_since > 0.2:
                break
            time.sleep(0.02)
        fastpath.maps["xsk_map"].delete(bytes(4))
    finally:
        queue.stop()
        worker.join(timeout=30)
        stats = queue.stats()
        queue.close()
        with entered_netns(sb.host_ns):
            delivery.close()
    passed = int(stats["passed"]) - int(before["passed"])
    return Sample("delivery", kind, round_no, "throughput", gen.sent, passed, gen.seconds, None, {},
                  {"deliver_errors": int(stats["deliver_errors"]) - int(before["deliver_errors"])})


# ---- 4. DNS service --------------------------------------------------------------------------


class DnsTier(enum.Enum):
    """What stands between dnsperf and dnsmasq in one DNS configuration."""

    NONE = "none"            # nothing: the baseline
    # The minimal XDP_PASS program on the host's veth end: what any XDP program costs there (veth then
    # receives through its own NAPI), so the tiers' ratios can be read against it too.
    XDP_PASS = "xdp_pass"
    XDP = "xdp"              # hyperion run, exact+suffix name rules judged in XDP
    SLOW_PATH = "slow_path"  # the same plus regex rules: unmatched queries go through the AF_XDP workers
    DNSDIST = "dnsdist"      # dnsdist forwarding to the same dnsmasq, the same names as its own rules


@dataclass(frozen=True)
class DnsConfig:
    name: str
    tier: DnsTier
    rules: int = 0
    regex: int = 0

    @property
    def port(self) -> int:
        return DNSDIST_PORT if self.tier is DnsTier.DNSDIST else 53


DNS_MISS_ZONE = "good.test"   # dnsmasq answers every name under it with DNS_MISS_ADDRESS; no rule covers it
DNS_MISS_ADDRESS = "203.0.113.80"
DNS_RULE_ZONE = "example"     # every rule's name is under it; dnsmasq answers NXDOMAIN there, as the rules do
DNS_HIT_EVERY = 10            # one query in DNS_HIT_EVERY hits a rule, the others match nothing
DNS_DISTINCT = 1000           # distinct miss names, and at most this many distinct hit names per file
DNS_FILLER_LABELS = 8         # rule names carry 0-7 filler labels: 2 to 9 labels in all
DNSDIST_PORT = 5300           # dnsdist's listener, next to dnsmasq's port 53 on the host address
DNS_READY_SECONDS = 600.0     # bound on a daemon's start: 1M rules validate, compile and fill maps (~30 s)
DNSPERF_TIMEOUT_SECONDS = 600  # bound on one dnsperf run (timeout(1)), whatever its query count
DNSPERF_QUERY_TIMEOUT = 5     # dnsperf -t: a query unanswered this long counts as lost
METRICS_ADDR = "127.0.0.1:2112"  # inside the sandbox's host namespace
# Above this many name rules the daemon's /metrics is not scraped: it reads every rule's XDP counter per
# scrape, and with 1M rules it did not answer within minutes (so its counters are left out there).
METRICS_MAX_RULES = 100_000
SCRAPE_TIMEOUT_SECONDS = 120
DAEMON_READY_LINE = "attached to "  # hyperion run logs it once the policy is in the maps and the program linked
SERVER_CPU = 1                # dnsmasq, hyperion run (its workers) and dnsdist; dnsperf on GENERATOR_CPU


def dns_rule_names(size: int) -> list[tuple[bool, str]]:
    """size (exact?, name) rules: even positions exact names, odd positions `*.name` suffixes, each name
    r<i> + 0-7 filler labels + DNS_RULE_ZONE. Both kinds cover every label count from 2 to 9, so the
    program makes every lookup (exact and each suffix) for a query name that matches nothing."""
    return [(i % 2 == 0, ".".join([f"r{i}", *["x"] * ((i // 2) % DNS_FILLER_LABELS), DNS_RULE_ZONE]))
            for i in range(size)]


def dns_rule_documents(size: int) -> list[dict[str, str]]:
    return [{"match": name if exact else f"*.{name}", "action": "nxdomain"} for exact, name in dns_rule_names(size)]


def dns_regex_documents(count: int) -> list[dict[str, str]]:
    """count regex rules that match none of the benchmark's queries (their job is to put every query that
    no name rule decides into the workers)."""
    return [{"regex": rf"^re{i}-[0-9]+\.regex\.{DNS_RULE_ZONE}$", "action": "drop"} for i in range(count)]


def dns_policy(rules: int, regex: int) -> dict[str, Any]:
    return {"fast_path": {"redirect_ports": [{"protocol": "udp", "port": 53, "on_failure": "drop"}]},
            "slow_path": {"dns_rules": dns_rule_documents(rules) + dns_regex_documents(regex)}}


def dns_hit_names(size: int, k: int = DNS_DISTINCT) -> list[str]:
    """Query names that hit rules spread evenly over the list: the exact name, or a name under the suffix."""
    return [name if exact else f"h.{name}" for exact, name in evenly(dns_rule_names(size), k)]


def dns_queries(count: int, hits: Sequence[str]) -> str:
    """dnsperf's input: count queries (type A), every DNS_HIT_EVERY-th a hit, the others DNS_DISTINCT names
    under DNS_MISS_ZONE."""
    return "".join(f"{hits[(j // DNS_HIT_EVERY) % len(hits)]} A\n" if j % DNS_HIT_EVERY == DNS_HIT_EVERY - 1
                   else f"q{j % DNS_DISTINCT}.{DNS_MISS_ZONE} A\n" for j in range(count))


def dnsdist_config(directory: Path, size: int) -> Path:
    """A dnsdist Lua configuration: listen on HOST_V4:DNSDIST_PORT, forward to dnsmasq on HOST_V4:53, answer
    NXDOMAIN for the size rules (exact names in a DNSNameSet, suffixes in a SuffixMatchNode), read from
    files (a Lua chunk with 100k literal calls would exceed LuaJIT's constants per function)."""
    names = dns_rule_names(size)
    (directory / "dnsdist-exact.txt").write_text("".join(f"{n}\n" for exact, n in names if exact))
    (directory / "dnsdist-suffixes.txt").write_text("".join(f"{n}\n" for exact, n in names if not exact))
    config = directory / "dnsdist.conf"
    config.write_text(f"""-- generated by hyperion.lab.benchmarks.sections (dnsdist_config)
setSecurityPollSuffix("")
setACL({{"192.0.2.0/24"}})
setLocal("{HOST_V4}:{DNSDIST_PORT}")
newServer({{address="{HOST_V4}:53", name="dnsmasq", checkName="{DNS_MISS_ZONE}."}})
local exact = newDNSNameSet()
for line in io.lines("{directory / 'dnsdist-exact.txt'}") do exact:add(newDNSName(line)) end
local suffixes = newSuffixMatchNode()
for line in io.lines("{directory / 'dnsdist-suffixes.txt'}") do suffixes:add(line) end
addAction(QNameSetRule(exact), RCodeAction(DNSRCode.NXDOMAIN))
addAction(SuffixMatchNodeRule(suffixes), RCodeAction(DNSRCode.NXDOMAIN))
""")
    return config


def dns_configs(plan: Plan) -> list[DnsConfig]:
    def rules(n: int) -> str:
        return f"{n:,} exact+suffix rule{'s' if n > 1 else ''}"

    return [DnsConfig("no filter", DnsTier.NONE),
            DnsConfig("XDP_PASS attached (minimal)", DnsTier.XDP_PASS),
            *[DnsConfig(f"hyperion xdp tier, {rules(n)}", DnsTier.XDP, n) for n in plan.dns_sizes],
            *[DnsConfig(f"hyperion slow-path tier, {rules(n)} + {plan.dns_regex} regex", DnsTier.SLOW_PATH, n,
                        plan.dns_regex) for n in plan.dns_sizes],
            DnsConfig(f"dnsdist, {rules(plan.dns_dnsdist_size)}", DnsTier.DNSDIST, plan.dns_dnsdist_size)]


def _dnsperf(sb: Sandbox, queries: Path, port: int = 53) -> dict[str, Any]:
    """One pass over the query file (-n 1: a fixed count; with -l, dnsperf counts a query still in flight at
    the stop as lost), bounded by timeout(1); dnsperf pinned to GENERATOR_CPU."""
    out = sb.exec(sb.client_ns, ["taskset", "-c", str(GENERATOR_CPU), "timeout", str(DNSPERF_TIMEOUT_SECONDS),
                                 "dnsperf", "-s", HOST_V4, "-p", str(port), "-d", str(queries), "-n", "1", "-v",
                                 "-q", "64", "-t", str(DNSPERF_QUERY_TIMEOUT)]).stdout
    latencies = sorted(float(line.split()[-1]) for line in out.splitlines() if line.startswith("> "))
    qps = next(float(line.split(":")[1]) for line in out.splitlines() if "Queries per second" in line)
    lost = next(float(line.split(":")[1].split("(")[0]) for line in out.splitlines() if "Queries lost" in line)
    completed = next(float(line.split(":")[1].split("(")[0]) for line in out.splitlines()
                     if "Queries completed" in line)
    rcodes = {line.split()[1]: 0 for line in out.splitlines() if line.startswith("> ")}
    for line in out.splitlines():
        if line.startswith("> "):
            rcodes[line.split()[1]] += 1
    if not latencies:
        return {"qps": qps, "lost": lost, "completed": completed, "p50_ms": 0.0, "p99_ms": 0.0, "rcodes": {}}
    return {"qps": qps, "lost": lost, "completed": completed, "p50_ms": latencies[len(latencies) // 2] * 1e3,
            "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3, "rcodes": rcodes}


def _scrape(sb: Sandbox, attempts: int = 25) -> dict[str, float]:
    """The daemon's AF_XDP and slow-path counters, summed over labels other than the name (retried
    for a few seconds while the daemon's metrics server comes up). Waits for the whole answer, so that
    no scrape is still being rendered while dnsperf runs."""
    code = (f"import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://{METRICS_ADDR}/metrics', "
            f"timeout={SCRAPE_TIMEOUT_SECONDS}).read().decode())")
    out = ""
    for _ in range(attempts):
        out = sb.exec(sb.host_ns, [sys.executable, "-c", code], check=False).stdout
        if "hyperion_" in out:
            break
        time.sleep(0.2)
    totals: dict[str, float] = {}
    for line in out.splitlines():
        if line.startswith(("hyperion_afxdp_", "hyperion_slowpath_packets_total", "hyperion_slowpath_inspected")):
            name = line.split("{")[0].split(" ")[0]
            if "outcome=" in line:
                name += "{" + line.split("outcome=")[1].split('"')[1] + "}"
            with contextlib.suppress(ValueError):
                totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def _dig(sb: Sandbox, name: str, port: int = 53) -> str:
    """'RCODE first-A-address' of one query from the client (empty when unanswered)."""
    proc = sb.exec(sb.client_ns, ["dig", "+time=1", "+tries=1", "-p", str(port), f"@{HOST_V4}", name, "A"],
                   check=False)
    status = next((line.split("status:")[1].split(",")[0].strip() for line in proc.stdout.splitlines()
                   if "status:" in line), "")
    answer = next((line.split()[-1] for line in proc.stdout.splitlines()
                   if line and not line.startswith(";") and "\tA\t" in line), "")
    return f"{status} {answer}".strip()


def _wait_ready(sb: Sandbox, config: DnsConfig, hit: str, process: subprocess.Popen[str] | None, log: Path | None,
                timeout: float = DNS_READY_SECONDS) -> float:
    """Until the configuration answers: a miss with dnsmasq's address, a hit with NXDOMAIN; for the daemon,
    also its log line saying the policy is in the maps and the program attached, so that dnsmasq answering
    before the daemon attached is not taken for ready. Returns the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if process is not None and process.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise BenchError(f"{config.name}: exited with {process.returncode}: {tail}")
        daemon_up = config.tier not in (DnsTier.XDP, DnsTier.SLOW_PATH) or (
            log is not None and log.exists() and DAEMON_READY_LINE in log.read_text())
        if daemon_up and _dig(sb, f"ready.{DNS_MISS_ZONE}", config.port) == f"NOERROR {DNS_MISS_ADDRESS}" \
                and _dig(sb, hit, config.port) == "NXDOMAIN":
            return time.monotonic() - start
        time.sleep(0.5)
    raise BenchError(f"{config.name}: not answering within {timeout:.0f} s")


def threaded_napi(sb: Sandbox, netns: str, ifname: str) -> None:
    """NAPI of this veth end in its own kernel thread (sysfs `threaded`), so that it can be pinned: by
    default veth runs the receiving NAPI on the CPU that transmitted, i.e. the client's. The sandbox's
    /sys shows the root namespace's devices, so the write happens under a fresh sysfs in a private mount
    namespace entered with the interface's network namespace."""
    script = f"mount -t sysfs sysfs /sys && echo 1 > /sys/class/net/{ifname}/threaded"
    proc = subprocess.run(["nsenter", f"--net={NETNS_DIR / netns}", "unshare", "--mount", "sh", "-c", script],
                          capture_output=True, text=True)
    if proc.returncode:
        raise BenchError(f"threaded NAPI on {ifname}: {proc.stderr.strip()}")


def pin_napi(ifname: str, cpu: int) -> list[int]:
    """Pins the NAPI threads of ifname (napi/<ifname>-<id>) to cpu; returns their PIDs (kernel threads the
    interface's `threaded` switch created for us; they go with the interface)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith(f"napi/{ifname}-"):
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(int(entry.name), {cpu})
                pids.append(int(entry.name))
    return pids


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its descendants so far (0 for a process that is gone)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
    return total / os.sysconf("SC_CLK_TCK")


def _stop(process: subprocess.Popen[str]) -> None:
    """The process we started, by its PID: SIGTERM, then SIGKILL after 30 s."""
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@contextlib.contextmanager
def _serving(sb: Sandbox, config: DnsConfig, work: Path, hit: str) -> Iterator[dict[str, Any]]:
    """Starts what the configuration puts in front of dnsmasq (pinned to SERVER_CPU), waits until it answers,
    yields a dict for its start-up facts; stops it (by PID) afterwards, also on failure."""
    facts: dict[str, Any] = {}
    process: subprocess.Popen[str] | None = None
    baseline: BaselineProgram | None = None
    log = work / f"{config.tier.value}-{config.rules}.log"
    try:
        if config.tier is DnsTier.XDP_PASS:
            with entered_netns(sb.host_ns):
                baseline = BaselineProgram(sb.host_if, "xdp_pass", "baseline_pass")
        if config.tier in (DnsTier.XDP, DnsTier.SLOW_PATH):
            policy = work / f"policy-{config.tier.value}-{config.rules}.json"
            if not policy.exists():
                policy.write_text(json.dumps(dns_policy(config.rules, config.regex)))
                policy.chmod(0o600)
            argv = [sys.executable, "-m", "hyperion.cli", "run", "--iface", sb.host_if, "--policy", str(policy),
                    "--metrics-addr", METRICS_ADDR]
        elif config.tier is DnsTier.DNSDIST:
            argv = ["dnsdist", "--supervised", "--disable-syslog", "-C", str(dnsdist_config(work, config.rules))]
        else:
            argv = []
        if argv:
            with log.open("w") as out:
                process = sb.popen(sb.host_ns, ["taskset", "-c", str(SERVER_CPU), *argv], stdout=out,
                                   stderr=subprocess.STDOUT)
        facts["ready_s"] = _wait_ready(sb, config, hit, process, log)
        if process is not None:
            facts["filter_pid"] = process.pid
        yield facts
    finally:
        if process is not None:
            _stop(process)
        if baseline is not None:
            baseline.close()


def dns_section(plan: Plan, progress: Progress) -> dict[str, Any]:
    """dnsperf against dnsmasq: no filter; Hyperion's XDP tier (exact+suffix name rules); the slow-path tier
    (the same plus regex rules, which put every query no name rule decides into the AF_XDP workers); dnsdist
    forwarding to the same dnsmasq with the same names. One fixed query count per run, configurations
    interleaved, rounds repeated; the issue's targets next to the measured ratios."""
    if shutil.which("dnsdist") is None:
        raise BenchError("dnsdist is not installed (scripts/setup.sh installs it)")
    configs = dns_configs(plan)
    runs: dict[str, list[dict[str, Any]]] = {c.name: [] for c in configs}
    sizes = sorted({c.rules for c in configs if c.rules} | {max(plan.dns_sizes)})
    # 0700 (mkdtemp): the daemon reads its policies from here, and refuses files others could write.
    with Sandbox(wire_xdp=True) as sb, tempfile.TemporaryDirectory(prefix="hyperion-bench-dns-") as tmp:
        work = Path(tmp)
        work.chmod(0o700)
        hits = {n: dns_hit_names(n) for n in sizes}
        files = {n: work / f"queries-{n}.txt" for n in sizes}
        for n, path in files.items():
            path.write_text(dns_queries(plan.dns_queries, hits[n]))
        # The baseline gets the largest rule set's file: dnsmasq answers every hit name NXDOMAIN from its own
        # --address, the same work whichever names they are.
        files[0], hits[0] = files[max(plan.dns_sizes)], hits[max(plan.dns_sizes)]
        server = sb.popen(sb.host_ns, ["taskset", "-c", str(SERVER_CPU), "dnsmasq", "--no-daemon", "--no-resolv",
                                       "--no-hosts", "--bind-interfaces", f"--listen-address={HOST_V4}",
                                       "--pid-file", "--user=root",
                                       f"--address=/{DNS_MISS_ZONE}/{DNS_MISS_ADDRESS}",
                                       f"--address=/{DNS_RULE_ZONE}/", "--cache-size=1000"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        probes = Probes(interfaces=[(sb.client_ns, sb.client_if), (sb.host_ns, sb.host_if)])
        # Client and server on CPUs of their own, as two machines: the host end's NAPI (XDP, the stack's
        # receive, AF_XDP's copy) in a thread on SERVER_CPU, the client end's (dnsperf's answers) on
        # GENERATOR_CPU. GRO on the host end keeps its NAPI (and thread) across XDP attach and detach.
        napi_enabled(sb)
        napi = {sb.client_if: GENERATOR_CPU, sb.host_if: SERVER_CPU}
        for netns, ifname in ((sb.client_ns, sb.client_if), (sb.host_ns, sb.host_if)):
            threaded_napi(sb, netns, ifname)
        try:
            for round_no in range(plan.dns_rounds):
                for config in configs:
                    with _serving(sb, config, work, hits[config.rules][0]) as facts:
                        # Again for every run: an attach may give the interface new NAPI threads.
                        facts["napi_threads"] = {ifname: pin_napi(ifname, cpu) for ifname, cpu in napi.items()}
                        if not all(facts["napi_threads"].values()):
                            raise BenchError(f"no NAPI thread to pin: {facts['napi_threads']}")
                        daemon = config.tier in (DnsTier.XDP, DnsTier.SLOW_PATH) and \
                            config.rules <= METRICS_MAX_RULES
                        before = _scrape(sb) if daemon else {}
                        # CPU of dnsmasq and of the filter (daemon and workers, or dnsdist) during the run.
                        pids = {"dnsmasq": server.pid, "filter": facts.pop("filter_pid", None)}
                        cpu0 = {k: tree_cpu_seconds(v) for k, v in pids.items() if v is not None}
                        t0 = time.monotonic()
                        with captured(probes) as telemetry:
                            result = _dnsperf(sb, files[config.rules], config.port)
                        elapsed = time.monotonic() - t0
                        facts["process_cpu_pct"] = {k: 100.0 * (tree_cpu_seconds(pids[k]) - v) / elapsed
                                                    for k, v in cpu0.items()}
                        after = _scrape(sb) if daemon else {}
                    slowpath = {k: v - before.get(k, 0.0) for k, v in after.items()}
                    runs[config.name].append({"round": round_no, **result, **facts, "telemetry": telemetry,
                                              "slowpath": slowpath})
                    progress(f"dns r{round_no} {config.name}: {result['qps']:,.0f} qps, p99 "
                             f"{result['p99_ms']:.2f} ms (ready after {facts['ready_s']:.1f} s)")
        finally:
            _stop(server)
    rows = _dns_rows(configs, runs)
    return {
        "title": "DNS service: dnsperf against dnsmasq",
        "method": {"client": f"dnsperf -n 1 over {plan.dns_queries:,} queries (type A) per run, -q 64, "
                             f"-t {DNSPERF_QUERY_TIMEOUT}, pinned to CPU {GENERATOR_CPU}",
                   "queries": f"1 in {DNS_HIT_EVERY} hits a rule (up to {DNS_DISTINCT:,} hit names spread evenly "
                              f"over the configuration's rules: the exact name, or h.<suffix>), the others "
                              f"{DNS_DISTINCT:,} names under {DNS_MISS_ZONE} that match no rule; the no-filter and "
                              "dnsdist runs use the file of their rule count (no filter: the largest)",
                   "server": f"dnsmasq, cache on, pinned to CPU {SERVER_CPU}: {DNS_MISS_ZONE} -> {DNS_MISS_ADDRESS}, "
                             f"*.{DNS_RULE_ZONE} NXDOMAIN (what the rules answer)",
                   "rules": f"exact+suffix names alternating, 2-9 labels, action nxdomain (answered in XDP); the "
                            f"slow-path tier adds {plan.dns_regex} regex rules matching none of the queries",
                   "hyperion": f"hyperion run pinned to CPU {SERVER_CPU} (its AF_XDP workers too), copy mode",
                   "napi": f"threaded NAPI on both veth ends: the host end's thread (XDP, the stack's receive, "
                           f"AF_XDP's copy) pinned to CPU {SERVER_CPU}, the client end's to CPU {GENERATOR_CPU}",
                   "dnsdist": f"dnsdist (Debian) on {HOST_V4}:{DNSDIST_PORT}, pinned to CPU {SERVER_CPU}, "
                              "forwarding to the same dnsmasq; exact names as a DNSNameSet, suffixes as a "
                              "SuffixMatchNode, RCodeAction(NXDOMAIN)",
                   "slow path counters": f"scraped from the daemon's /metrics before and after each run, up to "
                                         f"{METRICS_MAX_RULES:,} rules (beyond, /metrics did not answer)",
                   "rounds": plan.dns_rounds, "order": "configurations interleaved within each round"},
        "baseline": configs[0].name,
        "configs": rows,
        "samples": [{"config": n, **r} for n in runs for r in runs[n]],
    }


def _dns_rows(configs: Sequence[DnsConfig], runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    def median(name: str, key: str) -> float:
        return float(statistics.median(r[key] for r in runs[name]))

    base = configs[0].name
    base_qps, base_p99 = median(base, "qps"), median(base, "p99_ms")
    dnsdist = next(c.name for c in configs if c.tier is DnsTier.DNSDIST)
    dnsdist_qps = median(dnsdist, "qps")
    largest = max(c.rules for c in configs if c.tier is DnsTier.XDP)
    rows = []
    for config in configs:
        mine = runs[config.name]
        qps, p99 = median(config.name, "qps"), median(config.name, "p99_ms")
        ratio = qps / base_qps if base_qps else None
        p99_ratio = p99 / base_p99 if base_p99 else None
        vs_dnsdist = qps / dnsdist_qps if dnsdist_qps else None
        targets: list[dict[str, Any]] = []
        if config.tier is DnsTier.XDP:
            if config.rules == largest:
                targets += [_dns_target(f"{config.name}: qps >= 0.95 of no filter", ratio, 0.95, False),
                            _dns_target(f"{config.name}: p99 within 10% of no filter", p99_ratio, 1.10, True)]
            targets.append(_dns_target(f"{config.name}: ahead of dnsdist", vs_dnsdist, 1.0, False))
        elif config.tier is DnsTier.SLOW_PATH:
            targets.append(_dns_target(f"{config.name}: qps >= 0.90 of no filter", ratio, 0.90, False))
        cpu = [{"cpu": c, "busy_pct": statistics.median(r["telemetry"]["cpu"][c]["busy_pct"] for r in mine),
                "softirq_pct": statistics.median(r["telemetry"]["cpu"][c]["softirq_pct"] for r in mine)}
               for c in range(len(mine[0]["telemetry"]["cpu"]))]
        slow = {k: statistics.median(r["slowpath"].get(k, 0.0) for r in mine) for k in mine[0].get("slowpath", {})}
        rows.append({"name": config.name, "tier": config.tier.value, "rules": config.rules, "regex": config.regex,
                     "qps": spread([r["qps"] for r in mine]), "p50_ms": spread([r["p50_ms"] for r in mine]),
                     "p99_ms": spread([r["p99_ms"] for r in mine]), "lost": sum(r["lost"] for r in mine),
                     "completed": sum(r["completed"] for r in mine), "ratio": ratio, "p99_ratio": p99_ratio,
                     "vs_dnsdist": vs_dnsdist, "ready_s": spread([r["ready_s"] for r in mine]),
                     "process_cpu_pct": {k: statistics.median(r["process_cpu_pct"].get(k, 0.0) for r in mine)
                                         for k in mine[0]["process_cpu_pct"]},
                     "rcodes": {k: statistics.median(r["rcodes"].get(k, 0) for r in mine)
                                for k in sorted({k for r in mine for k in r["rcodes"]})},
                     "targets": targets, "telemetry": {"cpu": cpu}, "slowpath": slow})
    return rows


def _dns_target(text: str, measured: float | None, goal: float, at_most: bool) -> dict[str, Any]:
    met = measured is not None and (measured <= goal if at_most else measured >= goal)
    return {"target": text, "goal": goal, "at_most": at_most, "measured": measured, "met": met}


# ---- 4b. XDP DNS stage cost ------------------------------------------------------------------

DNSCOST_LABELS = (2, 4, 8)
DNSCOST_SOURCE = "198.51.100.7"
DNSCOST_OUTSIDE_PORT = 54     # the same queries to a port that is no DNS class: the program without the stage


def dnscost_name(labels: int) -> str:
    """A query name of `labels` labels that matches no rule (under DNS_MISS_ZONE)."""
    return ".".join([*[f"l{i}" for i in range(labels - 2)], *DNS_MISS_ZONE.split(".")])


def dnscost_section(plan: Plan, progress: Progress) -> dict[str, Any]:
    """The XDP program's cost per DNS query (bpf_stats: run_time_ns / run_cnt over live frames from the
    generator), for names of 2, 4 and 8 labels that match no rule (every lookup made) against 1 .. 1M
    exact+suffix rules, and for the same frames to a port outside any DNS class; the difference is the DNS
    stage's own cost."""
    receivers: list[HyperionXdp] = []
    for n in plan.dnscost_sizes:
        receiver = HyperionXdp(f"{n:,} name rules", _constant(dns_policy(n, 0)), "UdpNoPorts (IPv4)",
                               lambda sb: udp_no_ports(sb, ipv6=False), ("pass", "dns_no_match"))
        receiver.extra = {"size": n}
        receivers.append(receiver)
    samples: list[Sample] = []
    memory: dict[str, dict[str, Any]] = {}
    with Sandbox() as sb, prepared(sb, receivers, progress):
        napi_enabled(sb)
        for receiver in receivers:
            assert receiver.prog_fd is not None
            memory[receiver.name] = program_map_memory(receiver.prog_fd)
        frames = {(labels, port): TrafficSpec(dst=HOST_V4, dst_mac=sb.mac(sb.host_ns, sb.host_if),
                                              sources=(DNSCOST_SOURCE,), protocol="dns", dport=port,
                                              dns_names=(dnscost_name(labels),)).frames()
                  for labels in DNSCOST_LABELS for port in (53, DNSCOST_OUTSIDE_PORT)}
        with bpf_stats():
            for round_no in range(plan.dnscost_rounds):
                for receiver in receivers:
                    for (labels, port), batch in frames.items():
                        sample = measure(sb, "dnscost", receiver, batch, plan.dnscost_count, round_no, "cost")
                        sample.extra.update({"labels": labels, "port": port, "size": receiver.extra["size"]})
                        samples.append(sample)
                        progress(f"dnscost r{round_no} {receiver.name}, {labels} labels, port {port}: "
                                 f"{sample.ns_per_pkt or 0:.1f} ns/pkt")
    rows = []
    for receiver in receivers:
        for labels in DNSCOST_LABELS:
            inside = [s for s in samples if s.config == receiver.name and s.extra["labels"] == labels
                      and s.extra["port"] == 53]
            outside = [s for s in samples if s.config == receiver.name and s.extra["labels"] == labels
                       and s.extra["port"] == DNSCOST_OUTSIDE_PORT]
            cost_in = [s.ns_per_pkt for s in inside if s.ns_per_pkt is not None]
            cost_out = [s.ns_per_pkt for s in outside if s.ns_per_pkt is not None]
            stage = statistics.median(cost_in) - statistics.median(cost_out) if cost_in and cost_out else None
            rows.append({"name": f"{receiver.name}, {labels}-label name", "size": receiver.extra["size"],
                         "labels": labels, "ns_per_pkt": spread(cost_in) if cost_in else None,
                         "outside_ns_per_pkt": spread(cost_out) if cost_out else None, "stage_ns_per_pkt": stage,
                         # In the class every frame was judged by the stage (dns_no_match), outside none was.
                         "counters_agree": all(s.counters_agree for s in inside)
                         and all(s.own_count == 0 for s in outside),
                         "setup_seconds": receiver.setup_seconds,
                         # The name rules' own maps (inner maps of hyp_dns_short/long), sized by their entries.
                         "dns_map_bytes": sum(v for k, v in memory[receiver.name]["maps"].items()
                                              if k.startswith(("hyp_dns_short[", "hyp_dns_long["))),
                         "map_memory": memory[receiver.name]})
    largest = max(plan.dnscost_sizes)
    return {
        "title": "XDP DNS stage: ns per query (bpf_stats)",
        "method": {"frames": f"IPv4/UDP DNS queries (A) from {DNSCOST_SOURCE}, names of "
                             f"{', '.join(map(str, DNSCOST_LABELS))} labels under {DNS_MISS_ZONE}, matching no rule",
                   "rules": "the DNS section's exact+suffix rules (2-9 labels, both kinds at every count: every "
                            "lookup is made; with 1 rule only its label count is looked up)",
                   "outside": f"the same frames to udp/{DNSCOST_OUTSIDE_PORT}, no DNS class: the program without "
                              "the stage; stage cost = inside - outside",
                   "cost": "kernel.bpf_stats_enabled=1: run_time_ns / run_cnt of the program over live frames "
                           f"(generator on CPU {GENERATOR_CPU}, where veth runs the receiving NAPI)",
                   "rounds": plan.dnscost_rounds, "frames_per_sample": plan.dnscost_count,
                   "target": f"<= 100 ns for a 4-label name at {largest:,} rules (stage cost)"},
        "configs": rows,
        "samples": [s.as_dict() for s in samples],
    }


# ---- 5. scale --------------------------------------------------------------------------------


def _first_address(entry: str) -> str:
    net = ipaddress.ip_network(entry, strict=False)
    return str(net.network_address + (1 if net.num_addresses > 1 else 0))


def _constant(document: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    return lambda: document


def scale_section(plan: Plan, progress: Progress) -> dict[str, Any]:
    """Per-packet cost (bpf_stats) and kernel map memory against blocklist size. The traffic comes
    from up to 4,096 blocked sources spread evenly over the list (the generator rewrites each frame's
    source), so the lookups touch the whole table rather than one hot entry."""
    receivers: list[HyperionXdp] = []
    sources: dict[str, list[str]] = {}
    for kind, sizes in (("ips", plan.scale_ip_sizes), ("cidrs", plan.scale_cidr_sizes)):
        for n in sizes:
            entries = blocked_ips(n) if kind == "ips" else blocked_cidrs(n)
            name = f"{n:,} blocked {'IPs' if kind == 'ips' else 'CIDRs'}"
            document = {"fast_path": {"drop_ips" if kind == "ips" else "drop_cidrs": entries}}
            receiver = HyperionXdp(name, _constant(document), "veth XDP drops (ethtool -S)", veth_xdp_drops,
                                   ("drop", "blocklist_ip" if kind == "ips" else "blocklist_cidr"))
            receiver.extra = {"kind": kind, "size": n}
            receivers.append(receiver)
            sources[name] = [_first_address(e) for e in evenly(entries, SCALE_MAX_SOURCES)]
    samples: list[Sample] = []
    memory: dict[str, dict[str, Any]] = {}
    with Sandbox() as sb, prepared(sb, receivers, progress):
        napi_enabled(sb)
        for receiver in receivers:
            assert receiver.prog_fd is not None
            memory[receiver.name] = program_map_memory(receiver.prog_fd)
        frames = {r.name: _frames(sb, sources[r.name][:1]) for r in receivers}
        with bpf_stats():
            for round_no in range(plan.scale_rounds):
                for receiver in receivers:
                    sample = interleaved(sb, "scale", [receiver], frames[receiver.name], plan.scale_count, 1, "cost",
                                         sources=sources[receiver.name])[0]
                    sample.round = round_no
                    samples.append(sample)
                    progress(f"scale r{round_no} {receiver.name}: {sample.ns_per_pkt or 0:.1f} ns/pkt, "
                             f"{sample.rx_pps / 1e6:.3f} Mpps")
    rows = []
    for receiver in receivers:
        mine = [s for s in samples if s.config == receiver.name]
        cost = [s.ns_per_pkt for s in mine if s.ns_per_pkt is not None]
        rows.append({**receiver.describe(), **receiver.extra,
                     "sources": len(sources[receiver.name]),
                     "ns_per_pkt": spread(cost) if cost else None,
                     "rx_pps_with_stats": spread([s.rx_pps for s in mine]),
                     "counters_agree": all(s.counters_agree for s in mine),
                     "map_memory": memory[receiver.name]})
    return {
        "title": "Scale: per-packet cost and map memory against blocklist size",
        "method": {"frame": "IPv6/UDP, 64 B", "sources": f"up to {SCALE_MAX_SOURCES:,} blocked sources, evenly over "
                   "the list, rewritten per frame by the generator (xdp_tx_spread)",
                   "rounds": plan.scale_rounds, "frames_per_sample": plan.scale_count,
                   "cost": "kernel.bpf_stats_enabled=1: run_time_ns / run_cnt of the program",
                   "memory": "memlock of every map of the program and of the inner maps behind its map-in-maps "
                   "(/proc/self/fdinfo, as bpftool map show)"},
        "configs": rows,
        "samples": [s.as_dict() for s in samples],
    }


# ---- 6. reload -------------------------------------------------------------------------------


def reload_section(plan: Plan, progress: Progress) -> dict[str, Any]:
    """Policy reload (validate, compile, apply to an attached fast path) and /metrics render time per
    blocklist size; sizes interleaved, rounds repeated."""
    samples: list[dict[str, Any]] = []
    with Sandbox() as sb:
        with entered_netns(sb.host_ns):
            fastpath = FastPath.attach(sb.host_if)
        try:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(FastPathCollector(fastpath))
            for round_no in range(plan.reload_rounds):
                for size in plan.reload_sizes:
                    addresses = blocked_ips(size)
                    start = time.perf_counter()
                    policy = Policy.model_validate({"fast_path": {"drop_ips": addresses}})
                    validated = time.perf_counter()
                    compiled = PolicyCompiler(fastpath.abi, fastpath.capacities()).compile(policy)
                    compiled_at = time.perf_counter()
                    fastpath.apply(compiled)
                    applied = time.perf_counter()
                    scrapes = []
                    for _ in range(5):
                        t0 = time.perf_counter()
                        generate_latest(registry)
                        scrapes.append(time.perf_counter() - t0)
                    samples.append({"entries": size, "round": round_no, "validate_s": validated - start,
                                    "compile_s": compiled_at - validated, "apply_s": applied - compiled_at,
                                    "reload_s": applied - start, "scrape_s": statistics.median(scrapes)})
                    progress(f"reload r{round_no} {size:,}: {applied - start:.2f} s")
        finally:
            fastpath.close()
            with entered_netns(sb.host_ns):
                FastPath.detach(sb.host_if)
    rows = []
    for size in plan.reload_sizes:
        mine = [s for s in samples if s["entries"] == size]
        rows.append({"entries": size, **{k: spread([s[k] for s in mine]) for k in
                                         ("validate_s", "compile_s", "apply_s", "reload_s", "scrape_s")}})
    return {
        "title": "Policy reload and /metrics scrape time against blocklist size",
        "method": {"policy": "exact IPv6 blocklist, built in memory (no file parsing)", "rounds": plan.reload_rounds,
                   "scrape": "median of 5 renders of the /metrics collector"},
        "configs": rows,
        "samples": samples,
    }


SECTIONS: dict[str, Callable[[Plan, Progress], dict[str, Any]]] = {
    "drop": drop_section,
    "passthrough": pass_section,
    "slowpath": slowpath_section,
    "delivery": delivery_section,
    "dns": dns_section,
    "dnscost": dnscost_section,
    "scale": scale_section,
    "reload": reload_section,
}


def median_cost(section: dict[str, Any], name: str) -> float | None:
    for row in section.get("configs", []):
        if row.get("name") == name and row.get("ns_per_pkt"):
            return float(row["ns_per_pkt"]["median"])
    return None

