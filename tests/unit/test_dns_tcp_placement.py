"""DNS over TCP in the compiler and the placement report (DESIGN14B): a tcp class on a DNS port is
judged in XDP for whole queries at the stream position and always keeps the slow path (which
reassembles the rest), so it is flagged HYP_CLASS_F_DNS | HYP_CLASS_F_SLOWPATH; `dns_name_rules:
slow_path` keeps it whole in the slow path. Over TCP the program delivers a whole query no name
rule decided, so when regex rules or the class's signatures must see every query the class is kept
whole too (the slow path judges every query of it). Class flags are read from the ABI header."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from hyperion.cli.main import main
from hyperion.kernel.abi import Abi
from hyperion.policy.compiler import PolicyCompiler
from hyperion.policy.loading import parse_policy
from hyperion.policy.placement import Tier, placement_report, placements
from tests.support.paths import BPF_DIR

HEADER = (BPF_DIR / "include" / "hyperion_abi.h").read_text()
_body = re.search(r"enum hyp_class_flag {(.*?)};", HEADER, re.S)
assert _body
CLASS_F = {m[0]: int(m[1]) for m in re.findall(r"^\s*(HYP_\w+)\s*=\s*(\d+),", _body[1], re.M)}
DNS, SLOW = CLASS_F["HYP_CLASS_F_DNS"], CLASS_F["HYP_CLASS_F_SLOWPATH"]
CLASS_VALUE = struct.Struct("<IIII")  # struct hyp_class_value: class_id, on_failure, flags, reserved

NAMES = "    - {match: evil.test, action: drop}\n    - {match: '*.ads.test', action: nxdomain}\n"


def policy_text(classes: str, rules: str = NAMES, extra: str = "") -> str:
    return f"fast_path:\n  redirect_ports: [{classes}]\nslow_path:\n{extra}  dns_rules:\n{rules}"


def class_flags(abi: Abi, text: str) -> list[int]:
    image = PolicyCompiler(abi, {}).compile(parse_policy(text)).images["hyp_classes"]
    return [CLASS_VALUE.unpack_from(image.values, i * CLASS_VALUE.size)[2] for i in range(image.count)]


def dns_entries(abi: Abi, text: str) -> int:
    counts = PolicyCompiler(abi, {}).compile(parse_policy(text)).entry_counts()
    return int(counts["hyp_dns_short"]) + int(counts["hyp_dns_long"])


def test_a_tcp_dns_class_is_judged_in_xdp_and_keeps_the_slow_path(abi: Abi) -> None:
    text = policy_text("{protocol: udp, port: 53}, {protocol: tcp, port: 53}, {protocol: tcp, port: 8080}")
    assert class_flags(abi, text) == [DNS, DNS | SLOW, SLOW]
    # Only a tcp DNS class: its name rules are still looked up in XDP.
    only_tcp = policy_text("{protocol: tcp, port: 53}")
    assert class_flags(abi, only_tcp) == [DNS | SLOW]
    assert dns_entries(abi, only_tcp) == 2
    assert {r.tier for r in placements(parse_policy(only_tcp))} == {Tier.XDP}
    # Another DNS port works the same way.
    assert class_flags(abi, policy_text("{protocol: tcp, port: 5353}", extra="  dns_ports: [5353]\n")) == [DNS | SLOW]


def test_dns_name_rules_slow_path_keeps_tcp_whole(abi: Abi) -> None:
    text = policy_text("{protocol: udp, port: 53}, {protocol: tcp, port: 53}", extra="  dns_name_rules: slow_path\n")
    assert class_flags(abi, text) == [SLOW, SLOW]
    assert dns_entries(abi, text) == 0
    assert placement_report(parse_policy(text), per_rule=False)[1:] == [
        "  DNS class udp/53: slow path (dns_name_rules: slow_path)",
        "  DNS class tcp/53: slow path (dns_name_rules: slow_path)"]


@pytest.mark.parametrize("rules,extra,udp_flags", [
    (NAMES + "    - {regex: '^[a-z0-9]{30,}\\.', action: drop}\n", "", DNS | SLOW),
    (NAMES, "  signatures: [{class: {protocol: tcp, port: 53}, literal: 'x', action: drop}]\n", DNS),
], ids=["regex rule", "signature of the class"])
def test_rules_that_must_see_every_query_keep_a_tcp_class_whole(abi: Abi, rules: str, extra: str,
                                                                udp_flags: int) -> None:
    text = policy_text("{protocol: udp, port: 53}, {protocol: tcp, port: 53}", rules, extra)
    assert class_flags(abi, text) == [udp_flags, SLOW]
    report = placement_report(parse_policy(text), per_rule=False)
    assert report[2] == ("  DNS class tcp/53: slow path (regex rules and the class's signatures must see "
                         "every query: redirected whole)")


def test_a_signature_of_another_class_does_not_keep_tcp_whole(abi: Abi) -> None:
    text = policy_text("{protocol: tcp, port: 53}, {protocol: tcp, port: 80}", NAMES,
                       "  signatures: [{class: {protocol: tcp, port: 80}, literal: 'x', action: drop}]\n")
    assert class_flags(abi, text) == [DNS | SLOW, SLOW]


def test_block_source_rules_keep_tcp_in_xdp(abi: Abi) -> None:
    """block_source is a name rule XDP hands over (the connection goes to the slow path there)."""
    text = policy_text("{protocol: tcp, port: 53}", NAMES + "    - {match: c2.test, action: block_source, ttl: 1m}\n")
    assert class_flags(abi, text) == [DNS | SLOW]
    assert dns_entries(abi, text) == 3


def test_policy_check_says_what_happens_to_a_tcp_dns_class(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(policy_text("{protocol: udp, port: 53}, {protocol: tcp, port: 53}"))
    assert main(["policy", "check", "--counts-only", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        "placement: 2 in xdp, 0 in slow path",
        "  DNS class udp/53: xdp only (nothing redirected)",
        "  DNS class tcp/53: xdp for whole queries at the stream position, then the slow path"]
