"""Facts the policy layer defines once: protocol names, the six policy lists, the actions. Each
consumer must agree with the one definition, and no module may grow its own copy again."""

from __future__ import annotations

import ast
import socket
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import get_args

import pytest

from hyperion import _slowpath
from hyperion.daemon import events
from hyperion.daemon.metrics import class_label
from hyperion.errors import PolicyError
from hyperion.kernel.abi import Abi
from hyperion.policy import compiler, model
from hyperion.policy.diff import policy_diff
from hyperion.policy.loading import parse_policy
from hyperion.policy.model import FastPathSection, Policy, PolicyList, Section, SlowPathSection
from hyperion.protocols import PORT_PROTOCOLS, PROTOCOL_NAMES, PROTOCOL_NUMBERS, IpProtocol, protocol_name
from hyperion.slowpath import rules

SRC = Path(__file__).resolve().parents[2] / "src" / "hyperion"

# ------------------------------------------------------------------------------------ protocols


def test_protocol_numbers_are_the_kernels() -> None:
    # The Linux socket API's IPPROTO_* constants are the IANA numbers; the table must not drift.
    for protocol in IpProtocol:
        assert int(protocol) == getattr(socket, f"IPPROTO_{protocol.name}"), protocol


def test_protocol_names_round_trip_and_alias() -> None:
    assert {PROTOCOL_NUMBERS[name]: name for name in PROTOCOL_NAMES.values()} == dict(PROTOCOL_NAMES)
    assert PROTOCOL_NUMBERS["ipv6-icmp"] == PROTOCOL_NUMBERS["icmpv6"] == 58
    assert protocol_name(6) == "tcp" and protocol_name(17) == "udp" and protocol_name(99) == "99"
    assert {socket.IPPROTO_TCP, socket.IPPROTO_UDP} == PORT_PROTOCOLS


def test_every_layer_names_protocols_from_the_one_table() -> None:
    assert class_label(17, 53) == "udp/53" and class_label(6, 8080) == "tcp/8080"
    assert events.PROTOCOLS == {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}
    assert parse_policy("fast_path: {redirect_ports: [{protocol: TCP, port: 80}]}").fast_path.redirect_ports[0] \
        .describe() == "tcp/80 on_failure=pass"
    with pytest.raises(PolicyError, match=r"'sctp' \(protocol 132\) has no ports"):
        parse_policy("fast_path: {redirect_ports: [{protocol: sctp, port: 80}]}")


def _protocol_tables(path: Path) -> list[int]:
    """Lines of dict literals mapping 6 to "tcp" or "tcp" to 6: a protocol table of its own."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Dict):
            pairs = {(k.value, v.value) for k, v in zip(node.keys, node.values, strict=True)
                     if isinstance(k, ast.Constant) and isinstance(v, ast.Constant)}
            if pairs & {(6, "tcp"), ("tcp", 6), (17, "udp"), ("udp", 17)}:
                found.append(node.lineno)
    return found


def test_no_module_keeps_its_own_protocol_table() -> None:
    copies = {str(p.relative_to(SRC)): lines for p in SRC.rglob("*.py") if (lines := _protocol_tables(p))}
    assert copies == {}, "protocol names belong in hyperion/protocols.py"


# -------------------------------------------------------------------------------- policy lists


def _list_fields(section: type[FastPathSection] | type[SlowPathSection]) -> set[str]:
    # never_block is a set of sources and dns_ports a set of ports, not lists of rules: neither is
    # counted nor diffed.
    return {name for name, field in section.model_fields.items()
            if str(field.annotation).startswith("tuple[") and name not in ("never_block", "dns_ports")}


def test_policy_lists_are_the_sections_list_fields() -> None:
    assert {name.value for name in PolicyList if name.section is Section.FAST_PATH} == _list_fields(FastPathSection)
    assert {name.value for name in PolicyList if name.section is Section.SLOW_PATH} == _list_fields(SlowPathSection)
    assert tuple(PolicyList) == Policy.LISTS
    assert [name.path for name in PolicyList] == [
        "fast_path.allow_cidrs", "fast_path.drop_ips", "fast_path.drop_cidrs", "fast_path.redirect_ports",
        "slow_path.dns_rules", "slow_path.signatures"]


POLICY = """
fast_path:
  allow_cidrs: [192.0.2.0/28]
  drop_ips: [198.51.100.1, 198.51.100.2, "2001:db8::1"]
  drop_cidrs: [203.0.113.0/24, "2001:db8:1::/48"]
  redirect_ports: [{protocol: udp, port: 53}]
slow_path:
  dns_rules:
    - {match: evil.example, action: nxdomain}
    - {regex: '^x', action: drop}
  signatures: [{class: {protocol: tcp, port: 80}, literal: GET /x, action: alert}]
"""


def test_entries_summary_and_diff_follow_the_enumeration() -> None:
    policy = parse_policy(POLICY)
    assert PolicyList.DROP_IPS.entries(policy) == (ip_address("198.51.100.1"), ip_address("198.51.100.2"),
                                                    ip_address("2001:db8::1"))
    assert PolicyList.DROP_CIDRS.entries(policy) == (ip_network("203.0.113.0/24"), ip_network("2001:db8:1::/48"))
    assert policy.summary() == {"allow_cidrs": 1, "drop_ips": 3, "drop_cidrs": 2, "redirect_ports": 1,
                                "dns_rules": 2, "signatures": 1}
    assert list(policy.summary()) == list(PolicyList)
    diff = policy_diff(Policy(), policy)
    assert list(diff) == list(PolicyList)
    assert diff[PolicyList.SIGNATURES] == {"added": ["tcp/80 literal='GET /x' action=alert"], "removed": []}
    assert diff[PolicyList.ALLOW_CIDRS] == {"added": ["192.0.2.0/28"], "removed": []}


def test_fast_path_rule_names_use_the_list_paths() -> None:
    policy = parse_policy(POLICY)
    assert compiler.fast_path_rule_name(policy, "blocklist_ip", 3) == "fast_path.drop_ips[2] 2001:db8::1"
    assert compiler.fast_path_rule_name(policy, "redirect_class", 1) == \
        "fast_path.redirect_ports[0] udp/53 on_failure=pass"
    assert compiler.fast_path_rule_name(policy, "blocklist_ip", 4) is None
    assert (compiler.ALLOW[0], compiler.DROP_CIDRS[0], compiler.DROP_IPS[0]) == (
        "fast_path.allow_cidrs", "fast_path.drop_cidrs", "fast_path.drop_ips")


# ------------------------------------------------------------------------------------- actions


def test_slow_path_maps_every_policy_action_to_a_distinct_native_constant() -> None:
    assert set(rules.ACTIONS) == set(model.ACTIONS) == {"drop", "pass", "allow", "alert", "nxdomain", "refuse",
                                                         "block_source"}
    assert rules.ACTIONS["block_source"] == _slowpath.BLOCK_SOURCE and rules.ACTIONS["pass"] == _slowpath.PASS
    # allow is another name for pass (the same native action); every other action has its own constant.
    assert rules.ACTIONS["allow"] == rules.ACTIONS["pass"] == _slowpath.ALLOW
    canonical = {name: number for name, number in rules.ACTIONS.items() if name != "allow"}
    assert len(set(canonical.values())) == len(canonical)
    assert {rules.ACTION_NAMES[number]: number for number in rules.ACTION_NAMES} == canonical
    assert {"drop", "block_source", "nxdomain", "refuse"} == rules.STOPPING_ACTIONS


def test_section_actions_are_policy_actions() -> None:
    for subset in (model.DnsAction, model.SignatureAction, model.MalformedDnsAction):
        assert set(get_args(subset)) <= set(model.ACTIONS), subset


def test_compiled_rules_carry_each_actions_native_constant() -> None:
    text = "fast_path:\n  redirect_ports: [{protocol: udp, port: 53}]\nslow_path:\n  dns_rules:\n" + "".join(
        f"    - {{match: r{i}.example, action: {action.upper()}"
        + (", ttl: 1m" if action == "block_source" else "") + "}\n"
        for i, action in enumerate(get_args(model.DnsAction)))
    compiled = rules.compile_rules(parse_policy(text), never_block=[])
    assert compiled.actions == list(get_args(model.DnsAction))
    # The native constant names the action back, allow as pass (one native action).
    assert [rules.ACTION_NAMES[action] for action, _, _ in compiled.spec.rules] == [
        "pass" if action == "allow" else action for action in compiled.actions]


def test_modes_and_fallbacks_are_the_programs(abi: Abi) -> None:
    # The XDP program's BTF enums (hyp_mode, hyp_fallback) against the policy's Literals.
    assert set(abi.modes) == set(get_args(model.Mode))
    assert set(abi.fallbacks) == set(get_args(model.OnFailure))
