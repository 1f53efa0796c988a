"""Delivery of the packets the slow path passes to the local stack.

Two ways, one interface (`Delivery`):

- `WireReentry` (the default): the frame, as it came off the wire, re-enters the stack through the
  real interface. Workers send it onto one end of a helper veth pair; a TC ingress program on the
  other end (bpf/reentry.bpf.c) redirects it into the real interface's ingress. The stack sees it
  as received there, so `iif`, rp_filter, netfilter, conntrack zones and routing apply as on the
  wire; no address is copied and no sysctl is changed.
- `TunDevice` (the fallback, where re-entry cannot work: the fast path in generic mode, whose
  program would meet the re-entered frame again): IP datagrams written to a TUN device, which
  needs rp_filter=0 on it and a /32 copy of the interface's IPv4 addresses, and changes the input
  interface.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import struct
import subprocess
from pathlib import Path
from typing import Literal, Protocol

from hyperion.errors import HyperionError, SlowPathError
from hyperion.fastpath.loader import BpfObject
from hyperion.kernel import libbpf
from hyperion.kernel.netdev import ifindex_of, run_checked
from hyperion.kernel.process import process_exists

log = logging.getLogger("hyperion.slowpath")


DeliveryKind = Literal["wire", "tun"]


class Delivery(Protocol):
    """Where workers write what they pass: fd, and whether they write whole frames (wire) or IP
    datagrams (TUN)."""

    name: str
    fd: int
    frames: bool

    def close(self) -> None: ...


_TUNSETIFF = 0x400454CA


_IFF_TUN = 0x0001


_IFF_NO_PI = 0x1000


class TunDevice:
    """The device passing packets are written to (IP datagrams, no packet-info header).

    Reverse-path filtering: the sources it delivers are routed through the real
    interface, so the device itself gets rp_filter=0, and a copy of the real
    interface's IPv4 addresses (as /32) because the kernel rejects every source
    on a device without an IPv4 address when the effective mode, the maximum of
    conf.all and the device's, is not 0. With conf.all.rp_filter=1 (strict)
    nothing delivered this way is accepted: use 2 (loose).
    """

    frames = False

    def __init__(self, name: str, mirror_addresses_of: str) -> None:
        self.name = name
        self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.ioctl(self.fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
            run_checked(["sysctl", "-qw", f"net.ipv4.conf.{name}.rp_filter=0"])
            for address in _ipv4_addresses(mirror_addresses_of):
                run_checked(["ip", "addr", "add", f"{address}/32", "dev", name, "noprefixroute"])
            run_checked(["ip", "link", "set", name, "up"])
        except BaseException:
            os.close(self.fd)
            raise
        with open("/proc/sys/net/ipv4/conf/all/rp_filter") as f:
            if f.read().strip() == "1":
                log.warning("net.ipv4.conf.all.rp_filter=1 (strict): packets the slow path passes will be "
                            "dropped by the kernel; set it to 2 (loose)")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # the device goes away with its last fd
            self.fd = -1


def _ipv4_addresses(ifname: str) -> list[str]:
    out = subprocess.run(["ip", "-j", "-4", "addr", "show", "dev", ifname], capture_output=True, text=True)
    if out.returncode:
        raise SlowPathError(f"interface {ifname!r}: {out.stderr.strip()}")
    return [a["local"] for link in json.loads(out.stdout) for a in link.get("addr_info", [])]


REENTRY_OBJECT = Path(__file__).resolve().parent.parent / "_bpf" / "reentry.bpf.o"
REENTRY_PROGRAM = "hyperion_reentry"
REENTRY_MAP = "hyp_reentry"
# The helper pair's ifalias: how a later daemon recognises a pair whose daemon died.
ALIAS_PREFIX = "hyperion re-entry"
# Room for two VLAN tags over the real interface's MTU: frames are re-sent as they came.
VLAN_ROOM = 8


def reentry_names(pid: int) -> tuple[str, str]:
    """The helper pair of daemon `pid`: the end workers send on, the end whose ingress redirects."""
    base = f"hyp{pid % 100000}"
    return f"{base}s", f"{base}r"


class WireReentry:
    """The helper veth pair, its TC ingress program and the packet socket workers send frames on.
    close() removes all of it; a pair left by a daemon that died is removed at the next start."""

    frames = True

    def __init__(self, ifname: str, pid: int | None = None, object_path: Path = REENTRY_OBJECT) -> None:
        pid = os.getpid() if pid is None else pid
        self.ifname = ifname
        self.name, self.ingress = reentry_names(pid)
        self.fd = -1
        self._link_fd = -1
        self._object: BpfObject | None = None
        self._socket: socket.socket | None = None
        remove_stale_pairs()
        target = ifindex_of(ifname)
        mtu = _mtu(ifname) + VLAN_ROOM
        run_checked(["ip", "link", "add", self.name, "mtu", str(mtu), "type", "veth", "peer", "name", self.ingress,
                     "mtu", str(mtu)])
        try:
            for end in (self.name, self.ingress):
                # No IPv6 link-local address (no DAD, MLD or router solicitations), no ARP: the pair
                # carries only the frames workers send, and its ends have no addresses.
                run_checked(["ip", "link", "set", end, "addrgenmode", "none", "arp", "off"])
            run_checked(["ip", "link", "set", self.name, "alias", f"{ALIAS_PREFIX} into {ifname} (pid {pid})"])
            self._object = BpfObject(object_path)
            self._object.load(None)
            target_map = libbpf.MapFd(self._object.map_fds()[REENTRY_MAP], 4, 4, REENTRY_MAP)
            target_map.update((0).to_bytes(4, "little"), target.to_bytes(4, "little"))
            self._link_fd = libbpf.check(libbpf.lib().bpf_link_create(
                self._object.program_fd(REENTRY_PROGRAM), ifindex_of(self.ingress), libbpf.BPF_TCX_INGRESS, None),
                f"attach the re-entry program to {self.ingress} (TC ingress)")
            for end in (self.ingress, self.name):
                run_checked(["ip", "link", "set", end, "up"])
            # Protocol 0: the socket receives nothing; it only sends whole frames on the helper end.
            self._socket = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            self._socket.bind((self.name, 0))
            with contextlib.suppress(OSError):  # a veth has no qdisc by default; skip it anyway
                self._socket.setsockopt(_SOL_PACKET, _PACKET_QDISC_BYPASS, 1)
            self.fd = self._socket.fileno()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
            self.fd = -1
        if self._link_fd >= 0:
            os.close(self._link_fd)
            self._link_fd = -1
        if self._object is not None:
            self._object.close()
            self._object = None
        # Deleting one end deletes the pair.
        subprocess.run(["ip", "link", "del", self.name], capture_output=True)


_SOL_PACKET = 263  # <linux/socket.h>
_PACKET_QDISC_BYPASS = 20  # <linux/if_packet.h>


def _mtu(ifname: str) -> int:
    """From the current network namespace (sysfs may be another namespace's)."""
    out = subprocess.run(["ip", "-j", "link", "show", "dev", ifname], capture_output=True, text=True)
    if out.returncode:
        raise SlowPathError(f"interface {ifname!r}: {out.stderr.strip()}")
    return int(json.loads(out.stdout)[0]["mtu"])


def remove_stale_pairs() -> list[str]:
    """Deletes helper pairs whose daemon is gone (by their ifalias); returns their names."""
    out = subprocess.run(["ip", "-j", "link", "show", "type", "veth"], capture_output=True, text=True)
    if out.returncode:
        return []
    removed = []
    for link in json.loads(out.stdout or "[]"):
        alias = link.get("ifalias", "")
        if not alias.startswith(ALIAS_PREFIX) or "(pid " not in alias:
            continue
        try:
            pid = int(alias.rsplit("(pid ", 1)[1].rstrip(")"))
        except ValueError:
            continue
        if process_exists(pid):
            continue
        if subprocess.run(["ip", "link", "del", link["ifname"]], capture_output=True).returncode == 0:
            log.info("removed the re-entry pair %s of daemon %d, which is gone", link["ifname"], pid)
            removed.append(link["ifname"])
    return removed


def open_delivery(kind: DeliveryKind, ifname: str, tun_name: str | None = None) -> Delivery:
    """The delivery the options ask for."""
    if kind == "tun":
        return TunDevice(tun_name or f"hyp{os.getpid() % 100000}t", mirror_addresses_of=ifname)
    try:
        return WireReentry(ifname)
    except HyperionError as exc:
        raise SlowPathError(f"slow-path delivery through {ifname}: {exc}") from exc

