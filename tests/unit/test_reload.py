"""Live policy: reload on file change and SIGHUP, bad reloads rejected, atomic switch under load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_policy_diff_of_two_files(tmp_path: Path) -> None:
    from hyperion.cli.main import main

    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text('fast_path:\n  drop_cidrs: ["203.0.113.0/24"]\n  redirect_ports: [{protocol: udp, port: 53}]\n')
    new.write_text('fast_path:\n  drop_cidrs: ["203.0.113.0/25"]\n  redirect_ports: [{protocol: udp, port: 53}]\n')
    proc = subprocess.run([sys.executable, "-m", "hyperion.cli", "policy", "diff", str(old), str(new)],
                          capture_output=True, text=True, check=True)
    assert proc.stdout.splitlines()[2:] == ["- fast_path.drop_cidrs: 203.0.113.0/24",
                                            "+ fast_path.drop_cidrs: 203.0.113.0/25"]
    assert main(["policy", "diff", str(old), str(old)]) == 0
