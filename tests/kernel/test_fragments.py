"""Fragmented UDP (issue 12, defect 1) in the XDP program: the first fragment's UDP length is the
reassembled datagram's (RFC 768, RFC 791, RFC 8200), so one longer than its own payload is legal and
only a length below 8 is never valid; an IPv6 atomic fragment (RFC 6946) keeps the unfragmented checks.

The cases of tests/support/fragments.py through BPF_PROG_TEST_RUN (verdict, reason, counters), and
the client's own stack sending 3000-byte datagrams through an attached Hyperion, arriving whole.

The same cases in the reference classifier and the slow path's parser: tests/unit/test_fragments.py;
through the slow path in a sandbox: tests/e2e/test_fragments.py.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperion.fastpath.program import FastPath
from hyperion.kernel.testrun import run_xdp
from hyperion.lab.sandbox import CLIENT_V4, CLIENT_V6, HOST_V4, HOST_V6, Sandbox
from tests.support.fragments import CASES, DATAGRAM, POLICY, Case, exchange
from tests.support.kernel import program_with_policy
from tests.support.netutil import counter, hyperion, status, wait_for


@pytest.fixture(scope="module")
def loaded(kernel: None) -> Iterator[tuple[FastPath, int]]:
    with program_with_policy(POLICY) as loaded_program:
        yield loaded_program


def _delta(before: dict[tuple[str, str], tuple[int, int]],
           after: dict[tuple[str, str], tuple[int, int]]) -> dict[tuple[str, str], int]:
    return {k: v[0] - before.get(k, (0, 0))[0] for k, v in after.items() if v[0] != before.get(k, (0, 0))[0]}


@pytest.mark.parametrize("case", CASES, ids=[c.description for c in CASES])
def test_program(loaded: tuple[FastPath, int], case: Case) -> None:
    fastpath, prog_fd = loaded
    before = fastpath.counters()
    action = run_xdp(prog_fd, case.frame).action
    assert _delta(before, fastpath.counters()) == {(case.verdict, case.reason): 1}
    assert action == ("pass" if case.verdict == "pass" else "drop")


# ---- the client's own stack, through Hyperion ------------------------------------------------

NETNS_POLICY = """
fast_path:
  drop_cidrs: ["203.0.113.0/24", "2001:db8:bad::/48"]
"""


@pytest.fixture
def attached(sandbox: Sandbox, tmp_path: Path) -> Iterator[Sandbox]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(NETNS_POLICY)
    hyperion(sandbox, "attach", "--iface", sandbox.host_if, "--policy", str(policy))
    yield sandbox
    hyperion(sandbox, "detach", "--iface", sandbox.host_if, check=False)


@pytest.mark.parametrize("family,src,dst", [(socket.AF_INET, CLIENT_V4, HOST_V4),
                                            (socket.AF_INET6, CLIENT_V6, HOST_V6)], ids=["v4", "v6"])
def test_3000_byte_datagram_from_the_client_stack_arrives_whole(attached: Sandbox, family: socket.AddressFamily,
                                                                src: str, dst: str) -> None:
    sb = attached
    before = status(sb)
    payload = (bytes(range(256)) * 12)[:DATAGRAM]  # three fragments at MTU 1500, v4 and v6
    got = exchange(sb, family, src, dst, payload, count=5)
    assert got == [payload] * 5
    # Each datagram: its first fragment classified (no_match), two more passed as fragments.
    wait_for(lambda: counter(status(sb), "pass", "fragment") - counter(before, "pass", "fragment") >= 10, 5)
    after = status(sb)
    assert counter(after, "pass", "fragment") - counter(before, "pass", "fragment") == 10
    assert counter(after, "drop", "bad_udp_length") == counter(before, "drop", "bad_udp_length")
