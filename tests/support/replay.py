"""The replay tests' policy, and writing it to a file for `hyperion replay`."""

from __future__ import annotations

from pathlib import Path

POLICY = """
fast_path:
  drop_ips: ["198.51.100.42"]
  drop_cidrs: ["203.0.113.0/24"]
  redirect_ports: [{protocol: udp, port: 53, on_failure: drop}]
slow_path:
  dns_rules:
    - {match: "evil.com", action: drop}
    - {match: "*.tracker.test", action: nxdomain}
"""


def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path
