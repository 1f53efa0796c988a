"""The kernel tier: BPF_PROG_TEST_RUN, the maps, netns with the program attached; no daemon.
Every test here needs root, bpffs and BPF (the session-wide `kernel` fixture: fails in CI, skips
elsewhere) and is marked `kernel`, and `netns` when it builds namespaces."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tiers import mark_tier


@pytest.fixture(scope="session", autouse=True)
def _kernel_tier(kernel: None) -> None:
    """Session-scoped so it runs before any module-scoped fixture that loads the program."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_tier(items, Path(__file__).parent)
