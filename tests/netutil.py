"""Helpers shared by the namespace tests: the CLI inside the host namespace, UDP probes, daemons."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hyperion.sandbox import HOST_V4, Sandbox

HYPERION = [sys.executable, "-m", "hyperion.cli"]
UDPTOOL = [sys.executable, "-m", "hyperion.probe"]
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


class Receiver:
    def __init__(self, sb: Sandbox, duration: float = 60.0, port: int = PORT) -> None:
        self.proc = sb.popen(sb.host_ns, [*UDPTOOL, "recv", "--port", str(port), "--duration", str(duration)],
                             stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"

    def result(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=10)
        return dict(json.loads(out.strip().splitlines()[-1]))


def send(sb: Sandbox, src: str, dst: str = HOST_V4, count: int = 20, interval: float = 0.0,
         tag: str = "t", port: int = PORT, payload: str = "", tcp: bool = False) -> int:
    argv = [*UDPTOOL, "send", "--src", src, "--dst", dst, "--port", str(port), "--count", str(count),
            "--interval", str(interval), "--tag", tag, "--payload", payload]
    proc = sb.exec(sb.client_ns, [*argv, "--tcp"] if tcp else argv)
    return int(json.loads(proc.stdout)["sent"])


def settle() -> None:
    time.sleep(0.3)  # let the last datagrams cross the veth before reading counters


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

    def start(self, min_generation: int = 1, timeout: float = 20.0) -> Daemon:
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
