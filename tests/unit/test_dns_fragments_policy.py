"""slow_path.dns_fragments (issue 14 part 6): what a first fragment to a DNS class gets, in the
policy, the compiled settings and the slow path's engine. Enumerator values from the header's text;
frames cut by scapy."""

from __future__ import annotations

import re

import dns.message
import pytest
from scapy.layers.inet import IP, UDP, fragment
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from hyperion import _slowpath
from hyperion.errors import PolicyError
from hyperion.kernel.abi import Abi
from hyperion.policy.compiler import PolicyCompiler
from hyperion.policy.loading import parse_policy
from hyperion.policy.model import DnsRule, RedirectClass, SlowPathSection
from hyperion.slowpath import rules
from tests.support.paths import BPF_DIR

HEADER = (BPF_DIR / "include" / "hyperion_abi.h").read_text()
FRAG = {m[0]: int(m[1]) for m in re.findall(
    r"^\s*(HYP_DNS_FRAG_\w+)\s*=\s*(\d+),", re.search(r"enum hyp_dns_fragment_policy {(.*?)};", HEADER, re.S)[1],  # type: ignore[index]
    re.M)}
UDP53 = "fast_path:\n  redirect_ports: [{protocol: udp, port: 53}]\n"


def test_the_default_is_drop() -> None:
    assert parse_policy("{}").slow_path.dns_fragments == "drop"


@pytest.mark.parametrize("value", ["drop", "judge", "JUDGE"])
def test_the_choices(value: str) -> None:
    assert parse_policy(f"slow_path:\n  dns_fragments: {value}\n").slow_path.dns_fragments == value.lower()


def test_a_bad_choice_names_the_field_and_the_choices() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy("slow_path:\n  dns_fragments: reassemble\n", "p.yaml")
    message = str(caught.value)
    assert "slow_path.dns_fragments" in message and "'drop'" in message and "'judge'" in message


@pytest.mark.parametrize(("value", "expected"), [("drop", "HYP_DNS_FRAG_DROP"), ("judge", "HYP_DNS_FRAG_JUDGE")])
def test_compiled_into_the_settings(abi: Abi, value: str, expected: str) -> None:
    policy = parse_policy(UDP53 + f"slow_path:\n  dns_fragments: {value}\n")
    compiled = PolicyCompiler(abi, {}).compile(policy)
    assert compiled.dns_fragments == FRAG[expected]


def first_fragment(name: str) -> bytes:
    wire = dns.message.make_query(name, "A", use_edns=0, pad=1200).to_wire()
    datagram = IP(src="198.51.100.1", dst="192.0.2.1", id=9) / UDP(sport=40000, dport=53) / Raw(wire)
    return bytes(Ether() / fragment(datagram, fragsize=512)[0])


def whole(name: str) -> bytes:
    wire = dns.message.make_query(name, "A").to_wire()
    return bytes(Ether() / IP(src="198.51.100.1", dst="192.0.2.1") / UDP(sport=40000, dport=53) / Raw(wire))


@pytest.mark.parametrize("placement", ["xdp", "slow_path"])
def test_the_slow_path_drops_a_first_fragment_by_default(placement: str) -> None:
    """With dns_name_rules: slow_path the workers see the class whole, first fragments included;
    a regex rule is the slow path's in either placement."""
    slow = SlowPathSection(dns_name_rules=placement, dns_rules=(DnsRule(match="evil.test", action="nxdomain"),
                                                              DnsRule(regex="^bad", action="drop")))
    compiled = rules.compile_slow_path_rules(slow, (RedirectClass(protocol=17, port=53),), never_block=[])
    assert compiled.rules.inspect(first_fragment("good.test"))["action"] == _slowpath.DROP
    assert compiled.rules.inspect(whole("good.test"))["action"] == _slowpath.PASS


def test_judge_lets_the_slow_path_judge_the_first_fragment() -> None:
    slow = SlowPathSection(dns_name_rules="slow_path", dns_fragments="judge",
                           dns_rules=(DnsRule(match="evil.test", action="nxdomain"),))
    compiled = rules.compile_slow_path_rules(slow, (RedirectClass(protocol=17, port=53),), never_block=[])
    assert compiled.rules.inspect(first_fragment("good.test"))["action"] == _slowpath.PASS
    assert compiled.rules.inspect(first_fragment("evil.test"))["action"] == _slowpath.NXDOMAIN


def test_fragments_of_other_classes_are_not_dropped_by_the_slow_path() -> None:
    slow = SlowPathSection(dns_name_rules="slow_path", dns_rules=(DnsRule(match="evil.test", action="drop"),))
    compiled = rules.compile_slow_path_rules(slow, (RedirectClass(protocol=17, port=53),
                                                    RedirectClass(protocol=17, port=9999)), never_block=[])
    wire = b"x" * 1500
    datagram = IP(src="198.51.100.1", dst="192.0.2.1", id=9) / UDP(sport=40000, dport=9999) / Raw(wire)
    assert compiled.rules.inspect(bytes(Ether() / fragment(datagram, fragsize=512)[0]))["action"] == _slowpath.PASS
