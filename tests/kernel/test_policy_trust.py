"""Policy file trust, the cases that need root: chown, a root-owned sticky directory, a tmpfs mount.

- A ConfigMap volume (world-writable mode but read-only mount) is accepted.
- A file or a directory owned by another user is refused.
- Below a shared sticky directory, a private directory of the daemon's user is accepted.

The rules (owner root or the daemon's user, no group/other write on any directory passed, O_NOFOLLOW,
read from the fstat'ed fd, events file 0600) and the cases any user can run: tests/unit/test_policy_trust.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hyperion.policy.loading import read_policy
from tests.support.kernel import IN_CI
from tests.support.policy_files import GOOD, refusal, write

OTHER_UID = 54321


@pytest.fixture
def root() -> None:
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("owner checks need root (chown)")
        pytest.skip("owner checks need root (chown)")


READ_ONLY_PROBE = r"""
import json, os, subprocess, sys
from hyperion.errors import PolicyError
from hyperion.policy.loading import read_policy
volume = sys.argv[1]
subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0777", "hyp-policy", volume], check=True)
os.mkdir(os.path.join(volume, "..2024_01_01"), 0o755)
with open(os.path.join(volume, "..2024_01_01", "policy.yaml"), "w") as f:
    f.write("mode: monitor\n")
os.symlink("..2024_01_01", os.path.join(volume, "..data"))
os.symlink("..data/policy.yaml", os.path.join(volume, "policy.yaml"))
def outcome():
    try:
        return read_policy(os.path.join(volume, "policy.yaml"))[1]
    except PolicyError as exc:
        return str(exc)
writable = outcome()
subprocess.run(["mount", "-o", "remount,ro", volume], check=True)
print(json.dumps([writable, outcome()]))
"""


def test_a_configmap_volume_is_world_writable_but_read_only(tmp_path: Path, root: None) -> None:
    """The kubelet makes a ConfigMap volume's directory 0777 and mounts it read-only: nobody can
    write it, so its mode bits do not count; the same directory on a writable mount is refused."""
    volume = tmp_path / "volume"
    volume.mkdir()
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", READ_ONLY_PROBE,
                           str(volume)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    writable, read_only = json.loads(proc.stdout)
    assert writable.startswith(f"{volume}/policy.yaml: refusing a policy in directory {volume}, writable by group "
                               "and others (mode 0777")
    assert read_only == "mode: monitor\n"


def test_a_file_owned_by_another_user_is_refused(home: Path, root: None) -> None:
    path = write(home / "policy.yaml")
    os.chown(path, OTHER_UID, -1)
    message = refusal(path)
    assert message == (f"{path}: refusing a policy file owned by uid {OTHER_UID}, not root or this process's user "
                       f"(uid {os.geteuid()}; chown root {path})")


def test_a_directory_owned_by_another_user_is_refused(home: Path, root: None) -> None:
    (home / "conf").mkdir(mode=0o755)
    path = write(home / "conf" / "policy.yaml")
    os.chown(home / "conf", OTHER_UID, -1)
    assert refusal(path) == (f"{path}: refusing a policy in directory {home / 'conf'}, owned by uid {OTHER_UID}, "
                             f"not root or this process's user (uid {os.geteuid()})")


def test_below_a_shared_sticky_directory_a_private_directory_is_accepted(tmp_path: Path, root: None) -> None:
    # Root: a sticky directory counts as shared only when root owns it, like /tmp.
    # Like /tmp/pytest-of-root/...: others can add names to a sticky directory but cannot
    # rename or remove ours, and the directory below is checked like any other.
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    private = shared / "mine"
    private.mkdir(mode=0o700)
    assert read_policy(write(private / "policy.yaml"))[1] == GOOD
