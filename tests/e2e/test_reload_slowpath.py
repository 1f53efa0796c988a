"""Reloads of a running slow path in a sandbox (issue 12, defects 5 and 6): dnsmasq behind
Hyperion, dig from the client, the daemon's /metrics and control socket from the host namespace."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hyperion.lab.sandbox import Sandbox
from tests.support.netutil import Daemon, generation, hyperion, wait_for
from tests.support.peers import dig, dnsmasq
from tests.support.telemetry import parse_metrics

pytestmark = [pytest.mark.kernel, pytest.mark.netns]

NEW_RULE = "slow_path.dns_rules[0] match=good.test action=drop"
NEW_REGEX = "slow_path.dns_rules[1] regex='^tracker\\\\.test$' action=drop"


def big_policy(*first: str) -> str:
    """3,000 DNS rules (enough that the rule set is far larger than a pipe's 64 KiB), 200 of them
    regexes, after the ones given."""
    lines = ["fast_path:", "  redirect_ports:", "    - {protocol: udp, port: 53, on_failure: drop}",
             "slow_path:", "  dns_name_rules: slow_path", "  dns_rules:", *(f"    - {rule}" for rule in first)]
    lines += [f"    - {{match: 'blocked-{i}.example', action: drop}}" for i in range(2800)]
    lines += [f"    - {{regex: '^re{i}-[a-f0-9]{{4,12}}\\.example$', action: drop}}" for i in range(200)]
    return "\n".join(lines) + "\n"


def scrape_within(sb: Sandbox, timeout: float) -> str | None:
    """/metrics from the host namespace, or None when it does not answer within timeout."""
    code = ("import urllib.request,sys; sys.stdout.write(urllib.request.urlopen("
            f"'http://127.0.0.1:2112/metrics', timeout={timeout}).read().decode())")
    try:
        proc = sb.exec(sb.host_ns, [sys.executable, "-c", code], check=False)
    except subprocess.TimeoutExpired:
        return None
    return proc.stdout if proc.returncode == 0 else None


def metric(text: str, name: str, **labels: str) -> float:
    return parse_metrics(text)[0].get((name, frozenset(labels.items())), 0.0)


def queues(sb: Sandbox) -> list[dict[str, Any]]:
    proc = hyperion(sb, "queues", "--iface", sb.host_if, "--json", check=False)
    return list(json.loads(proc.stdout)["queues"]) if proc.returncode == 0 else []


def worker_pid(sb: Sandbox, queue: int = 0) -> int | None:
    for q in queues(sb):
        if q["queue"] == queue and q["state"] == "active" and q["descriptors"]["worker_pid"]:
            return int(q["descriptors"]["worker_pid"])
    return None


def test_a_reload_with_a_stopped_worker_fences_it_and_the_daemon_keeps_answering(sandbox: Sandbox,
                                                                                   tmp_path: Path) -> None:
    sb = sandbox
    policy = tmp_path / "policy.yaml"
    policy.write_text(big_policy("{match: 'evil.test', action: drop}"))
    server = dnsmasq(sb)
    # A heartbeat deadline far longer than the reload takes: the reload meets the stopped worker
    # first, and it is the missing acknowledgement of the new rules that gets it replaced.
    daemon = Daemon(sb, policy, "--no-watch", "--watchdog-deadline", "10s").start(timeout=60)
    stopped: int | None = None
    try:
        wait_for(lambda: dig(sb, "good.test") == "NOERROR 203.0.113.80", 20)
        assert dig(sb, "tracker.test") == "NOERROR 203.0.113.82"
        wait_for(lambda: worker_pid(sb) is not None, 10)
        stopped = worker_pid(sb)
        assert stopped is not None
        policy.write_text(big_policy("{match: 'good.test', action: drop}", r"{regex: '^tracker\.test$', action: drop}"))
        os.kill(stopped, signal.SIGSTOP)
        daemon.signal(signal.SIGHUP)
        # /metrics answers throughout, until the reload has been reported a success.
        end = time.monotonic() + 40
        text: str | None = None
        while time.monotonic() < end:
            text = scrape_within(sb, 5)
            assert text is not None, "/metrics did not answer within 5 s during the reload"
            if metric(text, "hyperion_policy_reload_total", result="success") == 1:
                break
            time.sleep(0.2)
        assert text is not None and metric(text, "hyperion_policy_reload_total", result="success") == 1
        assert metric(text, "hyperion_policy_reload_total", result="error") == 0
        assert generation(sb) == 2
        # The stopped worker was fenced and replaced by one that serves the new rules.
        wait_for(lambda: worker_pid(sb) not in (None, stopped), 20)
        history = [(t["to_state"], t["reason"]) for t in next(q for q in queues(sb) if q["queue"] == 0)
                   ["transitions"]]
        print("queue 0 transitions:", history)
        assert history[2:] == [("fenced", "rules_not_applied"), ("recovering", "starting"), ("active", "ready")]
        assert dig(sb, "x.test") == "NOERROR 203.0.113.81"  # the queue serves
        assert dig(sb, "good.test") == "TIMEOUT"              # and the new rules are in force
        assert dig(sb, "tracker.test") == "TIMEOUT"
        text = scrape_within(sb, 5)
        assert text is not None
        assert metric(text, "hyperion_slowpath_rule_matches_total", rule=NEW_RULE, action="drop") == 1
        assert metric(text, "hyperion_slowpath_rule_matches_total", rule=NEW_REGEX, action="drop") == 1
        # The replacement built its rules from the daemon's serialized databases: it compiled nothing.
        replacement = next(q for q in queues(sb) if q["queue"] == 0)["descriptors"]
        assert (replacement["rules_generation"], replacement["rule_compiles"]) == (2, 0)
    finally:
        if stopped is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped, signal.SIGCONT)  # a deadlocked daemon gets its pipe read again
        if daemon.proc is not None and daemon.proc.poll() is None:
            try:
                daemon.stop()
            except subprocess.TimeoutExpired:
                daemon.proc.kill()
                daemon.proc.wait(10)
        server.terminate()
        server.wait(timeout=10)


SLOWPATH_POLICY = """\
fast_path:
  redirect_ports:
    - {protocol: udp, port: 53, on_failure: pass}
slow_path:
  dns_name_rules: slow_path  # these tests are about the slow path: every name rule runs there
  dns_rules:
    - {match: 'evil.test', action: drop}
"""


def test_a_slow_path_that_failed_to_start_fails_every_later_reload(sandbox: Sandbox, tmp_path: Path) -> None:
    """veth has no AF_XDP zero-copy: with --zerocopy on every worker fails to bind."""
    sb = sandbox
    policy = tmp_path / "policy.yaml"
    policy.write_text('fast_path:\n  drop_ips: ["198.51.100.42"]\n')
    daemon = Daemon(sb, policy, "--no-watch", "--zerocopy", "on").start()
    try:
        text = scrape_within(sb, 5)
        assert text is not None
        policy.write_text(SLOWPATH_POLICY)
        for reloads in (1, 2):
            daemon.signal(signal.SIGHUP)
            end = time.monotonic() + 60
            outcome = (0.0, 0.0)
            while time.monotonic() < end and sum(outcome) < reloads:
                assert daemon._died() is None
                text = scrape_within(sb, 5)
                if text is not None:
                    outcome = (metric(text, "hyperion_policy_reload_total", result="success"),
                               metric(text, "hyperion_policy_reload_total", result="error"))
                time.sleep(0.2)
            assert outcome == (0, reloads), f"reload {reloads}: (success, error) = {outcome}"
            assert generation(sb) == 1  # the fast path kept the running policy
            assert queues(sb) == []     # no supervisor left behind
    finally:
        code, err = daemon.stop()
    assert code == 0
    assert err.count("reload rejected, running policy kept") == 2, err
