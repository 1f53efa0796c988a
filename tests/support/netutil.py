"""Helpers shared by the namespace tests: the CLI inside the host namespace, UDP probes, daemons."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hyperion.lab.sandbox import HOST_V4, Sandbox

HYPERION = [sys.executable, "-m", "hyperion.cli"]
HYPERION_LAB = [sys.executable, "-m", "hyperion.lab.cli"]
UDPTOOL = [sys.executable, "-m", "hyperion.lab.probe"]
PORT = 5000

def hyperion(sb: Sandbox, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = sb.exec(sb.host_ns, [*HYPERION, *args], check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"hyperion {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def status(sb: Sandbox) -> dict[str, Any]:
    return dict(json.loads(hyperion(sb, "status", "--iface", sb.host_if, "--json").stdout))


def counter(st: dict[str, Any], verdict: str, reason: str) -> int:
    return sum(c["packets"] for c in st["counters"] if c["verdict"] == verdict and c["reason"] == reason)


BARRIER_TAG = "barrier"
WAIT = 30.0  # generous: conditions, not speed, on a loaded 2-core machine


class Receiver:
    """`hyperion.probe recv` in the host namespace. snapshot() asks it what has arrived so far;
    barrier() sends a marker the policy lets through and waits for it; result() stops it and
    returns the counts without the markers."""

    def __init__(self, sb: Sandbox, duration: float = 60.0, port: int = PORT) -> None:
        self.sb, self.port = sb, port
        self.markers: dict[str, int] = {}  # barrier markers sent, by source
        self.proc = sb.popen(sb.host_ns, [*UDPTOOL, "recv", "--port", str(port), "--duration", str(duration)],
                             stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"

    def snapshot(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        self.proc.send_signal(signal.SIGUSR1)
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"receiver on port {self.port} exited ({self.proc.poll()})")
        return dict(json.loads(line))

    def wait_tags(self, expected: dict[str, int], timeout: float = WAIT) -> None:
        """Waits until each tag has arrived at least as often as expected (the caller asserts exactly)."""
        def reached() -> bool:
            got = self.snapshot()["by_tag"]
            return all(got.get(tag, 0) >= n for tag, n in expected.items())
        wait_for(reached, timeout)

    def barrier(self, src: str, dst: str = HOST_V4, tcp: bool = False, timeout: float = WAIT) -> None:
        """Sends one marker from src (a source the policy lets through on the same path as the
        messages under test) and waits until it arrived. A single-queue veth delivers in order and a
        TCP listener accepts in order, so every message sent before the marker has been judged."""
        assert send(self.sb, src, dst, count=1, tag=BARRIER_TAG, port=self.port, tcp=tcp) == 1
        self.markers[src] = self.markers.get(src, 0) + 1
        self.wait_tags({BARRIER_TAG: sum(self.markers.values())}, timeout)

    def result(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=10)
        got = dict(json.loads(out.strip().splitlines()[-1]))
        if self.markers:
            assert got["by_tag"].pop(BARRIER_TAG, 0) == sum(self.markers.values())
            for src, n in self.markers.items():
                left = got["by_source"].get(src, 0) - n
                assert left >= 0, f"barrier markers from {src} counted {n}, arrived {left + n}"
                if left:
                    got["by_source"][src] = left
                else:
                    got["by_source"].pop(src, None)
        return got


def send(sb: Sandbox, src: str, dst: str = HOST_V4, count: int = 20, interval: float = 0.0,
         tag: str = "t", port: int = PORT, payload: str = "", tcp: bool = False) -> int:
    argv = [*UDPTOOL, "send", "--src", src, "--dst", dst, "--port", str(port), "--count", str(count),
            "--interval", str(interval), "--tag", tag, "--payload", payload]
    proc = sb.exec(sb.client_ns, [*argv, "--tcp"] if tcp else argv)
    return int(json.loads(proc.stdout)["sent"])


def wait_counter(sb: Sandbox, verdict: str, reason: str, expected: int, timeout: float = WAIT) -> dict[str, Any]:
    """Waits until the fast-path counter reaches expected; returns the status in which it did
    (the caller asserts the exact value, so overshooting fails)."""
    seen: dict[str, Any] = {}

    def reached() -> bool:
        seen.update(status(sb))
        return counter(seen, verdict, reason) >= expected
    wait_for(reached, timeout)
    return seen


def scrape(sb: Sandbox, url: str = "http://127.0.0.1:2112/metrics") -> str:
    """GET a URL from inside the host namespace (where the daemon's loopback is)."""
    code = f"import urllib.request,sys; sys.stdout.write(urllib.request.urlopen({url!r}, timeout=5).read().decode())"
    return sb.exec(sb.host_ns, [sys.executable, "-c", code]).stdout


class Daemon:
    """`hyperion run` in the host namespace; start() waits until it has applied its policy."""

    def __init__(self, sb: Sandbox, policy: Path, *extra: str) -> None:
        self.sb = sb
        self.argv = [*HYPERION, "run", "--iface", sb.host_if, "--policy", str(policy), *extra]
        self.proc: subprocess.Popen[str] | None = None

    def start(self, min_generation: int = 1, timeout: float = 60.0) -> Daemon:
        # Generous: a large policy compiles slowly on a loaded machine; a daemon that dies fails at once.
        self.proc = self.sb.popen(self.sb.host_ns, self.argv, stderr=subprocess.PIPE)
        wait_for(lambda: generation(self.sb) >= min_generation, timeout, self._died)
        return self

    def _died(self) -> str | None:
        assert self.proc is not None
        if self.proc.poll() is None:
            return None
        return self.proc.stderr.read() if self.proc.stderr else "exited"

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self) -> tuple[int, str]:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=20)
        return self.proc.returncode, err


def generation(sb: Sandbox) -> int:
    probe = hyperion(sb, "status", "--iface", sb.host_if, "--json", check=False)
    return int(json.loads(probe.stdout)["policy_generation"]) if probe.returncode == 0 else -1


def wait_for(condition: Any, timeout: float, failure: Any = None) -> None:
    """Polls condition() until true; fails early if failure() returns a message."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        problem = failure() if failure else None
        if problem:
            raise AssertionError(problem)
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout} s")
