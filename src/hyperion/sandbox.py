"""Network-namespace sandboxes: a client and a host joined by a veth pair.

Used by the tests, the demo and the benchmarks. Every name carries a per-run
prefix so parallel runs never collide and a crashed run's leftovers can be
found and removed by prefix. Only documentation addresses are used
(192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32).

Namespaces are entered with `nsenter --net=` (setns), not `ip netns exec`,
which would remount /sys and hide the pinned state in /sys/fs/bpf.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyperion.errors import HyperionError
from hyperion.fastpath import detach_netns

NAME_PREFIX = "hyp"
NETNS_DIR = Path("/run/netns")

CLIENT_V4, HOST_V4 = "192.0.2.2", "192.0.2.1"
CLIENT_V6, HOST_V6 = "2001:db8:1::2", "2001:db8:1::1"
# Extra client-side sources, routed back by the host through the client.
REMOTE_V4_NETS = ("198.51.100.0/24", "203.0.113.0/24")
REMOTE_V6_NET = "2001:db8:ff00::/40"


class SandboxError(HyperionError):
    """A namespace or link operation failed."""


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise SandboxError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def in_netns(netns: str, argv: Sequence[str]) -> list[str]:
    """argv wrapped to run inside a named network namespace, keeping this mount namespace."""
    return ["nsenter", f"--net={NETNS_DIR / netns}", "--", *argv]


@dataclass
class Sandbox:
    """`pair` topology: <prefix>-cli (client) --veth-- <prefix>-host (host, where Hyperion attaches)."""

    prefix: str = field(default_factory=lambda: f"{NAME_PREFIX}{secrets.token_hex(3)}")
    rx_queues: int = 1

    @property
    def client_ns(self) -> str:
        return f"{self.prefix}-cli"

    @property
    def host_ns(self) -> str:
        return f"{self.prefix}-host"

    @property
    def client_if(self) -> str:
        return f"{self.prefix}c0"

    @property
    def host_if(self) -> str:
        return f"{self.prefix}h0"

    def up(self) -> Sandbox:
        try:
            self._create()
        except BaseException:
            self.down()
            raise
        return self

    def _create(self) -> None:
        for ns in (self.client_ns, self.host_ns):
            _run(["ip", "netns", "add", ns])
        queues = [] if self.rx_queues == 1 else ["numtxqueues", str(self.rx_queues),
                                                 "numrxqueues", str(self.rx_queues)]
        _run(["ip", "link", "add", self.client_if, *queues, "netns", self.client_ns,
              "type", "veth", "peer", "name", self.host_if, *queues, "netns", self.host_ns])
        for ns, ifname, v4, v6 in ((self.client_ns, self.client_if, CLIENT_V4, CLIENT_V6),
                                   (self.host_ns, self.host_if, HOST_V4, HOST_V6)):
            self.ip(ns, "link", "set", "lo", "up")
            # No duplicate address detection: addresses (link-local too) are usable at once,
            # so the first test packet does not race neighbour discovery.
            self.exec(ns, ["sysctl", "-qw", f"net.ipv6.conf.{ifname}.accept_dad=0"])
            self.ip(ns, "addr", "add", f"{v4}/24", "dev", ifname)
            self.ip(ns, "-6", "addr", "add", f"{v6}/64", "dev", ifname, "nodad")
            # Full checksums on the wire, as a NIC would deliver them: veth's TX offload leaves
            # partial checksums that only the peer's stack knows to trust, and the slow path
            # re-injects packets into a stack that does verify them.
            self.exec(ns, ["ethtool", "-K", ifname, "tx", "off"])
            self.ip(ns, "link", "set", ifname, "up")
            # Spoofed test sources must not be dropped by reverse-path filtering.
            for conf in ("all", "default", ifname):
                self.exec(ns, ["sysctl", "-qw", f"net.ipv4.conf.{conf}.rp_filter=0"])
        # Static neighbours: no ARP/ND on the wire, so a blocked source cannot starve address
        # resolution, and the only IP traffic crossing the link is what a test sends.
        client_mac, host_mac = self.mac(self.client_ns, self.client_if), self.mac(self.host_ns, self.host_if)
        for ns, ifname, peer_mac, peer_addrs in ((self.client_ns, self.client_if, host_mac, (HOST_V4, HOST_V6)),
                                                 (self.host_ns, self.host_if, client_mac, (CLIENT_V4, CLIENT_V6))):
            for addr in peer_addrs:
                self.ip(ns, "neigh", "replace", addr, "lladdr", peer_mac, "dev", ifname, "nud", "permanent")
        for net in REMOTE_V4_NETS:
            self.ip(self.host_ns, "route", "add", net, "via", CLIENT_V4)
        self.ip(self.host_ns, "-6", "route", "add", REMOTE_V6_NET, "via", CLIENT_V6)

    def mac(self, netns: str, ifname: str) -> str:
        return str(json.loads(self.ip(netns, "-j", "link", "show", ifname).stdout)[0]["address"])

    def add_client_address(self, address: str) -> None:
        """Adds a source address to the client (within REMOTE_*), for traffic from 'another network'."""
        if ":" in address:
            self.ip(self.client_ns, "-6", "addr", "add", f"{address}/128", "dev", self.client_if, "nodad")
        else:
            self.ip(self.client_ns, "addr", "add", f"{address}/32", "dev", self.client_if)

    def ip(self, netns: str, *args: str) -> subprocess.CompletedProcess[str]:
        return _run(in_netns(netns, ["ip", *args]))

    def exec(self, netns: str, argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(in_netns(netns, argv), check=check)

    def popen(self, netns: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(in_netns(netns, argv), text=True, **kwargs)

    def down(self) -> None:
        """Removes both namespaces (which removes the veth pair). Safe to call twice."""
        remove_sandbox_namespaces([self.client_ns, self.host_ns])

    def __enter__(self) -> Sandbox:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()


_CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def entered_netns(netns: str) -> Iterator[None]:
    """Runs the block with this thread in a named network namespace (setns), then returns.

    The mount namespace is untouched, so /sys/fs/bpf stays visible.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net", "rb") as original, open(NETNS_DIR / netns, "rb") as target:
        if libc.setns(target.fileno(), _CLONE_NEWNET) != 0:
            raise SandboxError(f"setns into {netns}: {os.strerror(ctypes.get_errno())}")
        try:
            yield
        finally:
            if libc.setns(original.fileno(), _CLONE_NEWNET) != 0:
                raise SandboxError(f"setns back from {netns}: {os.strerror(ctypes.get_errno())}")


def remove_sandbox_namespaces(names: Sequence[str]) -> None:
    """Detaches Hyperion pinned in each namespace, then deletes the namespace."""
    for ns in names:
        path = NETNS_DIR / ns
        if path.exists():
            detach_netns(path.stat().st_ino)
            _run(["ip", "netns", "delete", ns], check=False)


def stale_namespaces(prefix: str = NAME_PREFIX) -> list[str]:
    """Sandbox namespaces left by crashed runs (by prefix)."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix) and n.endswith(("-cli", "-host")))
