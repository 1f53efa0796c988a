"""The product does not load the lab: `hyperion status` (hyperion.cli.main) runs without any
hyperion.lab module, and without scapy or matplotlib (the lab extra). Each check runs in a fresh
interpreter, so modules other tests imported do not count. The ruff rule TID251
(pyproject.toml) refuses such an import statically; this catches it at run time too."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

LAB_ONLY = ("hyperion.lab", "scapy", "matplotlib")

# Imports the product CLI, optionally runs one command, and prints every module the interpreter
# loaded. The command fails here (no such interface; as non-root even a PermissionError): only
# what it imported on the way matters.
PROBE = r"""
import contextlib, io, json, sys
import hyperion.cli.main as cli
argv = json.loads(sys.argv[1])
if argv:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            cli.main(argv)
        except (Exception, SystemExit):
            pass
print(json.dumps(sorted(sys.modules)))
"""


def loaded_modules(argv: list[str]) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv)], capture_output=True, text=True,
                          timeout=60, check=True)
    modules: list[str] = json.loads(proc.stdout)
    assert "hyperion.cli.main" in modules  # the probe did import the CLI
    return modules


def lab_modules(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == top or m.startswith(top + ".") for top in LAB_ONLY)]


@pytest.mark.parametrize("argv", [[], ["status", "--iface", "hyp-no-such0"],
                                  ["status", "--iface", "hyp-no-such0", "--json"]],
                         ids=["import", "status", "status-json"])
def test_the_product_cli_loads_nothing_of_the_lab(argv: list[str]) -> None:
    modules = loaded_modules(argv)
    assert any(m.startswith("hyperion.fastpath") for m in modules)  # the product itself is there
    assert lab_modules(modules) == [], f"`hyperion {' '.join(argv)}` loaded lab modules"


def test_the_check_sees_a_lab_module() -> None:
    """The filter itself: a lab module, a scapy submodule and matplotlib are caught, look-alikes not."""
    assert lab_modules(["hyperion.lab", "hyperion.lab.sandbox", "scapy.layers.inet", "matplotlib",
                        "hyperion.labels", "scapyx", "hyperion.fastpath.program"]) == [
        "hyperion.lab", "hyperion.lab.sandbox", "scapy.layers.inet", "matplotlib"]
