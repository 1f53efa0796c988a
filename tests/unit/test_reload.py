"""Live policy: reload on file change and SIGHUP, bad reloads rejected, atomic switch under load."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hyperion.fastpath.program import FastPath
from hyperion.lab.sandbox import CLIENT_V4, HOST_V4, HOST_V6, Sandbox, entered_netns
from hyperion.policy.compiler import PolicyCompiler
from hyperion.policy.loading import parse_policy
from hyperion.policy.model import Policy
from tests.netutil import (
    Daemon,
    Receiver,
    counter,
    generation,
    hyperion,
    scrape,
    send,
    status,
    wait_counter,
    wait_for,
)
from tests.test_telemetry import parse_metrics, value


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
