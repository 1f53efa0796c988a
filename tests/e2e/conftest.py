"""The e2e tier: the daemon and the CLI with real peers (dnsmasq, dig, Prometheus), chaos, bench, demo.
Every test here needs root, bpffs and BPF (the session-wide `kernel` fixture: fails in CI, skips
elsewhere) and is marked `kernel`, and `netns` when it builds namespaces."""

from tests.support.tiers import tier_marker, tier_requires_kernel

__all__ = ["pytest_collection_modifyitems", "tier_requires_kernel"]

pytest_collection_modifyitems = tier_marker(__file__)
