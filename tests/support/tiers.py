"""The kernel and e2e tiers: every test in them is marked `kernel` (and `netns` when it builds
namespaces) and requires the `kernel` fixture, so CI fails rather than skips without root/BPF."""

from __future__ import annotations

from pathlib import Path

import pytest


def creates_namespaces(item: pytest.Item) -> bool:
    """The sandbox fixture, or a module that builds a Sandbox itself."""
    return "sandbox" in getattr(item, "fixturenames", ()) or hasattr(getattr(item, "module", None), "Sandbox")


def mark_tier(items: list[pytest.Item], tier: Path) -> None:
    """Marks the items collected under `tier`; the hook sees every item of the session."""
    for item in items:
        if tier not in item.path.parents:
            continue
        item.add_marker(pytest.mark.kernel)
        if creates_namespaces(item):
            item.add_marker(pytest.mark.netns)
