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
For the AF_XDP workers (hyperion.slowpath.confinement), when they are confined: CAP_KILL in the effective
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
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from hyperion.errors import HyperionError
from hyperion.kernel.capabilities import (
    CAPABILITIES,
    PR_CAP_AMBIENT,
    PR_CAP_AMBIENT_CLEAR_ALL,
    PR_CAPBSET_DROP,
    PR_SET_NO_NEW_PRIVS,
    LibcSyscalls,
    Syscalls,
    mask_of,
    names_of,
)

log = logging.getLogger("hyperion.privileges")


DAEMON_CAPABILITIES = ("CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK")


PRIVILEGED_PORTS = 1024


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
    names = names_of(kept)
    extra = names_of(held & ~kept)
    log.info("capabilities dropped; kept %s%s", ", ".join(sorted(names)) or "none",
             f"; permitted only, for the workers: {', '.join(sorted(extra))}" if extra else "")
    return names
