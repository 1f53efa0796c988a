"""Telemetry: /metrics scraped over HTTP with exact values, drop events as JSON lines, event budget."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperion.lab.sandbox import HOST_V4, Sandbox
from tests.support.netutil import WAIT, Daemon, counter, hyperion, scrape, send, status, wait_for
from tests.support.telemetry import POLICY, Samples, parse_metrics, value


@pytest.fixture
def running(sandbox: Sandbox, tmp_path: Path) -> Iterator[tuple[Sandbox, Path]]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    events = tmp_path / "events.jsonl"
    for address in ("198.51.100.42", "203.0.113.7", "198.51.100.10"):
        sandbox.add_client_address(address)
    # No AF_XDP workers here: the udp/53 class takes its fail-closed fallback, counted per class.
    daemon = Daemon(sandbox, policy, "--events", str(events), "--no-slowpath").start()
    try:
        yield sandbox, events
    finally:
        daemon.stop()


def test_scrape_over_http_has_exact_values(running: tuple[Sandbox, Path]) -> None:
    sb, _ = running
    before, _ = parse_metrics(scrape(sb))
    send(sb, "198.51.100.42", count=20)
    send(sb, "203.0.113.7", count=15)
    send(sb, "198.51.100.10", count=7, port=53)
    # Every one of the 27 datagrams is dropped or passed by the fast path: wait until all are counted.
    judged = [("blocklist_ip", "drop"), ("allowlist", "pass"), ("redirect_failed", "drop")]

    def counted() -> tuple[Samples, set[str]]:
        return parse_metrics(scrape(sb))

    def all_counted() -> bool:
        now = counted()[0]
        return sum(value(now, "hyperion_fastpath_packets_total", verdict=v, reason=r)
                   - before.get(("hyperion_fastpath_packets_total",
                                 frozenset({"verdict": v, "reason": r}.items())), 0.0)
                   for r, v in judged) >= 27
    wait_for(all_counted, WAIT)
    after, families = counted()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - before.get((name, frozenset(labels.items())), 0.0)

    assert delta("hyperion_fastpath_drops_total", reason="blocklist_ip") == 20
    assert delta("hyperion_fastpath_packets_total", verdict="drop", reason="blocklist_ip") == 20
    assert delta("hyperion_fastpath_packets_total", verdict="pass", reason="allowlist") == 15
    assert delta("hyperion_fastpath_drops_total", reason="redirect_failed") == 7
    assert delta("hyperion_redirect_failures_total", **{"class": "udp/53"}) == 7
    assert delta("hyperion_rx_queue_drops_total", queue="0") == 27
    assert value(after, "hyperion_policy_generation") == 1
    assert value(after, "hyperion_policy_info", mode="enforce") == 1
    assert value(after, "hyperion_map_entries", map="hyp_bip4") == 1
    assert value(after, "hyperion_map_capacity", map="hyp_bip4") == 2097152
    assert value(after, "hyperion_policy_reload_total", result="error") == 0
    assert value(after, "hyperion_events_total", outcome="emitted") == 27
    assert value(after, "hyperion_fastpath_up") == 1
    assert value(after, "hyperion_policy_last_reload_timestamp_seconds") > 1.7e9
    assert any(name == "hyperion_build_info" for name, _ in after)
    # Registered before the slow path exists.
    assert {"hyperion_slowpath_drops", "hyperion_afxdp_rx_queue_pressure"} <= families


def test_drop_events_as_json_lines(running: tuple[Sandbox, Path]) -> None:
    sb, events = running
    send(sb, "198.51.100.42", count=12)
    wait_for(lambda: len(events.read_text().splitlines()) >= 12, WAIT)
    records = [json.loads(line) for line in events.read_text().splitlines()]
    assert len(records) == 12
    first = records[0]
    assert {k: first[k] for k in ("verdict", "reason", "src", "dst", "protocol", "dst_port", "rule_id", "rule",
                                  "interface", "queue")} == {
        "verdict": "drop", "reason": "blocklist_ip", "src": "198.51.100.42", "dst": HOST_V4, "protocol": "udp",
        "dst_port": 5000, "rule_id": 1, "rule": "fast_path.drop_ips[0] 198.51.100.42", "interface": sb.host_if,
        "queue": 0,
    }
    assert first["time"].endswith("Z") and first["length"] > 42


def test_top_once_against_the_running_daemon(running: tuple[Sandbox, Path]) -> None:
    sb, _ = running
    send(sb, "198.51.100.42", count=10)
    wait_for(lambda: counter(status(sb), "drop", "blocklist_ip") >= 10, WAIT)
    out = hyperion(sb, "top", "--once", "--interval", "0.2").stdout
    assert sb.host_if in out and "policy gen 1" in out
    assert "blocklist_ip" in out and "hyp_bip4" in out
