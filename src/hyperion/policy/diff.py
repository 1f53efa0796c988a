"""What a reload changes: per policy list, the entries added and removed."""

from __future__ import annotations

from typing import TypedDict

from hyperion.policy.model import Policy, PolicyList, render_entry


class ListChange(TypedDict):
    """One list's change, each entry as render_entry shows it, in file order."""

    added: list[str]
    removed: list[str]


def _rendered(policy: Policy) -> dict[PolicyList, list[str]]:
    """Stable one-line string per entry, per list (used for summaries, diffs and logs)."""
    return {name: [render_entry(entry) for entry in name.entries(policy)] for name in PolicyList}


def policy_diff(old: Policy, new: Policy) -> dict[PolicyList, ListChange]:
    """Per list, the entries ``added`` in ``new`` and ``removed`` from ``old``.

    Entries compare by their rendered string, so a pure reordering is not a change, and
    ``mode``/``malformed_dns_action`` are not reported (compare them directly).
    """
    before, after = _rendered(old), _rendered(new)
    diff: dict[PolicyList, ListChange] = {}
    for name in PolicyList:
        old_set, new_set = set(before[name]), set(after[name])
        diff[name] = {
            "added": [e for e in dict.fromkeys(after[name]) if e not in old_set],
            "removed": [e for e in dict.fromkeys(before[name]) if e not in new_set],
        }
    return diff
