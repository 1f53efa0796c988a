"""The slow path's side of XDP's DNS-over-TCP hand-off (DESIGN14B): a payload segment of a
connection the workers hold no state for is looked up in hyp_dns_tcp through its fd, and its
`next` is where reading starts. The map here is one this test creates with the ABI's layout
(bpf/include/hyperion_abi.h: struct hyp_dns_tcp_key, struct hyp_dns_tcp_flow, an LRU hash);
the XDP program that fills it is another part's.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from ipaddress import ip_address

import dns.message
import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from hyperion import _slowpath
from hyperion.kernel import libbpf
from hyperion.policy.model import DnsRule, RedirectClass, SlowPathSection
from hyperion.slowpath import rules

BPF_MAP_TYPE_LRU_HASH = 9
CLIENT, SERVER = "198.51.100.9", "192.0.2.1"
KEY = struct.Struct("=16s16sHHB3x")  # struct hyp_dns_tcp_key: ports in host order
FLOW = struct.Struct("=II")          # struct hyp_dns_tcp_flow: next, state


@pytest.fixture
def flows() -> Iterator[libbpf.MapFd]:
    fd = libbpf.map_create(BPF_MAP_TYPE_LRU_HASH, "hyp_test_dnstcp", KEY.size, FLOW.size, 64, 0)
    try:
        yield libbpf.MapFd(fd, KEY.size, FLOW.size, "hyp_test_dnstcp")
    finally:
        os.close(fd)


def key(sport: int) -> bytes:
    return KEY.pack(ip_address(CLIENT).packed, ip_address(SERVER).packed, sport, 53, 4)


def segment(sport: int, seq: int, name: str) -> bytes:
    wire = dns.message.make_query(name, "A").to_wire()
    return bytes(Ether() / IP(src=CLIENT, dst=SERVER) / TCP(sport=sport, dport=53, flags="PA", seq=seq, ack=1)
                 / Raw(len(wire).to_bytes(2, "big") + wire))


def test_the_workers_read_xdps_handoff_from_the_map(flows: libbpf.MapFd) -> None:
    slow = SlowPathSection(dns_name_rules="slow_path", dns_rules=(DnsRule(match="evil.test", action="drop"),))
    compiled = rules.compile_slow_path_rules(slow, (RedirectClass(protocol=6, port=53),), never_block=[])
    flows.update(key(40000), FLOW.pack(5000, _slowpath.DNS_TCP_SLOWPATH))
    flows.update(key(40001), FLOW.pack(9000, _slowpath.DNS_TCP_ENDED))
    s = _slowpath.DnsTcpStreams(compiled.rules, dns_tcp_fd=flows.fd, idle_timeout=10.0)
    assert s.segment(segment(40000, 4990, "good.test"), now=1)["cause"] == "out_of_order"
    assert s.segment(segment(40000, 5000, "evil.test"), now=2)["verdict"] == "drop"
    assert s.segment(segment(40000, 5000, "good.test"), now=3)["verdict"] == "deliver"
    assert s.segment(segment(40001, 9000, "good.test"), now=4)["cause"] == "ended"
    assert s.segment(segment(40002, 100, "good.test"), now=5)["cause"] == "midstream"
    assert s.stats()["dns_tcp_handoff"] == 2
    # Forgotten here (idle), the connection must not resume in XDP from its stale `next`: its entry
    # goes, and its later payload is midstream.
    assert flows.lookup(key(40000)) is not None
    assert s.segment(segment(40000, 6000, "good.test"), now=30)["cause"] == "midstream"
    assert s.stats()["dns_tcp_expired"] == 1
    assert flows.lookup(key(40000)) is None
