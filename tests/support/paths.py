"""Where the tests find the project's files and the public captures beside it."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
BPF_DIR = ROOT / "bpf"
SRC = ROOT / "src" / "hyperion"
EXAMPLES = ROOT / "examples"
POLICIES = Path(__file__).resolve().parent / "policies"
CAPTURES = ROOT.parent / "shared" / "captures"
