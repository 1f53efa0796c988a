"""Fragmented DNS queries from a real client (issue 14 part 6): kdig pads its query with EDNS
padding (RFC 7830) past the client's MTU, so the client's own stack fragments it (RFC 791, RFC 8200
4.5). The resolver is unbound: dnsmasq (2.89) answers no query over about 1,232 bytes, fragmented
or not, whatever the filter. By default (slow_path.dns_fragments: drop) no fragmented query reaches
the resolver and each is counted; with `judge` the question in the first fragment is judged like any query.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperion.lab.sandbox import HOST_V4, HOST_V6, Sandbox
from tests.support.netutil import Daemon, scrape, wait_for
from tests.support.peers import kdig, unbound
from tests.support.telemetry import parse_metrics, value

POLICY = """
fast_path:
  redirect_ports:
    - {{protocol: udp, port: 53, on_failure: drop}}
slow_path:
  dns_fragments: {fragments}
  dns_rules:
    - {{match: "evil.com", action: drop}}
"""
PADDED = ("+padding=1600", "+bufsize=4096")  # a query of about 1,650 bytes: two fragments at MTU 1500


def _packets(sb: Sandbox, verdict: str, reason: str) -> float:
    samples = parse_metrics(scrape(sb))[0]
    key = ("hyperion_fastpath_packets_total", frozenset({("verdict", verdict), ("reason", reason)}))
    return value(samples, key[0], verdict=verdict, reason=reason) if key in samples else 0.0


@pytest.fixture(params=["drop", "judge"])
def served(request: pytest.FixtureRequest, sandbox: Sandbox, tmp_path: Path) -> Iterator[tuple[Sandbox, str]]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(fragments=request.param))
    server = unbound(sandbox, tmp_path)
    daemon = Daemon(sandbox, policy).start()
    try:
        wait_for(lambda: kdig(sandbox, "good.test") == "NOERROR 203.0.113.80", 15)
        yield sandbox, request.param
    finally:
        daemon.stop()
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.parametrize("server", [HOST_V4, HOST_V6], ids=["ipv4", "ipv6"])
def test_fragmented_queries_by_policy(served: tuple[Sandbox, str], server: str) -> None:
    sb, fragments = served
    assert kdig(sb, "good.test", server=server) == "NOERROR 203.0.113.80"  # unfragmented: answered
    dropped = _packets(sb, "drop", "dns_fragment")
    judged_drop = _packets(sb, "drop", "dns_drop")
    good, evil = kdig(sb, "good.test", server=server, options=PADDED), kdig(sb, "evil.com", server=server,
                                                                             options=PADDED)
    if fragments == "drop":
        assert (good, evil) == ("TIMEOUT", "TIMEOUT")
        assert _packets(sb, "drop", "dns_fragment") - dropped == 2
        assert _packets(sb, "drop", "dns_drop") == judged_drop
    else:
        assert (good, evil) == ("NOERROR 203.0.113.80", "TIMEOUT")
        assert _packets(sb, "drop", "dns_fragment") == dropped
        assert _packets(sb, "drop", "dns_drop") - judged_drop == 1


@pytest.mark.parametrize("fragments", ["drop", "judge"])
def test_the_slow_path_applies_the_same_policy(sandbox: Sandbox, tmp_path: Path, fragments: str) -> None:
    """dns_name_rules: slow_path: the class is redirected whole, and the workers decide."""
    policy = tmp_path / "policy.yaml"
    text = POLICY.format(fragments=fragments)
    policy.write_text(text.replace("slow_path:\n", "slow_path:\n  dns_name_rules: slow_path\n"))
    server = unbound(sandbox, tmp_path)
    daemon = Daemon(sandbox, policy).start()
    try:
        wait_for(lambda: kdig(sandbox, "good.test") == "NOERROR 203.0.113.80", 15)
        redirected = _packets(sandbox, "redirect", "redirect_class")
        good = kdig(sandbox, "good.test", options=PADDED)
        evil = kdig(sandbox, "evil.com", options=PADDED)
        assert (good, evil) == (("TIMEOUT", "TIMEOUT") if fragments == "drop" else ("NOERROR 203.0.113.80", "TIMEOUT"))
        # Only the first fragments carry the port: one redirect per query.
        assert _packets(sandbox, "redirect", "redirect_class") - redirected == 2
        assert _packets(sandbox, "drop", "dns_fragment") == 0
    finally:
        daemon.stop()
        server.terminate()
        server.wait(timeout=10)
