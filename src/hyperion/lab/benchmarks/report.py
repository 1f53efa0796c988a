"""results.json, REPORT.md and the plots of a benchmark run."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCHEMA = "hyperion-bench/1"
RESULT_KEYS = ("schema", "generated_at", "command", "quick", "machine", "load", "plan", "sections", "targets",
               "duration_s")
PLOTS = {"drop": "drop.png", "passthrough": "passthrough.png", "slowpath": "slowpath.png", "dns": "dns.png",
         "dnscost": "dnscost.png", "scale": "scale.png", "reload": "reload.png"}


# ---- targets ---------------------------------------------------------------------------------


def _row(section: dict[str, Any] | None, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    for row in (section or {}).get("configs", []):
        if predicate(row):
            return dict(row)
    return None


def _pps(row: dict[str, Any] | None) -> float | None:
    return float(row["rx_pps"]["median"]) if row and row.get("rx_pps") else None


def _target(name: str, measured: float | None, target: float, unit: str, detail: str,
            at_most: bool = False) -> dict[str, Any]:
    """at_most: the goal is a ceiling (latency ratios, costs), else a floor."""
    met = measured is not None and (measured <= target if at_most else measured >= target)
    return {"target": name, "goal": target, "measured": measured, "unit": unit, "met": met, "at_most": at_most,
            "missed_by_pct": None if met or measured is None else 100.0 * abs(target - measured) / target,
            "detail": detail}


def evaluate_targets(sections: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets against this run's medians; where missed, by how much (relative to the goal)."""
    targets = []
    drop = sections.get("drop")
    minimal = _pps(_row(drop, lambda r: r["name"] == "XDP_DROP (minimal)"))
    nft = _pps(_row(drop, lambda r: r.get("kind") == "nftables"))
    for row in (drop or {}).get("configs", []):
        if row.get("kind") != "hyperion" or not row.get("rx_pps"):
            continue
        pps = _pps(row)
        assert pps is not None
        cost = row.get("ns_per_pkt") or {}
        base_cost = (_row(drop, lambda r: r["name"] == "XDP_DROP (minimal)") or {}).get("ns_per_pkt") or {}
        cost_note = (f"; program cost {cost['median']:.0f} vs {base_cost['median']:.0f} ns/pkt"
                     if cost and base_cost else "")
        if minimal:
            targets.append(_target(f"drop {row['name']} >= 90% of minimal XDP_DROP", pps / minimal, 0.9, "ratio",
                                   f"{pps / 1e6:.2f} vs {minimal / 1e6:.2f} Mpps{cost_note}"))
        if nft:
            targets.append(_target(f"drop {row['name']} >= 3x nftables netdev", pps / nft, 3.0, "ratio",
                                   f"{pps / 1e6:.2f} vs {nft / 1e6:.2f} Mpps"))
    passthrough = sections.get("passthrough")
    base = _pps(_row(passthrough, lambda r: r["name"] == "XDP_PASS (minimal)"))
    hyp = _row(passthrough, lambda r: r.get("kind") == "hyperion")
    if base and _pps(hyp):
        pps = _pps(hyp)
        assert pps is not None and hyp is not None
        targets.append(_target("pass-through >= 90% of minimal XDP_PASS", pps / base, 0.9, "ratio",
                               f"{hyp['name']}: {pps / 1e6:.3f} vs {base / 1e6:.3f} Mpps"))
    slow = sections.get("slowpath")
    rows = [r for r in (slow or {}).get("configs", []) if r.get("kind") == "hyperion"]
    if rows and rows[-1].get("ratio") is not None:
        targets.append(_target(f"slow path with the most rules ({rows[-1]['name']}) >= 50% of minimal AF_XDP loop",
                               rows[-1]["ratio"], 0.5, "ratio",
                               f"{_pps(rows[-1]) or 0:,.0f} vs {_pps((slow or {})['configs'][0]) or 0:,.0f} pps"))
    dns = sections.get("dns")
    base_row = _row(dns, lambda r: r["name"] == (dns or {}).get("baseline")) or {}
    dnsdist_row = _row(dns, lambda r: r.get("tier") == "dnsdist") or {}
    # The DNS-in-the-kernel issue's targets, as the section computed them per configuration.
    for row in (dns or {}).get("configs", []):
        for t in row.get("targets", []):
            detail = (f"{row['qps']['median']:,.0f} vs {base_row.get('qps', {}).get('median', 0):,.0f} queries/s "
                      f"(dnsdist {dnsdist_row.get('qps', {}).get('median', 0):,.0f}); p99 "
                      f"{row['p99_ms']['median']:.2f} vs {base_row.get('p99_ms', {}).get('median', 0):.2f} ms")
            targets.append(_target(t["target"], t["measured"], t["goal"], "ratio", detail, at_most=t["at_most"]))
    cost = sections.get("dnscost")
    cost_rows = [r for r in (cost or {}).get("configs", []) if r.get("labels") == 4]
    if cost_rows:
        row = max(cost_rows, key=lambda r: r["size"])
        inside = (row.get("ns_per_pkt") or {}).get("median")
        outside = (row.get("outside_ns_per_pkt") or {}).get("median")
        targets.append(_target(f"XDP DNS stage, 4-label name at {row['size']:,} rules <= 100 ns/packet",
                               row.get("stage_ns_per_pkt"), 100.0, "ns", f"program {inside or 0:.0f} ns in the DNS "
                               f"class vs {outside or 0:.0f} ns outside (bpf_stats)", at_most=True))
    return targets


# ---- formatting ------------------------------------------------------------------------------


def _mpps(s: dict[str, float] | None) -> str:
    if not s:
        return "-"
    return f"{s['median'] / 1e6:.3f} ({s['min'] / 1e6:.3f}-{s['max'] / 1e6:.3f})"


def _ns(s: dict[str, float] | None) -> str:
    if not s:
        return "-"
    return f"{s['median']:.0f} ({s['min']:.0f}-{s['max']:.0f})"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _cpu(row: dict[str, Any], cpu: int) -> str:
    cpus = row.get("telemetry", {}).get("cpu", [])
    if cpu >= len(cpus):
        return "-"
    c = cpus[cpu]
    return f"{c['busy_pct']:.0f}% ({c['softirq_pct']:.0f}% si)"


def _softnet(row: dict[str, Any]) -> str:
    cpus = row.get("telemetry", {}).get("cpu", [])
    if not cpus:
        return "-"
    return " / ".join(f"{c['softnet_processed']:,.0f}, {c['softnet_dropped']:,.0f}, {c['softnet_time_squeeze']:,.0f}"
                      for c in cpus)


def _bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def _packet_table(section: dict[str, Any], baseline_label: str) -> list[str]:
    rows = []
    for r in section["configs"]:
        if r.get("unavailable"):
            rows.append([r["name"], f"not run: {r['unavailable']}"] + ["-"] * 9)
            continue
        rows.append([r["name"], _mpps(r.get("rx_pps")), _ratio(r.get("ratio")), _ns(r.get("ns_per_pkt")),
                     f"{r['pipeline_ns_per_pkt']:.0f}" if r.get("pipeline_ns_per_pkt") else "-",
                     f"{r['added_ns_per_pkt']:+.0f}" if r.get("added_ns_per_pkt") is not None else "-",
                     f"{r['delivered_fraction']['median']:.3f}" if r.get("delivered_fraction") else "-",
                     _cpu(r, 0), _cpu(r, 1), _softnet(r),
                     "yes" if r.get("counters_agree") else "NO" if "counters_agree" in r else "-"])
    return _table(["configuration", "Mpps, median (min-max)", f"ratio to {baseline_label}",
                   "program ns/pkt (bpf_stats)", "pipeline ns/pkt", f"vs {baseline_label}, ns/pkt", "received/sent",
                   "CPU0 busy (softirq)",
                   "CPU1 busy (softirq)", "softnet processed, dropped, squeezed (CPU0 / CPU1)",
                   "own counter = ground truth"], rows)


def _stability(section: dict[str, Any]) -> str:
    """Relative spread (max-min)/median of Mpps and of ns/pkt over the XDP configurations."""
    mpps, cost = [], []
    for r in section.get("configs", []):
        if r.get("rx_pps") and r["rx_pps"]["n"] > 1 and r.get("kind", "").startswith(("xdp", "hyperion")):
            mpps.append((r["rx_pps"]["max"] - r["rx_pps"]["min"]) / r["rx_pps"]["median"])
        if r.get("ns_per_pkt") and r["ns_per_pkt"]["n"] > 1:
            cost.append((r["ns_per_pkt"]["max"] - r["ns_per_pkt"]["min"]) / r["ns_per_pkt"]["median"])
    if not mpps or not cost:
        return "(one round only: no spread to compare)"
    return ("Stability: median relative spread (max-min)/median over the XDP configurations: "
            f"Mpps {100 * statistics.median(mpps):.0f}%, program ns/pkt {100 * statistics.median(cost):.0f}%.")


def render_markdown(results: dict[str, Any], plots: dict[str, str]) -> str:
    m, load = results["machine"], results["load"]
    sections = results["sections"]
    out = [f"# Hyperion benchmark report{' (quick smoke run)' if results['quick'] else ''}", "",
           f"Generated {results['generated_at']} by `{results['command']}` in {results['duration_s']:.0f} s.", "",
           "## Machine", "",
           f"- kernel {m['kernel']}, {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']:.0f} GiB, "
           f"{m.get('virtualization') or 'unknown virtualization'}",
           f"- Python {m['python']}, Hyperion {m['hyperion_commit']}; tools: "
           + ", ".join(f"{k} {v}" for k, v in m.get("tools", {}).items()),
           f"- load average before {load['before'][0]:.2f}, after {load['after'][0]:.2f}"
           + (f" (waited {load['waited_s']:.0f} s for it to drop below {load['max_load']})" if load.get("waited_s")
              else ""),
           ""]
    if load.get("overlapped"):
        out += [f"**This run overlapped other load** ({load['overlap_reason']}): absolute figures are lower and "
                "noisier than on an idle machine; the program costs (bpf_stats) are the least affected.", ""]
    out += ["## Method", "",
            "Every section measures its configurations in one run, interleaved (A B C A B C ...), so drift hits "
            "all alike, and gives medians with min-max. Traffic is the project's live-frames generator "
            "(`BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`, `hyperion generate`) in a client network "
            "namespace, pinned to CPU 0, sending over a veth pair to the host namespace where the configuration "
            "under test sits. Ground truth is always the receiving side: the veth driver's XDP statistics "
            "(`ethtool -S`), the kernel's `Udp6NoPorts`, a firewall rule's own counter, the AF_XDP worker's "
            "receive count; Hyperion's own counters are checked against it.", "",
            "Two figures per configuration, and which one to trust: on veth, the receiving NAPI runs on the CPU "
            "that transmitted, so generator and receiver share CPU 0 and **Mpps is the throughput of the whole "
            "pipeline** (generator + veth + program): it compresses differences between programs and moves with "
            "any other load on the machine. **Program ns/pkt** (`kernel.bpf_stats_enabled=1`, run_time_ns / "
            "run_cnt, in a separate interleaved pass because the statistics' own clock reads add about 25-50 ns "
            "to every run) is the program's own cost, and the figure that ranks programs. "
            "`pipeline ns/pkt` = 1e9 / Mpps, and `vs XDP_DROP` (or `vs XDP_PASS`) is that minus the baseline's: "
            "the extra per-packet cost of a configuration as the pipeline sees it, which compares filters "
            "without a BPF program (iptables, nftables) with the XDP ones. The rate targets below are judged "
            "on Mpps as the issue states them; the cost columns say why they are met or missed.", "",
            "Telemetry is captured around every sample (raw in results.json): per-CPU /proc/stat utilisation, "
            "/proc/interrupts, NET_RX softirqs, /proc/net/softnet_stat (processed, dropped, time_squeeze), "
            "`ethtool -S` of both veth ends, the program's run count and time, and AF_XDP XDP_STATISTICS. The "
            "tables show the medians that explain each figure.", ""]
    if results["targets"]:
        out += ["## Targets", ""]
        rows = []
        for t in results["targets"]:
            measured = "-" if t["measured"] is None else f"{t['measured']:.2f}"
            verdict = "met" if t["met"] else (f"missed by {t['missed_by_pct']:.0f}%" if t["missed_by_pct"] is not None
                                              else "not measured")
            rows.append([t["target"], f"{t['goal']:.2f}", measured, verdict, t["detail"]])
        out += _table(["target", "goal", "measured", "verdict", "figures"], rows)
    for name, section in sections.items():
        out += _section_markdown(name, section, plots.get(name))
    return "\n".join(out) + "\n"


def _goal(t: dict[str, Any]) -> str:
    """A per-configuration target as `>= 0.95 (measured 0.97)`."""
    measured = "-" if t["measured"] is None else f"{t['measured']:.2f}"
    return f"{'<=' if t['at_most'] else '>='} {t['goal']:.2f} (measured {measured})"


def _section_markdown(name: str, section: dict[str, Any], plot: str | None) -> list[str]:
    if "error" in section:
        return [f"## {name}", "", f"**Failed**: {section['error']}", ""]
    out = [f"## {section['title']}", "", "Method: " + "; ".join(f"{k}: {v}" for k, v in section["method"].items()), ""]
    if name == "drop":
        out += _packet_table(section, "XDP_DROP")
        out += [_stability(section), ""]
    elif name == "passthrough":
        out += _packet_table(section, "XDP_PASS")
    elif name == "slowpath":
        rows = [[r["name"], _mpps(r["rx_pps"]), _ratio(r.get("ratio")), f"{r['delivered_fraction']['median']:.3f}",
                 f"{r['xsk']['xdp_rx_ring_full']:,.0f}", f"{r['xsk']['xdp_rx_dropped']:,.0f}",
                 f"{r['xsk']['xdp_rx_fill_ring_empty_descs']:,.0f}", _cpu(r, 0), _cpu(r, 1)]
                for r in section["configs"]]
        out += _table(["configuration", "Mpps, median (min-max)", "ratio to minimal AF_XDP", "received/sent",
                       "XDP_STATISTICS rx_ring_full", "rx_dropped", "fill_ring_empty_descs",
                       "CPU0 busy (softirq): generator + NAPI copy", "CPU1 busy: the worker"], rows)
    elif name == "delivery":
        rows = [[r["name"], _mpps(r["passed_pps"]), _ratio(r.get("ratio_to_tun")),
                 f"{r['passed_fraction']['median']:.3f}", f"{r['deliver_errors']:,}"] for r in section["configs"]]
        out += _table(["delivery", "Mpps passed, median (min-max)", "ratio to TUN", "passed/sent",
                       "deliver errors"], rows)
    elif name == "dns":
        rows = []
        for r in section["configs"]:
            targets = r.get("targets", [])
            rows.append([r["name"], f"{r['qps']['median']:,.0f} ({r['qps']['min']:,.0f}-{r['qps']['max']:,.0f})",
                         _ratio(r.get("ratio")), f"{r['p50_ms']['median']:.3f}", f"{r['p99_ms']['median']:.3f}",
                         _ratio(r.get("p99_ratio")), _ratio(r.get("vs_dnsdist")),
                         "; ".join(_goal(t) for t in targets) or "-",
                         ", ".join("met" if t["met"] else "MISSED" for t in targets) or "-",
                         f"{r['lost']:,.0f} of {r['completed'] + r['lost']:,.0f}",
                         f"{r['ready_s']['median']:.1f}" if r.get("ready_s") else "-", _cpu(r, 0), _cpu(r, 1),
                         ", ".join(f"{k} {v:.0f}%" for k, v in r.get("process_cpu_pct", {}).items()) or "-",
                         ", ".join(f"{k.removeprefix('hyperion_')} {v:,.0f}" for k, v in r.get("slowpath", {}).items()
                                   if v) or "-"])
        out += _table(["configuration", "queries/s, median (min-max)", "ratio to no filter", "p50 ms", "p99 ms",
                       "p99 ratio", "qps vs dnsdist", "target (issue)", "verdict", "lost", "ready after s",
                       "CPU0 busy (softirq)", "CPU1 busy (softirq)", "process CPU (dnsmasq; filter: daemon + "
                       "workers or dnsdist)", "slow path counters (median per run)"], rows)
    elif name == "dnscost":
        rows = [[f"{r['size']:,}", str(r["labels"]), _ns(r.get("ns_per_pkt")), _ns(r.get("outside_ns_per_pkt")),
                 "-" if r.get("stage_ns_per_pkt") is None else f"{r['stage_ns_per_pkt']:.0f}",
                 _bytes(r["dns_map_bytes"]), _bytes(r["map_memory"]["inner_bytes"]),
                 "yes" if r.get("counters_agree") else "NO"]
                for r in section["configs"]]
        out += _table(["name rules", "name labels", "program ns/pkt in the DNS class (bpf_stats)",
                       "outside a DNS class", "DNS stage ns/pkt", "DNS name maps memory", "policy maps memory",
                       "own counter = ground truth"], rows)
    elif name == "scale":
        rows = []
        for r in section["configs"]:
            mem = r["map_memory"]
            policy_maps = {k: v for k, v in mem["maps"].items() if "[" in k and v}
            rows.append([f"{r['size']:,}", "exact IPs" if r["kind"] == "ips" else "CIDRs (LPM trie)",
                         str(r["sources"]), _ns(r.get("ns_per_pkt")), _mpps(r.get("rx_pps_with_stats")),
                         _bytes(mem["inner_bytes"]), _bytes(mem["total_bytes"]),
                         ", ".join(f"{k} {_bytes(v)}" for k, v in policy_maps.items()),
                         "yes" if r.get("counters_agree") else "NO"])
        out += _table(["blocklist size", "kind", "traffic sources", "program ns/pkt (bpf_stats)",
                       "Mpps (stats on)", "policy maps memory", "all maps memory", "non-empty policy maps",
                       "own counter = ground truth"], rows)
    elif name == "reload":
        rows = [[f"{r['entries']:,}", f"{r['validate_s']['median']:.3f}", f"{r['compile_s']['median']:.3f}",
                 f"{r['apply_s']['median']:.3f}",
                 f"{r['reload_s']['median']:.3f} ({r['reload_s']['min']:.3f}-{r['reload_s']['max']:.3f})",
                 f"{r['scrape_s']['median'] * 1e3:.1f}"] for r in section["configs"]]
        out += _table(["entries", "validate s", "compile s", "apply s", "reload s, median (min-max)",
                       "/metrics render ms"], rows)
    out += [f"- {note}" for note in _notes(name, section)]
    if section.get("notes"):
        out += [*section["notes"], ""]
    out.append("")
    if plot:
        out += [f"![{name}]({plot})", ""]
    return out


def _notes(name: str, section: dict[str, Any]) -> list[str]:
    """What the figures say, computed from them."""
    rows = section.get("configs", [])
    notes = []
    if name == "drop":
        added = {r.get("kind"): r.get("added_ns_per_pkt") for r in rows if r.get("added_ns_per_pkt") is not None}
        hyp = [r["added_ns_per_pkt"] for r in rows if r.get("kind") == "hyperion" and r.get("added_ns_per_pkt")]
        cost = [r["ns_per_pkt"]["median"] for r in rows if r.get("kind") == "hyperion" and r.get("ns_per_pkt")]
        base = next((r["ns_per_pkt"]["median"] for r in rows if r.get("kind") == "xdp-minimal" and r.get("ns_per_pkt")),
                    None)
        if hyp and added.get("nftables"):
            notes.append(f"Extra cost per packet over XDP_DROP as the pipeline sees it: nftables netdev "
                         f"{added['nftables']:+.0f} ns, iptables raw {added.get('iptables', 0):+.0f} ns, Hyperion "
                         f"{min(hyp):+.0f} to {max(hyp):+.0f} ns. The generator's own share of every packet (the "
                         "XDP_DROP row's pipeline ns/pkt) is what keeps the rate ratios small.")
        if cost and base:
            notes.append(f"Program cost (bpf_stats): Hyperion {min(cost):.0f}-{max(cost):.0f} ns/pkt against "
                         f"{base:.0f} for XDP_DROP (whose figure is almost all the statistics' own overhead), the same "
                         "from 1 to 1M entries: here the one source's entry stays in cache; the scale section sends "
                         "from thousands of sources.")
    elif name == "dnscost":
        sizes = sorted({r["size"] for r in rows})
        if len(sizes) > 1:
            small = next(r for r in rows if r["size"] == sizes[0])
            large = next(r for r in rows if r["size"] == sizes[-1])
            per_rule = (large["dns_map_bytes"] - small["dns_map_bytes"]) / max(sizes[-1] - sizes[0], 1)
            notes.append(f"Memory: the name maps (hyp_dns_short/long, sized by their entries) hold "
                         f"{_bytes(small['dns_map_bytes'])} with {sizes[0]:,} rule(s) and "
                         f"{_bytes(large['dns_map_bytes'])} with {sizes[-1]:,}: about {per_rule:.0f} B per name "
                         "rule (memlock of the maps, as bpftool shows it).")
    elif name == "scale":
        for kind, label in (("ips", "exact IPs"), ("cidrs", "CIDRs")):
            mine = [r for r in rows if r.get("kind") == kind and r.get("ns_per_pkt")]
            if len(mine) > 1:
                first, last = mine[0], mine[-1]
                notes.append(f"{label}: {first['ns_per_pkt']['median']:.0f} ns/pkt with {first['size']:,} "
                             f"entr{'ies' if first['size'] > 1 else 'y'} and {first['sources']:,} source(s), "
                             f"{last['ns_per_pkt']['median']:.0f} ns/pkt with {last['size']:,} entries and "
                             f"{last['sources']:,} sources: spread sources miss the CPU caches (hash buckets, "
                             "LPM trie nodes), so the cost grows with the table.")
        ips = [r for r in rows if r.get("kind") == "ips"]
        if len(ips) > 1:
            per_entry = ((ips[-1]["map_memory"]["inner_bytes"] - ips[0]["map_memory"]["inner_bytes"])
                         / max(ips[-1]["size"] - ips[0]["size"], 1))
            notes.append(f"Memory: {_bytes(ips[0]['map_memory']['inner_bytes'])} of policy maps for "
                         f"{ips[0]['size']:,} entry, {_bytes(ips[-1]['map_memory']['inner_bytes'])} for "
                         f"{ips[-1]['size']:,}. The exact-IP hash tables are sized by their capacity "
                         "(2,097,152 entries: a bucket array of 32 MiB each, IPv4 and IPv6, also when empty); "
                         f"entries add about {per_entry:.0f} B each on top.")
    return notes


# ---- plots -----------------------------------------------------------------------------------


def _bar(ax: Any, rows: list[dict[str, Any]], key: str, scale: float, label: str, invert: bool = True) -> None:
    """Horizontal bars, median with min-max whiskers; rows without the figure get no bar."""
    names = [r["name"] for r in rows]
    med = [r[key]["median"] / scale if r.get(key) else 0.0 for r in rows]
    err = [[(r[key]["median"] - r[key]["min"]) / scale if r.get(key) else 0.0 for r in rows],
           [(r[key]["max"] - r[key]["median"]) / scale if r.get(key) else 0.0 for r in rows]]
    positions = list(range(len(rows)))
    ax.barh(positions, med, xerr=err, capsize=3, color="#4477aa")
    ax.set_yticks(positions, names)
    if invert:
        ax.invert_yaxis()
    ax.set_xlabel(label)
    for y, (row, value) in enumerate(zip(rows, med, strict=True)):
        if row.get(key):
            ax.text(value, y, f"  {value:.2f}", va="bottom", fontsize=8)


def write_plots(results: dict[str, Any], out_dir: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = {}
    sections = results["sections"]
    for name, section in sections.items():
        if "error" in section or not section.get("configs"):
            continue
        rows = section["configs"]
        if name in ("drop", "passthrough"):
            fig, axes = plt.subplots(1, 2, figsize=(13, 0.45 * len(rows) + 1.8), sharey=True)
            _bar(axes[0], rows, "rx_pps", 1e6, "Mpps (median, min-max)")
            _bar(axes[1], rows, "ns_per_pkt", 1.0, "program ns/pkt (bpf_stats)", invert=False)
        elif name == "slowpath":
            fig, ax = plt.subplots(figsize=(9, 0.5 * len(rows) + 1.5))
            _bar(ax, rows, "rx_pps", 1e6, "Mpps into AF_XDP (median, min-max)")
        elif name == "dns":
            fig, axes = plt.subplots(1, 2, figsize=(14, 0.45 * len(rows) + 1.8), sharey=True)
            _bar(axes[0], rows, "qps", 1e3, "thousand queries/s (median, min-max)")
            _bar(axes[1], rows, "p99_ms", 1.0, "p99 latency, ms", invert=False)
        elif name == "dnscost":
            fig, ax = plt.subplots(figsize=(7, 4))
            sizes = sorted({r["size"] for r in rows})
            for size in sizes:
                mine = [r for r in rows if r["size"] == size and r.get("ns_per_pkt")]
                ax.plot([r["labels"] for r in mine], [r["ns_per_pkt"]["median"] for r in mine], marker="o",
                        label=f"{size:,} rules, DNS class")
            outside = [r for r in rows if r["size"] == sizes[-1] and r.get("outside_ns_per_pkt")]
            ax.plot([r["labels"] for r in outside], [r["outside_ns_per_pkt"]["median"] for r in outside],
                    marker="x", linestyle="--", label="outside a DNS class")
            ax.set_xlabel("labels of the query name")
            ax.set_ylabel("program ns/pkt (bpf_stats)")
            ax.set_ylim(bottom=0)
            ax.legend()
            ax.grid(alpha=0.3)
        elif name == "scale":
            fig, axes = plt.subplots(1, 2, figsize=(12, 4))
            for kind, label in (("ips", "exact IPs (hash)"), ("cidrs", "CIDRs (LPM trie)")):
                mine = [r for r in rows if r["kind"] == kind and r.get("ns_per_pkt")]
                sizes = [r["size"] for r in mine]
                axes[0].errorbar(sizes, [r["ns_per_pkt"]["median"] for r in mine],
                                 yerr=[[r["ns_per_pkt"]["median"] - r["ns_per_pkt"]["min"] for r in mine],
                                       [r["ns_per_pkt"]["max"] - r["ns_per_pkt"]["median"] for r in mine]],
                                 marker="o", capsize=3, label=label)
                axes[1].plot(sizes, [r["map_memory"]["inner_bytes"] / 2**20 for r in mine], marker="o", label=label)
            for ax, ylabel in ((axes[0], "program ns/pkt (bpf_stats)"), (axes[1], "policy map memory, MiB")):
                ax.set_xscale("log")
                ax.set_xlabel("blocklist entries")
                ax.set_ylabel(ylabel)
                ax.legend()
                ax.grid(alpha=0.3)
            axes[0].set_ylim(bottom=0)
        elif name == "reload":
            fig, ax = plt.subplots(figsize=(7, 4))
            sizes = [r["entries"] for r in rows]
            for key in ("validate_s", "compile_s", "apply_s", "reload_s"):
                ax.plot(sizes, [r[key]["median"] for r in rows], marker="o", label=key.removesuffix("_s"))
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("blocklist entries")
            ax.set_ylabel("seconds")
            ax.legend()
            ax.grid(alpha=0.3)
        else:
            continue
        fig.suptitle(section["title"] + (" (quick)" if results["quick"] else ""), fontsize=10)
        fig.tight_layout()
        fig.savefig(out_dir / PLOTS[name], dpi=90)
        plt.close(fig)
        written[name] = PLOTS[name]
    return written


def write_report(results: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    plots = write_plots(results, out_dir)
    (out_dir / "REPORT.md").write_text(render_markdown(results, plots))
