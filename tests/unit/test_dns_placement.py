"""Where each rule runs (DESIGN14 "Placement"): exact and *.suffix name rules with drop, nxdomain,
refuse, pass/allow and alert in XDP for a UDP DNS class; block_source name rules, regex rules and
signatures in the slow path; `hyperion policy check` says so per rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperion.cli.main import _applied_placement, main
from hyperion.policy.loading import parse_policy
from hyperion.policy.placement import Tier, placements

POLICY = """
fast_path:
  redirect_ports: [{protocol: udp, port: 53}, {protocol: tcp, port: 8080}]
slow_path:
  dns_rules:
    - {match: evil.test, action: drop}
    - {match: '*.ads.test', action: nxdomain}
    - {match: r.test, qtype: AAAA, action: refuse}
    - {match: ok.test, action: allow}
    - {match: p.test, action: pass}
    - {match: '*.watch.test', action: alert}
    - {match: c2.test, action: block_source, ttl: 10m}
    - {regex: '^[a-z0-9]{30,}\\.', action: drop}
  signatures:
    - {class: {protocol: tcp, port: 8080}, literal: 'GET /x', action: drop}
"""
EXPECTED = [Tier.XDP] * 6 + [Tier.SLOW_PATH] * 3


def test_each_rule_is_placed_by_its_kind_and_action() -> None:
    rows = placements(parse_policy(POLICY))
    assert [r.tier for r in rows] == EXPECTED
    assert [r.path for r in rows] == [f"slow_path.dns_rules[{i}]" for i in range(8)] + ["slow_path.signatures[0]"]


def test_with_only_a_tcp_dns_class_every_dns_rule_runs_in_the_slow_path() -> None:
    rows = placements(parse_policy(POLICY.replace("{protocol: udp, port: 53}", "{protocol: tcp, port: 53}")))
    assert {r.tier for r in rows} == {Tier.SLOW_PATH}


def test_policy_check_prints_the_placement(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(POLICY)
    assert main(["policy", "check", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{path}: valid (enforce mode;")
    assert out[1] == "placement: 6 in xdp, 3 in slow path"
    assert out[2] == "  DNS class udp/53: xdp, then the slow path"
    assert [line.split()[:2] for line in out[3:]] == [
        ["xdp", f"slow_path.dns_rules[{i}]"] for i in range(6)] + [
        ["slow", "path"]] * 3
    words = [" ".join(line.split()) for line in out]
    assert words[3] == "xdp slow_path.dns_rules[0] match=evil.test action=drop"
    assert words[9] == "slow path slow_path.dns_rules[6] match=c2.test action=block_source ttl=10m"
    assert words[11] == "slow path slow_path.signatures[0] tcp/8080 literal='GET /x' action=drop"


def test_counts_only_and_a_dns_class_with_nothing_to_redirect(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("fast_path:\n  redirect_ports: [{protocol: udp, port: 53}]\n"
                    "slow_path:\n  dns_rules: [{match: a.test, action: drop}, {match: '*.b.test', action: refuse}]\n")
    assert main(["policy", "check", "--counts-only", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        "placement: 2 in xdp, 0 in slow path", "  DNS class udp/53: xdp only (nothing redirected)"]


def test_a_policy_without_rules_prints_only_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("fast_path:\n  drop_ips: [198.51.100.1]\n")
    assert main(["policy", "check", str(path)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_status_shows_the_applied_policys_placement() -> None:
    assert _applied_placement(POLICY) == ["placement: 6 in xdp, 3 in slow path",
                                          "  DNS class udp/53: xdp, then the slow path"]
    assert _applied_placement(None) == [] and _applied_placement("mode: [") == []
