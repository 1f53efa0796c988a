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


def need_tool(name: str) -> None:
    """A peer tool setup.sh installs: fail in CI, skip elsewhere."""
    if shutil.which(name) is None:
        if IN_CI:
            pytest.fail(f"{name} is not installed (scripts/setup.sh installs it)")
        pytest.skip(f"{name} is not installed")


def kdig(sb: Sandbox, name: str, qtype: str = "A", server: str = HOST_V4, tcp: bool = False,
         options: tuple[str, ...] = ()) -> str:
    """Knot's kdig, a second, independent client: 'RCODE answers' or TIMEOUT, as dig() returns.
    options: more of kdig's +options."""
    need_tool("kdig")
    argv = ["kdig", "+time=1", "+retry=0", f"@{server}", name, qtype] + (["+tcp"] if tcp else []) + list(options)
    out = sb.exec(sb.client_ns, argv, check=False).stdout
    status_line = next((line for line in out.splitlines() if "status:" in line), None)
    if status_line is None:
        return "TIMEOUT"
    # ";; ->>HEADER<<- opcode: QUERY; status: NXDOMAIN; id: 27908"
    rcode = status_line.split("status:")[1].split(";")[0].strip()
    answers = [line.split()[-1] for line in out.splitlines()
               if line and not line.startswith(";") and line.split()[3:4] == ["A"]]
    return f"{rcode} {' '.join(answers)}".strip()


def unbound(sb: Sandbox, workdir: Path, listen: tuple[str, ...] = (HOST_V4, HOST_V6)) -> subprocess.Popen[str]:
    """Unbound in the protected namespace, answering the test names from local data (no recursion:
    nothing leaves the sandbox). Ready when it answers on its first address."""
    need_tool("unbound")
    conf = workdir / "unbound.conf"
    interfaces = "".join(f"  interface: {address}\n" for address in listen)
    conf.write_text(
        "server:\n" + interfaces + "  port: 53\n  do-daemonize: no\n  chroot: \"\"\n  username: \"\"\n"
        f"  directory: \"{workdir}\"\n  pidfile: \"\"\n  use-syslog: no\n  logfile: \"\"\n"
        "  do-not-query-localhost: yes\n  module-config: \"iterator\"\n"
        "  access-control: 192.0.2.0/24 allow\n  access-control: 198.51.100.0/24 allow\n"
        "  access-control: 2001:db8::/32 allow\n"
        "  local-zone: \"test.\" static\n"
        "  local-data: \"good.test. 60 IN A 203.0.113.80\"\n"
        "  local-data: \"x.test. 60 IN A 203.0.113.81\"\n"
        "  local-data: \"tracker.test. 60 IN A 203.0.113.82\"\n"
        "  local-data: \"allowed.tracker.test. 60 IN A 203.0.113.84\"\n"
        "remote-control:\n  control-enable: no\n")
    return sb.popen(sb.host_ns, ["unbound", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
