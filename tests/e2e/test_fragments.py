"""Fragmented UDP (issue 12, defect 1) through the slow path in a sandbox: a fragmented datagram
of a redirected class has its first fragment inspected by the worker and delivered, the others go
straight to the stack, which reassembles them; a signature in the first fragment drops the datagram.

The cases (RFC 768/791/8200/6946 references) in the program: tests/kernel/test_fragments.py;
in the reference classifier and the slow path's parser: tests/unit/test_fragments.py.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from hyperion.lab.sandbox import CLIENT_V4, CLIENT_V6, HOST_V4, HOST_V6, Sandbox
from tests.support.fragments import DATAGRAM, exchange
from tests.support.netutil import Daemon, counter, status

SLOW_POLICY = r"""
fast_path:
  drop_cidrs: ["203.0.113.0/24", "2001:db8:bad::/48"]
  redirect_ports:
    - {protocol: udp, port: 9999, on_failure: pass}
slow_path:
  signatures:
    - {class: {protocol: udp, port: 9999}, regex: "(?i)union\\s+select", action: drop}
"""


@pytest.mark.parametrize("family,src,dst", [(socket.AF_INET, CLIENT_V4, HOST_V4),
                                            (socket.AF_INET6, CLIENT_V6, HOST_V6)], ids=["v4", "v6"])
def test_fragmented_datagram_of_a_redirected_class_through_the_slow_path(
        sandbox: Sandbox, tmp_path: Path, family: socket.AddressFamily, src: str, dst: str) -> None:
    """The first fragment goes through the worker (inspected on what it holds, then delivered),
    the others straight to the stack, which reassembles them. A signature in the first fragment
    drops it, and with it the whole datagram."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(SLOW_POLICY)
    daemon = Daemon(sandbox, policy).start()
    try:
        before = status(sandbox)
        clean = (b"clean " + bytes(range(256)) * 12)[:DATAGRAM]
        attack = (b"1 UNION SELECT password " + bytes(range(256)) * 12)[:DATAGRAM]
        # The last clean datagram follows the attack on the same path: once it is read, the
        # attack has been judged.
        got = exchange(sandbox, family, src, dst, [clean, clean, attack, clean], count=4, port=9999, expect=3)
        assert got == [clean, clean, clean]
        after = status(sandbox)
        assert counter(after, "redirect", "redirect_class") - counter(before, "redirect", "redirect_class") == 4
        assert counter(after, "drop", "bad_udp_length") == counter(before, "drop", "bad_udp_length")
    finally:
        daemon.stop()
