"""Delivery of the packets the slow path passes: a TUN device owned by Hyperion.

Packets that pass inspection are written to it, so the local stack receives them as if they had come
off the wire and hands them to the listening service; its replies leave normally.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import struct
import subprocess

from hyperion.errors import SlowPathError
from hyperion.kernel.netdev import run_checked

log = logging.getLogger("hyperion.slowpath")


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


