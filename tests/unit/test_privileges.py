"""Least privilege without root: drop_privileges against a syscall recorder and the pieces around it.

- drop_privileges asks the kernel for exactly this: every other capability out of the bounding
  set, the ambient set cleared, effective = permitted = the kept set, inheritable empty,
  no_new_privs; it refuses, before changing anything, when threads exist or a name is unknown.
- /proc status parsing, the daemon's capability set per option, /metrics on loopback by default,
  no shell ever built from data, the capability numbers pinned.

The daemon's real processes and the kept set at work (root): tests/e2e/test_privileges.py.
"""

from __future__ import annotations

import ast
import ipaddress
from dataclasses import dataclass, field

import pytest

from hyperion.cli.main import build_parser
from hyperion.daemon.daemon import DEFAULT_METRICS_ADDR
from hyperion.daemon.metrics import parse_listen_address
from hyperion.daemon.privileges import (
    DAEMON_CAPABILITIES,
    PR_CAP_AMBIENT,
    PR_CAP_AMBIENT_CLEAR_ALL,
    PR_CAPBSET_DROP,
    PR_SET_NO_NEW_PRIVS,
    daemon_capabilities,
    drop_privileges,
    mask_of,
)
from hyperion.errors import HyperionError
from hyperion.kernel import capabilities
from hyperion.kernel.capabilities import parse_status
from hyperion.slowpath.confinement import WORKER_SWITCH_CAPABILITIES
from tests.support.paths import SRC

# ---- drop_privileges against a recorder --------------------------------------------------------

@dataclass
class Recorder:
    threads: int = 1
    permitted_mask: int = (1 << 41) - 1
    bounding: set[int] = field(default_factory=lambda: set(range(41)))
    calls: list[tuple[object, ...]] = field(default_factory=list)

    def thread_count(self) -> int:
        return self.threads

    def last_capability(self) -> int:
        return 40

    def permitted(self) -> int:
        return self.permitted_mask

    def bounding_has(self, capability: int) -> bool:
        return capability in self.bounding

    def prctl(self, option: int, arg2: int = 0) -> None:
        self.calls.append(("prctl", option, arg2))

    def capset(self, effective: int, permitted: int, inheritable: int) -> None:
        self.calls.append(("capset", effective, permitted, inheritable))


def test_drop_asks_for_exactly_the_kept_set() -> None:
    recorder = Recorder(bounding=set(range(41)) - {5})  # CAP_KILL already out of the bounding set
    kept = drop_privileges(["CAP_BPF", "net_admin"], recorder)
    assert kept == {"CAP_BPF", "CAP_NET_ADMIN"}
    mask = (1 << 39) | (1 << 12)
    assert recorder.calls == [
        *[("prctl", PR_CAPBSET_DROP, cap) for cap in range(41) if cap not in (5, 12, 39)],
        ("prctl", PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL),
        ("capset", mask, mask, 0),
        ("prctl", PR_SET_NO_NEW_PRIVS, 1),
    ]


def test_permitted_only_capabilities_stay_out_of_the_effective_set() -> None:
    recorder = Recorder(bounding=set(range(41)))
    kept = drop_privileges(["CAP_KILL"], recorder, permitted_only=WORKER_SWITCH_CAPABILITIES)
    assert kept == {"CAP_KILL"}
    switch = (1 << 6) | (1 << 7) | (1 << 8)  # CAP_SETGID, CAP_SETUID, CAP_SETPCAP
    assert recorder.calls == [
        *[("prctl", PR_CAPBSET_DROP, cap) for cap in range(41) if cap not in (5, 6, 7, 8)],
        ("prctl", PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL),
        ("capset", 1 << 5, (1 << 5) | switch, 0),
        ("prctl", PR_SET_NO_NEW_PRIVS, 1),
    ]


def test_drop_keeps_only_what_the_process_has() -> None:
    recorder = Recorder(permitted_mask=(1 << 12) | (1 << 8))  # no CAP_BPF to keep; CAP_SETPCAP to drop
    assert drop_privileges(["CAP_BPF", "CAP_NET_ADMIN"], recorder) == {"CAP_NET_ADMIN"}
    assert ("capset", 1 << 12, 1 << 12, 0) in recorder.calls


def test_without_setpcap_the_bounding_set_is_left_alone() -> None:
    recorder = Recorder(permitted_mask=(1 << 12) | (1 << 39))
    assert drop_privileges(["CAP_BPF", "CAP_NET_ADMIN"], recorder) == {"CAP_BPF", "CAP_NET_ADMIN"}
    mask = (1 << 12) | (1 << 39)
    assert recorder.calls == [("prctl", PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL), ("capset", mask, mask, 0),
                              ("prctl", PR_SET_NO_NEW_PRIVS, 1)]


@pytest.mark.parametrize("threads,keep,message", [
    (3, DAEMON_CAPABILITIES, "capabilities are per thread: drop them before starting threads (3 running)"),
    (1, ["CAP_BPF", "CAP_FLY"], "unknown capability 'CAP_FLY'"),
])
def test_drop_refuses_before_changing_anything(threads: int, keep: list[str], message: str) -> None:
    recorder = Recorder(threads=threads)
    with pytest.raises(HyperionError) as caught:
        drop_privileges(keep, recorder)
    assert str(caught.value) == message
    assert recorder.calls == []


def test_status_parsing() -> None:
    text = ("Name:\tpython\nCapInh:\t0000000000000000\nCapPrm:\t000000c000003000\nCapEff:\t000000c000001000\n"
            "CapBnd:\t000000c000007000\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\n")
    caps = parse_status(text)
    assert caps.permitted == {"CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert caps.effective == {"CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"}
    assert caps.bounding == {"CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK"}
    assert caps.inheritable == caps.ambient == frozenset()
    assert caps.no_new_privs


@pytest.mark.parametrize("addr,extra", [(DEFAULT_METRICS_ADDR, ()), (None, ()), ("[::1]:9100", ()),
                                        ("127.0.0.1:443", ("CAP_NET_BIND_SERVICE",))])
def test_daemon_capabilities(addr: str | None, extra: tuple[str, ...]) -> None:
    assert daemon_capabilities(addr) == (*DAEMON_CAPABILITIES, *extra)
    assert daemon_capabilities(addr, confined_workers=True) == (*DAEMON_CAPABILITIES, "CAP_KILL", *extra)


def test_metrics_listen_on_loopback_by_default() -> None:
    args = build_parser().parse_args(["run", "--iface", "x0", "--policy", "p.yaml"])
    assert args.metrics_addr == DEFAULT_METRICS_ADDR
    assert ipaddress.ip_address(parse_listen_address(args.metrics_addr)[0]).is_loopback
    assert not args.keep_privileges


# ---- no shell built from data -------------------------------------------------------------------

SUBPROCESS_CALLS = {"run", "Popen", "call", "check_call", "check_output"}


def _shell_uses(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
        if any(k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
               for k in node.keywords):
            found.append(f"line {node.lineno}: shell=")
        if (owner, name) in {("os", "system"), ("os", "popen"), ("subprocess", "getoutput"),
                             ("subprocess", "getstatusoutput")}:
            found.append(f"line {node.lineno}: {owner}.{name}")
        if owner == "subprocess" and name in SUBPROCESS_CALLS and node.args and isinstance(
                node.args[0], ast.Constant | ast.JoinedStr | ast.BinOp):
            found.append(f"line {node.lineno}: subprocess.{name} with a command string")
    return found


def test_no_shell_is_ever_built() -> None:
    """Commands run with argument vectors: nothing from a policy or a packet reaches a shell."""
    offenders = {str(path.relative_to(SRC)): uses for path in sorted(SRC.rglob("*.py"))
                 if (uses := _shell_uses(ast.parse(path.read_text(), str(path))))}
    assert offenders == {}
    # The check itself finds each form.
    bad = "import os, subprocess\nos.system('x')\nsubprocess.run('ls ' + p, shell=True)\nsubprocess.Popen(f'{x}')\n"
    assert _shell_uses(ast.parse(bad)) == ["line 2: os.system", "line 3: shell=",
                                           "line 3: subprocess.run with a command string",
                                           "line 4: subprocess.Popen with a command string"]


# ---- pinned state -------------------------------------------------------------------------------


def test_capability_numbers() -> None:
    assert mask_of(DAEMON_CAPABILITIES) == (1 << 39) | (1 << 38) | (1 << 12) | (1 << 13) | (1 << 14)
    assert capabilities.capability_name(41) == "CAP_41"  # a kernel newer than the table
