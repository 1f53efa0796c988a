"""Policy file parsing and validation, and the duration helpers it relies on."""

from __future__ import annotations

import math
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from pathlib import Path

import pytest
from pydantic import ValidationError

from hyperion.durations import format_duration, parse_duration
from hyperion.errors import PolicyError
from hyperion.policy.diff import policy_diff
from hyperion.policy.loading import load_policy, parse_policy
from hyperion.policy.model import (
    DnsRule,
    FastPathSection,
    Policy,
    RedirectClass,
    Signature,
    SlowPathSection,
    TrafficClass,
)
from tests.support.paths import POLICIES


def _rule(yaml_rule: str) -> str:
    # With a DNS class: a DNS rule no class sees is an error of its own.
    return f"fast_path:\n  redirect_ports: [{{protocol: udp, port: 53}}]\nslow_path:\n  dns_rules:\n    - {yaml_rule}\n"


def _sig(yaml_sig: str) -> str:
    return f"slow_path:\n  signatures:\n    - {yaml_sig}\n"


def _redirect(*classes: str) -> str:
    items = "".join(f"    - {c}\n" for c in classes)
    return f"fast_path:\n  redirect_ports:\n{items}"


# --------------------------------------------------------------------------- valid policies


def test_example_policy_parses_to_expected_values() -> None:
    policy = load_policy(POLICIES / "example.yaml")

    assert policy.mode == "enforce"
    fast = policy.fast_path
    assert fast.allow_cidrs == (IPv4Network("192.0.2.0/28"), IPv6Network("2001:db8:1::/48"))
    assert fast.drop_ips == (IPv4Address("198.51.100.42"),)
    assert fast.drop_cidrs == (IPv4Network("203.0.113.0/24"), IPv6Network("2001:db8:bad::/48"))
    assert fast.redirect_ports == (RedirectClass(protocol=17, port=53, on_failure="pass"),)

    slow = policy.slow_path
    assert slow.malformed_dns_action == "drop"
    assert [(r.match, r.regex, r.qtype, r.action, r.ttl_seconds) for r in slow.dns_rules] == [
        ("evil.com", None, None, "drop", None),
        ("*.tracker.test", None, None, "nxdomain", None),
        (None, r"^[a-z0-9]{30,}\.", None, "alert", None),
        ("c2.test", None, None, "block_source", 600.0),
        ("x.test", None, 28, "refuse", None),
    ]
    first, second = slow.signatures
    assert first.class_ == TrafficClass(protocol=6, port=8080)
    assert (first.literal, first.regex, first.action, first.ttl_seconds) == (
        "root",
        None,
        "drop",
        None,
    )
    assert second.class_ == TrafficClass(protocol=17, port=9999)
    assert (second.literal, second.regex, second.action, second.ttl_seconds) == (
        None,
        r"(?i)union\s+select",
        "block_source",
        300.0,
    )


def test_empty_mapping_is_a_policy_that_blocks_nothing() -> None:
    policy = load_policy(POLICIES / "empty_mapping.yaml")
    assert policy == Policy()
    assert policy.mode == "enforce"
    assert policy.fast_path == FastPathSection()
    assert policy.slow_path == SlowPathSection()
    assert all(count == 0 for count in policy.summary().values())


def test_null_values_mean_defaults() -> None:
    policy = parse_policy("mode:\nfast_path:\n  allow_cidrs:\nslow_path:\n")
    assert policy == Policy()


@pytest.mark.parametrize("protocol", ["17", 17, "UDP", "udp", "Udp"])
def test_udp_protocol_spellings(protocol: object) -> None:
    policy = parse_policy(_redirect(f"{{protocol: {protocol!r}, port: 53}}".replace("'", '"')))
    assert policy.fast_path.redirect_ports[0].protocol == 17
    bare = parse_policy(_redirect(f"{{protocol: {protocol}, port: 53}}"))
    assert bare.fast_path.redirect_ports[0].protocol == 17


@pytest.mark.parametrize("protocol", ["6", 6, "TCP", "tcp"])
def test_tcp_protocol_spellings(protocol: object) -> None:
    policy = parse_policy(
        _sig(f"{{class: {{protocol: {protocol}, port: 1}}, literal: x, action: drop}}")
    )
    assert policy.slow_path.signatures[0].class_.protocol == 6


def test_port_accepts_decimal_string() -> None:
    policy = parse_policy(_redirect('{protocol: udp, port: "53", on_failure: drop}'))
    assert policy.fast_path.redirect_ports[0] == RedirectClass(
        protocol=17, port=53, on_failure="drop"
    )


def test_bare_addresses_in_cidr_lists_are_host_routes() -> None:
    policy = parse_policy('fast_path:\n  drop_cidrs: ["198.51.100.7", "2001:db8::7"]\n')
    assert policy.fast_path.drop_cidrs == (
        IPv4Network("198.51.100.7/32"),
        IPv6Network("2001:db8::7/128"),
    )


def test_duplicate_addresses_are_dropped_keeping_order() -> None:
    policy = parse_policy(
        "fast_path:\n"
        '  drop_ips: ["198.51.100.2", "198.51.100.1", "198.51.100.2"]\n'
        '  allow_cidrs: ["192.0.2.0/28", "192.0.2.0/28"]\n'
    )
    assert policy.fast_path.drop_ips == (
        IPv4Address("198.51.100.2"),
        IPv4Address("198.51.100.1"),
    )
    assert policy.fast_path.allow_cidrs == (IPv4Network("192.0.2.0/28"),)


def test_domain_names_are_normalized() -> None:
    policy = parse_policy(
        _rule('{match: "Evil.COM.", action: DROP}')
        + '    - {match: "*.Tracker.Test", action: alert}\n'
    )
    assert [r.match for r in policy.slow_path.dns_rules] == ["evil.com", "*.tracker.test"]
    assert policy.slow_path.dns_rules[0].action == "drop"


@pytest.mark.parametrize(
    ("qtype", "number"),
    [("A", 1), ("aaaa", 28), ("HTTPS", 65), ("CAA", 257), (15, 15), ('"33"', 33), ("TYPE99", 99)],
)
def test_qtype_names_and_numbers(qtype: object, number: int) -> None:
    policy = parse_policy(_rule(f"{{match: a.test, qtype: {qtype}, action: refuse}}"))
    assert policy.slow_path.dns_rules[0].qtype == number


def test_yaml_merge_keys_still_work() -> None:
    text = (
        "fast_path:\n  redirect_ports: [{protocol: udp, port: 53}]\n"
        "slow_path:\n"
        "  dns_rules:\n"
        "    - &base {match: a.test, action: drop}\n"
        "    - {<<: *base, match: b.test}\n"
    )
    policy = parse_policy(text)
    assert [r.match for r in policy.slow_path.dns_rules] == ["a.test", "b.test"]


def test_models_are_frozen_and_hashable() -> None:
    policy = load_policy(POLICIES / "example.yaml")
    with pytest.raises(ValidationError):
        policy.mode = "monitor"  # type: ignore[misc]
    assert hash(policy) == hash(load_policy(POLICIES / "example.yaml"))


def test_models_can_be_built_in_python_by_field_name() -> None:
    sig = Signature(
        class_=TrafficClass(protocol="udp", port=9999),  # type: ignore[arg-type]
        literal=None,
        regex="x+",
        action="block_source",
        ttl_seconds="5m",  # type: ignore[arg-type]
    )
    assert sig.class_.protocol == 17
    assert sig.ttl_seconds == 300.0
    assert DnsRule(match="A.test", action="drop").match == "a.test"


def test_yaml_must_use_yaml_key_names() -> None:
    with pytest.raises(PolicyError, match=r"slow_path\.dns_rules\[0\]\.ttl_seconds: unknown key"):
        parse_policy(_rule("{match: a.test, action: block_source, ttl_seconds: 60}"))


# ------------------------------------------------------------------------ invalid policies

# (id, policy text or None for "no such file", expected field path, expected bad value)
BAD_POLICIES: list[tuple[str, str | None, str, str]] = [
    ("bad-mode", "mode: enforced\n", "mode:", "'enforced' is not one of 'enforce', 'monitor'"),
    ("unknown-top-level-key", "mode: enforce\nmodes: monitor\n", "modes:", "did you mean 'mode'"),
    (
        "unknown-nested-key",
        "fast_path:\n  drop_cidr: []\n",
        "fast_path.drop_cidr:",
        "did you mean 'drop_cidrs'",
    ),
    (
        "unknown-key-in-class",
        _sig("{class: {protocol: tcp, port: 80, proto: tcp}, literal: x, action: drop}"),
        "slow_path.signatures[0].class.proto:",
        "unknown key",
    ),
    (
        "host-bits-set",
        'fast_path:\n  drop_cidrs: ["203.0.113.0/24", "203.0.113.5/24"]\n',
        "fast_path.drop_cidrs[1]:",
        "'203.0.113.5/24' has host bits set (did you mean 203.0.113.0/24?)",
    ),
    (
        "host-bits-set-v6",
        'fast_path:\n  allow_cidrs: ["2001:db8::1/32"]\n',
        "fast_path.allow_cidrs[0]:",
        "'2001:db8::1/32' has host bits set (did you mean 2001:db8::/32?)",
    ),
    (
        "invalid-ip",
        'fast_path:\n  drop_ips: ["198.51.100.300"]\n',
        "fast_path.drop_ips[0]:",
        "'198.51.100.300'",
    ),
    (
        "prefix-33",
        'fast_path:\n  allow_cidrs: ["192.0.2.0/33"]\n',
        "fast_path.allow_cidrs[0]:",
        "'192.0.2.0/33' has an invalid prefix length",
    ),
    (
        "prefix-129",
        'fast_path:\n  drop_cidrs: ["2001:db8::/129"]\n',
        "fast_path.drop_cidrs[0]:",
        "'2001:db8::/129'",
    ),
    (
        "garbage-cidr",
        'fast_path:\n  drop_cidrs: ["not-a-net/8"]\n',
        "fast_path.drop_cidrs[0]:",
        "'not-a-net/8' is not a valid",
    ),
    (
        "prefix-in-drop-ips",
        'fast_path:\n  drop_ips: ["198.51.100.0/24"]\n',
        "fast_path.drop_ips[0]:",
        "'198.51.100.0/24' has a prefix length",
    ),
    (
        "ip-list-is-a-string",
        'fast_path:\n  drop_ips: "198.51.100.1"\n',
        "fast_path.drop_ips:",
        "'198.51.100.1' is a string, expected a list",
    ),
    ("section-not-mapping", "fast_path: 5\n", "fast_path:", "5 is an integer, expected a mapping"),
    (
        "port-0",
        _redirect("{protocol: udp, port: 0}"),
        "fast_path.redirect_ports[0].port:",
        "0 is out of range",
    ),
    (
        "port-70000",
        _redirect("{protocol: udp, port: 70000}"),
        "fast_path.redirect_ports[0].port:",
        "70000",
    ),
    (
        "port-abc",
        _redirect("{protocol: udp, port: abc}"),
        "fast_path.redirect_ports[0].port:",
        "'abc' is not a port number",
    ),
    (
        "port-bool",
        _redirect("{protocol: udp, port: true}"),
        "fast_path.redirect_ports[0].port:",
        "True is not a port number",
    ),
    (
        "port-missing",
        _redirect("{protocol: udp}"),
        "fast_path.redirect_ports[0].port:",
        "required key is missing",
    ),
    (
        "unknown-protocol-name",
        _redirect("{protocol: foo, port: 53}"),
        "fast_path.redirect_ports[0].protocol:",
        "'foo' is not a known protocol",
    ),
    (
        "icmp-redirect-class",
        _redirect("{protocol: icmp, port: 1}"),
        "fast_path.redirect_ports[0].protocol:",
        "'icmp' (protocol 1) has no ports; only tcp and udp",
    ),
    (
        "protocol-number-without-ports",
        _redirect("{protocol: 47, port: 1}"),
        "fast_path.redirect_ports[0].protocol:",
        "47 is a protocol without ports",
    ),
    (
        "bad-on-failure",
        _redirect("{protocol: udp, port: 53, on_failure: retry}"),
        "fast_path.redirect_ports[0].on_failure:",
        "'retry' is not one of 'pass', 'drop'",
    ),
    (
        "duplicate-class",
        _redirect(
            "{protocol: udp, port: 53}", "{protocol: tcp, port: 53}", "{protocol: 17, port: 53}"
        ),
        "fast_path.redirect_ports[2]:",
        "duplicate class 'udp/53' (already listed at [0])",
    ),
    (
        "bad-malformed-dns-action",
        "slow_path:\n  malformed_dns_action: nxdomain\n",
        "slow_path.malformed_dns_action:",
        "'nxdomain' is not one of 'drop', 'pass', 'alert'",
    ),
    (
        "dns-match-and-regex",
        _rule('{match: evil.com, regex: "evil", action: drop}'),
        "slow_path.dns_rules[0]:",
        "has both match='evil.com' and regex='evil'",
    ),
    (
        "dns-neither-match-nor-regex",
        _rule("{action: drop}"),
        "slow_path.dns_rules[0]:",
        "needs either 'match'",
    ),
    (
        "bad-wildcard",
        _rule('{match: "evil.*.com", action: drop}'),
        "slow_path.dns_rules[0].match:",
        "'evil.*.com'",
    ),
    (
        "label-over-63",
        _rule(f"{{match: {'a' * 64}.com, action: drop}}"),
        "slow_path.dns_rules[0].match:",
        "64-character label",
    ),
    (
        "name-over-253",
        _rule(f"{{match: {'.'.join(['abcdefghi'] * 26)}, action: drop}}"),
        "slow_path.dns_rules[0].match:",
        "259 characters long",
    ),
    (
        "bad-label-characters",
        _rule('{match: "ev!l.com", action: drop}'),
        "slow_path.dns_rules[0].match:",
        "'ev!l.com' has label 'ev!l'",
    ),
    (
        "bad-regex",
        _rule('{regex: "evil(", action: drop}'),
        "slow_path.dns_rules[0].regex:",
        "'evil(' is not a valid regex",
    ),
    (
        "empty-regex",
        _rule('{regex: "", action: drop}'),
        "slow_path.dns_rules[0].regex:",
        "regex must not be empty",
    ),
    (
        "unknown-dns-action",
        _rule("{match: a.test, action: sinkhole}"),
        "slow_path.dns_rules[0].action:",
        "'sinkhole' is not one of",
    ),
    (
        "block-source-without-ttl",
        _rule("{match: c2.test, action: block_source}"),
        "slow_path.dns_rules[0].ttl:",
        "action 'block_source' needs a ttl",
    ),
    (
        "ttl-on-drop",
        _rule("{match: c2.test, action: drop, ttl: 10m}"),
        "slow_path.dns_rules[0].ttl:",
        "'10m' given, but ttl is only used with action 'block_source'",
    ),
    (
        "bad-ttl",
        _rule("{match: c2.test, action: block_source, ttl: 10 parsecs}"),
        "slow_path.dns_rules[0].ttl:",
        "'10 parsecs'",
    ),
    (
        "negative-ttl",
        _rule("{match: c2.test, action: block_source, ttl: -5}"),
        "slow_path.dns_rules[0].ttl:",
        "-5: must be greater than zero",
    ),
    (
        "unknown-qtype",
        _rule("{match: a.test, qtype: AAAAA, action: drop}"),
        "slow_path.dns_rules[0].qtype:",
        "'AAAAA' is not a known DNS query type",
    ),
    (
        "qtype-out-of-range",
        _rule("{match: a.test, qtype: 70000, action: drop}"),
        "slow_path.dns_rules[0].qtype:",
        "70000 is out of range",
    ),
    (
        "signature-literal-and-regex",
        _sig("{class: {protocol: tcp, port: 80}, literal: a, regex: b, action: drop}"),
        "slow_path.signatures[0]:",
        "has both literal='a' and regex='b'",
    ),
    (
        "signature-empty-literal",
        _sig('{class: {protocol: tcp, port: 80}, literal: "", action: drop}'),
        "slow_path.signatures[0].literal:",
        "literal must not be empty",
    ),
    (
        "signature-icmp-class",
        _sig("{class: {protocol: icmp, port: 80}, literal: a, action: drop}"),
        "slow_path.signatures[0].class.protocol:",
        "'icmp' (protocol 1) has no ports",
    ),
    (
        "signature-missing-class",
        _sig("{literal: a, action: drop}"),
        "slow_path.signatures[0].class:",
        "required key is missing",
    ),
    (
        "signature-dns-only-action",
        _sig("{class: {protocol: udp, port: 53}, literal: a, action: nxdomain}"),
        "slow_path.signatures[0].action:",
        "'nxdomain' is not one of 'drop', 'alert', 'block_source'",
    ),
    (
        "signature-block-source-without-ttl",
        _sig("{class: {protocol: udp, port: 53}, literal: a, action: block_source}"),
        "slow_path.signatures[0].ttl:",
        "needs a ttl",
    ),
    (
        "duplicate-yaml-key",
        "mode: enforce\nfast_path: {}\nmode: monitor\n",
        "line 3, column 1:",
        "duplicate key 'mode' (first defined on line 1)",
    ),
    (
        "duplicate-nested-yaml-key",
        "fast_path:\n  drop_ips: []\n  drop_ips: []\n",
        "line 3, column 3:",
        "duplicate key 'drop_ips' (first defined on line 2)",
    ),
    ("yaml-syntax-error", "mode: [enforce\n", "line 2, column 1:", "expected ',' or ']'"),
    ("yaml-unsafe-tag", "mode: !!python/object:os.system {}\n", "line 1", "python/object"),
    ("top-level-list", "- mode: enforce\n", "top level", "is a list, expected a mapping"),
    ("top-level-scalar", "enforce\n", "top level", "is a string, expected a mapping"),
    ("empty-file", "", "", "policy file is empty"),
    ("comments-only-file", "# nothing yet\n", "", "policy file is empty"),
    ("missing-file", None, "", "No such file or directory"),
]


@pytest.mark.parametrize(
    ("text", "path", "value"),
    [pytest.param(text, path, value, id=case) for case, text, path, value in BAD_POLICIES],
)
def test_bad_policy_is_rejected_with_path_and_value(
    tmp_path: Path, text: str | None, path: str, value: str
) -> None:
    policy_file = tmp_path / "policy.yaml"
    if text is not None:
        policy_file.write_text(text, encoding="utf-8")

    with pytest.raises(PolicyError) as caught:
        load_policy(policy_file)

    message = str(caught.value)
    if text is None:  # I/O failure: the file path is the bad value
        assert message.startswith(f"{policy_file}: cannot read policy file")
    else:
        assert message.startswith(f"{policy_file}: invalid policy")
        assert f"\n  {path}" in message
    assert value in message
    # Nothing from pydantic, PyYAML or the OS leaks through, not even as a chained exception.
    error = caught.value
    assert type(error) is PolicyError
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


def test_bad_policy_table_is_big_enough() -> None:
    assert len({case for case, *_ in BAD_POLICIES}) == len(BAD_POLICIES) >= 15


def test_every_problem_is_reported_on_its_own_line() -> None:
    text = (
        "mode: enforced\n"
        "fast_path:\n"
        '  drop_cidrs: ["203.0.113.5/24"]\n'
        "slow_path:\n"
        "  dns_rules:\n"
        "    - {match: c2.test, action: block_source}\n"
    )
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, source="site.yaml")
    lines = str(caught.value).splitlines()
    assert lines[0] == "site.yaml: invalid policy (3 problems)"
    assert [line.split(":")[0] for line in lines[1:]] == [
        "  mode",
        "  fast_path.drop_cidrs[0]",
        "  slow_path.dns_rules[0].ttl",
    ]


def test_default_source_name() -> None:
    with pytest.raises(PolicyError, match=r"^<policy>: invalid policy"):
        parse_policy("mode: x\n")


def test_long_bad_values_are_truncated() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(f"mode: {'x' * 500}\n")
    line = str(caught.value).splitlines()[1]
    assert "..." in line
    assert len(line) < 150


def test_huge_number_of_problems_is_capped() -> None:
    ips = ", ".join(f'"bad{i}"' for i in range(500))
    with pytest.raises(PolicyError) as caught:
        parse_policy(f"fast_path:\n  drop_ips: [{ips}]\n")
    lines = str(caught.value).splitlines()
    assert lines[0].endswith("(500 problems)")
    assert lines[-1] == "  ... and 450 more problems"


def test_deeply_nested_yaml_is_a_policy_error() -> None:
    # libyaml reports its own depth limit; the pure-Python parser hits the recursion limit.
    with pytest.raises(PolicyError, match=r"nested too deeply|maximum nesting depth"):
        parse_policy("[" * 5000)


def test_directory_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=rf"^{tmp_path}: cannot read policy file"):
        load_policy(tmp_path)


def test_non_utf8_file_is_a_policy_error(tmp_path: Path) -> None:
    policy_file = tmp_path / "latin1.yaml"
    policy_file.write_bytes(b"mode: enforc\xe9\n")
    with pytest.raises(PolicyError, match="not valid UTF-8"):
        load_policy(str(policy_file))


# ------------------------------------------------------------------------- summary & diff


def test_summary_counts_each_list() -> None:
    assert load_policy(POLICIES / "example.yaml").summary() == {
        "allow_cidrs": 2,
        "drop_ips": 1,
        "drop_cidrs": 2,
        "redirect_ports": 1,
        "dns_rules": 5,
        "signatures": 2,
    }


def test_policy_diff_reports_added_and_removed_entries() -> None:
    old = load_policy(POLICIES / "example.yaml")
    new = load_policy(POLICIES / "monitor.yaml")
    assert policy_diff(old, new) == {
        "allow_cidrs": {"added": [], "removed": ["2001:db8:1::/48"]},
        "drop_ips": {"added": ["198.51.100.43"], "removed": []},
        "drop_cidrs": {"added": [], "removed": []},
        "redirect_ports": {
            "added": ["udp/53 on_failure=drop"],
            "removed": ["udp/53 on_failure=pass"],
        },
        "dns_rules": {
            "added": ["match=c2.test action=block_source ttl=1h"],
            "removed": ["match=c2.test action=block_source ttl=10m"],
        },
        "signatures": {
            "added": [],
            "removed": ["udp/9999 regex='(?i)union\\\\s+select' action=block_source ttl=5m"],
        },
    }


def test_policy_diff_of_identical_policies_is_empty() -> None:
    policy = load_policy(POLICIES / "example.yaml")
    diff = policy_diff(policy, policy)
    assert set(diff) == set(Policy.LISTS)
    assert all(change == {"added": [], "removed": []} for change in diff.values())


def test_rule_renderings() -> None:
    policy = load_policy(POLICIES / "example.yaml")
    assert [r.describe() for r in policy.slow_path.dns_rules] == [
        "match=evil.com action=drop",
        "match=*.tracker.test action=nxdomain",
        "regex='^[a-z0-9]{30,}\\\\.' action=alert",
        "match=c2.test action=block_source ttl=10m",
        "match=x.test qtype=AAAA action=refuse",
    ]
    assert policy.slow_path.signatures[0].describe() == "tcp/8080 literal='root' action=drop"


# ------------------------------------------------------------------------------ durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("10m", 600.0),
        ("1h", 3600.0),
        ("2d", 172800.0),
        ("500ms", 0.5),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("1H", 3600.0),
        ("45", 45.0),
        ("2.5", 2.5),
        ("1.5m", 90.0),
        (" 30s ", 30.0),
        (45, 45.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("0", "greater than zero"),
        ("0s", "greater than zero"),
        ("-5s", "greater than zero"),
        (0, "greater than zero"),
        (-1.5, "greater than zero"),
        ("10 parsecs", "expected seconds"),
        ("abc", "expected seconds"),
        ("1h30", "expected seconds"),
        ("s", "expected seconds"),
        ("nan", "expected seconds"),
        (math.inf, "finite"),
        (math.nan, "finite"),
        (True, "invalid duration"),
        (None, "invalid duration"),
    ],
)
def test_parse_duration_rejects(value: object, reason: str) -> None:
    with pytest.raises(ValueError, match="invalid duration") as caught:
        parse_duration(value)  # type: ignore[arg-type]
    assert reason in str(caught.value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (600, "10m"),
        (5400, "1h30m"),
        (2.5, "2.5s"),
        (0.5, "500ms"),
        (86400, "1d"),
        (90061, "1d1h1m1s"),
        (90.5, "1m30.5s"),
        (30, "30s"),
        (0, "0s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [0.001, 0.25, 1, 59.5, 61, 3599, 3600, 86399.999, 1e6])
def test_format_duration_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


def test_json_policy_is_accepted_and_checked() -> None:
    policy = parse_policy('{"fast_path": {"drop_ips": ["198.51.100.42"]}, "mode": "monitor"}')
    assert policy.mode == "monitor" and str(policy.fast_path.drop_ips[0]) == "198.51.100.42"
    with pytest.raises(PolicyError, match="duplicate key 'mode'"):
        parse_policy('{"mode": "monitor", "mode": "enforce"}')
    with pytest.raises(PolicyError, match=r"fast_path\.drop_ips\[0\]: 'nope'"):
        parse_policy('{"fast_path": {"drop_ips": ["nope"]}}')
    # YAML flow style is not JSON and still parses as YAML.
    assert parse_policy("{mode: monitor}").mode == "monitor"


@pytest.mark.parametrize("mode,who", [(0o664, "group"), (0o646, "others"), (0o666, "group and others")])
def test_policy_writable_by_others_is_refused(tmp_path: Path, mode: int, who: str) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text("mode: enforce\n")
    policy_file.chmod(mode)
    with pytest.raises(PolicyError, match=rf"writable by {who}, not only its owner \(mode 0{mode:o}; chmod go-w"):
        load_policy(policy_file)
    policy_file.chmod(0o644)
    assert load_policy(policy_file).mode == "enforce"
