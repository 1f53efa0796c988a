"""Structure-aware fuzzing of the XDP program against a Python reference classifier.

Hypothesis builds packets with scapy: random header fields, 0..4 VLAN tags (802.1Q and
802.1ad), IPv4 with options, fragments (first with MF, non-first), bad IHL and total length,
IPv6 with chains of 0..11 extension headers (hop-by-hop, routing, destination options,
fragment, AH), TCP with any data offset, UDP with any length, ICMP/ICMPv6, other protocols,
non-IP ethertypes and IP version/ethertype mismatches. Each built frame is also cut at every
offset (or at drawn offsets; "consistent" cuts rewrite the IP length fields to agree with
the cut, to reach the L4 checks), has drawn bytes overwritten and trailing bytes appended.

Every frame runs through the real program (BPF_PROG_TEST_RUN) under one policy with an
allowlist, CIDR and exact-IP blocklists (IPv4 and IPv6), dynamic blocks (one expired) and
redirect classes, in enforce and in monitor mode. Properties, per frame:
- the XDP action is the one of the verdict (never aborted, never anything undefined);
- exactly one (verdict, reason) counter moved, by one packet and the frame's length in bytes,
  so the counters' sum moves by exactly the number of frames run;
- that (verdict, reason) is what tests/reference_classifier.py computes from the bytes.

CI runs 50,000 frames; HYPERION_FUZZ_PACKETS raises it (`make fuzz-xdp` runs 1,000,000 with a
random seed, HYPERION_FUZZ_SEED to replay one). Mismatches are collected, grouped by
(expected, got), and reported with the frames' bytes, rather than shrunk one at a time.
"""

from __future__ import annotations

import pytest

from hyperion.policy.loading import parse_policy
from tests.support import xdp_cases as fixtures
from tests.support.reference_classifier import (
    ReferenceFastPath,
)


@pytest.mark.parametrize("case", fixtures.CASES, ids=[c.description for c in fixtures.CASES])
def test_reference_agrees_with_the_hand_written_fixtures(case: fixtures.Case) -> None:
    """The reference is checked against the fixture table, not only against the program."""
    reference = ReferenceFastPath(parse_policy(fixtures.POLICY))
    assert reference.judge(fixtures.raw_bytes(case.packet)) == (case.verdict, case.reason)
