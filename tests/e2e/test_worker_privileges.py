"""Slow-path worker confinement for real (root): once a worker's AF_XDP socket is bound and in
xsk_map it runs as an unprivileged user with no capability in any set, no_new_privs and seccomp.

- confine_worker in a process of its own: uid/gid switched, every capability set empty,
  no_new_privs, seccomp filter mode, an already-open BPF map fd still usable.
- `hyperion run` in a sandbox: the worker serving DNS reads as confined in /proc/PID/status,
  dig answers through the slow path, nxdomain answers come back, block_source writes the dynamic
  blocklist; a killed worker is replaced by one confined again; --worker-user picks the user;
  --keep-privileges leaves the workers as they were; an unknown user is refused before attaching.

The seccomp allowlist alone and --worker-user parsing, without root: tests/unit/test_worker_privileges.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hyperion.fastpath.loader import pin_dir_for
from hyperion.lab.sandbox import Sandbox, entered_netns
from tests.support.netutil import Daemon, hyperion, wait_for
from tests.support.peers import daemon_serving_dns, dig

NOBODY = 65534

POLICY = """
fast_path:
  redirect_ports: [{protocol: udp, port: 53, on_failure: drop}]
slow_path:
  dns_name_rules: slow_path  # the confined worker answers the nxdomain rule itself
  dns_rules:
    - {match: "*.tracker.test", action: nxdomain}
    - {match: "c2.test", action: block_source, ttl: 10m}
"""


def proc_status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: v.strip() for k, v in (line.split(":", 1) for line in text.splitlines() if ":" in line)}


def confinement(pid: int) -> dict[str, Any]:
    """What the kernel says of a process: ids, capability sets, no_new_privs and seccomp mode."""
    st = proc_status(pid)
    return {
        "uid": [int(x) for x in st["Uid"].split()], "gid": [int(x) for x in st["Gid"].split()],
        "groups": st["Groups"].split(),
        **{key: int(st[key], 16) for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")},
        "no_new_privs": st["NoNewPrivs"], "seccomp": st["Seccomp"],
    }


def confined_as(uid: int, gid: int) -> dict[str, Any]:
    return {"uid": [uid] * 4, "gid": [gid] * 4, "groups": [], "CapInh": 0, "CapPrm": 0, "CapEff": 0,
            "CapBnd": 0, "CapAmb": 0, "no_new_privs": "1", "seccomp": "2"}


# ---- confine_worker for real (root) ---------------------------------------------------------------

CONFINE_PROBE = r"""
import errno, json, os, sys
from hyperion.kernel import libbpf
from hyperion.slowpath.confinement import confine_worker
table = libbpf.MapFd(libbpf.map_create(libbpf.BPF_MAP_TYPE_HASH, "probe", 4, 8, 16, 0), 4, 8, "probe")
confine_worker(int(sys.argv[1]), int(sys.argv[2]))
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except OSError as exc:
        out[name] = errno.errorcode.get(exc.errno, str(exc.errno))
    except Exception as exc:
        out[name] = str(exc)
def update_and_read():
    table.update((7).to_bytes(4, "little"), (9).to_bytes(8, "little"))
    assert table.lookup((7).to_bytes(4, "little")) == (9).to_bytes(8, "little")
attempt("map_update_on_open_fd", update_and_read)
attempt("setuid_back", lambda: os.setresuid(0, 0, 0))
print(json.dumps(out))
sys.stdout.flush()
sys.stdin.readline()
"""


def test_confine_worker_empties_every_set_and_keeps_open_map_fds_usable(kernel: None) -> None:
    proc = subprocess.Popen([sys.executable, "-c", CONFINE_PROBE, str(NOBODY), str(NOBODY)], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        assert json.loads(line) == {"map_update_on_open_fd": "ok", "setuid_back": "EPERM"}
        assert confinement(proc.pid) == confined_as(NOBODY, NOBODY)
    finally:
        proc.kill()
        proc.wait(timeout=10)


# ---- the daemon's workers ---------------------------------------------------------------------------

def _worker_pid(sb: Sandbox) -> int | None:
    shown = json.loads(hyperion(sb, "queues", "--iface", sb.host_if, "--json").stdout)
    q = shown["queues"][0]
    return int(q["descriptors"]["worker_pid"]) if q["state"] == "active" else None


@pytest.fixture
def served(sandbox: Sandbox, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Sandbox, Daemon]]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    with daemon_serving_dns(sandbox, policy, "--no-watch", *getattr(request, "param", ())) as daemon:
        wait_for(lambda: _worker_pid(sandbox) is not None, 10)
        yield sandbox, daemon


def test_a_worker_serves_traffic_confined(served: tuple[Sandbox, Daemon]) -> None:
    sb, _ = served
    pid = _worker_pid(sb)
    assert pid is not None
    assert "hyperion.slowpath.worker" in Path(f"/proc/{pid}/cmdline").read_text()
    assert confinement(pid) == confined_as(NOBODY, NOBODY)
    # Still serving, confined: answers delivered through the TUN device, answers made in the
    # dataplane (nxdomain), and a block_source written into the dynamic blocklist.
    assert dig(sb, "good.test") == "NOERROR 203.0.113.80"
    assert dig(sb, "a.tracker.test") == "NXDOMAIN"
    sb.add_client_address("198.51.100.10")
    assert dig(sb, "c2.test", source="198.51.100.10") == "TIMEOUT"
    assert [b["address"] for b in json.loads(hyperion(sb, "block", "list", "--json").stdout)] == ["198.51.100.10"]
    assert confinement(pid) == confined_as(NOBODY, NOBODY)

    # The watchdog's recovery: the replacement is confined again and serves.
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: _worker_pid(sb) not in (None, pid), 20)
    replacement = _worker_pid(sb)
    assert replacement is not None
    wait_for(lambda: confinement(replacement) == confined_as(NOBODY, NOBODY), 10)
    assert dig(sb, "good.test") == "NOERROR 203.0.113.80"
    assert dig(sb, "b.tracker.test") == "NXDOMAIN"


@pytest.mark.parametrize("served", [("--worker-user", "64999:64998")], indirect=True)
def test_worker_user_chooses_the_ids(served: tuple[Sandbox, Daemon]) -> None:
    sb, _ = served
    pid = _worker_pid(sb)
    assert pid is not None
    assert confinement(pid) == confined_as(64999, 64998)
    assert dig(sb, "a.tracker.test") == "NXDOMAIN"


@pytest.mark.parametrize("served", [("--keep-privileges",)], indirect=True)
def test_keep_privileges_leaves_the_workers_privileged(served: tuple[Sandbox, Daemon]) -> None:
    sb, _ = served
    pid = _worker_pid(sb)
    assert pid is not None
    seen = confinement(pid)
    assert (seen["uid"], seen["seccomp"], seen["CapEff"] != 0) == ([0] * 4, "0", True)


def test_an_unknown_worker_user_is_refused_before_anything_attaches(sandbox: Sandbox, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    proc = sandbox.exec(sandbox.host_ns, [sys.executable, "-m", "hyperion.cli", "run", "--iface", sandbox.host_if,
                                          "--policy", str(policy), "--worker-user", "no-such-user-hyp"],
                        check=False)
    assert proc.returncode != 0
    assert "hyperion: error: --worker-user: no user 'no-such-user-hyp'" in proc.stderr
    with entered_netns(sandbox.host_ns):
        assert not pin_dir_for(sandbox.host_if).exists()  # nothing attached
