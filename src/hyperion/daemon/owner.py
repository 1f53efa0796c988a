"""One owner per (network namespace, interface).

`hyperion run` holds an exclusive flock on /run/hyperion/<pin name>.lock for as long as it
runs; the pin name already encodes the namespace's inode and the interface, so two daemons in
one namespace cannot both own an interface, and daemons in different namespaces do not meet.
One-shot CLI writers (`attach`, `detach`, `policy apply`, `block add/del`) hold the same lock
for the duration of their write when no daemon runs, so they never build the same inactive
policy slot as another writer; while a daemon runs they forward to it or refuse (cli.py).

The lock file is never removed (removing a lock file lets two processes each lock a different
inode); it records its holder (pid, role, command) so a refused process can name the owner.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from hyperion.errors import HyperionError
from hyperion.fastpath.loader import STATE_ROOT, pin_dir_for, private_dir
from hyperion.kernel.process import process_exists

POLL_SECONDS = 0.05


class OwnerRole(enum.Enum):
    DAEMON = "run"
    CLI = "cli"


@dataclass(frozen=True)
class Owner:
    pid: int
    role: OwnerRole
    command: str


class InterfaceBusyError(HyperionError):
    """Another process owns the interface; `owner` names it when its record could be read."""

    def __init__(self, ifname: str, owner: Owner | None, advice: str = "") -> None:
        who = f"{owner.command} (pid {owner.pid})" if owner else "another hyperion process"
        super().__init__(f"{ifname} is owned by {who} in this network namespace" + (f": {advice}" if advice else ""))
        self.ifname = ifname
        self.owner = owner


def lock_path(ifname: str) -> Path:
    return STATE_ROOT / f"{pin_dir_for(ifname).name}.lock"


def _read_owner(fd: int) -> Owner | None:
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"null")
        return None if record is None else Owner(int(record["pid"]), OwnerRole(record["role"]), str(record["command"]))
    except (ValueError, KeyError, TypeError):
        return None  # being written, or released (emptied)


class InterfaceLock:
    """The held lock; release() (or leaving the with block, or the process ending) frees it."""

    def __init__(self, ifname: str, fd: int) -> None:
        self.ifname = ifname
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, ifname: str, role: OwnerRole, command: str, wait: float) -> InterfaceLock:
        """Takes the lock. A daemon owner is refused at once (InterfaceBusyError); a one-shot CLI
        writer is waited for, up to `wait` seconds."""
        path = lock_path(ifname)
        private_dir(STATE_ROOT, parents=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        deadline = time.monotonic() + wait
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    owner = _read_owner(fd)
                    if (owner is not None and owner.role is OwnerRole.DAEMON and process_exists(owner.pid)) \
                            or time.monotonic() > deadline:
                        raise InterfaceBusyError(ifname, owner) from None
                    time.sleep(POLL_SECONDS)
            record = json.dumps({"pid": os.getpid(), "role": role.value, "command": command}).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, record, 0)
        except BaseException:
            os.close(fd)
            raise
        return cls(ifname, fd)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)  # no stale owner named after this
        os.close(self._fd)  # closing the only descriptor releases the flock
        self._fd = None

    def __enter__(self) -> InterfaceLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

