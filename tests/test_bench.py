"""Smoke run of the benchmark: it must produce a complete report whose counters agree.

No speed is asserted (that is the benchmark's job, not a test's); what is
asserted is that Hyperion's drop counter equals the receiving veth's own XDP
drop count for every sample, and that frames actually reached the receiver.
"""

from __future__ import annotations

import json
from pathlib import Path

from hyperion import bench


def test_quick_benchmark_report(kernel: None, tmp_path: Path) -> None:
    report = bench.run(sizes=[1, 1000], rounds=1, count=20_000, out_dir=tmp_path)
    rows = {row["config"]: row for row in report["results"]}
    assert list(rows) == ["xdp_drop (minimal)", "hyperion, 1 blocked IPs", "hyperion, 1,000 blocked IPs"]
    for row in rows.values():
        assert row["rx_pps"]["median"] > 0
        assert row["counters_agree"] is True
    for sample in report["samples"]:
        assert sample["sent"] == 20_000
        if sample["counted_drops"] is None:
            # The minimal program drops everything, stray IPv6 link traffic included.
            assert 0 < sample["received"] <= sample["sent"] + 10
        else:
            assert 0 < sample["received"] <= sample["sent"]
            assert sample["counted_drops"] == sample["received"]
    assert json.loads((tmp_path / "results.json").read_text())["results"] == report["results"]
