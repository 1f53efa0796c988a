"""Policy file trust, as any user: a policy others can change is a policy others can set.

The file is resolved deliberately (every directory the lookup passes through must be owned by
root or the daemon's user and writable by nobody else; a shared sticky directory like /tmp is
accepted above the policy's own directory, never as it), opened once with O_NOFOLLOW, fstat'ed,
and read from that same descriptor: its owner must be root or the daemon's user, and group and
others must not be able to write it. Here: the accepted layouts (Kubernetes ConfigMap included),
every refusal that needs no other user, check-then-read swaps, and the 0600 events file.

The tests that need root (chown, a root-owned sticky directory, a tmpfs mount): tests/kernel/test_policy_trust.py.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperion.errors import HyperionError, PolicyError
from hyperion.policy.loading import read_policy
from tests.support.policy_files import GOOD, refusal, write

# ---- accepted ---------------------------------------------------------------------------------------

def test_a_private_policy_is_read(home: Path) -> None:
    policy, text = read_policy(write(home / "policy.yaml"))
    assert text == GOOD and [str(n) for n in policy.fast_path.drop_ips] == ["198.51.100.1"]


def test_the_kubernetes_configmap_layout_is_accepted_and_follows_an_update(home: Path) -> None:
    # What the kubelet's atomic writer makes: the files in a timestamped directory, ..data
    # pointing at it, and each key a symlink through ..data; an update is a new directory and
    # ..data replaced by a rename.
    first = home / "..2024_01_01_00_00_00.000000001"
    first.mkdir(mode=0o755)
    write(first / "policy.yaml")
    (home / "..data").symlink_to(first.name)
    (home / "policy.yaml").symlink_to("..data/policy.yaml")
    assert read_policy(home / "policy.yaml")[1] == GOOD

    second = home / "..2024_01_02_00_00_00.000000002"
    second.mkdir(mode=0o755)
    write(second / "policy.yaml", "mode: monitor\n")
    (home / "..data_tmp").symlink_to(second.name)
    os.rename(home / "..data_tmp", home / "..data")
    assert read_policy(home / "policy.yaml")[1] == "mode: monitor\n"


def test_a_relative_path_and_dot_dot_resolve_like_the_kernel(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (home / "sub").mkdir(mode=0o755)
    write(home / "policy.yaml")
    monkeypatch.chdir(home / "sub")
    assert read_policy("../policy.yaml")[1] == GOOD


# ---- refused ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode,who", [(0o664, "group"), (0o646, "others")])
def test_a_file_others_can_write_is_refused(home: Path, mode: int, who: str) -> None:
    path = write(home / "policy.yaml", mode=mode)
    message = refusal(path)
    assert message.startswith(f"{path}: refusing a policy file writable by {who}")


@pytest.mark.parametrize("mode,who", [(0o775, "group"), (0o757, "others"), (0o777, "group and others")])
def test_a_directory_others_can_write_is_refused(home: Path, mode: int, who: str) -> None:
    path = write(home / "policy.yaml")
    home.chmod(mode)
    message = refusal(path)
    assert message.startswith(f"{path}: refusing a policy in directory {home}, writable by {who} "
                              f"(mode 0{mode:o}; chmod go-w {home})")


def test_a_directory_further_up_others_can_write_is_refused(home: Path) -> None:
    deep = home / "a" / "b"
    deep.mkdir(parents=True, mode=0o755)
    path = write(deep / "policy.yaml")
    (home / "a").chmod(0o777)
    assert f"refusing a policy in directory {home / 'a'}, writable by group and others" in refusal(path)


def test_a_policy_directly_in_a_shared_sticky_directory_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    path = write(shared / "policy.yaml")
    assert refusal(path).startswith(f"{path}: refusing a policy in directory {shared}, writable by group and "
                                    "others (mode 01777")


def test_a_symlink_into_a_directory_others_can_write_is_refused(home: Path, tmp_path: Path) -> None:
    # The link's own directory is fine; where it leads is not.
    drop = tmp_path / "drop"
    drop.mkdir()
    drop.chmod(0o777)
    write(drop / "evil.yaml")
    (home / "policy.yaml").symlink_to(drop / "evil.yaml")
    assert f"refusing a policy in directory {drop}, writable by group and others" in refusal(home / "policy.yaml")


def test_special_files_are_refused_without_blocking(home: Path) -> None:
    fifo = home / "policy.yaml"
    os.mkfifo(fifo, 0o644)
    assert refusal(fifo) == f"{fifo}: refusing a policy that is not a regular file (a FIFO)"


def test_a_symlink_loop_is_an_error_not_a_hang(home: Path) -> None:
    (home / "a").symlink_to("b")
    (home / "b").symlink_to("a")
    assert refusal(home / "a") == f"{home / 'a'}: cannot read policy file: {os.strerror(errno.ELOOP)}"


def test_missing_and_directory_paths_keep_their_errors(home: Path) -> None:
    assert refusal(home / "nope.yaml") == f"{home / 'nope.yaml'}: cannot read policy file: No such file or directory"
    assert refusal(home).startswith(f"{home}: cannot read policy file")


# ---- the content read is the checked file's -----------------------------------------------------------

SWAPPER = r"""
import os, sys, time
d, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
i = 0
while time.monotonic() < deadline:
    for target in ("good.yaml", "evil.yaml"):
        tmp = os.path.join(d, f".swap{i % 2}")
        os.symlink(target, tmp)
        os.rename(tmp, os.path.join(d, "policy.yaml"))
        i += 1
"""


@contextlib.contextmanager
def swapping(d: Path, seconds: float) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", SWAPPER, str(d), str(seconds)])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_a_swap_between_check_and_read_cannot_slip_in_other_content(home: Path) -> None:
    """policy.yaml is swapped, as fast as another process can, between a private file and one
    others can write: every read either refuses the writable file or returns the private one's
    text. Never the writable file's text: it is read from the descriptor that was checked."""
    write(home / "good.yaml", GOOD)
    write(home / "evil.yaml", "mode: monitor\n", mode=0o666)
    (home / "policy.yaml").symlink_to("good.yaml")
    seen: dict[str, int] = {}
    with swapping(home, 30.0) as swapper:
        deadline = time.monotonic() + 20.0
        for _ in range(20000):
            if time.monotonic() > deadline or swapper.poll() is not None:
                break
            try:
                text = read_policy(home / "policy.yaml")[1]
            except PolicyError as exc:
                outcome = "refused" if "writable by group and others" in str(exc) else str(exc)
            else:
                outcome = "good" if text == GOOD else "evil"
            seen[outcome] = seen.get(outcome, 0) + 1
    assert seen.get("good", 0) > 0 and seen.get("refused", 0) > 0  # the swap did happen, both ways
    assert set(seen) <= {"good", "refused", f"{home / 'policy.yaml'}: cannot read policy file: "
                                             "No such file or directory"}, seen


# ---- the events file -----------------------------------------------------------------------------------

def test_the_events_file_is_created_0600_whatever_the_umask(home: Path) -> None:
    from hyperion.daemon.daemon import open_events_file

    old = os.umask(0)
    try:
        with open_events_file(str(home / "events.jsonl")) as out:
            out.write("{}\n")
    finally:
        os.umask(old)
    assert (home / "events.jsonl").stat().st_mode & 0o777 == 0o600
    with open_events_file(str(home / "events.jsonl")) as out:  # appended, not truncated
        out.write("{}\n")
    assert (home / "events.jsonl").read_text() == "{}\n{}\n"


def test_the_events_file_is_never_a_planted_symlink(home: Path) -> None:
    from hyperion.daemon.daemon import open_events_file

    victim = write(home / "victim", "precious\n", mode=0o600)
    (home / "events.jsonl").symlink_to(victim)
    with pytest.raises(HyperionError) as caught:
        open_events_file(str(home / "events.jsonl"))
    assert str(caught.value) == (f"--events {home / 'events.jsonl'}: cannot open the events file: "
                                 "it is a symbolic link (give the file itself)")
    assert victim.read_text() == "precious\n"
