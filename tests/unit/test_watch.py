"""PolicyWatcher: inotify-driven reload detection, decided on content (SHA-256), not on events."""

from __future__ import annotations

import os
import select
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperion.daemon.watch import PolicyWatcher

# A change must be reported well within this; "no change" is asserted after a shorter wait.
CHANGE_TIMEOUT = 2.0
QUIET_TIMEOUT = 0.4

OLD = b"default: allow\n"
NEW = b"default: deny\n"


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_bytes(OLD)
    return path


@pytest.fixture
def watcher(policy: Path) -> Iterator[PolicyWatcher]:
    with PolicyWatcher(policy, debounce_seconds=0.05) as w:
        yield w


def test_no_events_means_no_change(watcher: PolicyWatcher) -> None:
    assert watcher.wait(0) is False
    assert watcher.wait(QUIET_TIMEOUT) is False


def test_in_place_write_is_a_change(policy: Path, watcher: PolicyWatcher) -> None:
    policy.write_bytes(NEW)
    assert watcher.wait(CHANGE_TIMEOUT) is True
    # Reported once: the same content is not a change again.
    assert watcher.wait(QUIET_TIMEOUT) is False


def test_identical_write_is_not_a_change(policy: Path, watcher: PolicyWatcher) -> None:
    policy.write_bytes(OLD)
    assert watcher.wait(QUIET_TIMEOUT) is False


def test_touch_is_not_a_change(policy: Path, watcher: PolicyWatcher) -> None:
    os.utime(policy, (1_000_000_000, 1_000_000_000))
    assert watcher.wait(QUIET_TIMEOUT) is False


def test_unrelated_file_is_not_a_change(policy: Path, watcher: PolicyWatcher) -> None:
    (policy.parent / "other.yaml").write_bytes(NEW)
    (policy.parent / "other.yaml").unlink()
    assert watcher.wait(QUIET_TIMEOUT) is False


def test_burst_of_writes_is_reported_once(policy: Path, watcher: PolicyWatcher) -> None:
    for i in range(5):
        policy.write_bytes(NEW + b"# %d\n" % i)
    assert watcher.wait(CHANGE_TIMEOUT) is True
    assert watcher.wait(QUIET_TIMEOUT) is False


def test_editor_rename_over_target_is_a_change(policy: Path, watcher: PolicyWatcher) -> None:
    tmp = policy.parent / ".policy.yaml.swp"
    tmp.write_bytes(NEW)
    os.replace(tmp, policy)
    assert watcher.wait(CHANGE_TIMEOUT) is True
    assert policy.read_bytes() == NEW


def test_editor_rename_with_identical_content_is_not_a_change(policy: Path, watcher: PolicyWatcher) -> None:
    tmp = policy.parent / ".policy.yaml.swp"
    tmp.write_bytes(OLD)
    os.replace(tmp, policy)
    assert watcher.wait(QUIET_TIMEOUT) is False


def test_delete_is_not_a_change_and_recreate_is(policy: Path, watcher: PolicyWatcher) -> None:
    policy.unlink()
    assert watcher.wait(QUIET_TIMEOUT) is False
    policy.write_bytes(NEW)
    assert watcher.wait(CHANGE_TIMEOUT) is True


def test_reappearing_with_the_same_content_counts_as_a_change(policy: Path, watcher: PolicyWatcher) -> None:
    policy.unlink()
    assert watcher.wait(QUIET_TIMEOUT) is False
    policy.write_bytes(OLD)
    assert watcher.wait(CHANGE_TIMEOUT) is True


def test_file_absent_at_start_then_created(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    with PolicyWatcher(path, debounce_seconds=0.05) as w:
        assert w.wait(QUIET_TIMEOUT) is False
        path.write_bytes(NEW)
        assert w.wait(CHANGE_TIMEOUT) is True


def test_directory_deleted_and_recreated(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    path = conf / "policy.yaml"
    path.write_bytes(OLD)
    with PolicyWatcher(path, debounce_seconds=0.05) as w:
        shutil.rmtree(conf)
        assert w.wait(QUIET_TIMEOUT) is False
        conf.mkdir()
        path.write_bytes(NEW)
        assert w.wait(CHANGE_TIMEOUT) is True
        # The watch is back: later edits are seen again.
        path.write_bytes(OLD)
        assert w.wait(CHANGE_TIMEOUT) is True


# Kubernetes ConfigMap volume layout (kubelet's AtomicWriter):
#   policy.yaml -> ..data/policy.yaml,  ..data -> ..<timestamp>/,  ..<timestamp>/policy.yaml


def _configmap(root: Path, content: bytes) -> Path:
    stamp = "..2026_11_25_10_00_00.123"
    (root / stamp).mkdir()
    (root / stamp / "policy.yaml").write_bytes(content)
    os.symlink(stamp, root / "..data")
    os.symlink("..data/policy.yaml", root / "policy.yaml")
    return root / "policy.yaml"


def _configmap_update(root: Path, content: bytes, stamp: str) -> None:
    old = os.readlink(root / "..data")
    (root / stamp).mkdir()
    (root / stamp / "policy.yaml").write_bytes(content)
    os.symlink(stamp, root / "..data_tmp")
    os.replace(root / "..data_tmp", root / "..data")  # the atomic swap: IN_MOVED_TO "..data"
    shutil.rmtree(root / old)


def test_configmap_symlink_swap_is_a_change(tmp_path: Path) -> None:
    path = _configmap(tmp_path, OLD)
    with PolicyWatcher(str(path), debounce_seconds=0.05) as w:
        _configmap_update(tmp_path, NEW, "..2026_11_25_10_05_00.456")
        assert w.wait(CHANGE_TIMEOUT) is True
        assert path.read_bytes() == NEW
        assert w.wait(QUIET_TIMEOUT) is False
        # A second update works too (the watch is on the directory, not on a replaced inode).
        _configmap_update(tmp_path, OLD, "..2026_11_25_10_10_00.789")
        assert w.wait(CHANGE_TIMEOUT) is True
        assert path.read_bytes() == OLD


def test_configmap_swap_to_identical_content_is_not_a_change(tmp_path: Path) -> None:
    path = _configmap(tmp_path, OLD)
    with PolicyWatcher(path, debounce_seconds=0.05) as w:
        _configmap_update(tmp_path, OLD, "..2026_11_25_10_05_00.456")
        assert w.wait(QUIET_TIMEOUT) is False


def test_fileno_works_with_select(policy: Path, watcher: PolicyWatcher) -> None:
    assert select.select([watcher.fileno()], [], [], 0)[0] == []
    policy.write_bytes(NEW)
    readable, _, _ = select.select([watcher.fileno()], [], [], CHANGE_TIMEOUT)
    assert readable == [watcher.fileno()]
    assert watcher.wait(0) is True


def test_close_is_idempotent(policy: Path) -> None:
    w = PolicyWatcher(policy)
    w.close()
    w.close()
    with PolicyWatcher(policy) as w2:
        pass
    w2.close()


def test_negative_debounce_rejected(policy: Path) -> None:
    with pytest.raises(ValueError):
        PolicyWatcher(policy, debounce_seconds=-1)
