"""`hyperion replay`: the real program (and slow-path engine) judges each packet of a capture."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw
from scapy.utils import wrpcap

from hyperion.policy.loading import parse_policy
from hyperion.replay import CaptureError, Replayer, read_frames


def test_unreadable_capture_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "not.pcap"
    bad.write_bytes(b"this is not a capture")
    with pytest.raises(CaptureError, match="cannot read capture"):
        list(read_frames(bad))
    proc = subprocess.run([sys.executable, "-m", "hyperion.cli", "replay", "--policy", str(policy_file(tmp_path)),
                           str(tmp_path / "missing.pcap")], capture_output=True, text=True)
    assert proc.returncode == 2 and "missing.pcap: no such readable file" in proc.stderr
