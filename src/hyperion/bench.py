"""Drop-rate benchmark: minimal XDP_DROP vs Hyperion's fast path, side by side in one run.

One sandbox (client -> host over veth). The live-frames generator in the
client sends IPv6 UDP frames from a source that each configuration drops;
the configurations take turns (A B C D A B C D ...) on the host's veth.

Ground truth is the receiving veth's own XDP statistics (ethtool -S
rx_queue_N_xdp_drops), read with kernel BPF statistics off:
  rx_pps     = frames the receiver dropped in XDP / generator wall time
For Hyperion its drop counter must agree with the driver's figure exactly.
A separate pass with kernel.bpf_stats_enabled=1 gives each program's own cost:
  ns_per_pkt = run_time_ns / run_cnt (includes the stats' own clock reads)

On a 2-core VM the veth's NAPI runs on the generator's CPU, so rx_pps mixes
generator and receiver cost; ns_per_pkt isolates the program. Both are given.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from hyperion import _slowpath, libbpf
from hyperion.compiler import PolicyCompiler
from hyperion.fastpath import BpfObject, FastPath, ifindex_of
from hyperion.generator import tool_object
from hyperion.metrics import FastPathCollector
from hyperion.policy import Policy
from hyperion.sandbox import HOST_V4, HOST_V6, Sandbox, entered_netns, in_netns
from hyperion.slowpath import compile_rules

GENERATOR_SOURCE = "2001:db8:ff00::7"


@dataclass
class Sample:
    config: str
    round: int
    sent: int
    received: int         # dropped in XDP by the receiving veth (driver statistics)
    seconds: float
    counted_drops: int | None  # Hyperion's own counter, None for the minimal program
    run_cnt: int = 0      # with bpf stats on only
    run_time_ns: int = 0

    @property
    def rx_pps(self) -> float:
        return self.received / self.seconds

    @property
    def ns_per_pkt(self) -> float:
        return self.run_time_ns / self.run_cnt if self.run_cnt else 0.0


@dataclass
class Config:
    name: str
    blocked: int | None  # None: the minimal XDP_DROP program
    setup_seconds: dict[str, float] = field(default_factory=dict)


def blocklist_addresses(size: int) -> list[str]:
    """size exact IPv6 sources in 2001:db8:100::/64, the generator's first (formatted directly:
    str(IPv6Address) would cost more than the validation being measured)."""
    return [GENERATOR_SOURCE] + [f"2001:db8:100::{i >> 16:x}:{i & 0xFFFF:x}" for i in range(size - 1)]


def blocklist_policy(size: int) -> Policy:
    return Policy.model_validate({"fast_path": {"drop_ips": blocklist_addresses(size)}})


@contextlib.contextmanager
def bpf_stats() -> Iterator[None]:
    path = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = path.read_text().strip()
    path.write_text("1\n")
    try:
        yield
    finally:
        path.write_text(old + "\n")


def prog_counters(prog_fd: int) -> tuple[int, int]:
    info = libbpf.prog_info(prog_fd)
    return int(info.run_cnt), int(info.run_time_ns)


class BaselineProgram:
    """A minimal tool program (bpf/tools/) attached natively to an interface; close() detaches it."""

    def __init__(self, ifname: str, tool: str, program: str) -> None:
        self._obj = BpfObject(tool_object(tool))
        try:
            self._obj.load(None)
            self.prog_fd = self._obj.program_fd(program)
            opts = libbpf.BpfLinkCreateOpts(sz=ctypes.sizeof(libbpf.BpfLinkCreateOpts), flags=libbpf.XDP_FLAGS_DRV_MODE)
            self._link_fd = libbpf.check(libbpf.lib().bpf_link_create(
                self.prog_fd, ifindex_of(ifname), libbpf.BPF_XDP, ctypes.byref(opts)), f"attach {tool}")
        except BaseException:
            self._obj.close()
            raise

    def close(self) -> None:
        os.close(self._link_fd)  # an unpinned link detaches when its last fd closes
        self._obj.close()


class Receiver:
    """The program under test, attached to the host's veth for one measurement."""

    def __init__(self, sb: Sandbox, config: Config) -> None:
        self.sb = sb
        self.config = config
        self.fastpath: FastPath | None = None
        self._baseline: BaselineProgram | None = None
        self.prog_fd = -1

    def __enter__(self) -> Receiver:
        with entered_netns(self.sb.host_ns):
            if self.config.blocked is None:
                self._baseline = BaselineProgram(self.sb.host_if, "xdp_drop", "baseline_drop")
                self.prog_fd = self._baseline.prog_fd
            else:
                self.fastpath = FastPath.attach(self.sb.host_if)
                addresses = blocklist_addresses(self.config.blocked)
                start = time.perf_counter()
                policy = Policy.model_validate({"fast_path": {"drop_ips": addresses}})
                validated = time.perf_counter()
                compiled = PolicyCompiler(self.fastpath.abi, self.fastpath.capacities()).compile(policy)
                compiled_at = time.perf_counter()
                self.fastpath.apply(compiled)
                done = time.perf_counter()
                self.config.setup_seconds = {"validate": validated - start, "compile": compiled_at - validated,
                                             "apply": done - compiled_at}
                prog_id = self.fastpath.program_info()["program_id"]
                self.prog_fd = libbpf.check(libbpf.lib().bpf_prog_get_fd_by_id(prog_id), "program by id")
        return self

    def drops(self) -> int | None:
        if self.fastpath is None:
            return None
        return self.fastpath.counters().get(("drop", "blocklist_ip"), (0, 0))[0]

    def __exit__(self, *exc: object) -> None:
        if self.fastpath is not None:
            os.close(self.prog_fd)
            self.fastpath.close()
            with entered_netns(self.sb.host_ns):
                FastPath.detach(self.sb.host_if)
        if self._baseline is not None:
            self._baseline.close()


def run_generator(sb: Sandbox, count: int) -> dict[str, Any]:
    argv = in_netns(sb.client_ns, [sys.executable, "-m", "hyperion.generator", "--iface", sb.client_if,
                                   "--src", GENERATOR_SOURCE, "--dst", HOST_V6,
                                   "--dst-mac", sb.mac(sb.host_ns, sb.host_if), "--count", str(count)])
    # Pinned to CPU 0 so every run shares the same placement.
    out = subprocess.run(["taskset", "-c", "0", *argv], check=True, capture_output=True, text=True, timeout=300)
    return dict(json.loads(out.stdout))


def veth_xdp_drops(sb: Sandbox) -> int:
    """Frames the host veth dropped in XDP, summed over its queues (ethtool -S)."""
    out = sb.exec(sb.host_ns, ["ethtool", "-S", sb.host_if]).stdout
    return sum(int(line.split(":")[1]) for line in out.splitlines()
               if line.strip().startswith("rx_queue_") and line.split(":")[0].endswith("_xdp_drops"))


def measure(sb: Sandbox, config: Config, round_no: int, count: int) -> Sample:
    with Receiver(sb, config) as receiver:
        drops_before, veth_before = receiver.drops(), veth_xdp_drops(sb)
        cnt0, time0 = prog_counters(receiver.prog_fd)
        gen = run_generator(sb, count)
        time.sleep(0.2)  # the last frames drain from the veth ring
        cnt1, time1 = prog_counters(receiver.prog_fd)
        drops_after, veth_after = receiver.drops(), veth_xdp_drops(sb)
    counted = None if drops_before is None or drops_after is None else drops_after - drops_before
    return Sample(config.name, round_no, gen["sent"], veth_after - veth_before, gen["seconds"], counted,
                  cnt1 - cnt0, time1 - time0)


def summarize(samples: list[Sample], key: Callable[[Sample], float]) -> dict[str, float]:
    values = [key(s) for s in samples]
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run(sizes: list[int], rounds: int, count: int, out_dir: Path | None) -> dict[str, Any]:
    configs = [Config("xdp_drop (minimal)", None)] + [Config(f"hyperion, {n:,} blocked IPs", n) for n in sizes]
    samples: list[Sample] = []
    cost_samples: list[Sample] = []
    with Sandbox() as sb:
        for round_no in range(rounds):
            for config in configs:  # interleaved: drift over time hits every config alike
                samples.append(measure(sb, config, round_no, count))
        with bpf_stats():
            for config in configs:
                cost_samples.append(measure(sb, config, rounds, count))
    baseline = summarize([s for s in samples if s.config == configs[0].name], lambda s: s.rx_pps)["median"]
    rows = []
    for config in configs:
        mine = [s for s in samples if s.config == config.name]
        pps = summarize(mine, lambda s: s.rx_pps)
        rows.append({
            "config": config.name,
            "rx_pps": pps,
            "ns_per_pkt": summarize([s for s in cost_samples if s.config == config.name], lambda s: s.ns_per_pkt),
            "ratio_to_minimal": pps["median"] / baseline,
            "counters_agree": all(s.counted_drops in (None, s.received) for s in mine),
            "lost_before_receiver": summarize(mine, lambda s: s.sent - s.received),
            "delivered_fraction": summarize(mine, lambda s: s.received / s.sent),
            "policy_setup_seconds": config.setup_seconds,
        })
    report = {
        "machine": {"kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "method": {"rounds": rounds, "frames_per_sample": count, "frame": "IPv6/UDP 64 B",
                   "generator": "BPF_PROG_TEST_RUN live frames, XDP_TX on the client veth, CPU 0"},
        "results": rows,
        "samples": [asdict(s) | {"rx_pps": s.rx_pps, "ns_per_pkt": s.ns_per_pkt} for s in samples + cost_samples],
    }
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(report, indent=2))
    return report


def reload_and_scrape(sizes: list[int]) -> list[dict[str, float]]:
    """Policy reload time (validate, compile, apply) and /metrics render time per blocklist size."""
    rows = []
    with Sandbox() as sb:
        with entered_netns(sb.host_ns):
            fastpath = FastPath.attach(sb.host_if)
        try:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(FastPathCollector(fastpath))
            for size in sizes:
                addresses = blocklist_addresses(size)
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
                rows.append({"entries": size, "validate_s": validated - start, "compile_s": compiled_at - validated,
                             "apply_s": applied - compiled_at, "reload_total_s": applied - start,
                             "scrape_s": statistics.median(scrapes)})
        finally:
            fastpath.close()
            with entered_netns(sb.host_ns):
                FastPath.detach(sb.host_if)
    return rows


SLOWPATH_QUERY = "bench.blocked.test"


def _slowpath_rules(size: int) -> Any:
    """size DNS drop rules; the benchmark's query name matches the last one."""
    names = [f"n{i}.blocked.test" for i in range(size - 1)] + [SLOWPATH_QUERY]
    policy = Policy.model_validate({"slow_path": {"dns_rules": [{"match": n, "action": "drop"} for n in names]}})
    return compile_rules(policy).rules


def slowpath_compare(sizes: list[int], rounds: int, count: int) -> list[dict[str, Any]]:
    """Packets/s into AF_XDP: the minimal receive-and-drop loop vs Hyperion's inspection with N rules.

    Same sandbox, same fast path (udp/53 redirected), same socket setup; only the
    loop differs. Ground truth: the worker's own rx count over the generator's time.
    """
    configs: list[tuple[str, Any, bool]] = [("AF_XDP rxdrop (minimal)", _slowpath_rules(1), False)]
    configs += [(f"hyperion slow path, {n:,} DNS rules", _slowpath_rules(n), True) for n in sizes]
    samples: dict[str, list[float]] = {name: [] for name, _, _ in configs}
    with Sandbox() as sb:
        policy = Policy.model_validate({"fast_path": {"redirect_ports": [
            {"protocol": "udp", "port": 53, "on_failure": "drop"}]}})
        with entered_netns(sb.host_ns):
            fastpath = FastPath.attach(sb.host_if)
        try:
            fastpath.apply(PolicyCompiler(fastpath.abi, fastpath.capacities()).compile(policy))
            argv = in_netns(sb.client_ns, [sys.executable, "-m", "hyperion.generator", "--iface", sb.client_if,
                                           "--src", "192.0.2.2", "--dst", HOST_V4, "--dst-mac",
                                           sb.mac(sb.host_ns, sb.host_if), "--dport", "53", "--dns-name",
                                           SLOWPATH_QUERY, "--count", str(count)])
            for _ in range(rounds):
                for name, rules, inspect in configs:
                    with entered_netns(sb.host_ns):
                        queue = _slowpath.Queue(sb.host_if, 0, fastpath.maps["xsk_map"].fd, rules,
                                                events=False, inspect=inspect)
                    worker = threading.Thread(target=queue.run)
                    worker.start()
                    try:
                        gen = json.loads(subprocess.run(["taskset", "-c", "0", *argv], check=True,
                                                        capture_output=True, text=True, timeout=300).stdout)
                        time.sleep(0.2)
                    finally:
                        fastpath.maps["xsk_map"].delete(bytes(4))
                        queue.stop()
                        worker.join()
                        received = queue.stats()["rx"]
                        queue.close()
                    samples[name].append(received / gen["seconds"])
        finally:
            fastpath.close()
            with entered_netns(sb.host_ns):
                FastPath.detach(sb.host_if)
    baseline = statistics.median(samples[configs[0][0]])
    return [{"config": name, "rx_pps": summarize_values(values),
             "ratio_to_minimal": statistics.median(values) / baseline} for name, values in samples.items()]


DNS_SERVICE_POLICY = """
fast_path:
  redirect_ports: [{protocol: udp, port: 53, on_failure: drop}]
slow_path:
  dns_rules: [{match: "evil.test", action: drop}]
"""


def _dnsperf(sb: Sandbox, queries: Path, seconds: int) -> dict[str, float]:
    out = sb.exec(sb.client_ns, ["dnsperf", "-s", HOST_V4, "-d", str(queries), "-l", str(seconds), "-v",
                                 "-q", "64", "-t", "2"]).stdout
    latencies = sorted(float(line.split()[-1]) for line in out.splitlines() if line.startswith("> "))
    qps = next(float(line.split(":")[1]) for line in out.splitlines() if "Queries per second" in line)
    lost = next(float(line.split(":")[1].split("(")[0]) for line in out.splitlines() if "Queries lost" in line)
    if not latencies:
        return {"qps": qps, "lost": lost, "p50_ms": 0.0, "p99_ms": 0.0}
    return {"qps": qps, "lost": lost, "p50_ms": latencies[len(latencies) // 2] * 1e3,
            "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3}


def dns_service_compare(rounds: int, seconds: int) -> list[dict[str, Any]]:
    """dnsperf against dnsmasq, without Hyperion and through it (slow path inspecting every query)."""
    results: dict[str, list[dict[str, float]]] = {"without hyperion": [], "through hyperion slow path": []}
    with Sandbox() as sb, tempfile.TemporaryDirectory() as tmp:
        queries = Path(tmp) / "queries.txt"
        queries.write_text("good.test A\n")
        policy = Path(tmp) / "policy.yaml"
        policy.write_text(DNS_SERVICE_POLICY)
        server = sb.popen(sb.host_ns, ["dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--bind-interfaces",
                                       f"--listen-address={HOST_V4}", "--pid-file", "--user=root",
                                       "--address=/good.test/203.0.113.80", "--cache-size=1000"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            for _ in range(rounds):
                results["without hyperion"].append(_dnsperf(sb, queries, seconds))
                daemon = sb.popen(sb.host_ns, [sys.executable, "-m", "hyperion.cli", "run", "--iface", sb.host_if,
                                               "--policy", str(policy), "--no-metrics"], stderr=subprocess.DEVNULL)
                try:
                    deadline = time.monotonic() + 20
                    while time.monotonic() < deadline and sb.exec(
                            sb.client_ns, ["dig", "+time=1", "+tries=1", f"@{HOST_V4}", "good.test"],
                            check=False).returncode != 0:
                        time.sleep(0.2)
                    results["through hyperion slow path"].append(_dnsperf(sb, queries, seconds))
                finally:
                    daemon.terminate()
                    daemon.wait(timeout=20)
        finally:
            server.terminate()
            server.wait(timeout=10)
    baseline = statistics.median(r["qps"] for r in results["without hyperion"])
    return [{"config": name, "qps": summarize_values([r["qps"] for r in runs]),
             "p50_ms": statistics.median(r["p50_ms"] for r in runs),
             "p99_ms": statistics.median(r["p99_ms"] for r in runs),
             "lost": sum(r["lost"] for r in runs),
             "ratio": statistics.median(r["qps"] for r in runs) / baseline} for name, runs in results.items()]


def summarize_values(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def print_report(report: dict[str, Any]) -> None:
    print(f"{'configuration':<32} {'rx Mpps (median, min-max)':>28} {'ns/pkt':>8} {'ratio':>7} {'agree':>6}")
    for row in report["results"]:
        p = row["rx_pps"]
        print(f"{row['config']:<32} {p['median'] / 1e6:>10.3f} ({p['min'] / 1e6:.3f}-{p['max'] / 1e6:.3f})"
              f"{row['ns_per_pkt']['median']:>12.1f} {row['ratio_to_minimal']:>7.2f} {row['counters_agree']!s:>6}")
    for row in report["results"]:
        if row["policy_setup_seconds"]:
            s = row["policy_setup_seconds"]
            print(f"policy load, {row['config']}: validate {s['validate']:.2f} s, compile {s['compile']:.2f} s, "
                  f"apply {s['apply']:.2f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hyperion-bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and counts (smoke run, < 1 min)")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--count", type=int, help="frames per sample")
    parser.add_argument("--out", type=Path, help="directory for results.json")
    parser.add_argument("--reload", action="store_true", help="only policy reload and /metrics scrape times")
    parser.add_argument("--slowpath", action="store_true", help="only AF_XDP: minimal loop vs slow path")
    parser.add_argument("--dns", action="store_true", help="only dnsperf against dnsmasq, with and without")
    args = parser.parse_args(argv)
    if args.dns:
        print(f"{'configuration':<30} {'queries/s (median, min-max)':>30} {'p50 ms':>8} {'p99 ms':>8} {'lost':>6}"
              f" {'ratio':>6}")
        for row in dns_service_compare(args.rounds or (1 if args.quick else 3), 3 if args.quick else 10):
            q = row["qps"]
            print(f"{row['config']:<30} {q['median']:>12.0f} ({q['min']:.0f}-{q['max']:.0f}) {row['p50_ms']:>8.3f}"
                  f" {row['p99_ms']:>8.3f} {row['lost']:>6.0f} {row['ratio']:>6.2f}")
        return 0
    if args.slowpath:
        sizes = [1, 1_000] if args.quick else [1, 1_000, 100_000]
        rows = slowpath_compare(sizes, args.rounds or (1 if args.quick else 3), args.count or
                                (50_000 if args.quick else 1_000_000))
        print(f"{'configuration':<40} {'rx kpps (median, min-max)':>28} {'ratio':>7}")
        for row in rows:
            p = row["rx_pps"]
            print(f"{row['config']:<40} {p['median'] / 1e3:>10.1f} ({p['min'] / 1e3:.1f}-{p['max'] / 1e3:.1f})"
                  f"{row['ratio_to_minimal']:>12.2f}")
        return 0
    if args.reload:
        sizes = [1_000, 100_000] if args.quick else [1_000, 100_000, 1_000_000]
        print(f"{'entries':>10} {'validate s':>11} {'compile s':>10} {'apply s':>8} {'reload s':>9} {'scrape ms':>10}")
        for row in reload_and_scrape(sizes):
            print(f"{row['entries']:>10,} {row['validate_s']:>11.3f} {row['compile_s']:>10.3f} {row['apply_s']:>8.3f}"
                  f" {row['reload_total_s']:>9.3f} {row['scrape_s'] * 1000:>10.1f}")
        return 0
    sizes = [1, 10_000] if args.quick else [1, 10_000, 1_000_000]
    rounds = args.rounds or (2 if args.quick else 5)
    count = args.count or (200_000 if args.quick else 2_000_000)
    report = run(sizes, rounds, count, args.out)
    print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
