"""Network-device facts and settings (not BPF): interface indexes, the network namespace, the boot clock,
and what the slow path needs: RX channels, RSS, driver AF_XDP counters."""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import os
import re
import socket
import struct
import subprocess
import time

from hyperion.errors import AttachError, SlowPathError

log = logging.getLogger("hyperion.slowpath")


def netns_inode() -> int:
    """The inode of this process's network namespace (names pin directories, owner locks)."""
    return os.stat("/proc/self/ns/net").st_ino


def ifindex_of(ifname: str) -> int:
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        raise AttachError(f"interface {ifname!r} does not exist in this network namespace") from None


def boottime_ns() -> int:
    """CLOCK_BOOTTIME, the clock of bpf_ktime_get_boot_ns()."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


_SIOCETHTOOL = 0x8946


_ETHTOOL_GCHANNELS = 0x0000003C


def rx_queue_count(ifname: str) -> int:
    """Active RX queues: the driver's channel counts (ETHTOOL_GCHANNELS in this namespace), else
    iproute2's num_rx_queues. sysfs would show another namespace's devices."""
    request = struct.pack("9I", _ETHTOOL_GCHANNELS, *([0] * 8))
    buf = bytearray(request)
    ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(ctypes.c_char.from_buffer(buf)))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            fcntl.ioctl(sock.fileno(), _SIOCETHTOOL, ifreq)
            rx_count, combined_count = struct.unpack_from("9I", buf)[5], struct.unpack_from("9I", buf)[8]
            if rx_count + combined_count:
                return int(rx_count + combined_count)
        except OSError:
            pass
    out = subprocess.run(["ip", "-d", "-j", "link", "show", "dev", ifname], capture_output=True, text=True)
    if out.returncode:
        raise SlowPathError(f"interface {ifname!r}: {out.stderr.strip()}")
    return int(json.loads(out.stdout)[0].get("num_rx_queues", 1))


def set_channels(ifname: str, count: int) -> None:
    """Active RX/TX channels (`ethtool -L`); drivers name them rx/tx or combined."""
    errors = []
    for kind in (["rx", str(count), "tx", str(count)], ["rx", str(count)], ["combined", str(count)]):
        proc = subprocess.run(["ethtool", "-L", ifname, *kind], capture_output=True, text=True)
        if proc.returncode == 0:
            return
        errors.append(f"{' '.join(kind)}: {' '.join(proc.stderr.split()) or 'refused'}")
    raise SlowPathError(f"ethtool -L {ifname} to {count} channels refused ({'; '.join(errors)})")


def rss_indirection(ifname: str) -> str | list[int]:
    """The RSS indirection table, or why there is none."""
    proc = subprocess.run(["ethtool", "-x", ifname], capture_output=True, text=True)
    if proc.returncode:
        return "not supported by the driver"
    table = [int(n) for line in proc.stdout.splitlines() if ":" in line and line.strip()[0].isdigit()
             for n in line.split(":", 1)[1].split()]
    return table or "not supported by the driver"


def driver_queue_counters(ifname: str, queue_id: int) -> dict[str, int]:
    """`ethtool -S` counters that concern AF_XDP on this queue (e.g. mlx5's rx<N>_xsk_buff_alloc_err);
    empty where the driver has none (veth)."""
    proc = subprocess.run(["ethtool", "-S", ifname], capture_output=True, text=True)
    if proc.returncode:
        return {}
    found = {}
    for line in proc.stdout.splitlines():
        name, sep, value = line.strip().partition(":")
        if sep and "xsk" in name and re.search(rf"(^|\D){queue_id}(\D|$)", name) and value.strip().isdigit():
            found[name] = int(value)
    return found


def descriptor_convergence(ifname: str, queue_id: int, deadline: float) -> str:
    """After a fence: do the queue's driver AF_XDP counters stop moving within the deadline?"""
    before = driver_queue_counters(ifname, queue_id)
    if not before:
        return "no driver counters"
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        time.sleep(deadline / 4)
        after = driver_queue_counters(ifname, queue_id)
        if after == before:
            return "converged"
        before = after
    return "not converged"


def run_checked(argv: list[str]) -> None:
    """Runs a command; a non-zero exit raises SlowPathError with its stderr."""
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode:
        raise SlowPathError(f"{' '.join(argv)}: {proc.stderr.strip()}")
