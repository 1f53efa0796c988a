"""Real DNS peers in the sandbox: dnsmasq in the protected namespace, dig from the client."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from hyperion.lab.sandbox import HOST_V4, HOST_V6, Sandbox
from tests.support.kernel import IN_CI
from tests.support.netutil import Daemon, wait_for


def dnsmasq(sb: Sandbox) -> subprocess.Popen[str]:
    if shutil.which("dnsmasq") is None:
        if IN_CI:
            pytest.fail("dnsmasq is not installed (scripts/setup.sh installs it)")
        pytest.skip("dnsmasq is not installed")
    return sb.popen(sb.host_ns, ["dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--bind-interfaces",
                                 f"--listen-address={HOST_V4}", f"--listen-address={HOST_V6}", "--pid-file",
                                 "--user=root", "--address=/good.test/203.0.113.80", "--address=/x.test/203.0.113.81",
                                 "--address=/tracker.test/203.0.113.82", "--address=/c2.test/203.0.113.83"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def dig(sb: Sandbox, name: str, qtype: str = "A", server: str = HOST_V4, source: str | None = None) -> str:
    argv = ["dig", "+time=1", "+tries=1", f"@{server}", name, qtype]
    if source:
        argv += ["-b", source]
    out = sb.exec(sb.client_ns, argv, check=False).stdout
    if "timed out" in out or "no servers could be reached" in out:
        return "TIMEOUT"
    status_line = next(line for line in out.splitlines() if "status:" in line)
    rcode = status_line.split("status:")[1].split(",")[0].strip()
    answers = [line.split()[-1] for line in out.splitlines() if line and not line.startswith(";") and "\tA\t" in line]
    return f"{rcode} {' '.join(answers)}".strip()


@contextmanager
def daemon_serving_dns(sb: Sandbox, policy: Path, *extra: str) -> Iterator[Daemon]:
    """dnsmasq, and `hyperion run --policy policy *extra` in front of it: yields the daemon once
    dig gets good.test's answer through it; stops the daemon and dnsmasq afterwards."""
    server = dnsmasq(sb)
    daemon = Daemon(sb, policy, *extra).start()
    try:
        wait_for(lambda: dig(sb, "good.test") == "NOERROR 203.0.113.80", 10)
        yield daemon
    finally:
        daemon.stop()
        server.terminate()
        server.wait(timeout=10)
