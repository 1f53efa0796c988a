"""Least privilege with real processes (root, sandboxes): what the kept capability set allows.

- A process holding only the kept set can do what the running daemon does (load the program,
  create a reload's maps, pins, AF_XDP sockets with a 16 MiB UMEM, TUN devices) and cannot do
  what needs CAP_SYS_ADMIN, which it does not need.
- `hyperion run` in a sandbox: the daemon and each of its threads hold exactly the documented set
  (bounding set included) with no_new_privs, the workers' switch capabilities permitted but not
  effective; DNS through the slow path, a block_source written by a worker, a SIGHUP reload and
  the detach at exit work. --keep-privileges keeps everything. Pin directories end up 0700.

drop_privileges against a recorder, status parsing, /metrics on loopback, no shell: tests/unit/test_privileges.py;
the workers' confinement: tests/e2e/test_worker_privileges.py.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperion.daemon.privileges import DAEMON_CAPABILITIES
from hyperion.fastpath.loader import STATE_ROOT, pin_dir_for
from hyperion.fastpath.program import FastPath
from hyperion.kernel import capabilities
from hyperion.kernel.capabilities import current_capabilities
from hyperion.lab.sandbox import Sandbox, entered_netns
from hyperion.slowpath.confinement import WORKER_SWITCH_CAPABILITIES
from tests.support.netutil import Daemon, counter, generation, hyperion, send, status, wait_counter, wait_for
from tests.support.peers import daemon_serving_dns, dig

KEPT = frozenset(DAEMON_CAPABILITIES)


SWITCH = frozenset(WORKER_SWITCH_CAPABILITIES)


PROBE = r"""
import json, os, socket, ctypes, fcntl, struct, mmap, sys
from hyperion.daemon.privileges import drop_privileges, DAEMON_CAPABILITIES
from hyperion.kernel.capabilities import current_capabilities
from hyperion.kernel import libbpf
from hyperion.policy.compiler import PolicyCompiler
from hyperion.fastpath.program import FastPath
from hyperion.policy.loading import parse_policy
from hyperion.kernel.testrun import run_xdp

drop_privileges(DAEMON_CAPABILITIES)
out = {"effective": sorted(current_capabilities().effective)}
def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except Exception as exc:
        out[name] = os.strerror(exc.errno) if getattr(exc, "errno", 0) else repr(exc)
fastpath, prog_fd = FastPath.load_detached()
out["program_load"] = "ok"
policy = parse_policy("fast_path: {drop_cidrs: ['203.0.113.0/24'], drop_ips: ['198.51.100.1'], "
                      "redirect_ports: [{protocol: udp, port: 53}]}")
attempt("reload_maps", lambda: fastpath.apply(PolicyCompiler(fastpath.abi, fastpath.capacities()).compile(policy)))
attempt("test_run", lambda: run_xdp(prog_fd, bytes(64)))
def pin_and_get():
    libbpf.obj_pin(fastpath.maps["hyp_config"].fd, sys.argv[1])
    try:
        os.close(libbpf.obj_get(sys.argv[1]))
    finally:
        os.unlink(sys.argv[1])
attempt("pin_and_obj_get", pin_and_get)
def umem():
    with socket.socket(44, socket.SOCK_RAW, 0) as xsk:  # AF_XDP
        area = mmap.mmap(-1, 4096 * 4096)
        address = ctypes.addressof(ctypes.c_char.from_buffer(area))
        xsk.setsockopt(283, 4, struct.pack("QQIIII", address, 4096 * 4096, 4096, 0, 0, 0))  # XDP_UMEM_REG
attempt("af_xdp_umem_16MiB", umem)
def tun():
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", sys.argv[2].encode(), 0x1001))
    finally:
        os.close(fd)
attempt("tun_device", tun)
info = libbpf.prog_info(prog_fd)
attempt("prog_get_fd_by_id", lambda: libbpf.check(libbpf.lib().bpf_prog_get_fd_by_id(info.id), "by id"))
print(json.dumps(out))
"""


def test_the_kept_set_does_what_the_daemon_does_and_no_more(sandbox: Sandbox) -> None:
    pin = f"/sys/fs/bpf/{sandbox.prefix}-probe"
    proc = sandbox.exec(sandbox.host_ns, [sys.executable, "-c", PROBE, pin, f"{sandbox.prefix}t"], check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "effective": sorted(KEPT), "program_load": "ok", "reload_maps": "ok", "test_run": "ok",
        "pin_and_obj_get": "ok", "af_xdp_umem_16MiB": "ok", "tun_device": "ok",
        "prog_get_fd_by_id": "Operation not permitted",  # CAP_SYS_ADMIN is gone (and not needed)
    }


POLICY = """
fast_path:
  redirect_ports: [{protocol: udp, port: 53, on_failure: drop}]
slow_path:
  dns_rules:
    - {match: "c2.test", action: block_source, ttl: 10m}
"""


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _thread_capabilities(pid: int) -> dict[int, capabilities.Capabilities]:
    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            found[int(tid)] = current_capabilities(pid, int(tid))
        except FileNotFoundError:  # a short-lived thread ended meanwhile
            continue
    return found


def _listening_tcp(pid: int) -> set[tuple[str, int]]:
    """(address, port) of the process's own listening TCP sockets (IPv4 and IPv6)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    sockets = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN, and ours
                address, port = fields[1].split(":")
                raw = bytes.fromhex(address)
                packed = raw[::-1] if table == "tcp" else b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                sockets.add((str(ipaddress.ip_address(packed)), int(port, 16)))
    return sockets


@pytest.fixture
def protected(sandbox: Sandbox, tmp_path: Path) -> Iterator[tuple[Sandbox, Daemon, Path]]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    with daemon_serving_dns(sandbox, policy, "--no-watch") as daemon:
        yield sandbox, daemon, policy


def test_daemon_keeps_only_the_documented_capabilities(protected: tuple[Sandbox, Daemon, Path]) -> None:
    sb, daemon, policy = protected
    assert daemon.proc is not None
    pid = daemon.proc.pid
    assert "hyperion.cli" in Path(f"/proc/{pid}/cmdline").read_text()
    # CAP_KILL: the watchdog signals workers that run as another user; the switch capabilities only
    # permitted, for the workers (a root exec makes them effective there), not used by the daemon.
    effective = KEPT | {"CAP_KILL"}
    expected = capabilities.Capabilities(effective=effective, permitted=effective | SWITCH, inheritable=frozenset(),
                                       bounding=effective | SWITCH, ambient=frozenset(), no_new_privs=True)
    threads = _thread_capabilities(pid)
    assert len(threads) > 1  # metrics, watchdog, control...: all started after the drop
    assert threads == {t: expected for t in threads}
    workers = [child for child in _children(pid)
               if "hyperion.slowpath.worker" in Path(f"/proc/{child}/cmdline").read_text()]
    assert len(workers) == 1  # one rx queue
    worker = current_capabilities(workers[0])
    assert worker.effective == worker.permitted == worker.bounding == frozenset() and worker.no_new_privs
    assert _listening_tcp(pid) == {("127.0.0.1", 2112)}
    assert STATE_ROOT.stat().st_mode & 0o777 == 0o700

    # The slow path works with them: DNS inspected and delivered through the TUN device (above),
    # and a worker writes the dynamic blocklist.
    sb.add_client_address("198.51.100.10")
    assert dig(sb, "c2.test", source="198.51.100.10") == "TIMEOUT"
    assert [b["address"] for b in json.loads(hyperion(sb, "block", "list", "--json").stdout)] == ["198.51.100.10"]
    # A reload creates new maps (CAP_BPF) and changes the slow path's rules.
    policy.write_text(POLICY.replace("redirect_ports:", 'drop_ips: ["198.51.100.20"]\n  redirect_ports:'))
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: generation(sb) == 2, 10)
    sb.add_client_address("198.51.100.20")
    before = counter(status(sb), "drop", "blocklist_ip")
    send(sb, "198.51.100.20", count=5)
    dropped = wait_counter(sb, "drop", "blocklist_ip", before + 5)
    assert counter(dropped, "drop", "blocklist_ip") - before == 5
    assert dig(sb, "good.test") == "NOERROR 203.0.113.80"
    code, err = daemon.stop()
    assert code == 0, err
    assert ("capabilities dropped; kept CAP_BPF, CAP_IPC_LOCK, CAP_KILL, CAP_NET_ADMIN, CAP_NET_RAW, CAP_PERFMON; "
            "permitted only, for the workers: CAP_SETGID, CAP_SETPCAP, CAP_SETUID") in err
    with entered_netns(sb.host_ns):
        assert not pin_dir_for(sb.host_if).exists()  # detached at exit with the reduced set


def test_keep_privileges_opts_out(sandbox: Sandbox, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text('fast_path:\n  drop_ips: ["198.51.100.42"]\n')
    daemon = Daemon(sandbox, policy, "--keep-privileges", "--no-watch").start()
    try:
        assert daemon.proc is not None
        assert current_capabilities(daemon.proc.pid).effective == current_capabilities().effective
    finally:
        code, err = daemon.stop()
    assert code == 0 and "capabilities dropped" not in err


def test_pin_directories_are_0700_even_when_they_existed_wider(sandbox: Sandbox) -> None:
    root = Path(f"/sys/fs/bpf/hyp-{secrets.token_hex(4)}")
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    try:
        with entered_netns(sandbox.host_ns):
            pin_dir = pin_dir_for(sandbox.host_if, root)
            pin_dir.mkdir(mode=0o777)
            os.chmod(pin_dir, 0o777)
            with FastPath.attach(sandbox.host_if, pin_root=root):
                assert (root.stat().st_mode & 0o777, pin_dir.stat().st_mode & 0o777) == (0o700, 0o700)
                assert {p.stat().st_mode & 0o777 for p in pin_dir.iterdir()} == {0o600}
            assert FastPath.detach(sandbox.host_if, pin_root=root)
    finally:
        with entered_netns(sandbox.host_ns):
            FastPath.detach(sandbox.host_if, pin_root=root)
        root.rmdir()
