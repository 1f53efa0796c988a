"""Linux capabilities of a process and the prctl/capset calls that change them (ctypes on libc).

ctypes on libc (prctl, capset): python-prctl needs libcap's headers to build and libcap-ng's Python
binding is not published on PyPI, so neither adds anything here.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from hyperion.errors import HyperionError

CAPABILITIES: dict[str, int] = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3, "CAP_FSETID": 4,
    "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BIND_SERVICE": 10, "CAP_NET_BROADCAST": 11, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14, "CAP_IPC_OWNER": 15, "CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17, "CAP_SYS_CHROOT": 18,
    "CAP_SYS_PTRACE": 19, "CAP_SYS_PACCT": 20, "CAP_SYS_ADMIN": 21, "CAP_SYS_BOOT": 22, "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24, "CAP_SYS_TIME": 25, "CAP_SYS_TTY_CONFIG": 26, "CAP_MKNOD": 27, "CAP_LEASE": 28,
    "CAP_AUDIT_WRITE": 29, "CAP_AUDIT_CONTROL": 30, "CAP_SETFCAP": 31, "CAP_MAC_OVERRIDE": 32,
    "CAP_MAC_ADMIN": 33, "CAP_SYSLOG": 34, "CAP_WAKE_ALARM": 35, "CAP_BLOCK_SUSPEND": 36, "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38, "CAP_BPF": 39, "CAP_CHECKPOINT_RESTORE": 40,
}


_NAMES = {number: name for name, number in CAPABILITIES.items()}


PR_SET_DUMPABLE = 4


PR_CAPBSET_READ = 23


PR_CAPBSET_DROP = 24


PR_SET_NO_NEW_PRIVS = 38


PR_CAP_AMBIENT = 47


PR_CAP_AMBIENT_CLEAR_ALL = 4


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def capability_name(number: int) -> str:
    return _NAMES.get(number, f"CAP_{number}")  # a kernel newer than this table


def names_of(mask: int) -> frozenset[str]:
    return frozenset(capability_name(bit) for bit in range(64) if mask >> bit & 1)


def mask_of(names: Iterable[str]) -> int:
    mask = 0
    for name in names:
        key = name.upper() if name.upper().startswith("CAP_") else f"CAP_{name.upper()}"
        if key not in CAPABILITIES:
            raise HyperionError(f"unknown capability {name!r}")
        mask |= 1 << CAPABILITIES[key]
    return mask


@dataclass(frozen=True)
class Capabilities:
    """A process's (or thread's) capability sets, as /proc/<pid>/status shows them."""

    effective: frozenset[str]
    permitted: frozenset[str]
    inheritable: frozenset[str]
    bounding: frozenset[str]
    ambient: frozenset[str]
    no_new_privs: bool


def parse_status(text: str) -> Capabilities:
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def mask(key: str) -> frozenset[str]:
        return names_of(int(fields[key].strip(), 16))

    return Capabilities(mask("CapEff"), mask("CapPrm"), mask("CapInh"), mask("CapBnd"), mask("CapAmb"),
                        fields.get("NoNewPrivs", "0").strip() == "1")


def current_capabilities(pid: int | str = "self", thread: int | None = None) -> Capabilities:
    """The sets of a process (its main thread) or of one of its threads, from /proc."""
    path = f"/proc/{pid}/task/{thread}/status" if thread is not None else f"/proc/{pid}/status"
    with open(path, encoding="ascii") as f:
        return parse_status(f.read())


class Syscalls(Protocol):
    """What drop_privileges asks of the kernel; tests pass a recorder."""

    def thread_count(self) -> int: ...
    def last_capability(self) -> int: ...
    def permitted(self) -> int: ...
    def bounding_has(self, capability: int) -> bool: ...
    def prctl(self, option: int, arg2: int = 0) -> None: ...
    def capset(self, effective: int, permitted: int, inheritable: int) -> None: ...


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


class LibcSyscalls:
    """The real thing: prctl(2) and capset(2) through libc."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        self._libc.prctl.restype = ctypes.c_int

    def thread_count(self) -> int:
        return len(os.listdir("/proc/self/task"))

    def last_capability(self) -> int:
        with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as f:
            return int(f.read())

    def permitted(self) -> int:
        with open("/proc/thread-self/status", encoding="ascii") as f:
            return next(int(line.split(":")[1], 16) for line in f if line.startswith("CapPrm:"))

    def bounding_has(self, capability: int) -> bool:
        return bool(self._call(PR_CAPBSET_READ, capability))

    def prctl(self, option: int, arg2: int = 0) -> None:
        self._call(option, arg2)

    def _call(self, option: int, arg2: int) -> int:
        rc = int(self._libc.prctl(option, arg2, 0, 0, 0))
        if rc < 0:
            err = ctypes.get_errno()
            raise HyperionError(f"prctl({option}, {arg2}) failed: {os.strerror(err)}")
        return rc

    def capset(self, effective: int, permitted: int, inheritable: int) -> None:
        header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
        data = (_CapData * 2)(
            _CapData(effective & 0xFFFFFFFF, permitted & 0xFFFFFFFF, inheritable & 0xFFFFFFFF),
            _CapData(effective >> 32, permitted >> 32, inheritable >> 32))
        if self._libc.capset(ctypes.byref(header), data) != 0:
            err = ctypes.get_errno()
            raise HyperionError(f"capset failed: {os.strerror(err)}")
