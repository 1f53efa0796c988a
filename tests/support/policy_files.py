"""Policy files for the trust tests: a known-good document, writing one with a mode, and the
refusal read_policy gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperion.errors import PolicyError
from hyperion.policy.loading import read_policy

GOOD = "fast_path:\n  drop_ips: ['198.51.100.1']\n"


def write(path: Path, text: str = GOOD, mode: int = 0o644) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def refusal(path: Path | str) -> str:
    with pytest.raises(PolicyError) as caught:
        read_policy(path)
    return str(caught.value)
