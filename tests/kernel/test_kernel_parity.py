"""Kernel parity (issue 12): with a policy that blocks OTHER sources, Hyperion delivers exactly
what the Linux stack delivers without it.

Real senders at default offloads (the sandbox leaves veth's TX checksum offload on): the
client's own stack for fragmented UDP, IPv6 hop-by-hop / destination options and IPv4 options
set through socket options, 4000-byte pings and a 20 MB TCP transfer; crafted frames (scapy,
written to an AF_PACKET socket inside the client namespace) for fragments in order, reversed,
shuffled and duplicated, and for extension headers and options the socket API cannot set.

Every scenario runs twice in one sandbox: first with no XDP program (the reference: what the
stack delivers), then with Hyperion attached. Each outcome is what the receiving socket got
(payload digests, the ancillary data showing the options arrived, ping replies, the TCP
stream's digest). The reference outcome is also checked against what was sent, so an outcome
that is "nothing" in both runs fails. With Hyperion no drop counter may move. Fragments from a
blocked source: delivered without Hyperion, nothing with it, and each one counted as a drop.
"""

from __future__ import annotations

import hashlib
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, UDP, IPOption_NOP, IPOption_RR, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, fragment6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from hyperion.lab.sandbox import CLIENT_V4, CLIENT_V6, HOST_V4, HOST_V6, Sandbox, entered_netns
from tests.support.netutil import hyperion, status, wait_for

pytestmark = [pytest.mark.kernel, pytest.mark.netns]

POLICY = """
fast_path:
  drop_cidrs: ["203.0.113.0/24", "2001:db8:bad::/48"]
"""
BLOCKED4, BLOCKED6 = "203.0.113.9", "2001:db8:bad::9"
RECV_TIMEOUT = 10.0
TCP_BYTES = 20 * 1024 * 1024
SO_RCVBUFFORCE = 33  # Linux; not in the socket module: beyond rmem_max, as root

# Options as the socket API takes them. IPv6: next header (the kernel fills it in), length 0
# (8 bytes), then an experimental option (RFC 4727, type 0x1e: "skip if unknown") with 4 bytes.
IPV6_OPTION_HEADER = bytes([0, 0, 0x1E, 4]) + b"opt!"
# IPv4: Record Route with one free slot (type 7, length 7, pointer 4), then End of Options.
IPV4_RECORD_ROUTE = bytes([7, 7, 4, 0, 0, 0, 0, 0])


def family_of(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


class Receiver:
    """A UDP socket in the host namespace that reports payloads and which ancillary data came with them."""

    def __init__(self, sb: Sandbox, address: str) -> None:
        with entered_netns(sb.host_ns):
            self.sock = socket.socket(family_of(address), socket.SOCK_DGRAM)
        self.sock.bind((address, 0))
        # Room for every datagram of a scenario (a 60000-byte one is 41 fragments' worth of buffers).
        self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
        self.port = int(self.sock.getsockname()[1])
        if family_of(address) == socket.AF_INET6:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPOPTS, 1)
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVDSTOPTS, 1)
        else:
            self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_RECVOPTS, 1)

    def receive(self, count: int, timeout: float = RECV_TIMEOUT) -> list[tuple[str, int, tuple[str, ...]]]:
        """Up to `count` datagrams as (digest, length, ancillary kinds), waiting until the deadline."""
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data, ancillary, _, _ = self.sock.recvmsg(70000, 1024)
            except TimeoutError:
                break
            kinds = sorted(_ancillary_kind(level, kind, value) for level, kind, value in ancillary)
            got.append((digest(data), len(data), tuple(kinds)))
        return got

    def pending(self) -> int:
        """Datagrams queued now, without waiting."""
        self.sock.setblocking(False)
        n = 0
        try:
            while True:
                self.sock.recv(70000)
                n += 1
        except BlockingIOError:
            return n
        finally:
            self.sock.setblocking(True)

    def close(self) -> None:
        self.sock.close()


def _ancillary_kind(level: int, kind: int, value: bytes) -> str:
    if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_HOPOPTS:
        return "hbh:" + value[2:].hex()
    if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_DSTOPTS:
        return "dst:" + value[2:].hex()
    if level == socket.IPPROTO_IP:
        return f"ipopt:{value[:1].hex()}"
    return f"{level}/{kind}"


@dataclass
class Parity:
    sb: Sandbox
    host_mac: str
    client_mac: str
    ip_id: int = 1000

    def next_id(self) -> int:
        self.ip_id += 1
        return self.ip_id

    def send_frames(self, frames: list[bytes]) -> None:
        """Writes Ethernet frames onto the client's veth end (as any sender on the link could)."""
        with entered_netns(self.sb.client_ns):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        with sock:
            sock.bind((self.sb.client_if, 0))
            for frame in frames:
                sock.send(frame)

    def ether(self) -> Ether:
        return Ether(src=self.client_mac, dst=self.host_mac)

    def stack_udp(self, src: str, dst: str, payloads: list[bytes], level: int = 0, option: int = 0,
                  value: bytes = b"") -> list[tuple[str, int, tuple[str, ...]]]:
        """Datagrams sent by the client's stack with a plain sendto (options, if any, by setsockopt)."""
        receiver = Receiver(self.sb, dst)
        try:
            with entered_netns(self.sb.client_ns):
                sock = socket.socket(family_of(dst), socket.SOCK_DGRAM)
            with sock:
                sock.bind((src, 0))
                if value:
                    sock.setsockopt(level, option, value)
                for payload in payloads:
                    sock.sendto(payload, (dst, receiver.port))
            return receiver.receive(len(payloads))
        finally:
            receiver.close()

    def crafted(self, build: Callable[[int], list[bytes]], dst: str, expected: int) -> list[tuple[str, int,
                                                                                              tuple[str, ...]]]:
        receiver = Receiver(self.sb, dst)
        try:
            self.send_frames(build(receiver.port))
            return receiver.receive(expected)
        finally:
            receiver.close()


def payload(size: int, tag: str) -> bytes:
    return (tag.encode() + b":" + bytes(range(256)) * (size // 256 + 1))[:size]


def v4_fragments(p: Parity, src: str, port: int, data: bytes, fragsize: int = 1000,
                 options: list[Any] | None = None) -> list[bytes]:
    pkt = IP(src=src, dst=HOST_V4, id=p.next_id(), options=options or []) / UDP(sport=40000, dport=port) / Raw(data)
    return [bytes(p.ether() / f) for f in fragment(IP(bytes(pkt)), fragsize=fragsize)]


def v6_fragments(p: Parity, src: str, port: int, data: bytes, fragsize: int = 1000,
                 before: Packet | None = None, after: Packet | None = None) -> list[bytes]:
    """fragment6 keeps the layers before the fragment header in every fragment (the unfragmentable part)."""
    pkt: Packet = IPv6(src=src, dst=HOST_V6)
    if before is not None:
        pkt = pkt / before
    pkt = pkt / IPv6ExtHdrFragment(id=p.next_id())
    if after is not None:
        pkt = pkt / after
    pkt = pkt / UDP(sport=40000, dport=port) / Raw(data)
    return [bytes(p.ether() / f) for f in fragment6(IPv6(bytes(pkt)), fragsize)]


ORDERS: dict[str, Callable[[list[bytes]], list[bytes]]] = {
    "in_order": lambda f: f,
    "reversed": lambda f: f[::-1],
    "shuffled": lambda f: random.Random(12).sample(f, len(f)),
    "last_first": lambda f: f[-1:] + f[:-1],
    "duplicated": lambda f: f[:1] + f + f[1:2],
}


# ---- the scenarios: each returns what the receiver observed, and what was sent -------------

Outcome = tuple[Any, Any]  # (observed, expected from what was sent)


def _udp_expect(payloads: list[bytes], kinds: tuple[str, ...] = ()) -> list[tuple[str, int, tuple[str, ...]]]:
    return [(digest(d), len(d), kinds) for d in payloads]


def stack_fragmented_udp(src: str, dst: str) -> Callable[[Parity], Outcome]:
    def run(p: Parity) -> Outcome:
        payloads = [payload(size, f"s{size}") for size in (3000, 9000, 60000)]
        return p.stack_udp(src, dst, payloads), _udp_expect(payloads)
    return run


def crafted_fragments(version: int, order: str) -> Callable[[Parity], Outcome]:
    def run(p: Parity) -> Outcome:
        data = payload(4000, f"c{version}{order}")
        if version == 4:
            result = p.crafted(lambda port: ORDERS[order](v4_fragments(p, CLIENT_V4, port, data)), HOST_V4, 1)
        else:
            result = p.crafted(lambda port: ORDERS[order](v6_fragments(p, CLIENT_V6, port, data)), HOST_V6, 1)
        return result, _udp_expect([data])
    return run


def stack_v6_options(option: int, kind: str) -> Callable[[Parity], Outcome]:
    def run(p: Parity) -> Outcome:
        payloads = [payload(100, "small"), payload(3000, "fragmented")]
        got = p.stack_udp(CLIENT_V6, HOST_V6, payloads, socket.IPPROTO_IPV6, option, IPV6_OPTION_HEADER)
        return got, _udp_expect(payloads, (f"{kind}:{IPV6_OPTION_HEADER[2:].hex()}",))
    return run


def stack_v4_options(p: Parity) -> Outcome:
    payloads = [payload(100, "small"), payload(3000, "fragmented")]
    got = p.stack_udp(CLIENT_V4, HOST_V4, payloads, socket.IPPROTO_IP, socket.IP_OPTIONS, IPV4_RECORD_ROUTE)
    return got, _udp_expect(payloads, ("ipopt:07",))


def crafted_v6_ext_headers(p: Parity) -> Outcome:
    """Hop-by-hop and destination options in front of a whole datagram and around a fragment header."""
    small, big = payload(200, "ext-small"), payload(4000, "ext-frag")
    hbh = IPv6ExtHdrHopByHop(options=[])
    dst = IPv6ExtHdrDestOpt(options=[])

    def build(port: int) -> list[bytes]:
        whole = p.ether() / IPv6(src=CLIENT_V6, dst=HOST_V6) / hbh / dst / UDP(sport=40000, dport=port) / Raw(small)
        return [bytes(whole), *v6_fragments(p, CLIENT_V6, port, big, before=hbh, after=dst)]
    return p.crafted(build, HOST_V6, 2), _udp_expect([small, big], ("dst:0104" + "00" * 4, "hbh:0104" + "00" * 4))


def crafted_v4_options(p: Parity) -> Outcome:
    small, big = payload(200, "opt-small"), payload(4000, "opt-frag")
    options = [IPOption_NOP(), IPOption_RR(routers=["0.0.0.0"]), IPOption_NOP(), IPOption_NOP(), IPOption_NOP()]

    def build(port: int) -> list[bytes]:
        whole = p.ether() / IP(src=CLIENT_V4, dst=HOST_V4, options=options) / UDP(sport=40000, dport=port) / Raw(small)
        return [bytes(whole), *v4_fragments(p, CLIENT_V4, port, big, options=options)]
    return p.crafted(build, HOST_V4, 2), _udp_expect([small, big], ("ipopt:01",))


def big_ping(dst: str) -> Callable[[Parity], Outcome]:
    def run(p: Parity) -> Outcome:
        proc = p.sb.exec(p.sb.client_ns, ["ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "5", "-s", "4000", dst],
                         check=False)
        match = re.search(r"(\d+) packets transmitted, (\d+) received", proc.stdout)
        assert match, proc.stdout + proc.stderr
        return (int(match.group(1)), int(match.group(2))), (3, 3)
    return run


def tcp_transfer(src: str, dst: str) -> Callable[[Parity], Outcome]:
    def run(p: Parity) -> Outcome:
        data = random.Random(7).randbytes(TCP_BYTES)
        with entered_netns(p.sb.host_ns):
            listener = socket.socket(family_of(dst), socket.SOCK_STREAM)
        with entered_netns(p.sb.client_ns):
            client = socket.socket(family_of(dst), socket.SOCK_STREAM)
        received: dict[str, Any] = {}

        def serve() -> None:
            listener.settimeout(30)
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(30)
                h, n = hashlib.sha256(), 0
                while chunk := conn.recv(1 << 16):
                    h.update(chunk)
                    n += len(chunk)
                received["result"] = (h.hexdigest()[:16], n)

        with listener, client:
            listener.bind((dst, 0))
            listener.listen(1)
            server = threading.Thread(target=serve, daemon=True)
            server.start()
            client.settimeout(30)
            client.bind((src, 0))
            client.connect((dst, listener.getsockname()[1]))
            client.sendall(data)
            client.shutdown(socket.SHUT_WR)
            server.join(60)
        return received.get("result"), (digest(data), len(data))
    return run


SCENARIOS: dict[str, Callable[[Parity], Outcome]] = {
    "stack fragmented UDP v4": stack_fragmented_udp(CLIENT_V4, HOST_V4),
    "stack fragmented UDP v6": stack_fragmented_udp(CLIENT_V6, HOST_V6),
    **{f"crafted fragments v{v} {order}": crafted_fragments(v, order) for v in (4, 6) for order in ORDERS},
    "stack IPv6 hop-by-hop options": stack_v6_options(socket.IPV6_HOPOPTS, "hbh"),
    "stack IPv6 destination options": stack_v6_options(socket.IPV6_DSTOPTS, "dst"),
    "crafted IPv6 hop-by-hop + destination options": crafted_v6_ext_headers,
    "stack IPv4 options (record route)": stack_v4_options,
    "crafted IPv4 options": crafted_v4_options,
    "ping -s 4000 v4": big_ping(HOST_V4),
    "ping -s 4000 v6": big_ping(HOST_V6),
    "TCP 20 MB v4": tcp_transfer(CLIENT_V4, HOST_V4),
    "TCP 20 MB v6": tcp_transfer(CLIENT_V6, HOST_V6),
}


def drop_counters(sb: Sandbox, verdict: str = "drop") -> dict[str, int]:
    return {c["reason"]: c["packets"] for c in status(sb)["counters"] if c["verdict"] == verdict}


@dataclass
class Runs:
    without: dict[str, Outcome]
    with_hyperion: dict[str, Outcome]
    drops: dict[str, int]  # drop counters moved by the scenarios, with Hyperion
    passes: dict[str, int]  # and pass counters


@pytest.fixture(scope="module")
def sb(kernel: None) -> Iterator[Sandbox]:
    sandbox = Sandbox().up()
    try:
        yield sandbox
    finally:
        sandbox.down()


@pytest.fixture(scope="module")
def runs(sb: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    parity = Parity(sb, sb.mac(sb.host_ns, sb.host_if), sb.mac(sb.client_ns, sb.client_if))
    without = {name: run(parity) for name, run in SCENARIOS.items()}
    policy = tmp_path_factory.mktemp("parity") / "policy.yaml"
    policy.write_text(POLICY)
    hyperion(sb, "attach", "--iface", sb.host_if, "--policy", str(policy))
    try:
        before, passed = drop_counters(sb), drop_counters(sb, "pass")
        with_hyperion = {name: run(parity) for name, run in SCENARIOS.items()}
        after, passed_after = drop_counters(sb), drop_counters(sb, "pass")
        drops = {r: n - before.get(r, 0) for r, n in after.items() if n != before.get(r, 0)}
        passes = {r: n - passed.get(r, 0) for r, n in passed_after.items() if n != passed.get(r, 0)}
    finally:
        hyperion(sb, "detach", "--iface", sb.host_if, check=False)
    return Runs(without, with_hyperion, drops, passes)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_delivered_exactly_as_without_hyperion(runs: Runs, name: str) -> None:
    observed_without, sent = runs.without[name]
    assert observed_without == sent, "the stack alone does not deliver what was sent: the scenario is wrong"
    assert runs.with_hyperion[name][0] == observed_without


def test_no_drop_counter_moved(runs: Runs) -> None:
    assert runs.drops == {}
    # The program judged the traffic: first fragments and whole packets, then later fragments.
    assert runs.passes.get("no_match", 0) > 10_000 and runs.passes.get("fragment", 0) > 100, runs.passes


# ---- fragments from a blocked source --------------------------------------------------------

def blocked_frames(p: Parity, version: int, port: int) -> list[bytes]:
    data = payload(4000, f"blocked{version}")
    frames = (v4_fragments(p, BLOCKED4, port, data) if version == 4 else v6_fragments(p, BLOCKED6, port, data))
    return ORDERS["reversed"](frames)


@pytest.mark.parametrize("version", [4, 6])
def test_fragments_of_a_blocked_source_deliver_nothing(sb: Sandbox, tmp_path: Path, version: int) -> None:
    p = Parity(sb, sb.mac(sb.host_ns, sb.host_if), sb.mac(sb.client_ns, sb.client_if))
    dst = HOST_V4 if version == 4 else HOST_V6
    # Without Hyperion the stack reassembles and delivers them: the receiver would see them.
    receiver = Receiver(sb, dst)
    try:
        p.send_frames(blocked_frames(p, version, receiver.port))
        assert len(receiver.receive(1)) == 1
    finally:
        receiver.close()

    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    hyperion(sb, "attach", "--iface", sb.host_if, "--policy", str(policy))
    try:
        receiver = Receiver(sb, dst)
        try:
            before = drop_counters(sb)
            frames = blocked_frames(p, version, receiver.port)
            # Real fragments too: the client's own stack, sending from a blocked address.
            blocked = BLOCKED4 if version == 4 else BLOCKED6
            sb.add_client_address(blocked)
            with entered_netns(sb.client_ns):
                sock = socket.socket(family_of(dst), socket.SOCK_DGRAM)
            with sock:
                sock.bind((blocked, 0))
                sock.sendto(payload(3000, "stack"), (dst, receiver.port))  # three fragments
            p.send_frames(frames)
            expected = len(frames) + 3
            wait_for(lambda: drop_counters(sb).get("blocklist_cidr", 0) - before.get("blocklist_cidr", 0)
                     >= expected, 10)
            after = drop_counters(sb)
            # The XDP drop precedes the stack: once every fragment is counted, none can arrive.
            assert receiver.pending() == 0
            assert {r: n - before.get(r, 0) for r, n in after.items() if n != before.get(r, 0)} == {
                "blocklist_cidr": expected}
        finally:
            receiver.close()
    finally:
        hyperion(sb, "detach", "--iface", sb.host_if, check=False)
