"""Least privilege for `hyperion run`: once the interface is attached, keep only the capabilities
the running daemon needs and drop every other one from the effective, permitted and inheritable
sets, the ambient set and the bounding set; then set no_new_privs.

What the running daemon needs (docs/security.md explains each):
- CAP_BPF: creating the inner maps of every reload, loading a program again on recovery;
- CAP_PERFMON: with CAP_BPF, what the verifier requires of a program that is loaded again;
- CAP_NET_ADMIN: attaching XDP, the TUN device and its addresses and sysctls, ethtool, link
  recovery;
- CAP_NET_RAW: AF_XDP sockets (a reload that adds the slow path, queue-local recovery);
- CAP_IPC_LOCK: an AF_XDP UMEM is pinned memory, charged to RLIMIT_MEMLOCK (8 MiB by default)
  unless the process has CAP_IPC_LOCK, and one queue's UMEM is 16 MiB (4096 frames of 4 KiB).
  Raising the limit instead needs CAP_SYS_RESOURCE, which containers often do not have.
For the AF_XDP workers (confine_worker below), when they are confined: CAP_KILL in the effective
set (a worker runs as another user, and the watchdog signals it), and CAP_SETUID, CAP_SETGID and
CAP_SETPCAP in the permitted and bounding sets only, not effective: the daemon never uses them; a
worker, executed as root, gets them effective and spends them on switching to its user and
emptying its bounding set.
Not kept: CAP_SYS_ADMIN (only BPF_PROG_GET_FD_BY_ID needs it, for `hyperion status`, which runs
as its own process), CAP_SYS_RESOURCE (BPF memory is charged to the memory cgroup on this
kernel, not to RLIMIT_MEMLOCK), CAP_DAC_OVERRIDE (the policy, the pins and /run/hyperion are
root's). CAP_NET_BIND_SERVICE is kept only when /metrics listens on a port below 1024.

Capabilities are per thread: this runs in the main thread before the daemon starts any, so every
thread, and every process it starts (the AF_XDP workers, ip, sysctl, ethtool), inherits the
reduced sets; it refuses to run when other threads exist. With no_new_privs and the bounding set
reduced, executing a program cannot give a child more than the daemon kept.

ctypes on libc (prctl, capset): python-prctl needs libcap's headers to build and
libcap-ng's Python binding is not published on PyPI, so neither adds anything here.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from hyperion.errors import HyperionError

log = logging.getLogger("hyperion.privileges")

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

DAEMON_CAPABILITIES = ("CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK")
# Only for the workers' confinement: the daemon holds them permitted, not effective.
WORKER_SWITCH_CAPABILITIES = ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP")
PRIVILEGED_PORTS = 1024
DEFAULT_WORKER_USER = "nobody"

PR_SET_DUMPABLE = 4
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def capability_name(number: int) -> str:
    return _NAMES.get(number, f"CAP_{number}")  # a kernel newer than this table


def _names(mask: int) -> frozenset[str]:
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
        return _names(int(fields[key].strip(), 16))

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


def daemon_capabilities(metrics_addr: str | None, confined_workers: bool = False) -> tuple[str, ...]:
    """DAEMON_CAPABILITIES, CAP_KILL when the workers run as another user (the watchdog signals
    them), and CAP_NET_BIND_SERVICE when /metrics listens on a privileged port."""
    kept = (*DAEMON_CAPABILITIES, "CAP_KILL") if confined_workers else DAEMON_CAPABILITIES
    if metrics_addr:
        _, _, port = metrics_addr.rpartition(":")
        if port.isdigit() and 0 < int(port) < PRIVILEGED_PORTS:
            return (*kept, "CAP_NET_BIND_SERVICE")
    return kept


def drop_privileges(keep: Iterable[str], syscalls: Syscalls | None = None,
                    permitted_only: Iterable[str] = ()) -> frozenset[str]:
    """Keeps only `keep` (those of them the process has) in every capability set and sets
    no_new_privs; returns the capabilities kept. `permitted_only` stay in the permitted and
    bounding sets but not the effective one: for processes the daemon executes (a root
    process's exec makes its permitted set effective), not for the daemon itself.
    Must run before any other thread exists."""
    only_mask = mask_of(permitted_only)
    keep_mask = mask_of(keep)
    sys_ = syscalls or LibcSyscalls()
    threads = sys_.thread_count()
    if threads != 1:
        raise HyperionError(f"capabilities are per thread: drop them before starting threads ({threads} running)")
    permitted = sys_.permitted()
    kept = keep_mask & permitted
    held = (keep_mask | only_mask) & permitted
    if permitted >> CAPABILITIES["CAP_SETPCAP"] & 1:
        for capability in range(sys_.last_capability() + 1):
            if not (keep_mask | only_mask) >> capability & 1 and sys_.bounding_has(capability):
                sys_.prctl(PR_CAPBSET_DROP, capability)  # needs CAP_SETPCAP: before the capset below
    else:  # e.g. a container started without it: no_new_privs alone keeps children within `kept`
        log.warning("no CAP_SETPCAP: the bounding set stays as it is")
    sys_.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    sys_.capset(kept, held, 0)
    sys_.prctl(PR_SET_NO_NEW_PRIVS, 1)
    names = _names(kept)
    extra = _names(held & ~kept)
    log.info("capabilities dropped; kept %s%s", ", ".join(sorted(names)) or "none",
             f"; permitted only, for the workers: {', '.join(sorted(extra))}" if extra else "")
    return names


# ---- the AF_XDP workers ---------------------------------------------------------------------------
#
# A worker parses hostile packets, so once its socket is bound and in xsk_map (the only steps that
# need privilege) it gives up everything: it runs as an unprivileged user, with every capability
# set empty, no_new_privs, not dumpable (no other process of that user may ptrace it or read its
# memory) and a seccomp allowlist of what the steady state does with the descriptors it already
# holds. Writes through an open BPF map fd (block_source, a re-registration in xsk_map) need no
# capability; the map's fd carries the right.

EPERM = 1
ENOSYS = 38
CLONE_THREAD = 0x00010000
BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM = 1, 2, 3
_CMD = 0xFFFFFFFF  # an int argument: compare the low 32 bits

# The steady state of the interpreter and the native loop: what `strace -f` of a worker showed after
# the filter was loaded (threads started, DNS passed and answered, a block_source written, a reload,
# SIGTERM and exit), plus the variants the same code reaches on other paths (ppoll where poll is a
# libc wrapper, recvfrom for the fill ring's wakeup, brk/mremap for malloc, clock_nanosleep for a
# sleep, fstat and pread64 on a descriptor the supervisor passes). install_worker_filter(trace=True)
# finds what a new code path needs. Whatever is not here fails with EPERM: no file opened, no socket
# created, no exec, no fork, no signal to another process, no BPF command but element access.
WORKER_SYSCALLS = (
    # memory
    "brk", "mmap", "munmap", "mremap", "mprotect", "madvise",
    # the descriptors it holds: pipes to the supervisor, the TUN device, the AF_XDP socket, map fds
    "read", "pread64", "write", "lseek", "close", "fstat",
    "poll", "ppoll", "recvfrom", "sendto", "getsockopt",
    # a reload's rules: a sealed memfd received over the rules socket (SCM_RIGHTS), its seals checked
    "recvmsg", "fcntl",
    # threads and their synchronisation
    "futex", "set_robust_list", "rseq", "sched_yield", "gettid", "getpid", "getrandom",
    "clock_gettime", "clock_nanosleep", "nanosleep",
    # signals (SIGTERM stops the loop) and the end
    "rt_sigreturn", "rt_sigprocmask", "rt_sigaction", "restart_syscall", "exit", "exit_group",
)


def worker_seccomp_rules() -> list[tuple[str, int | None, tuple[int, int, int] | None]]:
    """The allowlist as rules: (name, errno or None to allow, None or (arg, mask, value))."""
    pid = os.getpid()
    rules: list[tuple[str, int | None, tuple[int, int, int] | None]] = [(name, None, None) for name in WORKER_SYSCALLS]
    rules += [
        # Threads only (glibc's pthread_create falls back to clone when clone3 says ENOSYS;
        # clone3's flags are in memory, where a filter cannot look): no fork.
        ("clone", None, (0, CLONE_THREAD, CLONE_THREAD)),
        ("clone3", ENOSYS, None),
        # glibc's fstat is newfstatat(fd, "", AT_EMPTY_PATH). The filter cannot see the path, so
        # a stat of a path (metadata only, within the worker user's permissions) stays possible.
        ("newfstatat", None, None),
        # Signals to itself only (abort()).
        ("kill", None, (0, 0xFFFFFFFF, pid)),
        ("tgkill", None, (0, 0xFFFFFFFF, pid)),
        # Element access on the maps it holds (the dynamic blocklists, xsk_map).
        *(("bpf", None, (0, _CMD, cmd)) for cmd in (BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM)),
    ]
    return rules


def install_worker_filter(trace: bool = False) -> None:
    """Loads the workers' seccomp filter into this process (every thread). Needs no_new_privs
    (or CAP_SYS_ADMIN). Refused calls fail with EPERM rather than killing the process: the worker's
    Python code then reports the error and goes on serving, so a call on a path nobody tested
    (or that a packet steers into) costs a clear error, not a crash, a fenced queue and its
    on_failure fallback. trace: nothing refused, everything outside the list logged by the kernel
    (`dmesg`: audit type=1326), for finding what a new code path needs."""
    from hyperion import _seccomp

    _seccomp.load(worker_seccomp_rules(), None if trace else EPERM)


def resolve_worker_user(spec: str) -> tuple[int, int]:
    """`--worker-user`: a user name (its primary group), a uid (its passwd group, or the same number),
    or UID:GID; never root."""
    import pwd

    name, _, group = spec.partition(":")
    try:
        if group:
            uid, gid = int(name), int(group)
        elif name.isdigit():
            uid = int(name)
            try:
                gid = pwd.getpwuid(uid).pw_gid
            except KeyError:
                gid = uid
        else:
            entry = pwd.getpwnam(name)
            uid, gid = entry.pw_uid, entry.pw_gid
    except KeyError:
        raise HyperionError(f"--worker-user: no user {spec!r}") from None
    except ValueError:
        raise HyperionError(f"--worker-user: {spec!r} is not USER, UID or UID:GID") from None
    if uid == 0 or gid == 0:
        raise HyperionError(f"--worker-user: {spec!r} is root; --keep-privileges keeps the workers privileged")
    if not (0 < uid < 2**32 - 1 and 0 < gid < 2**32 - 1):
        raise HyperionError(f"--worker-user: {spec!r}: id out of range")
    return uid, gid


def confine_worker(uid: int, gid: int, syscalls: LibcSyscalls | None = None, trace: bool = False) -> None:
    """Everything a worker gives up once its socket is bound (see above). Runs in the worker's
    only thread, before it starts any (capabilities are per thread); raises HyperionError,
    naming what failed, when the process cannot confine itself."""
    from hyperion import _seccomp  # noqa: F401  (loaded while files can still be opened)

    sys_ = syscalls or LibcSyscalls()
    threads = sys_.thread_count()
    if threads != 1:
        raise HyperionError(f"worker confinement: capabilities are per thread ({threads} running)")
    missing = [name for name in WORKER_SWITCH_CAPABILITIES if not sys_.permitted() >> CAPABILITIES[name] & 1]
    if missing:
        raise HyperionError(f"worker confinement: switching to uid {uid} needs {', '.join(missing)}, which this "
                            "process does not have (--keep-privileges leaves the workers as they are)")
    # The bounding set first: dropping from it needs CAP_SETPCAP, which the switch of uid takes.
    for capability in range(sys_.last_capability() + 1):
        if sys_.bounding_has(capability):
            sys_.prctl(PR_CAPBSET_DROP, capability)
    sys_.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    try:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)  # all three: no saved uid 0 to switch back to
    except OSError as exc:
        raise HyperionError(f"worker confinement: switching to uid {uid} gid {gid}: {exc.strerror}") from None
    sys_.capset(0, 0, 0)  # the uid switch emptied permitted and effective; inheritable too
    sys_.prctl(PR_SET_DUMPABLE, 0)
    sys_.prctl(PR_SET_NO_NEW_PRIVS, 1)
    caps = current_capabilities()
    left = caps.effective | caps.permitted | caps.inheritable | caps.bounding | caps.ambient
    if left or os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups():
        raise HyperionError(f"worker confinement incomplete: capabilities {sorted(left)}, "
                            f"uids {os.getresuid()}, gids {os.getresgid()}, groups {os.getgroups()}")
    try:
        install_worker_filter(trace)
    except OSError as exc:
        raise HyperionError(f"worker confinement: {exc}") from None
