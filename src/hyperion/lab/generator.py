"""Live-frames traffic generator: BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES.

A program that returns XDP_TX is run on a frame `repeat` times as if the frame
had arrived on an interface; the kernel transmits every copy out of that
interface. On a veth pair the copies land on the peer, where the program
under test runs. The sender's figure is an upper bound only: the receiving
side's counters are the ground truth.

One test run repeats one buffer. Sources are spread inside the kernel: with
more than one source the generator program is bpf/tools/xdp_tx_spread, which
writes the next address of a table (round robin) into each frame's source
field and updates the IPv4 header and TCP/UDP checksums incrementally, so every
source gets an equal share (to within one frame) at full rate. (Separate runs
per source would not do: each live-frames run costs a fixed ~25 ms to set up
and tear down on this kernel.) Several DNS names are several template frames,
sent in turns: each run transmits `chunk` copies of one template, then the
next. Every loop is bounded in count (MAX_COUNT) and time (MAX_DURATION,
checked between runs).

Run it inside the sending namespace (the ifindex is resolved there), or give
--netns to enter one:
    hyperion generate --netns NS --iface IF --dst ADDR --dst-mac MAC ...
    nsenter --net=/run/netns/NS -- python -m hyperion.lab.generator --iface IF ...
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import struct
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from hyperion.errors import HyperionError
from hyperion.fastpath.loader import BpfObject
from hyperion.kernel import libbpf
from hyperion.kernel.netdev import ifindex_of
from hyperion.kernel.testrun import run_live_frames

# Bounds for one run, whatever is asked: a load loop never runs away.
MAX_COUNT = 100_000_000
MAX_DURATION = 600.0
MAX_TEMPLATES = 256        # DNS names
MAX_SOURCES = 65536        # gen_sources in bpf/tools/xdp_tx_spread.bpf.c
BATCH_SIZE = 64
# Frames per test run (a run has a fixed cost of tens of ms; the time bound is checked between runs).
SINGLE_TEMPLATE_CHUNK = 1_048_576
TEMPLATE_CHUNK = 65_536
PROTOCOLS = ("udp", "tcp", "dns")

# The only addresses this generator will put on a wire (RFC 5737, RFC 3849).
DOC_NETWORKS = tuple(ipaddress.ip_network(n) for n in
                     ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"))


def tool_object(name: str) -> Path:
    return Path(str(resources.files("hyperion") / "_bpf" / f"{name}.bpf.o"))


def is_documentation(address: str) -> bool:
    addr = ipaddress.ip_address(address)
    return any(addr.version == net.version and addr in net for net in DOC_NETWORKS)


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
    # scapy is imported here: the CLI registers `generate` without paying for it.
    from scapy.layers.dns import DNS, DNSQR
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.packet import Packet, Raw

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


def source_addresses(src: str, count: int | None = None) -> list[str]:
    """`count` consecutive addresses from src: an address (count defaults to 1) or a network
    (its addresses from the first, count defaults to min(size, 256)). All must be documentation
    addresses."""
    try:
        if "/" in src:
            net = ipaddress.ip_network(src, strict=False)
            first, size = net.network_address, net.num_addresses
            count = min(size, 256) if count is None else count
            if count > size:
                raise HyperionError(f"{src} has only {size} addresses, {count} asked")
        else:
            first, count = ipaddress.ip_address(src), 1 if count is None else count
    except ValueError as exc:
        raise HyperionError(f"source {src!r}: {exc}") from None
    if not 0 < count <= MAX_SOURCES:
        raise HyperionError(f"sources must be between 1 and {MAX_SOURCES}")
    addresses = [str(first + i) for i in range(count)]
    for address in (addresses[0], addresses[-1]):
        if not is_documentation(address):
            raise HyperionError(f"{address} is outside the documentation ranges")
    return addresses


@dataclass(frozen=True)
class TrafficSpec:
    """What to send: one template frame per DNS name (or one), from sources[0]; the generator spreads
    the frames over all the sources."""

    dst: str
    dst_mac: str
    sources: tuple[str, ...]
    protocol: str = "udp"         # udp | tcp (SYN) | dns (UDP queries for dns_names)
    dport: int | None = None      # default: 53 for dns, else 9 (discard)
    sport: int = 40000
    size: int = 64
    dns_names: tuple[str, ...] = ()
    src_mac: str = "02:00:00:00:00:01"

    def frames(self) -> list[bytes]:
        if self.protocol not in PROTOCOLS:
            raise HyperionError(f"protocol must be one of {', '.join(PROTOCOLS)}")
        if self.protocol == "dns" and not self.dns_names:
            raise HyperionError("DNS traffic needs at least one name")
        if self.protocol != "dns" and self.dns_names:
            raise HyperionError("DNS names go with protocol dns")
        for address in (self.dst, *self.sources):
            if not is_documentation(address):
                raise HyperionError(f"{address} is outside the documentation ranges")
        if any(ipaddress.ip_address(s).version != ipaddress.ip_address(self.dst).version for s in self.sources):
            raise HyperionError("sources and destination must be the same IP version")
        if not 14 <= self.size <= 9000:
            raise HyperionError("size must be between 14 and 9000 bytes")
        names: Sequence[str | None] = self.dns_names or [None]
        if len(names) > MAX_TEMPLATES:
            raise HyperionError(f"at most {MAX_TEMPLATES} DNS names")
        if not 0 < len(self.sources) <= MAX_SOURCES:
            raise HyperionError(f"sources must be between 1 and {MAX_SOURCES}")
        dport = self.dport if self.dport is not None else 53 if self.protocol == "dns" else 9
        return [build_frame(FrameSpec(self.sources[0], self.dst, self.dst_mac, self.src_mac,
                                      "tcp" if self.protocol == "tcp" else "udp", self.sport, dport,
                                      self.size, name))
                for name in names]


@dataclass(frozen=True)
class GeneratorResult:
    sent: int
    seconds: float
    runs: int = 1
    templates: int = 1
    per_template: tuple[int, ...] = field(default=(), repr=False)

    @property
    def pps(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {"sent": self.sent, "seconds": self.seconds, "pps": self.pps, "runs": self.runs,
                "templates": self.templates}


def frame_layout(frame: bytes) -> bytes:
    """struct gen_layout (bpf/tools/xdp_tx_spread.bpf.c) for a template frame, sources field 0:
    where the source address and the checksums to update are. Ethernet without VLAN tags."""
    if len(frame) < 34:
        raise HyperionError("frame too short for an IP header")
    ethertype = int.from_bytes(frame[12:14], "big")
    if ethertype == 0x0800:
        ihl = (frame[14] & 0x0F) * 4
        protocol, addr_off, addr_len, ip_csum, l4 = frame[23], 26, 4, 24, 14 + ihl
    elif ethertype == 0x86DD:
        protocol, addr_off, addr_len, ip_csum, l4 = frame[20], 22, 16, 0, 54
    else:
        raise HyperionError("only IPv4 and IPv6 frames can have their sources spread")
    l4_csum = {17: l4 + 6, 6: l4 + 16}.get(protocol, 0)
    return struct.pack("6I", 0, addr_off, addr_len, ip_csum, l4_csum, int(protocol == 17))


class Generator:
    """The XDP_TX program loaded once, bound to an interface of the calling thread's network namespace.

    With more than one source, xdp_tx_spread rewrites each frame's source address from the list."""

    def __init__(self, ifname: str, sources: Sequence[str] = ()) -> None:
        self.ifname = ifname
        self.ifindex = ifindex_of(ifname)
        self.sources = list(sources)
        spread = len(self.sources) > 1
        if len(self.sources) > MAX_SOURCES:
            raise HyperionError(f"at most {MAX_SOURCES} sources")
        self._obj = BpfObject(tool_object("xdp_tx_spread" if spread else "xdp_tx"))
        self._layout: libbpf.MapFd | None = None
        self._current_layout = b""
        try:
            self._obj.load(None)
            self._prog_fd = self._obj.program_fd("hyperion_gen_spread" if spread else "hyperion_gen_tx")
            if spread:
                fds = self._obj.map_fds()
                self._layout = libbpf.MapFd(fds["gen_layout"], 4, 24, "gen_layout")
                table = libbpf.MapFd(fds["gen_sources"], 4, 16, "gen_sources")
                keys = b"".join(i.to_bytes(4, sys.byteorder) for i in range(len(self.sources)))
                values = b"".join(ipaddress.ip_address(a).packed.ljust(16, b"\0") for a in self.sources)
                table.update_batch(keys, values, len(self.sources))
        except BaseException:
            self._obj.close()
            raise

    def _set_layout(self, frame: bytes) -> None:
        if self._layout is None:
            return
        if {ipaddress.ip_address(a).version for a in self.sources} != {6 if frame[12:14] == b"\x86\xdd" else 4}:
            raise HyperionError("the sources and the frame must be the same IP version")
        layout = len(self.sources).to_bytes(4, sys.byteorder) + frame_layout(frame)[4:]
        if layout != self._current_layout:
            self._layout.update(bytes(4), layout)
            self._current_layout = layout

    def send(self, frames: Sequence[bytes], count: int | None = None, duration: float | None = None,
             chunk: int | None = None) -> GeneratorResult:
        """Transmits the frames in turns until count frames are sent or duration seconds passed
        (whichever comes first; at least one must be given). The ifindex is resolved in the
        network namespace of the thread that created the generator: call from that namespace."""
        if not frames:
            raise HyperionError("no frames to send")
        if count is None and duration is None:
            raise HyperionError("give a count, a duration or both")
        if count is not None and not 0 < count <= MAX_COUNT:
            raise HyperionError(f"count must be between 1 and {MAX_COUNT:,}")
        if duration is not None and not 0 < duration <= MAX_DURATION:
            raise HyperionError(f"duration must be between 0 and {MAX_DURATION:.0f} s")
        limit = count if count is not None else MAX_COUNT
        deadline = min(duration if duration is not None else MAX_DURATION, MAX_DURATION)
        if chunk is None:
            # With a duration, runs short enough for the deadline to be checked a few times a second.
            chunk = SINGLE_TEMPLATE_CHUNK if len(frames) == 1 else TEMPLATE_CHUNK
            if duration is not None:
                chunk = min(chunk, 262_144)
            if count is not None:  # every template gets its share of a small count too
                chunk = min(chunk, -(-count // len(frames)))
        per_template = [0] * len(frames)
        sent = runs = 0
        start = time.perf_counter()
        while sent < limit and time.perf_counter() - start < deadline:
            index = runs % len(frames)
            n = min(chunk, limit - sent)
            self._set_layout(frames[index])
            run_live_frames(self._prog_fd, frames[index], self.ifindex, n, BATCH_SIZE)
            per_template[index] += n
            sent += n
            runs += 1
        return GeneratorResult(sent, time.perf_counter() - start, runs, len(frames), tuple(per_template))

    def close(self) -> None:
        self._obj.close()

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def generate(ifname: str, frame: bytes, count: int) -> GeneratorResult:
    """Transmits count copies of frame out of ifname (in this network namespace)."""
    with Generator(ifname) as gen:
        return gen.send([frame], count=count)


@contextlib.contextmanager
def _maybe_netns(netns: str | None) -> Iterator[None]:
    if netns is None:
        yield
        return
    from hyperion.lab.sandbox import entered_netns

    with entered_netns(netns):
        yield


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--iface", required=True, help="interface to transmit from")
    parser.add_argument("--netns", help="named network namespace to send from (default: this one)")
    parser.add_argument("--src", required=True,
                        help="source address, or a network (e.g. 2001:db8:ff00::/120) to spread sources over")
    parser.add_argument("--sources", type=int,
                        help="number of consecutive source addresses (default 1 for an address, "
                             "min(size, 256) for a network)")
    parser.add_argument("--dst", required=True)
    parser.add_argument("--dst-mac", required=True, help="the receiving interface's MAC address")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="udp",
                        help="udp, tcp (SYN) or dns (queries for --dns-name; implied by --dns-name)")
    parser.add_argument("--dns-name", action="append", default=[], metavar="NAME",
                        help="DNS query name (repeat for several: one template frame per name, sent in turns)")
    parser.add_argument("--sport", type=int, default=40000)
    parser.add_argument("--dport", type=int, help="destination port (default 53 for DNS, else 9)")
    parser.add_argument("--size", type=int, default=64, help="Ethernet frame size without FCS (default 64)")
    parser.add_argument("--count", type=int, help=f"frames to send (at most {MAX_COUNT:,}; default 1,000,000 "
                                                  "unless --duration is given)")
    parser.add_argument("--duration", type=float, help=f"seconds to send for (at most {MAX_DURATION:.0f})")


def run_from_args(args: argparse.Namespace) -> dict[str, float | int]:
    protocol = "dns" if args.dns_name and args.protocol == "udp" else args.protocol
    spec = TrafficSpec(dst=args.dst, dst_mac=args.dst_mac, sources=tuple(source_addresses(args.src, args.sources)),
                       protocol=protocol, dport=args.dport, sport=args.sport, size=args.size,
                       dns_names=tuple(args.dns_name))
    frames = spec.frames()
    count = args.count if args.count is not None or args.duration is not None else 1_000_000
    with _maybe_netns(args.netns), Generator(args.iface, spec.sources) as gen:
        return {**gen.send(frames, count=count, duration=args.duration).as_dict(), "sources": len(spec.sources)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hyperion-generator", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        print(json.dumps(run_from_args(args)))
    except HyperionError as exc:
        print(f"hyperion-generator: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
