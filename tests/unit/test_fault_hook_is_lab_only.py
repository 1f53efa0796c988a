"""The fault hook `hyperion-lab chaos` uses (a worker stops refilling its fill ring on SIGUSR1) is
the lab's: the product's extension, worker, supervisor options and CLI carry none of it.

The hook itself (the starvation it causes and the watchdog's answer) is exercised end to end by
tests/test_chaos.py::test_fill_ring_starvation_goes_through_pressure_to_a_fresh_umem. Root-free.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from hyperion import _slowpath
from hyperion.cli.main import build_parser
from hyperion.lab import _slowpath_faults, chaosdaemon, faultworker
from hyperion.slowpath import worker
from hyperion.slowpath.supervisor import SlowPathOptions

ROOT = Path(__file__).resolve().parents[2]
PRODUCT_WORKER = "hyperion.slowpath.worker"
RUN = ["run", "--iface", "veth0", "--policy", "policy.yaml"]


def preprocessed(*defines: str) -> str:
    """module.c as the compiler sees it (the extension's include paths), with these -D."""
    includes = [sysconfig.get_paths()["include"], str(ROOT / "bpf" / "include"), str(ROOT / "native" / "slowpath")]
    return subprocess.run(["cc", "-E", "-P", *(f"-I{i}" for i in includes), *(f"-D{d}" for d in defines),
                           str(ROOT / "native" / "slowpath" / "module.c")],
                          check=True, capture_output=True, text=True).stdout


def test_the_product_loop_reads_no_fault_flag_the_lab_build_does() -> None:
    assert "ctl->flags" not in preprocessed()
    assert "ctl->flags" in preprocessed("HYP_FAULT_INJECTION=1")


def test_only_the_lab_build_of_the_extension_exports_the_fault_flag() -> None:
    assert not hasattr(_slowpath, "FLAG_STARVE_FILL")
    assert _slowpath_faults.FLAG_STARVE_FILL == 1
    # Otherwise the same extension: the worker runs unchanged over it.
    assert _slowpath_faults.STAT_NAMES == _slowpath.STAT_NAMES
    assert _slowpath_faults.CONTROL_LAYOUT == _slowpath.CONTROL_LAYOUT


def test_the_product_cli_and_worker_have_no_fault_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as cli_exit:
        build_parser().parse_args([*RUN, "--fault-injection"])
    with pytest.raises(SystemExit) as worker_exit:
        worker.main(["--ifname", "veth0", "--queue", "0", "--xsk-map-fd", "3", "--dyn4-fd", "4", "--dyn6-fd", "5",
                     "--deliver-fd", "6", "--control-fd", "7", "--fault-injection"])
    assert (cli_exit.value.code, worker_exit.value.code) == (2, 2)
    assert capsys.readouterr().err.count("unrecognized arguments: --fault-injection") == 2
    assert not hasattr(SlowPathOptions(), "fault_injection")


def test_the_product_runs_its_own_worker_and_the_chaos_daemon_the_fault_worker(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert SlowPathOptions().worker_module == PRODUCT_WORKER
    assert build_parser().parse_args(RUN).worker_module == PRODUCT_WORKER
    dispatched: list[argparse.Namespace] = []
    monkeypatch.setattr(chaosdaemon, "dispatch", lambda args: dispatched.append(args) or 0)
    assert chaosdaemon.main(RUN[1:]) == 0
    (args,) = dispatched
    assert (args.worker_module, args.iface, args.func.__name__) == ("hyperion.lab.faultworker", "veth0", "cmd_run")
    assert args.worker_module == faultworker.MODULE


def test_the_fault_worker_runs_the_product_worker_over_the_fault_build() -> None:
    check = ("import sys; from hyperion.lab import faultworker; faultworker._substitute_extension(); "
             "from hyperion.slowpath import protocol, worker; from hyperion.lab import _slowpath_faults as f; "
             "assert worker._slowpath is f and protocol._slowpath is f, (worker._slowpath, protocol._slowpath)")
    subprocess.run([sys.executable, "-c", check], check=True, capture_output=True, text=True)
    # Too late once the product's extension is in use: refused, not mixed.
    late = subprocess.run([sys.executable, "-c", "import hyperion._slowpath; from hyperion.lab import faultworker; "
                           "faultworker._substitute_extension()"], capture_output=True, text=True)
    assert late.returncode == 1
    assert "hyperion._slowpath was imported before the fault build could replace it" in late.stderr
