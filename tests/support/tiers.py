"""The kernel and e2e tiers: every test in them is marked `kernel` (and `netns` when it builds
namespaces) and requires the `kernel` fixture, so CI fails rather than skips without root/BPF."""

from __future__ import annotations

from collections.abc import Callable
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


@pytest.fixture(scope="session", autouse=True)
def tier_requires_kernel(kernel: None) -> None:
    """Session-scoped so it runs before any module-scoped fixture that loads the program. A tier's
    conftest imports it, which makes it autouse for that directory only."""


def tier_marker(conftest: str) -> Callable[[list[pytest.Item]], None]:
    """The pytest_collection_modifyitems hook of the tier whose conftest.py is `conftest`."""
    tier = Path(conftest).parent

    def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
        mark_tier(items, tier)

    return pytest_collection_modifyitems
