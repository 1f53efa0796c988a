"""Smoke run of the benchmarks (`make bench-quick`): every section must produce a complete report.

No speed is asserted (that is the benchmark's job, not a test's). What is asserted:
results.json has its schema's keys and every section ran; each sample has its ground
truth and telemetry; Hyperion's own counters equal the receiving side's ground truth;
REPORT.md has the tables and the targets; the plots exist and are PNG files.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hyperion.lab.benchmarks.report import PLOTS, RESULT_KEYS, SCHEMA
from hyperion.lab.benchmarks.sections import DNS_HIT_EVERY, QUICK, SECTIONS, DnsTier, dns_configs
from tests.support.kernel import IN_CI

TELEMETRY_KEYS = {"seconds", "cpu", "interrupts", "softirqs", "softnet", "ethtool", "bpf", "xsk"}


@pytest.fixture(scope="module")
def quick_report(kernel: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    for tool in ("dnsperf", "dnsmasq", "dnsdist", "ip6tables", "nft"):
        if shutil.which(tool) is None:
            if IN_CI:
                pytest.fail(f"{tool} is not installed (scripts/setup.sh installs it)")
            pytest.skip(f"{tool} is not installed")
    out = tmp_path_factory.mktemp("bench")
    # What `make bench-quick` runs.
    proc = subprocess.run([sys.executable, "-m", "hyperion.lab.bench", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_results_json_has_the_schema_and_every_section(kernel: None, quick_report: Path) -> None:
    results = json.loads((quick_report / "results.json").read_text())
    assert set(RESULT_KEYS) <= set(results)
    assert results["schema"] == SCHEMA and results["quick"] is True
    assert {"kernel", "cpus", "cpu_model", "memory_gib", "python", "hyperion_commit"} <= set(results["machine"])
    assert len(results["load"]["before"]) == 3 and len(results["load"]["after"]) == 3
    assert list(results["sections"]) == list(SECTIONS)
    for name, section in results["sections"].items():
        assert "error" not in section, f"{name}: {section.get('error')}"
        assert section["configs"] and section["samples"] and section["method"], name
    assert results["targets"] and all({"target", "goal", "measured", "met"} <= set(t) for t in results["targets"])


def test_samples_carry_ground_truth_and_telemetry(kernel: None, quick_report: Path) -> None:
    sections = json.loads((quick_report / "results.json").read_text())["sections"]
    for name in ("drop", "passthrough", "slowpath", "scale"):
        for sample in sections[name]["samples"]:
            assert set(sample["telemetry"]) >= TELEMETRY_KEYS, name
            assert len(sample["telemetry"]["cpu"]) == len(sample["telemetry"]["softnet"]) >= 1
            assert sample["sent"] > 0 and 0 < sample["received"] <= sample["sent"] + 10, (name, sample["config"])
    drop = sections["drop"]
    names = [c["name"] for c in drop["configs"]]
    assert names[:4] == ["kernel stack, no filter (closed UDP port)", "iptables raw PREROUTING drop",
                         "nftables netdev ingress drop", "XDP_DROP (minimal)"]
    for config in drop["configs"] + sections["passthrough"]["configs"]:
        assert config["counters_agree"] is True, config["name"]
        assert config["rx_pps"]["median"] > 0
    # The cost pass ran with bpf stats on: every program has a cost per packet.
    for config in drop["configs"][3:]:
        assert config["ns_per_pkt"]["median"] > 0, config["name"]
    for config in sections["scale"]["configs"]:
        assert config["counters_agree"] is True and config["ns_per_pkt"]["median"] > 0
        assert config["map_memory"]["total_bytes"] >= config["map_memory"]["inner_bytes"] > 0
    for config in sections["slowpath"]["configs"]:
        assert {"xdp_rx_ring_full", "xdp_rx_dropped", "xdp_rx_fill_ring_empty_descs"} <= set(config["xsk"])
    dns = sections["dns"]["configs"]
    configs = dns_configs(QUICK)
    assert [c["name"] for c in dns] == [c.name for c in configs]
    assert [c["tier"] for c in dns] == [c.tier.value for c in configs]
    assert {c.tier for c in configs} == set(DnsTier)
    assert all(c["qps"]["median"] > 0 for c in dns)
    hits = QUICK.dns_queries // DNS_HIT_EVERY
    for sample in sections["dns"]["samples"]:
        # A fixed count per run (dnsperf -n 1): every query completed or lost, none added.
        assert sample["completed"] + sample["lost"] == QUICK.dns_queries, sample["config"]
        # The hits get NXDOMAIN (from XDP, from dnsdist, or from dnsmasq's own --address without a filter).
        assert 0 < sample["rcodes"].get("NXDOMAIN", 0) <= hits, sample["config"]
    for config in dns:
        if config["tier"] == "xdp":
            # Name rules only: the DNS class redirects nothing, and the daemon runs no worker (so no
            # slow-path series either).
            assert config["slowpath"].get("hyperion_slowpath_inspected_total", 0) == 0, config["name"]
        if config["tier"] == "slow_path":
            # The regex rules put the queries no name rule decided (the misses) into the workers.
            assert 0 < config["slowpath"]["hyperion_slowpath_inspected_total"] <= QUICK.dns_queries - hits
    for config in dns:
        # dnsmasq answered in every configuration; a filter process ran where there is one.
        assert config["process_cpu_pct"]["dnsmasq"] > 0, config["name"]
        assert ("filter" in config["process_cpu_pct"]) == (config["tier"] not in ("none", "xdp_pass")), config["name"]
    largest_xdp = next(c for c in reversed(dns) if c["tier"] == "xdp")
    assert [t["goal"] for t in largest_xdp["targets"]] == [0.95, 1.10, 1.0]
    assert all(len(c["targets"]) == 1 for c in dns if c["tier"] == "slow_path")
    cost = sections["dnscost"]["configs"]
    assert [(c["size"], c["labels"]) for c in cost] == [(n, k) for n in QUICK.dnscost_sizes for k in (2, 4, 8)]
    for config in cost:
        # In the DNS class the stage judged every frame (dns_no_match); outside it, none.
        assert config["counters_agree"] is True, config["name"]
        assert config["ns_per_pkt"]["median"] > 0 and config["outside_ns_per_pkt"]["median"] > 0
    assert cost[-1]["dns_map_bytes"] > cost[0]["dns_map_bytes"] > 0


def test_report_has_the_tables_and_the_plots(kernel: None, quick_report: Path) -> None:
    report = (quick_report / "REPORT.md").read_text()
    for heading in ("## Machine", "## Method", "## Targets", "## Drop:", "## Pass-through:", "## Slow path:",
                    "## DNS service:", "## XDP DNS stage:", "## Scale:", "## Policy reload"):
        assert heading in report, heading
    for column in ("Mpps, median (min-max)", "program ns/pkt (bpf_stats)", "ratio to XDP_DROP",
                   "softnet processed, dropped, squeezed", "XDP_STATISTICS rx_ring_full", "queries/s",
                   "policy maps memory", "/metrics render ms", "qps vs dnsdist", "DNS stage ns/pkt",
                   "target (issue)"):
        assert column in report, column
    for plot in PLOTS.values():
        path = quick_report / plot
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot
        assert f"]({plot})" in report
