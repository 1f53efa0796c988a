"""A worker's confinement once its AF_XDP socket is bound: another user, no capabilities, no_new_privs
and a seccomp allowlist (`--worker-user`; docs/security.md).
"""

from __future__ import annotations

import os

from hyperion.errors import HyperionError
from hyperion.kernel.capabilities import (
    CAPABILITIES,
    PR_CAP_AMBIENT,
    PR_CAP_AMBIENT_CLEAR_ALL,
    PR_CAPBSET_DROP,
    PR_SET_DUMPABLE,
    PR_SET_NO_NEW_PRIVS,
    LibcSyscalls,
    current_capabilities,
)

# Only for the workers' confinement: the daemon holds them permitted, not effective.
WORKER_SWITCH_CAPABILITIES = ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP")


DEFAULT_WORKER_USER = "nobody"


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
    # the descriptors it holds: pipes to the supervisor, the delivery (a packet socket on the re-entry
    # veth: sendmmsg; or the TUN device), the AF_XDP socket, map fds
    "read", "pread64", "write", "lseek", "close", "fstat",
    "poll", "ppoll", "recvfrom", "sendto", "sendmmsg", "getsockopt",
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
