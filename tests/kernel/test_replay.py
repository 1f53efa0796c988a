"""`hyperion replay`: the real program (and slow-path engine) judges each packet of a capture."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw
from scapy.utils import wrpcap

from hyperion.policy.loading import parse_policy
from hyperion.replay import Replayer, read_frames
from tests.support.paths import CAPTURES
from tests.support.replay import POLICY, policy_file


def dns(src: str, name: str) -> Ether:
    return Ether() / IP(src=src, dst="192.0.2.1") / UDP(sport=5353, dport=53) / DNS(rd=1, qd=DNSQR(qname=name))


def test_replay_of_a_crafted_capture(kernel: None, tmp_path: Path) -> None:
    capture = tmp_path / "scene.pcap"
    wrpcap(str(capture), [
        Ether() / ARP(pdst="192.0.2.1"),
        Ether() / IP(src="198.51.100.42", dst="192.0.2.1") / TCP(dport=22),
        Ether() / IP(src="203.0.113.9", dst="192.0.2.1") / UDP(dport=9),
        Ether() / IP(src="198.51.100.10", dst="192.0.2.1") / TCP(dport=80, dataofs=3),
        dns("198.51.100.10", "good.test"),
        dns("198.51.100.10", "evil.com"),
        dns("198.51.100.10", "a.tracker.test"),
        Ether() / IP(src="198.51.100.10", dst="192.0.2.1") / UDP(dport=53) / Raw(b"\x00\x01"),
    ])
    proc = subprocess.run([sys.executable, "-m", "hyperion.cli", "replay", "--json", "--policy",
                           str(policy_file(tmp_path)), str(capture)], capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["verdict"], r["stage"], r["reason"], r["rule"]) for r in rows] == [
        ("pass", "non_ip", "non_ip", None),
        ("drop", "blocklist_ip", "blocklist_ip", "fast_path.drop_ips[0] 198.51.100.42"),
        ("drop", "blocklist_cidr", "blocklist_cidr", "fast_path.drop_cidrs[0] 203.0.113.0/24"),
        ("drop", "parse", "bad_tcp_offset", None),
        # The name rules are judged in XDP (the DNS stage), which answers the nxdomain rule in place.
        ("pass", "dns", "dns_no_match", None),
        ("drop", "dns", "dns_drop", "slow_path.dns_rules[0] match=evil.com action=drop"),
        ("answer", "dns", "dns_nxdomain", "slow_path.dns_rules[1] match=*.tracker.test action=nxdomain"),
        ("drop", "dns", "dns_malformed", None),
    ]
    assert [r["index"] for r in rows] == list(range(8))


@pytest.mark.skipif(not CAPTURES.is_dir(), reason="../shared/captures is not beside the project")
@pytest.mark.parametrize("name", sorted(p.name for p in CAPTURES.glob("*.pcap*")) if CAPTURES.is_dir() else [])
def test_public_captures_replay_completely(kernel: None, name: str) -> None:
    """Every packet of every public capture gets exactly one verdict; none crashes anything."""
    with Replayer(parse_policy(POLICY)) as replayer:
        verdicts = list(replayer.replay(CAPTURES / name))
    assert len(verdicts) == sum(1 for _ in read_frames(CAPTURES / name)) > 0
    assert {v.verdict for v in verdicts} <= {"pass", "drop", "nxdomain", "refuse", "alert", "block_source"}
