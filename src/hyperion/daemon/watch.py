"""Policy file watching with inotify, so the daemon reloads when the policy changes.

We watch the *directory* holding the policy file rather than the file itself: editors and
Kubernetes replace the file (rename over it, or swap the `..data` symlink of a ConfigMap
volume), and a watch on the old inode would go quiet after the first replacement. Events
only say that something *may* have changed, so the decision is made on a SHA-256 of the
file's bytes: touching the file or rewriting identical content is not a change.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Final, Protocol

import inotify_simple  # type: ignore[import-untyped]

_F = inotify_simple.flags

_WATCH_MASK: Final[int] = (
    _F.CLOSE_WRITE | _F.MOVED_TO | _F.CREATE | _F.DELETE | _F.MOVED_FROM
    | _F.MODIFY | _F.ATTRIB | _F.DELETE_SELF | _F.MOVE_SELF
    | _F.ONLYDIR  # fail with ENOTDIR rather than watch a file if the parent is not a directory
)
# Any of these means the watch no longer covers the parent path: the directory was deleted,
# moved away (the watch would follow it to its new name) or unmounted.
_DIR_GONE: Final[int] = _F.DELETE_SELF | _F.MOVE_SELF | _F.UNMOUNT | _F.IGNORED
# After a queue overflow we lost events, so we must assume the file changed.
_OVERFLOW: Final[int] = _F.Q_OVERFLOW
# Kubernetes ConfigMap/Secret volumes update by renaming a new `..data` symlink into place.
_K8S_DATA_LINK: Final = "..data"
# While the directory is missing there is nothing to read from inotify: look for it again this often.
_REWATCH_INTERVAL: Final = 1.0
# A writer that never pauses must not postpone the content check forever.
_MAX_DEBOUNCE_FACTOR: Final = 10


class _Event(Protocol):
    @property
    def wd(self) -> int: ...
    @property
    def mask(self) -> int: ...
    @property
    def name(self) -> str: ...


class _INotify(Protocol):
    """The part of inotify_simple.INotify we use (the library ships no type hints)."""

    def fileno(self) -> int: ...
    def add_watch(self, path: str, mask: int) -> int: ...
    def rm_watch(self, wd: int) -> None: ...
    def read(self, timeout: int | None = None) -> Iterable[_Event]: ...
    def close(self) -> None: ...


def _digest(path: str) -> bytes | None:
    """SHA-256 of the file's bytes, following symlinks; None when it cannot be read right now."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").digest()
    except OSError:
        return None


def _ms(seconds: float | None) -> int | None:
    # inotify_simple takes milliseconds; round up so a tiny positive timeout does not become a busy loop.
    return None if seconds is None else math.ceil(max(seconds, 0.0) * 1000)


class PolicyWatcher:
    """Watches the directory holding a policy file; reports when the file's *content* may have changed.

    Not thread-safe: use one watcher from one thread.
    """

    def __init__(self, path: str | os.PathLike[str], debounce_seconds: float = 0.1) -> None:
        if debounce_seconds < 0:
            raise ValueError("debounce_seconds must be >= 0")
        # abspath, not realpath: for a ConfigMap the given path is itself a symlink, and the
        # directory we need to watch is the one holding that symlink and `..data`.
        self._path = os.path.abspath(os.fspath(path))
        self._dir, self._name = os.path.split(self._path)
        self._debounce = debounce_seconds
        self._inotify: _INotify = inotify_simple.INotify()
        self._wd: int | None = None
        self._add_watch()
        # Hash only after the watch exists, so a change in between is not lost.
        self._digest = _digest(self._path)

    def fileno(self) -> int:
        """The inotify fd: readable when events are pending (then call wait(0))."""
        return self._inotify.fileno()

    def wait(self, timeout: float | None) -> bool:
        """Blocks up to timeout seconds; True if the policy file's content changed since the last
        True (compare a SHA-256 of the resolved file's bytes, so touching the file or an unrelated
        file in the directory returns False). Events within debounce_seconds are coalesced."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            # The directory may be back after having been deleted; what it holds now may be new.
            if self._wd is None and self._add_watch() and self._content_changed():
                return True
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if self._wd is None:
                # No watch means no events to wait for, so check for the directory again shortly.
                time.sleep(_REWATCH_INTERVAL if remaining is None else min(remaining, _REWATCH_INTERVAL))
            elif self._read_events(remaining) and self._content_changed():
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def close(self) -> None:
        self._inotify.close()  # idempotent, like any file object

    def __enter__(self) -> PolicyWatcher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _add_watch(self) -> bool:
        try:
            self._wd = self._inotify.add_watch(self._dir, _WATCH_MASK)
        except (FileNotFoundError, NotADirectoryError):
            self._wd = None  # retried on each wait()
        return self._wd is not None

    def _drop_watch(self) -> None:
        assert self._wd is not None
        # Fails harmlessly when the kernel already removed it (deleted directory, IN_IGNORED).
        with contextlib.suppress(OSError):
            self._inotify.rm_watch(self._wd)
        self._wd = None

    def _handle(self, events: Iterable[_Event]) -> bool:
        """Returns whether any event could concern the policy file's content."""
        relevant = False
        for ev in events:
            if ev.mask & _OVERFLOW:
                relevant = True
            elif ev.wd != self._wd:
                continue  # leftovers from a watch we already dropped
            elif ev.mask & _DIR_GONE:
                self._drop_watch()
                relevant = True
            elif ev.name in (self._name, _K8S_DATA_LINK):
                relevant = True
        return relevant

    def _read_events(self, timeout: float | None) -> bool:
        """Waits up to timeout for a relevant event, then keeps reading until debounce_seconds pass
        without another one, so a burst (write, close, rename...) leads to a single content check."""
        if not self._handle(self._inotify.read(timeout=_ms(timeout))):
            return False
        now = time.monotonic()
        quiet_at = now + self._debounce
        give_up_at = now + self._debounce * _MAX_DEBOUNCE_FACTOR
        while (now := time.monotonic()) < min(quiet_at, give_up_at):
            if self._handle(self._inotify.read(timeout=_ms(min(quiet_at, give_up_at) - now))):
                quiet_at = time.monotonic() + self._debounce
        return True

    def _content_changed(self) -> bool:
        digest = _digest(self._path)
        if digest is None:
            # A missing file is not a change: the daemon keeps its running policy. Remembering
            # "no content" makes the file's reappearance count as a change, whatever it holds.
            self._digest = None
            return False
        if digest == self._digest:
            return False
        self._digest = digest
        return True
