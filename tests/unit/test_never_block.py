"""block_source safeguards without the kernel: the policy's never_block list and per-rule caps, the
discovery of the host's own addresses, gateways and resolvers (from injected `ip -j` output and
resolv.conf text), the effective list the daemon hands the workers, and the native range check."""

from __future__ import annotations

import json
import random
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from pathlib import Path

import pytest

from hyperion.daemon.daemon import Daemon, DaemonOptions
from hyperion.errors import PolicyError
from hyperion.policy.loading import parse_policy
from hyperion.policy.neverblock import (
    HostFacts,
    addresses_from_ip_addr,
    discover_host_facts,
    effective_never_block,
    gateways_from_ip_route,
    never_block_entry,
    resolvers_from_resolv_conf,
)
from hyperion.slowpath.protocol import RulesCommand, RuleSpec
from hyperion.slowpath.rules import compile_rules
from hyperion.slowpath.worker import Worker

# A DNS class for the DNS rules: a DNS rule no class sees is an error of its own.
DNS_CLASS = "fast_path:\n  redirect_ports: [{protocol: udp, port: 53}]\n"


def _errors(text: str) -> str:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yaml")
    return str(info.value)


# ------------------------------------------------------------------------------ the policy


def test_never_block_takes_addresses_and_networks() -> None:
    policy = parse_policy("slow_path:\n  never_block: ['203.0.113.53', '198.51.100.0/24', '2001:db8:53::1',"
                          " '2001:db8:aa::/48']\n")
    assert policy.slow_path.never_block == (IPv4Network("203.0.113.53/32"), IPv4Network("198.51.100.0/24"),
                                            IPv6Network("2001:db8:53::1/128"), IPv6Network("2001:db8:aa::/48"))
    assert policy.slow_path.never_block_defaults is True
    assert parse_policy("slow_path: {never_block_defaults: false}").slow_path.never_block_defaults is False
    assert parse_policy("{}").slow_path.never_block == ()


@pytest.mark.parametrize(("entry", "message"), [
    ("'not-an-ip'", "slow_path.never_block[1]: 'not-an-ip' is not a valid IPv4 or IPv6 address or network"),
    ("'198.51.100.1/24'", "slow_path.never_block[1]: '198.51.100.1/24' has host bits set (did you mean "
                          "198.51.100.0/24?)"),
    ("'192.0.2.0/33'", "slow_path.never_block[1]: '192.0.2.0/33' has an invalid prefix length '33'"),
    ("53", "slow_path.never_block[1]: 53 is an integer, expected an address or a CIDR"),
    ("'fe80::1%eth0'", "slow_path.never_block[1]: 'fe80::1%eth0' has a zone index"),
])
def test_bad_never_block_entries_are_named(entry: str, message: str) -> None:
    assert message in _errors(f"slow_path:\n  never_block: ['192.0.2.53', {entry}]\n")


def test_never_block_defaults_must_be_a_boolean() -> None:
    assert ("slow_path.never_block_defaults: 'no' is a string, expected true or false"
            in _errors("slow_path: {never_block_defaults: 'no'}"))


def test_max_blocks_per_second_defaults_to_ten_on_block_source_rules() -> None:
    policy = parse_policy(
        "fast_path:\n  redirect_ports: [{protocol: udp, port: 53}]\n"
        "slow_path:\n  dns_rules:\n    - {match: c2.test, action: block_source, ttl: 10m}\n"
        "    - {match: c3.test, action: block_source, ttl: 10m, max_blocks_per_second: 3}\n"
        "  signatures:\n"
        "    - {class: {protocol: tcp, port: 80}, literal: x, action: block_source, ttl: 1m,"
        " max_blocks_per_second: 1}\n")
    rules, sigs = policy.slow_path.dns_rules, policy.slow_path.signatures
    assert [r.max_blocks_per_second for r in rules] == [10, 3]
    assert sigs[0].max_blocks_per_second == 1
    assert "max_blocks_per_second=3" in rules[1].describe()


@pytest.mark.parametrize(("extra", "message"), [
    ("max_blocks_per_second: 0", "slow_path.dns_rules[0].max_blocks_per_second: 0 is out of range (1..100000)"),
    ("max_blocks_per_second: 1000001",
     "slow_path.dns_rules[0].max_blocks_per_second: 1000001 is out of range (1..100000)"),
    ("max_blocks_per_second: true",
     "slow_path.dns_rules[0].max_blocks_per_second: True is a boolean, expected a whole number of blocks"),
    ("max_blocks_per_second: 2.5",
     "slow_path.dns_rules[0].max_blocks_per_second: 2.5 is a number, expected a whole number of blocks"),
])
def test_bad_caps_are_named(extra: str, message: str) -> None:
    assert message in _errors(f"slow_path:\n  dns_rules:\n    - {{match: c2.test, action: block_source, ttl: 1m,"
                              f" {extra}}}\n")


def test_a_cap_without_block_source_is_an_error() -> None:
    assert ("slow_path.dns_rules[0].max_blocks_per_second: 5 given, but it is only used with action "
            "'block_source' (action is 'drop')"
            in _errors("slow_path:\n  dns_rules:\n    - {match: c2.test, action: drop, max_blocks_per_second: 5}\n"))


# --------------------------------------------------------------------- discovering defaults

IP_ADDR = json.dumps([
    {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8},
                                   {"family": "inet6", "local": "::1", "prefixlen": 128}]},
    {"ifname": "eth0", "addr_info": [{"family": "inet", "local": "192.0.2.10", "prefixlen": 24},
                                     {"family": "inet6", "local": "2001:db8:1::10", "prefixlen": 64},
                                     {"family": "inet6", "local": "fe80::1:10", "prefixlen": 64}]},
    {"ifname": "eth1", "addr_info": []},
    {"ifname": "eth2"},
])
IP_ROUTE_4 = json.dumps([
    {"dst": "default", "gateway": "192.0.2.1", "dev": "eth0", "flags": []},
    {"dst": "192.0.2.0/24", "dev": "eth0", "protocol": "kernel", "scope": "link", "prefsrc": "192.0.2.10"},
    {"dst": "203.0.113.0/24", "nexthops": [{"gateway": "192.0.2.2", "dev": "eth0", "weight": 1},
                                          {"gateway": "192.0.2.3", "dev": "eth0", "weight": 1}]},
    {"dst": "198.51.100.0/24", "via": {"family": "inet6", "host": "fe80::99"}, "dev": "eth0"},
    {"type": "local", "dst": "192.0.2.10", "dev": "eth0", "table": "local"},
])
IP_ROUTE_6 = json.dumps([
    {"dst": "default", "gateway": "fe80::1", "dev": "eth0", "metric": 1024},
    {"dst": "2001:db8:ff00::/40", "gateway": "2001:db8:1::2", "dev": "eth0"},
    {"dst": "default", "gateway": "fe80::1", "dev": "eth0", "metric": 2048},  # again: once in the result
])
RESOLV_CONF = """# written by hand
search example.test
nameserver 203.0.113.53
nameserver   2001:db8:53::53   # with a comment
nameserver fe80::53%eth0
nameserver not-an-address
options edns0
;nameserver 198.51.100.99
"""


def test_addresses_of_every_interface() -> None:
    assert addresses_from_ip_addr(IP_ADDR) == [ip_address(a) for a in (
        "127.0.0.1", "::1", "192.0.2.10", "2001:db8:1::10", "fe80::1:10")]


def test_gateways_are_the_next_hops_of_every_route() -> None:
    assert gateways_from_ip_route(IP_ROUTE_4) == [ip_address(a) for a in (
        "192.0.2.1", "192.0.2.2", "192.0.2.3", "fe80::99")]
    assert gateways_from_ip_route(IP_ROUTE_6) == [ip_address("fe80::1"), ip_address("2001:db8:1::2")]
    assert gateways_from_ip_route("[]") == []


def test_resolvers_are_the_nameserver_lines() -> None:
    assert resolvers_from_resolv_conf(RESOLV_CONF) == [ip_address(a) for a in (
        "203.0.113.53", "2001:db8:53::53", "fe80::53")]
    assert resolvers_from_resolv_conf("") == []


def test_discovery_runs_ip_in_json_and_reads_resolv_conf(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(RESOLV_CONF)
    calls: list[list[str]] = []

    def run(argv: list[str]) -> str:
        calls.append(argv)
        return {"addr": IP_ADDR, "-4": IP_ROUTE_4, "-6": IP_ROUTE_6}[argv[2] if argv[2] != "addr" else "addr"]

    facts = discover_host_facts(run=run, resolv_conf=resolv)
    assert sorted(calls) == sorted([["ip", "-j", "addr", "show"], ["ip", "-j", "-4", "route", "show", "table", "all"],
                                    ["ip", "-j", "-6", "route", "show", "table", "all"]])
    assert ip_address("192.0.2.10") in facts.addresses and ip_address("fe80::1:10") in facts.addresses
    assert facts.gateways == tuple(ip_address(a) for a in ("192.0.2.1", "192.0.2.2", "192.0.2.3", "fe80::99",
                                                           "fe80::1", "2001:db8:1::2"))
    assert facts.resolvers[0] == ip_address("203.0.113.53")


def test_discovery_survives_a_missing_resolv_conf_and_a_failing_ip(tmp_path: Path) -> None:
    def run(argv: list[str]) -> str:
        raise OSError("ip: not found")

    facts = discover_host_facts(run=run, resolv_conf=tmp_path / "absent")
    assert facts == HostFacts((), (), ())


FACTS = HostFacts(addresses=(ip_address("192.0.2.10"),), gateways=(ip_address("192.0.2.1"),),
                  resolvers=(ip_address("2001:db8:53::53"),))


def test_effective_list_adds_the_defaults_and_the_allowlist() -> None:
    policy = parse_policy("fast_path: {allow_cidrs: ['198.51.100.0/28']}\nslow_path: {never_block: ['203.0.113.7']}")
    assert effective_never_block(policy, FACTS) == (
        ip_network("203.0.113.7/32"), ip_network("192.0.2.10/32"), ip_network("192.0.2.1/32"),
        ip_network("2001:db8:53::53/128"), ip_network("198.51.100.0/28"))
    off = parse_policy("fast_path: {allow_cidrs: ['198.51.100.0/28']}\n"
                       "slow_path: {never_block: ['203.0.113.7'], never_block_defaults: false}")
    assert effective_never_block(off, FACTS) == (ip_network("203.0.113.7/32"),)


def test_never_block_entry_names_the_matching_network() -> None:
    networks = (ip_network("203.0.113.0/24"), ip_network("2001:db8::/32"))
    assert never_block_entry(ip_address("203.0.113.9"), networks) == ip_network("203.0.113.0/24")
    assert never_block_entry(ip_address("2001:db8::1"), networks) == ip_network("2001:db8::/32")
    assert never_block_entry(ip_address("198.51.100.1"), networks) is None


def test_the_daemon_compiles_rules_with_the_defaults_it_discovers(tmp_path: Path) -> None:
    """At start and at every reload: the facts are asked for again each time."""
    asked: list[int] = []

    def facts() -> HostFacts:
        asked.append(1)
        return FACTS

    daemon = Daemon(DaemonOptions(ifname="x", policy_path=tmp_path / "p.yaml", host_facts=facts))
    policy = parse_policy(DNS_CLASS + "slow_path:\n  dns_rules: [{match: c2.test, action: block_source, ttl: 1m}]\n")
    first = daemon.compile_slow_path(policy)
    daemon.compile_slow_path(policy)
    assert len(asked) == 2
    assert first.rules.never_blocked(ip_address("192.0.2.1").packed)
    assert first.rules.never_blocked(ip_address("2001:db8:53::53").packed)
    assert not first.rules.never_blocked(ip_address("192.0.2.2").packed)


# ------------------------------------------------------------------- what the workers get


def test_the_spec_carries_the_list_and_the_caps_and_a_worker_rebuilds_them() -> None:
    policy = parse_policy(
        "fast_path:\n  redirect_ports: [{protocol: udp, port: 53}]\n"
        "slow_path:\n  never_block: ['203.0.113.0/24', '2001:db8:53::/48']\n  dns_rules:\n"
        "    - {match: a.test, action: drop}\n"
        "    - {match: c2.test, action: block_source, ttl: 10m, max_blocks_per_second: 4}\n")
    compiled = compile_rules(policy)
    spec = RuleSpec.from_json(json.loads(json.dumps(compiled.spec.to_json())))
    rebuilt = Worker.compile(RulesCommand(1, spec))
    for rules in (compiled.rules, rebuilt):
        assert rules.never_blocked(ip_address("203.0.113.255").packed)
        assert rules.never_blocked(ip_address("2001:db8:53:ffff::1").packed)
        assert not rules.never_blocked(ip_address("203.0.114.0").packed)
        assert not rules.never_blocked(ip_address("2001:db8:54::").packed)
        assert rules.block_limits() == [0, 4]


def test_the_native_range_check_agrees_with_ipaddress() -> None:
    """Overlapping and adjacent networks of both families, against random and edge addresses."""
    rng = random.Random(12)
    networks = []
    for _ in range(200):
        prefix = rng.choice([8, 16, 20, 24, 28, 31, 32])
        networks.append(ip_network((rng.randrange(2**32) >> (32 - prefix) << (32 - prefix), prefix)))
        prefix6 = rng.choice([16, 32, 48, 64, 120, 127, 128])
        networks.append(ip_network((rng.randrange(2**128) >> (128 - prefix6) << (128 - prefix6), prefix6)))
    networks += [ip_network("0.0.0.0/32"), ip_network("255.255.255.255/32"), ip_network("::/128")]
    policy = parse_policy(json.dumps({"slow_path": {"never_block": [str(n) for n in networks],
                                                    "never_block_defaults": False}}))
    rules = compile_rules(policy).rules
    probes = [n.network_address for n in networks] + [n.broadcast_address for n in networks]
    probes += [ip_address(int(n.network_address) - 1) for n in networks if int(n.network_address) > 0]
    probes += [ip_address(int(n.broadcast_address) + 1) for n in networks
               if int(n.broadcast_address) < 2 ** n.max_prefixlen - 1]
    probes += [ip_address(rng.randrange(2**32)) for _ in range(2000)]
    probes += [ip_address(rng.randrange(2**128)) for _ in range(2000)]
    for address in probes:
        expected = any(address in n for n in networks if n.version == address.version)
        assert rules.never_blocked(address.packed) == expected, address


def test_policy_diff_shows_never_block_changes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hyperion.cli.main import main

    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text('slow_path: {never_block: ["192.0.2.1", "198.51.100.0/24"]}\n')
    new.write_text('slow_path: {never_block: ["198.51.100.0/24", "2001:db8::/32"], never_block_defaults: false}\n')
    for path in (old, new):
        path.chmod(0o600)
    assert main(["policy", "diff", str(old), str(new)]) == 0
    assert capsys.readouterr().out.splitlines()[2:] == [
        "~ slow_path.never_block_defaults: true -> false",
        "- slow_path.never_block: 192.0.2.1/32",
        "+ slow_path.never_block: 2001:db8::/32",
    ]
