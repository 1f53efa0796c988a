"""The XDP program under BPF_PROG_TEST_RUN: a fixture table of (description,
packet, expected XDP action, expected counter) in the style of Katran's tests.

Every case asserts the action and that exactly one counter moved, by exactly
one packet of exactly the frame's length.
"""

from __future__ import annotations

from tests.support.xdp_cases import CASES


def test_every_reason_has_a_case(abi: object) -> None:
    """The table covers every reason the kernel can produce here; the rest are tested below."""
    from hyperion.kernel.abi import load_abi

    covered = {c.reason for c in CASES}
    tested_elsewhere = {"truncated_eth", "blocklist_dynamic", "no_config", "redirect_class", "queue_fenced",
                        "redirect_oversize", "queue_over_capacity",  # these two: tests/kernel/test_limits.py
                        # The DNS stage's, with DNS messages built by dnspython: tests/kernel/test_xdp_dns.py.
                        "dns_no_match", "dns_drop", "dns_nxdomain", "dns_refused", "dns_unanswerable", "dns_allow",
                        "dns_alert", "dns_malformed", "dns_qdcount", "dns_not_query",
                        # DNS over TCP: tests/kernel/test_xdp_dns_tcp.py; fragments: test_xdp_dns_fragments.py.
                        "dns_tcp_no_data", "dns_tcp_midstream", "dns_tcp_ended", "dns_fragment"}
    assert set(load_abi().reasons.values()) - covered == tested_elsewhere
