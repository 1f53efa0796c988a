"""Benchmarks: drop, pass-through, slow path, DNS service, XDP DNS stage cost, scale, reload; one report.

    python -m hyperion.lab.bench --out DIR          (make bench; hyperion bench --out DIR)
    python -m hyperion.lab.bench --quick --out DIR  (make bench-quick: every section, small, < 2 min)

Each section runs its configurations interleaved (A B C A B C ...), several rounds, and
reports medians with min-max, with system telemetry captured around every sample.
DIR receives results.json (machine, kernel, plan, every raw sample), REPORT.md (tables
with absolute figures, ratios to the baselines and the targets) and PNG plots.
The sections are in hyperion.benchmarks.sections; the report in hyperion.benchmarks.report.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

# BaselineProgram: a minimal XDP program attached natively (tests/test_e2e.py uses it from here).
from hyperion.lab.benchmarks.core import BaselineProgram, BaselineXdp, BenchError
from hyperion.lab.benchmarks.telemetry import load_average

MAX_LOAD = 1.5          # a full run waits (bounded) for the 1-minute load average to fall below this
# CPU 1 is idle in the drop section but for other processes (generator and NAPI run on CPU 0).
FOREIGN_CPU1_BUSY_PCT = 25.0
LOAD_WAIT_SECONDS = 600
LOAD_POLL_SECONDS = 30

__all__ = ["BaselineProgram", "BaselineXdp", "main", "run_benchmarks"]


def _tool_version(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    proc = subprocess.run(argv, capture_output=True, text=True)
    text = (proc.stdout or proc.stderr).strip().splitlines()
    return text[0][:60] if text else None


def machine_info() -> dict[str, Any]:
    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.machine())
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
    virt = subprocess.run(["systemd-detect-virt"], capture_output=True, text=True).stdout.strip() \
        if shutil.which("systemd-detect-virt") else None
    repo = Path(__file__).resolve().parents[3]
    commit = subprocess.run(["git", "-C", str(repo), "describe", "--always", "--dirty"], capture_output=True,
                            text=True).stdout.strip() if (repo / ".git").exists() else "unknown"
    tools = {name: _tool_version(argv) for name, argv in (
        ("iptables", ["iptables", "--version"]), ("nft", ["nft", "--version"]), ("dnsperf", ["dnsperf", "-h"]),
        ("dnsmasq", ["dnsmasq", "--version"]), ("dnsdist", ["dnsdist", "--version"]))}
    return {"kernel": platform.release(), "kernel_version": platform.version(), "cpus": os.cpu_count(),
            "cpu_model": cpu_model, "memory_gib": mem_kib / 2**20, "virtualization": virt,
            "python": platform.python_version(), "hyperion_commit": commit or "unknown",
            "tools": {k: v for k, v in tools.items() if v}}


def wait_for_low_load(max_load: float, wait_seconds: float, say: Any) -> float:
    """Waits (bounded) until the 1-minute load average is below max_load; returns the seconds waited."""
    start = time.monotonic()
    while load_average()[0] > max_load and time.monotonic() - start < wait_seconds:
        say(f"load average {load_average()[0]:.2f} > {max_load}; waiting {LOAD_POLL_SECONDS} s")
        time.sleep(LOAD_POLL_SECONDS)
    return time.monotonic() - start


def run_benchmarks(out_dir: Path, quick: bool = False, only: Sequence[str] | None = None,
                   max_load: float | None = None, command: str = "", quiet: bool = False) -> dict[str, Any]:
    """Runs the sections, writes results.json, REPORT.md and the plots to out_dir; returns the results."""
    from hyperion.lab.benchmarks.report import SCHEMA, evaluate_targets, write_report
    from hyperion.lab.benchmarks.sections import FULL, QUICK, SECTIONS

    def say(message: str) -> None:
        if not quiet:
            print(f"[bench] {message}", file=sys.stderr, flush=True)

    names = list(only) if only else list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise BenchError(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    if os.geteuid() != 0:
        raise BenchError("the benchmarks need root (network namespaces, XDP, BPF)")
    plan = QUICK if quick else FULL
    waited = wait_for_low_load(max_load, LOAD_WAIT_SECONDS, say) if max_load else 0.0
    load_before = load_average()
    started = time.monotonic()
    sections: dict[str, Any] = {}
    for name in names:
        say(f"section {name}")
        t0 = time.monotonic()
        try:
            sections[name] = SECTIONS[name](plan, say)
        except Exception as exc:  # one broken section must not lose the others
            say(f"section {name} failed: {exc}")
            sections[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        sections[name]["seconds"] = time.monotonic() - t0
    load_after = load_average()
    threshold = max_load or MAX_LOAD
    reasons = []
    if load_before[0] > threshold:
        reasons.append(f"1-minute load average {load_before[0]:.2f} at the start, above {threshold}")
    cpu1 = _drop_cpu1_busy(sections.get("drop", {}))
    if cpu1 is not None and cpu1 > FOREIGN_CPU1_BUSY_PCT:
        reasons.append(f"CPU 1, which this benchmark leaves idle in the drop section, was {cpu1:.0f}% busy "
                       "(median over its samples)")
    results = {
        "schema": SCHEMA,
        "generated_at": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command or f"python -m hyperion.lab.bench{' --quick' if quick else ''} --out {out_dir}",
        "quick": quick,
        "machine": machine_info(),
        "load": {"before": load_before, "after": load_after, "max_load": threshold, "waited_s": waited,
                 "drop_section_cpu1_busy_pct": cpu1, "overlapped": bool(reasons), "overlap_reason": "; ".join(reasons)},
        "plan": asdict(plan),
        "sections": sections,
        "targets": evaluate_targets(sections),
        "duration_s": time.monotonic() - started,
    }
    write_report(results, out_dir)
    say(f"wrote {out_dir}/REPORT.md, results.json and plots in {results['duration_s']:.0f} s")
    return results


def _drop_cpu1_busy(drop: dict[str, Any]) -> float | None:
    values = [s["telemetry"]["cpu"][1]["busy_pct"] for s in drop.get("samples", [])
              if s.get("phase") == "throughput" and len(s.get("telemetry", {}).get("cpu", [])) > 1]
    return statistics.median(values) if values else None


def render(out_dir: Path) -> None:
    """Writes REPORT.md and the plots again from out_dir/results.json (no measurement)."""
    from hyperion.lab.benchmarks.report import write_report

    write_report(json.loads((out_dir / "results.json").read_text()), out_dir)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("bench-out"),
                        help="directory for results.json, REPORT.md and the plots (default bench-out)")
    parser.add_argument("--quick", action="store_true", help="every section at small sizes (smoke run, < 2 min)")
    parser.add_argument("--only",
                        help="comma-separated sections: drop,passthrough,slowpath,delivery,dns,dnscost,scale,reload")
    parser.add_argument("--max-load", type=float,
                        help=f"wait (at most {LOAD_WAIT_SECONDS} s) for the load average to fall below this first "
                             f"(default {MAX_LOAD} for a full run, no wait for --quick)")
    parser.add_argument("--render", action="store_true",
                        help="only write REPORT.md and the plots again from --out's results.json")


def run_from_args(args: argparse.Namespace, command: str) -> int:
    if args.render:
        render(args.out)
        return 0
    max_load = args.max_load if args.max_load is not None else (None if args.quick else MAX_LOAD)
    results = run_benchmarks(args.out, quick=args.quick, only=args.only.split(",") if args.only else None,
                             max_load=max_load, command=command)
    print((args.out / "REPORT.md").read_text())
    failed = [name for name, s in results["sections"].items() if "error" in s]
    if failed:
        print(f"hyperion-bench: section(s) failed: {', '.join(failed)} (see REPORT.md)", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hyperion-bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    command = "python -m hyperion.lab.bench " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        return run_from_args(args, command.strip())
    except BenchError as exc:
        print(f"hyperion-bench: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
