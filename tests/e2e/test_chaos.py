"""Failure injection under steady traffic (hyperion.chaos, the same harness as `hyperion chaos`):
each fault ends in its documented state, and traffic the fast path passes loses nothing.

Every scenario runs a daemon in its own sandbox with two paced UDP flows from the client: one
to a redirected class (udp/5300), one to a port the fast path passes (udp/5400)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from hyperion.lab.chaos import ScenarioResult, run_scenario
from hyperion.lab.sandbox import Sandbox
from tests.support.netutil import Daemon, counter, hyperion, scrape, send, status, wait_counter, wait_for
from tests.support.telemetry import parse_metrics, value

pytestmark = [pytest.mark.kernel, pytest.mark.netns]

RATE, DURATION = 500, 3.0


def scenario(name: str, on_failure: str = "pass") -> ScenarioResult:
    result = run_scenario(name, on_failure, rate=RATE, duration=DURATION)
    print(result.as_dict())
    assert result.redirected.sent == result.plain.sent == RATE * DURATION
    return result


def assert_recovered(result: ScenarioResult) -> None:
    assert result.final_state == "active"
    assert result.recovered_ms is not None
    assert result.inspection_resumed
    states = [t["to_state"] for t in result.transitions]
    assert states[-2:] == ["recovering", "active"]


def test_sigkill_fail_open_keeps_the_class_served_by_the_kernel(kernel: None) -> None:
    r = scenario("sigkill", "pass")
    assert r.detection == "fenced (worker_exited)"
    assert_recovered(r)
    assert r.plain.lost == 0
    # Only what sat in the dead socket's RX ring is lost; the rest took the fail-open path.
    assert r.redirected.lost < RATE * 0.2
    assert r.fallbacks.get("pass/queue_fenced", 0) + r.fallbacks.get("pass/redirect_failed", 0) > 0
    assert not any(key.startswith("drop/") for key in r.fallbacks)


def test_sigkill_fail_closed_lets_nothing_through_until_recovered(kernel: None) -> None:
    r = scenario("sigkill", "drop")
    assert r.detection == "fenced (worker_exited)"
    assert_recovered(r)
    assert r.plain.lost == 0
    dropped = r.fallbacks.get("drop/queue_fenced", 0) + r.fallbacks.get("drop/redirect_failed", 0)
    assert dropped > 0
    assert r.redirected.lost >= dropped
    assert not any(key.startswith("pass/") for key in r.fallbacks)


def test_a_stopped_worker_is_detected_by_its_heartbeat_and_replaced(kernel: None) -> None:
    r = scenario("sigstop", "pass")
    assert r.detection == "fenced (heartbeat_stale)"
    assert_recovered(r)
    assert r.plain.lost == 0
    assert r.fallbacks.get("pass/queue_fenced", 0) > 0
    assert any("already gone" in note for note in r.notes)  # killed by the watchdog, not waited for


def test_a_stop_shorter_than_the_deadline_is_absorbed_by_the_ring(kernel: None) -> None:
    r = scenario("sigstop_brief", "pass")
    assert r.detection is None
    assert r.transitions == []
    assert (r.redirected.lost, r.plain.lost) == (0, 0)
    assert r.final_state == "active"


def test_sigterm_from_outside_is_recovered(kernel: None) -> None:
    r = scenario("sigterm", "pass")
    assert r.detection == "fenced (worker_exited)"
    assert_recovered(r)
    assert r.plain.lost == 0


def test_fill_ring_starvation_goes_through_pressure_to_a_fresh_umem(kernel: None) -> None:
    r = scenario("fill_starvation", "pass")
    path = [(t["to_state"], t["reason"]) for t in r.transitions]
    assert ("fenced", "fill_ring_starved") in path
    assert path.index(("fenced", "fill_ring_starved")) > 0  # pressure was reported before the fence
    assert path[0][1] in ("fill_ring_starved", "rx_ring_overflow")
    assert_recovered(r)
    assert r.plain.lost == 0


def test_xsk_map_entry_deleted_behind_the_daemons_back(kernel: None) -> None:
    r = scenario("xsk_map_delete", "pass")
    assert r.detection == "fenced (xsk_map_entry_missing)"
    assert_recovered(r)
    assert (r.redirected.lost, r.plain.lost) == (0, 0)  # fail-open: the kernel served the gap


def test_operator_rebinds_a_fresh_umem_without_losing_fail_open_traffic(kernel: None) -> None:
    r = scenario("umem_rebind", "pass")
    assert r.detection == "fenced (operator)"
    assert_recovered(r)
    assert (r.redirected.lost, r.plain.lost) == (0, 0)


def test_queue_withdrawn_from_steering_and_restored(kernel: None) -> None:
    r = scenario("steering_withdraw", "pass")
    assert r.fault_queue == 1
    assert r.detection == "fenced (not_steered)"
    assert_recovered(r)
    assert (r.redirected.lost, r.plain.lost) == (0, 0)


def test_overload_is_pressure_not_a_fence(kernel: None) -> None:
    r = scenario("overload", "pass")
    states = {t["to_state"] for t in r.transitions}
    assert r.detection == "pressured (rx_ring_overflow)"
    assert "fenced" not in states
    assert r.final_state == "active"
    assert r.inspection_resumed


def test_queues_cli_and_metrics_show_the_lifecycle(sandbox: Sandbox, tmp_path: Path) -> None:
    """`hyperion queues` shows every plane; after a SIGKILL the metrics count exactly one fence,
    one queue-local recovery and one detection, and the queue is active again."""
    sb = sandbox
    policy = tmp_path / "policy.yaml"
    policy.write_text("fast_path:\n  redirect_ports:\n    - {protocol: udp, port: 5300, on_failure: pass}\n")
    events = tmp_path / "events.jsonl"
    daemon = Daemon(sb, policy, "--events", str(events)).start()
    try:
        def queues() -> dict[str, Any]:
            return dict(json.loads(hyperion(sb, "queues", "--iface", sb.host_if, "--json").stdout))

        wait_for(lambda: queues()["queues"][0]["state"] == "active", 20)
        shown = queues()
        assert shown["source"] == "daemon"
        q = shown["queues"][0]
        assert (q["queue"], q["reason"], q["restarts"]) == (0, "ready", 0)
        assert q["steering"] == {"active_channels": 1, "steered": True, "rss": "not supported by the driver"}
        assert q["redirect"]["bpf_state"] == "active" and q["redirect"]["xsk_map_entry"] is True
        assert q["descriptors"]["umem_bound"] is True and q["descriptors"]["umem_frames"] == 4096
        assert q["driver"] == "no driver counters"
        pid = q["descriptors"]["worker_pid"]
        text = hyperion(sb, "queues", "--iface", sb.host_if).stdout
        assert "queue 0: ACTIVE (ready), restarts 0" in text

        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: queues()["queues"][0]["restarts"] == 1 and queues()["queues"][0]["state"] == "active", 20)
        assert queues()["queues"][0]["descriptors"]["worker_pid"] != pid
        samples, families = parse_metrics(scrape(sb))
        assert value(samples, "hyperion_queue_state", queue="0", state="active") == 1
        assert value(samples, "hyperion_queue_state", queue="0", state="fenced") == 0
        assert value(samples, "hyperion_queue_transitions_total", queue="0", **{"from": "active", "to": "fenced"}) == 1
        assert value(samples, "hyperion_queue_transitions_total", queue="0",
                     **{"from": "recovering", "to": "active"}) == 2  # the start, and the recovery
        assert value(samples, "hyperion_queue_recoveries_total", queue="0", kind="queue_local", result="ok") == 1
        assert value(samples, "hyperion_watchdog_detection_seconds_count", detection="worker_exited") == 1
        assert value(samples, "hyperion_queue_state_dwell_seconds_count", queue="0", state="fenced") == 1
        assert "hyperion_worker_heartbeat_age_seconds" in families

        # Operator restart: a fresh worker, socket and UMEM.
        answer = json.loads(hyperion(sb, "queues", "restart", "--queue", "0", "--iface", sb.host_if,
                                     "--json").stdout)
        assert answer == {"state": "fenced"}
        wait_for(lambda: queues()["queues"][0]["restarts"] == 2 and queues()["queues"][0]["state"] == "active", 20)
        refused = hyperion(sb, "queues", "restart", "--queue", "5", "--iface", sb.host_if, check=False)
        assert refused.returncode == 2
        assert "queue 5 is not managed by the slow path (managed: [0])" in refused.stderr
    finally:
        daemon.stop()
    lifecycle = [json.loads(line) for line in events.read_text().splitlines() if '"lifecycle"' in line]
    assert [(e["from_state"], e["to_state"], e["reason"]) for e in lifecycle][:5] == [
        ("unmanaged", "recovering", "starting"), ("recovering", "active", "ready"),
        ("active", "fenced", "worker_exited"), ("fenced", "recovering", "starting"), ("recovering", "active", "ready")]


def test_workers_exit_with_a_killed_daemon_and_the_class_falls_back(sandbox: Sandbox, tmp_path: Path) -> None:
    """No orphan holds a socket: a worker whose daemon died (SIGKILL) sees its command pipe close and
    exits, closing its socket; the fast path, still attached, takes the class fallback."""
    sb = sandbox
    policy = tmp_path / "policy.yaml"
    policy.write_text("fast_path:\n  redirect_ports:\n    - {protocol: udp, port: 5300, on_failure: drop}\n")
    daemon = Daemon(sb, policy).start()
    try:
        wait_for(lambda: json.loads(hyperion(sb, "queues", "--iface", sb.host_if, "--json").stdout)
                 ["queues"][0]["state"] == "active", 20)
        pid = json.loads(hyperion(sb, "queues", "--iface", sb.host_if, "--json").stdout)[
            "queues"][0]["descriptors"]["worker_pid"]
        daemon.signal(signal.SIGKILL)
        daemon.stop()
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), 10)
        before = counter(status(sb), "drop", "redirect_failed")
        send(sb, "192.0.2.2", count=3, port=5300)
        failed = wait_counter(sb, "drop", "redirect_failed", before + 3)
        assert counter(failed, "drop", "redirect_failed") - before == 3
    finally:
        hyperion(sb, "detach", "--iface", sb.host_if, check=False)
