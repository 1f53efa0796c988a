"""Shared fixtures. Kernel tests need root, bpffs and BPF: in CI (CI=true)
a missing capability fails the run; elsewhere those tests are skipped."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperion.fastpath.program import FastPath
from hyperion.kernel.abi import Abi, load_abi
from hyperion.lab.sandbox import Sandbox
from tests.support.kernel import IN_CI


def _kernel_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not Path("/sys/fs/bpf").is_mount():
        return "bpffs is not mounted at /sys/fs/bpf"
    if not Path("/run/netns").exists() and os.system("ip netns list >/dev/null 2>&1") != 0:
        return "iproute2 netns support missing"
    return None


@pytest.fixture(scope="session")
def kernel() -> None:
    """Marks a test as needing the kernel; fails in CI, skips elsewhere, when it is missing."""
    reason = _kernel_unavailable()
    if reason:
        if IN_CI:
            pytest.fail(f"kernel test cannot run in CI: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def abi() -> Abi:
    return load_abi()


@pytest.fixture
def detached(kernel: None) -> Iterator[tuple[FastPath, int]]:
    """A freshly loaded, unattached program and its maps, for BPF_PROG_TEST_RUN."""
    fastpath, prog_fd = FastPath.load_detached()
    try:
        yield fastpath, prog_fd
    finally:
        fastpath.close()


@pytest.fixture
def sandbox(kernel: None) -> Iterator[Sandbox]:
    """client <-> host namespaces over a veth pair; removed (with any pins) even on failure."""
    sb = Sandbox().up()
    try:
        yield sb
    finally:
        sb.down()


@pytest.fixture
def home(tmp_path: Path) -> Path:  # the policy trust tests: unit/ and (the chown ones) kernel/
    """A directory of the test's own, writable by its owner only (pytest's tmp_path is 0700)."""
    assert tmp_path.stat().st_mode & 0o022 == 0
    d = tmp_path / "etc"
    d.mkdir(mode=0o755)
    return d
