"""Slow-path delivery with senders at their default offloads (issue 12, defect 2).

A veth peer at its defaults sends CHECKSUM_PARTIAL packets: the L4 checksum
field holds only the folded pseudo-header sum, for the hardware to complete.
AF_XDP copies the bytes without the skb's "trust me" flag, and the TUN device
hands them to a stack that verifies, so the slow path must complete them. A
checksum that is genuinely wrong must still be rejected.

References: RFC 768 (UDP, zero = no checksum over IPv4), RFC 793/9293 (TCP),
RFC 8200 section 8.1 (IPv6 pseudo-header; a zero UDP checksum is invalid),
scapy's checksum routines, and the Linux stack's own counters in /proc/net/snmp
and /proc/net/snmp6 of the receiving namespace.
"""

from __future__ import annotations

import ipaddress
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP, IPOption_NOP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw
from scapy.utils import checksum

from hyperion.lab.sandbox import CLIENT_V4, CLIENT_V6, HOST_V4, HOST_V6, Sandbox
from tests.support.netutil import Daemon, Receiver, scrape, send, wait_for
from tests.support.peers import dig, dnsmasq
from tests.support.telemetry import parse_metrics

pytestmark = [pytest.mark.kernel, pytest.mark.netns]

POLICY = r"""
fast_path:
  redirect_ports:
    - {protocol: udp, port: 53, on_failure: drop}
    - {protocol: tcp, port: 8080, on_failure: drop}
    - {protocol: udp, port: 9999, on_failure: drop}
slow_path:
  dns_name_rules: slow_path  # these tests are about the slow path: every name rule runs there
  dns_rules:
    - {match: "evil.com", action: drop}
  signatures:
    - {class: {protocol: tcp, port: 8080}, literal: "root", action: drop}
    - {class: {protocol: udp, port: 9999}, literal: "attack", action: drop}
"""
PORT = 9999


@pytest.fixture
def offloaded(sandbox: Sandbox, tmp_path: Path) -> Iterator[Sandbox]:
    """Hyperion in front of the host namespace, every redirect class failing closed: whatever
    reaches a service went through the slow path."""
    # The point of these tests: the client sends with the offloads a veth has by default.
    features = sandbox.exec(sandbox.client_ns, ["ethtool", "-k", sandbox.client_if]).stdout
    assert "tx-checksumming: on" in features, features
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    daemon = Daemon(sandbox, policy).start()
    try:
        yield sandbox
    finally:
        daemon.stop()


def checksums(sb: Sandbox, outcome: str) -> float:
    """hyperion_slowpath_checksums_total{outcome} summed over queues (0 before the first)."""
    samples, _ = parse_metrics(scrape(sb))
    return sum(v for (name, labels), v in samples.items()
               if name == "hyperion_slowpath_checksums_total" and ("outcome", outcome) in labels)


def snmp(sb: Sandbox, key: str) -> int:
    """A counter of the host namespace's stack: 'Udp.InCsumErrors' (snmp) or 'Udp6InCsumErrors' (snmp6)."""
    if "." in key:
        proto, field = key.split(".")
        lines = [line.split() for line in sb.exec(sb.host_ns, ["cat", "/proc/net/snmp"]).stdout.splitlines()
                 if line.startswith(f"{proto}:")]
        return int(dict(zip(lines[0][1:], lines[1][1:], strict=True))[field])
    rows = (line.split() for line in sb.exec(sb.host_ns, ["cat", "/proc/net/snmp6"]).stdout.splitlines())
    return int({row[0]: row[1] for row in rows if len(row) == 2}[key])


def udp_idle(sb: Sandbox, port: int) -> bool:
    """Every datagram queued to port's sockets has been read."""
    rows = [line.split() for line in sb.exec(sb.host_ns, ["ss", "-Hlun", f"sport = :{port}"]).stdout.splitlines()]
    return bool(rows) and all(row[1] == "0" for row in rows)


def tcp_idle(sb: Sandbox, port: int) -> bool:
    """No connection to port waits in the host's accept queue or is still open to be read."""
    listening = sb.exec(sb.host_ns, ["ss", "-Hltn", f"sport = :{port}"]).stdout.split()
    open_ = sb.exec(sb.host_ns, ["ss", "-Htn", "state", "established", "state", "close-wait",
                                 f"sport = :{port}"]).stdout.strip()
    backlog = [int(listening[i + 1]) for i, word in enumerate(listening) if word == "LISTEN"]
    return bool(backlog) and not any(backlog) and not open_


# ---- real senders ------------------------------------------------------------------------------


def test_dns_through_the_slow_path_resolves_over_v4_and_v6(offloaded: Sandbox) -> None:
    sb = offloaded
    server = dnsmasq(sb)
    try:
        completed = checksums(sb, "completed")
        # dnsmasq binds asynchronously; a query before that is refused by the stack, not lost.
        wait_for(lambda: dig(sb, "good.test") == "NOERROR 203.0.113.80", 15)
        assert dig(sb, "good.test", server=HOST_V6) == "NOERROR 203.0.113.80"
        assert dig(sb, "evil.com") == "TIMEOUT"  # the slow path still decides
        assert dig(sb, "evil.com", server=HOST_V6) == "TIMEOUT"
        # Each query dig sent was partial and has been completed (at least the two answered ones).
        wait_for(lambda: checksums(sb, "completed") - completed >= 2, 10)
        assert checksums(sb, "bad") == 0
        assert snmp(sb, "Udp.InCsumErrors") == 0 and snmp(sb, "Udp6InCsumErrors") == 0
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.parametrize("dst", [HOST_V4, HOST_V6])
def test_tcp_through_the_slow_path_delivers_clean_payloads(offloaded: Sandbox, dst: str) -> None:
    sb = offloaded
    receiver = Receiver(sb, duration=30, port=8080)
    sent = send(sb, "", dst=dst, count=3, port=8080, tag="clean", payload="GET /index", tcp=True)
    send(sb, "", dst=dst, count=1, port=8080, tag="dirty", payload="GET /root", tcp=True)
    assert sent == 3
    # The receiver reads one connection at a time: let it take every one before it stops.
    wait_for(lambda: tcp_idle(sb, 8080), 20)
    assert receiver.result()["by_tag"] == {"clean": 3}
    assert checksums(sb, "completed") > 0
    assert snmp(sb, "Tcp.InCsumErrors") == 0


# ---- crafted checksums -------------------------------------------------------------------------


def _pseudo_header(l3: Packet, proto: int, length: int) -> bytes:
    """RFC 768 / RFC 8200 section 8.1 pseudo-header."""
    if isinstance(l3, IP):
        return (ipaddress.ip_address(l3.src).packed + ipaddress.ip_address(l3.dst).packed
                + struct.pack("!BBH", 0, proto, length))
    return (ipaddress.ip_address(l3.src).packed + ipaddress.ip_address(l3.dst).packed
            + struct.pack("!IxxxB", length, proto))


def _l3(version: int, options: bool) -> Packet:
    if version == 4:
        return IP(src=CLIENT_V4, dst=HOST_V4, options=[IPOption_NOP()] * 4 if options else [])
    ip6 = IPv6(src=CLIENT_V6, dst=HOST_V6)
    return ip6 / IPv6ExtHdrDestOpt() if options else ip6


def crafted(sb: Sandbox, version: int, kind: str, tag: str, options: bool = False, tcp: bool = False) -> bytes:
    """An Ethernet frame client -> host whose L4 checksum is `kind`: valid (scapy's), partial (the
    folded pseudo-header sum, as a sender leaves it for offload), wrong (neither), or zero."""
    l4_type = TCP if tcp else UDP
    l4 = TCP(sport=40000, dport=8080, flags="S", seq=1) if tcp else UDP(sport=40000, dport=PORT)
    payload = b"" if tcp else f"{tag} 0 crafted".encode()
    l3 = _l3(version, options)
    frame = Ether(src=sb.mac(sb.client_ns, sb.client_if), dst=sb.mac(sb.host_ns, sb.host_if)) / l3 / l4
    if payload:
        frame = frame / Raw(payload)
    built = Ether(bytes(frame))
    good = int(built[l4_type].chksum)
    segment_len = len(bytes(built[l4_type]))
    partial = ~checksum(_pseudo_header(built[IP] if version == 4 else built[IPv6], 6 if tcp else 17,
                                       segment_len)) & 0xFFFF
    if kind == "wrong":
        value = next(v for v in (good ^ 0x0101, good ^ 0x1010, good ^ 0x4444)
                     if v not in (0, 0xFFFF, good, partial, ~good & 0xFFFF))
    else:
        value = {"valid": good, "partial": partial, "zero": 0}[kind]
    built[l4_type].chksum = value
    return bytes(built)


def inject(sb: Sandbox, frames: list[bytes]) -> None:
    """Sends frames from the client namespace through a raw packet socket, bytes as they are."""
    code = ("import socket, sys\n"
            "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n"
            "s.bind((sys.argv[1], 0))\n"
            "for h in sys.argv[2:]: s.send(bytes.fromhex(h))\n")
    sb.exec(sb.client_ns, [sys.executable, "-c", code, sb.client_if, *(f.hex() for f in frames)])


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("options", [False, True], ids=["plain", "options"])
def test_partial_checksums_are_completed_and_wrong_ones_are_not_accepted(
        offloaded: Sandbox, version: int, options: bool) -> None:
    sb = offloaded
    csum_errors = "Udp.InCsumErrors" if version == 4 else "Udp6InCsumErrors"
    datagrams = "Udp.InDatagrams" if version == 4 else "Udp6InDatagrams"
    receiver = Receiver(sb, duration=30, port=PORT)
    before = {"errors": snmp(sb, csum_errors), "in": snmp(sb, datagrams),
              "completed": checksums(sb, "completed"), "bad": checksums(sb, "bad")}
    frames = [crafted(sb, version, "valid", "valid", options), crafted(sb, version, "partial", "partial", options),
              crafted(sb, version, "wrong", "wrong", options)]
    inject(sb, frames)
    wait_for(lambda: snmp(sb, csum_errors) - before["errors"] >= 1 and snmp(sb, datagrams) - before["in"] >= 2, 10)
    wait_for(lambda: checksums(sb, "bad") - before["bad"] >= 1, 10)
    wait_for(lambda: udp_idle(sb, PORT), 10)
    # Valid and completed ones reach the socket; the wrong one is handed to the stack unchanged,
    # which drops and counts it (and so does Hyperion), exactly once each.
    assert receiver.result()["by_tag"] == {"valid": 1, "partial": 1}
    assert snmp(sb, csum_errors) - before["errors"] == 1
    assert snmp(sb, datagrams) - before["in"] == 2
    assert checksums(sb, "completed") - before["completed"] == 1
    assert checksums(sb, "bad") - before["bad"] == 1


@pytest.mark.parametrize("version", [4, 6])
def test_zero_udp_checksum_follows_the_rfcs(offloaded: Sandbox, version: int) -> None:
    """Zero means "no checksum" over IPv4 (RFC 768) and is invalid over IPv6 (RFC 8200)."""
    sb = offloaded
    csum_errors = "Udp.InCsumErrors" if version == 4 else "Udp6InCsumErrors"
    datagrams = "Udp.InDatagrams" if version == 4 else "Udp6InDatagrams"
    receiver = Receiver(sb, duration=30, port=PORT)
    before = {"errors": snmp(sb, csum_errors), "in": snmp(sb, datagrams), "completed": checksums(sb, "completed"),
              "bad": checksums(sb, "bad")}
    inject(sb, [crafted(sb, version, "zero", "zero")])
    if version == 4:
        wait_for(lambda: snmp(sb, datagrams) - before["in"] >= 1 and udp_idle(sb, PORT), 10)
        assert receiver.result()["by_tag"] == {"zero": 1}
        assert snmp(sb, csum_errors) == before["errors"]
        assert checksums(sb, "bad") == before["bad"]
    else:
        wait_for(lambda: snmp(sb, csum_errors) - before["errors"] >= 1, 10)
        assert receiver.result()["by_tag"] == {}
        assert snmp(sb, csum_errors) - before["errors"] == 1
        assert snmp(sb, datagrams) == before["in"]
        wait_for(lambda: checksums(sb, "bad") - before["bad"] >= 1, 10)
        assert checksums(sb, "bad") - before["bad"] == 1
    assert checksums(sb, "completed") == before["completed"]


@pytest.mark.parametrize("version", [4, 6])
def test_tcp_with_a_wrong_checksum_is_not_accepted(offloaded: Sandbox, version: int) -> None:
    sb = offloaded
    receiver = Receiver(sb, duration=30, port=8080)
    before = {"errors": snmp(sb, "Tcp.InCsumErrors"), "bad": checksums(sb, "bad")}
    # A SYN: the stack would answer it if it accepted it; it must count a checksum error instead.
    inject(sb, [crafted(sb, version, "wrong", "", tcp=True)])
    wait_for(lambda: snmp(sb, "Tcp.InCsumErrors") - before["errors"] >= 1, 10)
    assert snmp(sb, "Tcp.InCsumErrors") - before["errors"] == 1
    wait_for(lambda: checksums(sb, "bad") - before["bad"] >= 1, 10)
    assert checksums(sb, "bad") - before["bad"] == 1
    assert receiver.result()["by_tag"] == {}
