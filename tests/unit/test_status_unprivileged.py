"""`hyperion status` by a user who cannot read the pinned state gets a clear error, not a traceback.

Run as that user: directly when the suite is not root, through runuser as nobody when it is."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _as_unprivileged(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    if shutil.which("runuser") is None:
        pytest.skip("runuser is missing")
    return ["runuser", "-u", "nobody", "--", *argv]


def test_status_without_access_to_the_pins_is_a_clear_error(tmp_path: Path) -> None:
    pins = tmp_path / "pins"  # as /sys/fs/bpf/hyperion: a directory this user may not enter
    pins.mkdir(mode=0o000)
    env = {**os.environ, "HYPERION_PIN_ROOT": str(pins)}
    proc = subprocess.run(_as_unprivileged([sys.executable, "-m", "hyperion.cli", "status", "--iface", "lo"]),
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("hyperion: error: ") and "permission denied" in proc.stderr.lower()
    assert "root" in proc.stderr  # says what it needs
