"""Slow-path worker confinement without root (seccomp with no_new_privs needs no privilege).

- The worker's seccomp allowlist alone: what the steady state needs still works (threads, pipes),
  what it does not need fails with EPERM (sockets, exec, fork, files, signals to others).
- The forms --worker-user accepts (name, uid, uid:gid) and the errors for the others.

confine_worker and the daemon's confined workers (root): tests/e2e/test_worker_privileges.py.
"""

from __future__ import annotations

import json
import pwd
import subprocess
import sys

import pytest

from hyperion.errors import HyperionError
from hyperion.slowpath.confinement import resolve_worker_user

FILTER_PROBE = r"""
import errno, json, os, socket, sys, threading
from hyperion.slowpath.confinement import install_worker_filter
from hyperion.kernel.capabilities import LibcSyscalls, PR_SET_NO_NEW_PRIVS
LibcSyscalls().prctl(PR_SET_NO_NEW_PRIVS, 1)
r, w = os.pipe()
install_worker_filter()
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except OSError as exc:
        out[name] = errno.errorcode.get(exc.errno, str(exc.errno))
def thread():
    t = threading.Thread(target=lambda: os.write(w, b"x"))
    t.start()
    t.join()
    assert os.read(r, 1) == b"x"
attempt("thread_and_pipe", thread)
attempt("socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
attempt("open", lambda: os.close(os.open("/etc/hostname", os.O_RDONLY)))
attempt("fork", lambda: os.waitpid(os.fork(), 0) if True else None)
attempt("exec", lambda: os.execv("/bin/true", ["true"]))
attempt("kill_other", lambda: os.kill(os.getppid(), 0))
print(json.dumps(out))
sys.stdout.flush()
"""


def test_the_allowlist_serves_the_steady_state_and_refuses_the_rest() -> None:
    proc = subprocess.run([sys.executable, "-c", FILTER_PROBE], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "thread_and_pipe": "ok", "socket": "EPERM", "open": "EPERM", "fork": "EPERM", "exec": "EPERM",
        "kill_other": "EPERM"}


def test_worker_user_forms() -> None:
    nobody = pwd.getpwnam("nobody")
    assert resolve_worker_user("nobody") == (nobody.pw_uid, nobody.pw_gid)
    assert resolve_worker_user(str(nobody.pw_uid)) == (nobody.pw_uid, nobody.pw_gid)
    assert resolve_worker_user("64999:64998") == (64999, 64998)
    assert resolve_worker_user("64997") == (64997, 64997)  # no passwd entry: the same number
    for spec, problem in [("root", "is root"), ("0:5", "is root"), ("5:0", "is root"),
                          ("no-such-user-hyp", "no user"), ("a:b", "is not USER, UID or UID:GID"),
                          ("4294967295:1", "id out of range")]:
        with pytest.raises(HyperionError, match=f"^--worker-user: '{spec}'|^--worker-user: no user '{spec}'") as e:
            resolve_worker_user(spec)
        assert problem in str(e.value)
