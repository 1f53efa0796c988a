"""The CLI's error paths: clear messages, exit status 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hyperion.cli.main import main
from tests.support.paths import EXAMPLES

EXAMPLE = EXAMPLES / "policy.yaml"


def test_policy_check_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", str(EXAMPLE)]) == 0
    assert "valid (enforce mode" in capsys.readouterr().out


@pytest.mark.parametrize("text,expected", [
    ("mode: enforced\n", "mode: 'enforced' is not one of"),
    ("fast_path:\n  drop_cidrs: ['203.0.113.5/24']\n", "fast_path.drop_cidrs[0]: '203.0.113.5/24' has host bits set"),
    ("fast_path:\n  redirect_ports: [{protocol: udp, port: 0}]\n", "fast_path.redirect_ports[0].port"),
    ("fast_path: [1, 2]\n", "fast_path"),
    ("fast_pth: {}\n", "fast_pth"),
])
def test_policy_check_invalid(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    assert main(["policy", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hyperion: error: ") and expected in err
    assert "Traceback" not in err


def test_block_add_rejects_a_bad_address(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["block", "add", "198.51.100.300", "--iface", "lo"]) == 2
    assert "'198.51.100.300' is not an IPv4 or IPv6 address" in capsys.readouterr().err


def test_missing_policy_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", "/nonexistent/policy.yaml"]) == 2
    assert "/nonexistent/policy.yaml" in capsys.readouterr().err


def test_console_script_help_lists_commands() -> None:
    out = subprocess.run([sys.executable, "-m", "hyperion.cli", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for command in ("attach", "detach", "status", "run", "block", "policy"):
        assert command in out
