"""Helpers for tests that load the XDP program: whether this is CI (where a missing kernel
capability fails rather than skips), a program with a policy applied, and its counters."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from hyperion.fastpath.program import FastPath
from hyperion.policy.compiler import PolicyCompiler
from hyperion.policy.loading import parse_policy

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@contextlib.contextmanager
def program_with_policy(policy_text: str) -> Iterator[tuple[FastPath, int]]:
    """A freshly loaded, unattached program with a policy applied, for BPF_PROG_TEST_RUN."""
    fastpath, prog_fd = FastPath.load_detached()
    try:
        fastpath.apply(PolicyCompiler(fastpath.abi, fastpath.capacities()).compile(parse_policy(policy_text)))
        yield fastpath, prog_fd
    finally:
        fastpath.close()


def count(fastpath: Any, verdict: str, reason: str) -> int:
    return int(fastpath.counters().get((verdict, reason), (0, 0))[0])
