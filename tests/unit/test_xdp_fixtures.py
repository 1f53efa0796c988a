"""The XDP program under BPF_PROG_TEST_RUN: a fixture table of (description,
packet, expected XDP action, expected counter) in the style of Katran's tests.

Every case asserts the action and that exactly one counter moved, by exactly
one packet of exactly the frame's length.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw

from hyperion.errors import BpfError
from hyperion.fastpath.program import FastPath
from hyperion.kernel.testrun import run_xdp
from hyperion.policy.compiler import PolicyCompiler
from hyperion.policy.loading import parse_policy
from tests.conftest import program_with_policy


def test_every_reason_has_a_case(abi: object) -> None:
    """The table covers every reason the kernel can produce here; the rest are tested below."""
    from hyperion.kernel.abi import load_abi

    covered = {c.reason for c in CASES}
    tested_elsewhere = {"truncated_eth", "blocklist_dynamic", "no_config", "redirect_class", "queue_fenced",
                        "redirect_oversize", "queue_over_capacity"}  # the last two: tests/test_limits.py
    assert set(load_abi().reasons.values()) - covered == tested_elsewhere
