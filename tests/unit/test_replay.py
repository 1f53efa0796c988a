"""`hyperion replay`: the real program (and slow-path engine) judges each packet of a capture."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hyperion.replay import CaptureError, read_frames
from tests.support.replay import policy_file


def test_unreadable_capture_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "not.pcap"
    bad.write_bytes(b"this is not a capture")
    with pytest.raises(CaptureError, match="cannot read capture"):
        list(read_frames(bad))
    proc = subprocess.run([sys.executable, "-m", "hyperion.cli", "replay", "--policy", str(policy_file(tmp_path)),
                           str(tmp_path / "missing.pcap")], capture_output=True, text=True)
    assert proc.returncode == 2 and "missing.pcap: no such readable file" in proc.stderr
