"""System telemetry around one benchmark sample: before/after snapshots and their deltas.

Captured for every sample: per-CPU /proc/stat (utilisation by kind), /proc/interrupts
and /proc/softirqs (NET_RX, NET_TX), /proc/net/softnet_stat (processed, dropped,
time_squeeze), `ethtool -S` of the interfaces under test (in their namespaces),
the run count and run time of the BPF programs under test (non-zero only while
kernel.bpf_stats_enabled=1), and, when given, AF_XDP sockets' XDP_STATISTICS.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyperion.kernel import libbpf
from hyperion.lab.sandbox import in_netns

_STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
_USER_HZ = os.sysconf("SC_CLK_TCK")


def read_cpu_times() -> list[list[int]]:
    """Per-CPU jiffies by _STAT_FIELDS, CPU order."""
    rows = []
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            rows.append([int(v) for v in line.split()[1:1 + len(_STAT_FIELDS)]])
    return rows


def read_per_cpu_table(path: str) -> dict[str, list[int]]:
    """/proc/interrupts or /proc/softirqs: row label -> per-CPU counts."""
    lines = Path(path).read_text().splitlines()
    ncpu = len(lines[0].split())
    table = {}
    for line in lines[1:]:
        label, _, rest = line.partition(":")
        values = rest.split()[:ncpu]
        if len(values) == ncpu and all(v.isdigit() for v in values):
            table[label.strip()] = [int(v) for v in values]
    return table


def read_softnet() -> list[tuple[int, int, int]]:
    """Per-CPU (processed, dropped, time_squeeze) from /proc/net/softnet_stat."""
    return [(int(c[0], 16), int(c[1], 16), int(c[2], 16))
            for c in (line.split() for line in Path("/proc/net/softnet_stat").read_text().splitlines())]


def ethtool_stats(netns: str, ifname: str) -> dict[str, int]:
    proc = subprocess.run(in_netns(netns, ["ethtool", "-S", ifname]), capture_output=True, text=True)
    stats = {}
    for line in proc.stdout.splitlines()[1:]:
        name, _, value = line.partition(":")
        with contextlib.suppress(ValueError):
            stats[name.strip()] = int(value)
    return stats


def prog_counters(prog_fd: int) -> tuple[int, int]:
    info = libbpf.prog_info(prog_fd)
    return int(info.run_cnt), int(info.run_time_ns)


@dataclass
class Probes:
    """What to read besides the system-wide files."""

    interfaces: Sequence[tuple[str, str]] = ()          # (netns, ifname)
    programs: dict[str, int] = field(default_factory=dict)  # label -> prog fd
    xsk: Callable[[], dict[str, dict[str, int]]] | None = None  # queue label -> XDP_STATISTICS


@dataclass
class Snapshot:
    taken: float
    cpu: list[list[int]]
    interrupts: dict[str, list[int]]
    softirqs: dict[str, list[int]]
    softnet: list[tuple[int, int, int]]
    ethtool: dict[str, dict[str, int]]
    programs: dict[str, tuple[int, int]]
    xsk: dict[str, dict[str, int]]


def snapshot(probes: Probes) -> Snapshot:
    return Snapshot(
        taken=time.monotonic(),
        cpu=read_cpu_times(),
        interrupts=read_per_cpu_table("/proc/interrupts"),
        softirqs=read_per_cpu_table("/proc/softirqs"),
        softnet=read_softnet(),
        ethtool={ifname: ethtool_stats(ns, ifname) for ns, ifname in probes.interfaces},
        programs={label: prog_counters(fd) for label, fd in probes.programs.items()},
        xsk=probes.xsk() if probes.xsk else {},
    )


def delta(before: Snapshot, after: Snapshot) -> dict[str, Any]:
    """JSON-ready differences: only what changed, per CPU where the kernel keeps it per CPU."""
    seconds = after.taken - before.taken
    cpus = []
    for index, (b, a) in enumerate(zip(before.cpu, after.cpu, strict=False)):
        d = [y - x for x, y in zip(b, a, strict=False)]
        total = sum(d) or 1
        kinds = dict(zip(_STAT_FIELDS, d, strict=False))
        cpus.append({"cpu": index, "busy_pct": 100.0 * (total - kinds["idle"] - kinds["iowait"]) / total,
                     **{f"{k}_pct": 100.0 * kinds[k] / total for k in ("user", "system", "softirq", "irq")},
                     "jiffies": total})
    interrupts_per_cpu = [0] * len(before.cpu)
    for label, values in after.interrupts.items():
        old = before.interrupts.get(label, [0] * len(values))
        for cpu, (x, y) in enumerate(zip(old, values, strict=False)):
            if cpu < len(interrupts_per_cpu):
                interrupts_per_cpu[cpu] += y - x
    busiest = sorted(((sum(v) - sum(before.interrupts.get(k, [0] * len(v))), k) for k, v in after.interrupts.items()),
                     reverse=True)[:5]
    softirqs = {k: [y - x for x, y in zip(before.softirqs.get(k, v), v, strict=False)]
                for k, v in after.softirqs.items() if k in ("NET_RX", "NET_TX")}
    softnet = [{"cpu": i, "processed": a[0] - b[0], "dropped": a[1] - b[1], "time_squeeze": a[2] - b[2]}
               for i, (b, a) in enumerate(zip(before.softnet, after.softnet, strict=False))]
    ethtool = {}
    for ifname, counters in after.ethtool.items():
        was = before.ethtool.get(ifname, {})
        ethtool[ifname] = {k: v - was.get(k, 0) for k, v in counters.items() if v != was.get(k, 0)}
    programs = {}
    for label, (cnt, ns) in after.programs.items():
        cnt0, ns0 = before.programs.get(label, (0, 0))
        runs, run_ns = cnt - cnt0, ns - ns0
        programs[label] = {"run_cnt": runs, "run_time_ns": run_ns, "ns_per_run": run_ns / runs if runs else None}
    xsk = {}
    for queue, counters in after.xsk.items():
        was = before.xsk.get(queue, {})
        xsk[queue] = {k: v - was.get(k, 0) for k, v in counters.items()}
    return {"seconds": seconds, "cpu": cpus, "interrupts": {"per_cpu": interrupts_per_cpu,
                                                            "busiest": {k: n for n, k in busiest if n}},
            "softirqs": softirqs, "softnet": softnet, "ethtool": ethtool, "bpf": programs, "xsk": xsk}


@contextlib.contextmanager
def captured(probes: Probes) -> Iterator[dict[str, Any]]:
    """Fills the yielded dict with the telemetry delta of the block."""
    result: dict[str, Any] = {}
    before = snapshot(probes)
    yield result
    result.update(delta(before, snapshot(probes)))


def load_average() -> list[float]:
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


def jiffies_to_seconds(jiffies: int) -> float:
    return jiffies / _USER_HZ
