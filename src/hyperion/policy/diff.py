"""What a reload changes: per policy list, the entries added and removed."""

from __future__ import annotations

from hyperion.policy.model import Policy


def _rendered(policy: Policy) -> dict[str, list[str]]:
    """Stable one-line string per entry, per list (used for summaries, diffs and logs)."""
    fast, slow = policy.fast_path, policy.slow_path
    return {
        "allow_cidrs": [str(n) for n in fast.allow_cidrs],
        "drop_ips": [str(a) for a in fast.drop_ips],
        "drop_cidrs": [str(n) for n in fast.drop_cidrs],
        "redirect_ports": [r.describe() for r in fast.redirect_ports],
        "dns_rules": [r.describe() for r in slow.dns_rules],
        "signatures": [s.describe() for s in slow.signatures],
    }


def policy_diff(old: Policy, new: Policy) -> dict[str, dict[str, list[str]]]:
    """Per list, the entries ``added`` in ``new`` and ``removed`` from ``old``.

    Entries compare by their rendered string, so a pure reordering is not a change, and
    ``mode``/``malformed_dns_action`` are not reported (compare them directly).
    """
    before, after = _rendered(old), _rendered(new)
    diff: dict[str, dict[str, list[str]]] = {}
    for name in Policy.LISTS:
        old_set, new_set = set(before[name]), set(after[name])
        diff[name] = {
            "added": [e for e in dict.fromkeys(after[name]) if e not in old_set],
            "removed": [e for e in dict.fromkeys(before[name]) if e not in new_set],
        }
    return diff
