"""The policy's DNS settings of issue 14: slow_path.dns_ports, the action allow, and the error for DNS
rules that no class can see."""

from __future__ import annotations

from typing import get_args

import pytest

from hyperion.errors import PolicyError
from hyperion.policy import model
from hyperion.policy.loading import parse_policy

UDP53 = "fast_path:\n  redirect_ports: [{protocol: udp, port: 53}]\n"


def _errors(text: str) -> str:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.yaml")
    return str(caught.value)


def test_dns_ports_default_to_53() -> None:
    assert parse_policy("{}").slow_path.dns_ports == (53,)


def test_dns_ports_take_ports_like_redirect_classes() -> None:
    policy = parse_policy("slow_path:\n  dns_ports: [53, '5353', 8053]\n")
    assert policy.slow_path.dns_ports == (53, 5353, 8053)


@pytest.mark.parametrize(("ports", "expected"), [
    ("[53, 0]", "slow_path.dns_ports[1]: 0 is out of range for a port (1..65535)"),
    ("[65536]", "slow_path.dns_ports[0]: 65536 is out of range for a port (1..65535)"),
    ("[true]", "slow_path.dns_ports[0]: True is not a port number"),
    ("[53, 5353, 53]", "slow_path.dns_ports[2]: duplicate port 53 (already listed at [0])"),
    ("53", "slow_path.dns_ports: 53 is an integer, expected a list"),
])
def test_bad_dns_ports_are_errors_naming_the_entry(ports: str, expected: str) -> None:
    assert expected in _errors(f"slow_path:\n  dns_ports: {ports}\n")


def test_a_redirect_class_on_a_dns_port_is_a_dns_class() -> None:
    policy = parse_policy("fast_path:\n  redirect_ports: [{protocol: udp, port: 5353}, {protocol: tcp, port: 80}]\n"
                          "slow_path:\n  dns_ports: [5353]\n  dns_rules: [{match: a.test, action: drop}]\n")
    assert [c.describe() for c in policy.dns_classes()] == ["udp/5353 on_failure=pass"]


def test_allow_is_an_action_with_the_meaning_of_pass() -> None:
    policy = parse_policy(UDP53 + "slow_path:\n  dns_rules: [{match: a.test, action: ALLOW}, "
                          "{match: b.test, action: pass}]\n")
    assert [r.action for r in policy.slow_path.dns_rules] == ["allow", "pass"]
    assert "allow" in get_args(model.DnsAction) and "allow" in model.ACTIONS
    # Neither keeps the query from its destination.
    assert "allow" not in model.STOPPING_ACTIONS and "pass" not in model.STOPPING_ACTIONS
    assert {"drop", "block_source", "nxdomain", "refuse"} == model.STOPPING_ACTIONS


def test_allow_is_not_a_signature_action() -> None:
    assert "slow_path.signatures[0].action: 'allow' is not one of" in _errors(
        "slow_path:\n  signatures: [{class: {protocol: tcp, port: 80}, literal: x, action: allow}]\n")


NO_CLASS = ("p.yaml: invalid policy (1 problem)\n"
            "  slow_path.dns_rules: no DNS class, so no query reaches these rules: add {protocol: udp, port: 53} "
            "to fast_path.redirect_ports (DNS ports: 53), or a redirected port to slow_path.dns_ports")


def test_dns_rules_without_a_dns_class_are_an_error_saying_the_fix() -> None:
    assert _errors("slow_path:\n  dns_rules: [{match: evil.test, action: drop}]\n") == NO_CLASS


def test_a_class_on_another_port_does_not_see_dns_rules() -> None:
    text = ("fast_path:\n  redirect_ports: [{protocol: udp, port: 5353}]\n"
            "slow_path:\n  dns_rules: [{regex: '^x', action: drop}]\n")
    assert _errors(text) == NO_CLASS
    # The fix the message names: the class's port as a DNS port.
    fixed = text.replace("slow_path:\n", "slow_path:\n  dns_ports: [5353]\n")
    assert parse_policy(fixed).slow_path.dns_ports == (5353,)


def test_the_message_names_the_configured_dns_ports() -> None:
    message = _errors("slow_path:\n  dns_ports: [8053, 53]\n  dns_rules: [{match: a.test, action: drop}]\n")
    assert ("add {protocol: udp, port: 8053} to fast_path.redirect_ports (DNS ports: 8053, 53)" in message)


def test_empty_dns_ports_with_dns_rules_says_so() -> None:
    message = _errors(UDP53 + "slow_path:\n  dns_ports: []\n  dns_rules: [{match: a.test, action: drop}]\n")
    assert "slow_path.dns_rules: no DNS class, so no query reaches these rules: slow_path.dns_ports is empty" in message


@pytest.mark.parametrize("cls", ["{protocol: udp, port: 53}", "{protocol: tcp, port: 53}"])
def test_a_udp_or_tcp_dns_class_makes_dns_rules_valid(cls: str) -> None:
    policy = parse_policy(f"fast_path:\n  redirect_ports: [{cls}]\n"
                          "slow_path:\n  dns_rules: [{match: a.test, action: drop}]\n")
    assert len(policy.slow_path.dns_rules) == 1


def test_a_policy_without_dns_rules_needs_no_dns_class() -> None:
    assert parse_policy("slow_path:\n  signatures: [{class: {protocol: tcp, port: 80}, literal: x, "
                        "action: drop}]\n").dns_classes() == ()
