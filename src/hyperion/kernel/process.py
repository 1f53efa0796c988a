"""Whether a process exists, for records that name one by pid (an interface's owner, a re-entry pair)."""

from __future__ import annotations

import os


def process_exists(pid: int) -> bool:
    """True while a process with this pid exists (signal 0 checks without sending); a process of
    another user exists too (EPERM)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
