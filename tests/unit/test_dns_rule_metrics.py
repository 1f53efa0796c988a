"""Per-rule hits of the XDP name rules, without the kernel: rule names for the DNS reasons, and the
daemon's totals across generations (hits of a replaced generation are retired, never lost)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hyperion.daemon.daemon import Daemon, DaemonOptions
from hyperion.fastpath.maps import CompiledPolicy
from hyperion.policy.compiler import fast_path_rule_name
from hyperion.policy.loading import parse_policy
from hyperion.policy.model import Policy

POLICY = """
fast_path:
  redirect_ports: [{protocol: udp, port: 53}]
slow_path:
  dns_rules:
    - {match: evil.test, action: drop}
    - {match: '*.ads.test', action: nxdomain}
    - {regex: '^x', action: alert}
    - {match: ok.test, action: allow}
"""


@pytest.mark.parametrize("reason", ["dns_drop", "dns_nxdomain", "dns_refused", "dns_unanswerable", "dns_allow",
                                    "dns_alert"])
def test_dns_reasons_name_the_dns_rule(reason: str) -> None:
    policy = parse_policy(POLICY)
    assert fast_path_rule_name(policy, reason, 2) == "slow_path.dns_rules[1] match=*.ads.test action=nxdomain"
    assert fast_path_rule_name(policy, reason, 4) == "slow_path.dns_rules[3] match=ok.test action=allow"
    assert fast_path_rule_name(policy, reason, 5) is None and fast_path_rule_name(policy, reason, 0) is None


@pytest.mark.parametrize("reason", ["dns_no_match", "dns_malformed", "dns_qdcount", "dns_not_query"])
def test_dns_reasons_without_a_rule_name_none(reason: str) -> None:
    assert fast_path_rule_name(parse_policy(POLICY), reason, 1) is None


class FakeFastPath:
    """Two generation slots of DNS hits, and apply() as FastPath does it: retire the inactive slot's
    hits, replace its maps (fresh, zero hits), flip."""

    def __init__(self) -> None:
        self.active = 0
        self.hits: dict[int, dict[int, int]] = {0: {}, 1: {}}
        self.fail = False

    def apply(self, compiled: CompiledPolicy, retire: Callable[[int, dict[int, int]], object] | None = None) -> int:
        target = self.active ^ 1
        if retire is not None:
            retire(target, dict(self.hits[target]))
        if self.fail:
            raise RuntimeError("map creation failed")
        self.hits[target] = {}
        self.active = target
        return 1

    def active_slot(self) -> int:
        return self.active

    def dns_hits(self, slot: int) -> dict[int, int]:
        return {k: v for k, v in self.hits[slot].items() if v}

    def record_applied_policy(self, text: str) -> None:
        pass


def _daemon(tmp_path: Path) -> tuple[Daemon, FakeFastPath]:
    daemon = Daemon(DaemonOptions(ifname="x", policy_path=tmp_path / "p.yaml", slowpath=False))
    fake = FakeFastPath()
    daemon.fastpath = fake  # type: ignore[assignment]
    return daemon, fake


def _apply(daemon: Daemon, policy: Policy) -> None:
    daemon.apply_policy(policy, "", compiled=CompiledPolicy(mode=0, images={}))


EVIL = ("slow_path.dns_rules[0] match=evil.test action=drop", "drop")
ADS = ("slow_path.dns_rules[1] match=*.ads.test action=nxdomain", "nxdomain")


def test_hits_are_labelled_and_survive_every_reload(tmp_path: Path) -> None:
    daemon, fake = _daemon(tmp_path)
    policy = parse_policy(POLICY)
    _apply(daemon, policy)
    assert daemon.dns_rule_matches() == {}
    fake.hits[fake.active] = {1: 4, 2: 1}
    assert daemon.dns_rule_matches() == {EVIL: 4, ADS: 1}

    _apply(daemon, policy)  # the first generation's slot is now inactive: still counted
    fake.hits[fake.active] = {1: 10}
    assert daemon.dns_rule_matches() == {EVIL: 14, ADS: 1}

    _apply(daemon, policy)  # replaces the first generation: retired
    assert daemon.dns_rule_matches() == {EVIL: 14, ADS: 1}
    _apply(daemon, policy)  # replaces the second
    assert daemon.dns_rule_matches() == {EVIL: 14, ADS: 1}


def test_a_rule_that_moves_is_a_new_series_and_the_old_one_stays(tmp_path: Path) -> None:
    daemon, fake = _daemon(tmp_path)
    _apply(daemon, parse_policy(POLICY))
    fake.hits[fake.active] = {1: 2}
    moved = parse_policy(POLICY.replace("  dns_rules:\n", "  dns_rules:\n    - {match: new.test, action: drop}\n"))
    _apply(daemon, moved)
    fake.hits[fake.active] = {2: 3}
    _apply(daemon, moved)
    _apply(daemon, moved)
    assert daemon.dns_rule_matches() == {EVIL: 2, ("slow_path.dns_rules[1] match=evil.test action=drop", "drop"): 3}


def test_a_failed_apply_neither_loses_nor_double_counts(tmp_path: Path) -> None:
    daemon, fake = _daemon(tmp_path)
    policy = parse_policy(POLICY)
    _apply(daemon, policy)
    fake.hits[fake.active] = {1: 5}
    _apply(daemon, policy)
    fake.fail = True
    with pytest.raises(RuntimeError):
        _apply(daemon, policy)  # the first generation's hits were retired before the failure
    assert daemon.dns_rule_matches() == {EVIL: 5}
    fake.fail = False
    _apply(daemon, policy)  # that slot is not retired twice
    assert daemon.dns_rule_matches() == {EVIL: 5}


def test_a_generation_from_before_the_daemon_is_not_labelled(tmp_path: Path) -> None:
    daemon, fake = _daemon(tmp_path)
    fake.hits[1] = {1: 9}  # left by an earlier daemon: its policy is unknown here
    _apply(daemon, parse_policy(POLICY))
    assert daemon.dns_rule_matches() == {}


def test_no_fast_path_no_matches(tmp_path: Path) -> None:
    daemon = Daemon(DaemonOptions(ifname="x", policy_path=tmp_path / "p.yaml"))
    result: Any = daemon.dns_rule_matches()
    assert result == {}
