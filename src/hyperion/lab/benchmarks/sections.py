"""The benchmark sections. Each returns a JSON-ready dict: method, configurations, per-configuration
summary (median, min-max) and every raw sample with its telemetry.

Traffic for the drop, pass-through and scale sections: IPv6/UDP frames of 64 bytes from the
live-frames generator in the client namespace, pinned to CPU 0, to the host's closed port 9.
IPv6, because a 1M-address blocklist does not fit in the IPv4 documentation ranges.
"""

from __future__ import annotations

import contextlib
import ipaddress
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from hyperion import _slowpath
from hyperion.daemon.metrics import FastPathCollector
from hyperion.fastpath.program import FastPath
from hyperion.lab.generator import TrafficSpec
from hyperion.lab.sandbox import HOST_V4, HOST_V6, Sandbox, entered_netns
from hyperion.policy.compiler import PolicyCompiler
from hyperion.policy.model import Policy
from hyperion.slowpath.rules import compile_rules

from .core import (
    GENERATOR_CPU,
    BaselineXdp,
    HyperionXdp,
    IptablesRawDrop,
    KernelStack,
    NftNetdevDrop,
    Receiver,
    Sample,
    bpf_stats,
    interleaved,
    send_from,
    spread,
    telemetry_summary,
    udp_no_ports,
    veth_xdp_drops,
)
from .memory import program_map_memory
from .telemetry import Probes, captured

Progress = Callable[[str], None]

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
    dns_seconds: int
    scale_ip_sizes: tuple[int, ...]
    scale_cidr_sizes: tuple[int, ...]
    scale_rounds: int
    scale_count: int
    reload_sizes: tuple[int, ...]
    reload_rounds: int


FULL = Plan(quick=False, drop_sizes=(1, 10_000, 1_000_000), drop_cidrs=10_000, drop_rounds=5, drop_count=1_000_000,
            cost_rounds=2, cost_count=500_000, pass_rounds=5, pass_count=500_000, pass_blocklist=10_000,
            slow_sizes=(1, 1_000, 100_000), slow_rounds=3, slow_count=1_000_000, dns_rounds=3, dns_seconds=10,
            scale_ip_sizes=(1, 1_000, 10_000, 100_000, 1_000_000), scale_cidr_sizes=(1, 1_000, 10_000, 100_000),
            scale_rounds=3, scale_count=500_000, reload_sizes=(1_000, 10_000, 100_000, 1_000_000), reload_rounds=3)
QUICK = Plan(quick=True, drop_sizes=(1, 1_000), drop_cidrs=1_000, drop_rounds=1, drop_count=50_000,
             cost_rounds=1, cost_count=50_000, pass_rounds=1, pass_count=50_000, pass_blocklist=1_000,
             slow_sizes=(1, 100), slow_rounds=1, slow_count=50_000, dns_rounds=1, dns_seconds=2,
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


def evenly(items: Sequence[str], k: int) -> list[str]:
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


# ---- 4. DNS service --------------------------------------------------------------------------

DNS_SERVICE_POLICY = """
fast_path:
  redirect_ports: [{protocol: udp, port: 53, on_failure: drop}]
slow_path:
  dns_name_rules: PLACEMENT
  dns_rules: [{match: "evil.test", action: drop}]
"""
# Config name -> where the name rule runs: the XDP program judges every query, or (the operator's
# override) the AF_XDP workers inspect every query.
DNS_SERVICE_TIERS = {"through hyperion, xdp tier": "xdp", "through hyperion slow path": "slow_path"}
METRICS_ADDR = "127.0.0.1:2112"  # inside the sandbox's host namespace


def _dnsperf(sb: Sandbox, queries: Path, seconds: int) -> dict[str, float]:
    out = sb.exec(sb.client_ns, ["dnsperf", "-s", HOST_V4, "-d", str(queries), "-l", str(seconds), "-v",
                                 "-q", "64", "-t", "2"]).stdout
    latencies = sorted(float(line.split()[-1]) for line in out.splitlines() if line.startswith("> "))
    qps = next(float(line.split(":")[1]) for line in out.splitlines() if "Queries per second" in line)
    lost = next(float(line.split(":")[1].split("(")[0]) for line in out.splitlines() if "Queries lost" in line)
    completed = next(float(line.split(":")[1].split("(")[0]) for line in out.splitlines()
                     if "Queries completed" in line)
    if not latencies:
        return {"qps": qps, "lost": lost, "completed": completed, "p50_ms": 0.0, "p99_ms": 0.0}
    return {"qps": qps, "lost": lost, "completed": completed, "p50_ms": latencies[len(latencies) // 2] * 1e3,
            "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3}


def _scrape(sb: Sandbox) -> dict[str, float]:
    """The daemon's AF_XDP and slow-path counters, summed over labels other than the name (retried
    for a few seconds while the daemon's metrics server comes up)."""
    code = (f"import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://{METRICS_ADDR}/metrics', "
            "timeout=5).read().decode())")
    out = ""
    for _ in range(25):
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


def dns_section(plan: Plan, progress: Progress) -> dict[str, Any]:
    """dnsperf against dnsmasq, without Hyperion and through it: the XDP program judging every query,
    and the slow path inspecting every query."""
    names = ("without hyperion", *DNS_SERVICE_TIERS)
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    with Sandbox(wire_xdp=True) as sb, tempfile.TemporaryDirectory() as tmp:
        queries = Path(tmp) / "queries.txt"
        queries.write_text("good.test A\n")
        policies = {}
        for name, placement in DNS_SERVICE_TIERS.items():
            policies[name] = Path(tmp) / f"policy-{placement}.yaml"
            policies[name].write_text(DNS_SERVICE_POLICY.replace("PLACEMENT", placement))
        server = sb.popen(sb.host_ns, ["dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--bind-interfaces",
                                       f"--listen-address={HOST_V4}", "--pid-file", "--user=root",
                                       "--address=/good.test/203.0.113.80", "--cache-size=1000"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        probes = Probes(interfaces=[(sb.client_ns, sb.client_if), (sb.host_ns, sb.host_if)])
        try:
            _wait_for_answer(sb)
            for round_no in range(plan.dns_rounds):
                with captured(probes) as telemetry:
                    result = _dnsperf(sb, queries, plan.dns_seconds)
                runs[names[0]].append({"round": round_no, **result, "telemetry": telemetry})
                progress(f"dns r{round_no} {names[0]}: {result['qps']:.0f} qps")
                for name, policy in policies.items():
                    daemon = sb.popen(sb.host_ns, [sys.executable, "-m", "hyperion.cli", "run", "--iface",
                                                   sb.host_if, "--policy", str(policy), "--metrics-addr",
                                                   METRICS_ADDR], stderr=subprocess.DEVNULL)
                    try:
                        _wait_for_answer(sb, daemon)
                        before = _scrape(sb)
                        with captured(probes) as telemetry:
                            result = _dnsperf(sb, queries, plan.dns_seconds)
                        after = _scrape(sb)
                        slowpath = {k: v - before.get(k, 0.0) for k, v in after.items()}
                        runs[name].append({"round": round_no, **result, "telemetry": telemetry,
                                           "slowpath": slowpath})
                        progress(f"dns r{round_no} {name}: {result['qps']:.0f} qps")
                    finally:
                        daemon.terminate()
                        try:
                            daemon.wait(timeout=20)
                        except subprocess.TimeoutExpired:
                            daemon.kill()
                            daemon.wait(timeout=10)
        finally:
            server.terminate()
            server.wait(timeout=10)
    baseline = statistics.median(r["qps"] for r in runs[names[0]])
    rows = []
    for name in names:
        mine = runs[name]
        cpu = [{"cpu": c, "busy_pct": statistics.median(r["telemetry"]["cpu"][c]["busy_pct"] for r in mine),
                "softirq_pct": statistics.median(r["telemetry"]["cpu"][c]["softirq_pct"] for r in mine)}
               for c in range(len(mine[0]["telemetry"]["cpu"]))]
        slow = {k: statistics.median(r["slowpath"].get(k, 0.0) for r in mine) for k in mine[0].get("slowpath", {})}
        rows.append({"name": name, "qps": spread([r["qps"] for r in mine]),
                     "p50_ms": spread([r["p50_ms"] for r in mine]), "p99_ms": spread([r["p99_ms"] for r in mine]),
                     "lost": sum(r["lost"] for r in mine), "completed": sum(r["completed"] for r in mine),
                     "ratio": statistics.median(r["qps"] for r in mine) / baseline if baseline else None,
                     "telemetry": {"cpu": cpu}, "slowpath": slow})
    return {
        "title": "DNS service: dnsperf against dnsmasq",
        "method": {"client": "dnsperf -q 64 -t 2, one name (good.test A)", "server": "dnsmasq, cache on",
                   "seconds_per_run": plan.dns_seconds, "rounds": plan.dns_rounds,
                   "hyperion": "hyperion run, 1 DNS name rule: judged in XDP (xdp tier), or every query "
                               "redirected to the AF_XDP slow path (dns_name_rules: slow_path, copy mode)"},
        "baseline": names[0],
        "configs": rows,
        "samples": [{"config": n, **r} for n in names for r in runs[n]],
    }


def _wait_for_answer(sb: Sandbox, daemon: subprocess.Popen[str] | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon is not None and daemon.poll() is not None:
            raise RuntimeError(f"hyperion run exited with {daemon.returncode}")
        if sb.exec(sb.client_ns, ["dig", "+time=1", "+tries=1", f"@{HOST_V4}", "good.test"],
                   check=False).returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError("no DNS answer within 30 s")


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
    "dns": dns_section,
    "scale": scale_section,
    "reload": reload_section,
}


def median_cost(section: dict[str, Any], name: str) -> float | None:
    for row in section.get("configs", []):
        if row.get("name") == name and row.get("ns_per_pkt"):
            return float(row["ns_per_pkt"]["median"])
    return None

