"""Live-frames traffic generator: BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES.

A program that returns XDP_TX is run on a frame `count` times as if the frame
had arrived on an interface; the kernel transmits every copy out of that
interface. On a veth pair the copies land on the peer, where the program
under test runs. The sender's figure is an upper bound only: the receiving
side's counters are the ground truth.

Run it inside the sending namespace (the ifindex is resolved there):
    nsenter --net=/run/netns/NS -- python -m hyperion.generator --iface IF ...
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from hyperion.errors import HyperionError
from hyperion.fastpath import BpfObject, ifindex_of
from hyperion.testrun import run_live_frames

# Bounds for one run, whatever is asked: a load loop never runs away.
MAX_COUNT = 100_000_000
BATCH_SIZE = 64


def tool_object(name: str) -> Path:
    return Path(str(resources.files("hyperion") / "_bpf" / f"{name}.bpf.o"))


@dataclass(frozen=True)
class FrameSpec:
    src: str
    dst: str
    dst_mac: str
    src_mac: str = "02:00:00:00:00:01"
    protocol: str = "udp"   # udp | tcp (SYN)
    sport: int = 40000
    dport: int = 9
    size: int = 64          # Ethernet frame size without FCS
    dns_name: str | None = None  # UDP payload: a DNS query for this name


def build_frame(spec: FrameSpec) -> bytes:
    ip: Packet = IPv6(src=spec.src, dst=spec.dst) if ipaddress.ip_address(spec.src).version == 6 \
        else IP(src=spec.src, dst=spec.dst)
    l4: Packet = TCP(sport=spec.sport, dport=spec.dport, flags="S") if spec.protocol == "tcp" \
        else UDP(sport=spec.sport, dport=spec.dport)
    frame = Ether(src=spec.src_mac, dst=spec.dst_mac) / ip / l4
    if spec.dns_name:
        frame = frame / DNS(id=0x4859, rd=1, qd=DNSQR(qname=spec.dns_name))
    pad = spec.size - len(frame)
    if pad > 0:
        frame = frame / Raw(b"\0" * pad)
    return bytes(frame)


@dataclass(frozen=True)
class GeneratorResult:
    sent: int
    seconds: float

    @property
    def pps(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


def generate(ifname: str, frame: bytes, count: int) -> GeneratorResult:
    """Transmits count copies of frame out of ifname (in this network namespace)."""
    if not 0 < count <= MAX_COUNT:
        raise HyperionError(f"count must be between 1 and {MAX_COUNT}")
    ifindex = ifindex_of(ifname)
    obj = BpfObject(tool_object("xdp_tx"))
    try:
        obj.load(None)
        prog_fd = obj.program_fd("hyperion_gen_tx")
        start = time.perf_counter()
        run_live_frames(prog_fd, frame, ifindex, count, BATCH_SIZE)
        seconds = time.perf_counter() - start
    finally:
        obj.close()
    return GeneratorResult(count, seconds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hyperion-generator", description=__doc__.splitlines()[0])
    parser.add_argument("--iface", required=True, help="interface to transmit from (this namespace)")
    parser.add_argument("--src", required=True)
    parser.add_argument("--dst", required=True)
    parser.add_argument("--dst-mac", required=True)
    parser.add_argument("--protocol", choices=["udp", "tcp"], default="udp")
    parser.add_argument("--dport", type=int, default=9)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--dns-name", help="send DNS queries for this name (UDP payload)")
    args = parser.parse_args(argv)
    for address in (args.src, args.dst):
        if not any(ipaddress.ip_address(address) in net for net in DOC_NETWORKS):
            print(f"hyperion-generator: {address} is outside the documentation ranges", file=sys.stderr)
            return 2
    frame = build_frame(FrameSpec(args.src, args.dst, args.dst_mac, protocol=args.protocol,
                                  dport=args.dport, size=args.size, dns_name=args.dns_name))
    try:
        result = generate(args.iface, frame, args.count)
    except HyperionError as exc:
        print(f"hyperion-generator: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"sent": result.sent, "seconds": result.seconds, "pps": result.pps}))
    return 0


# The only destinations this generator will put on a wire (RFC 5737, RFC 3849).
DOC_NETWORKS = tuple(ipaddress.ip_network(n) for n in
                     ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"))

if __name__ == "__main__":
    sys.exit(main())
