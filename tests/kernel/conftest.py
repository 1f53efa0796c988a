"""The kernel tier: BPF_PROG_TEST_RUN, the maps, netns with the program attached; no daemon.
Every test here needs root, bpffs and BPF (the session-wide `kernel` fixture: fails in CI, skips
elsewhere) and is marked `kernel`, and `netns` when it builds namespaces."""

from tests.support.tiers import tier_marker, tier_requires_kernel

__all__ = ["pytest_collection_modifyitems", "tier_requires_kernel"]

pytest_collection_modifyitems = tier_marker(__file__)
