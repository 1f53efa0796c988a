"""The test suite's own layout: tests live in unit/, kernel/ or e2e/, share code only through
tests/support/, and unit/ asks for no kernel fixture (it runs as any user, without root)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.paths import ROOT

TESTS = ROOT / "tests"
TIERS = ("unit", "kernel", "e2e")
KERNEL_FIXTURES = {"kernel", "sandbox", "detached"}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def imports_of_test_modules(path: Path) -> list[str]:
    """Imports of a test module or a conftest (tests.<tier>.test_x, tests.conftest, ...)."""
    return sorted(m for m in imported_modules(path)
                  if m.startswith("tests.") and any(part.startswith(("test_", "conftest")) for part in m.split(".")))


def test_every_test_file_is_in_a_tier() -> None:
    misplaced = [str(p.relative_to(TESTS)) for p in TESTS.rglob("test_*.py") if p.relative_to(TESTS).parts[0]
                 not in TIERS]
    assert misplaced == []


def test_no_module_imports_a_test_module() -> None:
    found = {str(p.relative_to(TESTS)): imports_of_test_modules(p) for p in TESTS.rglob("*.py")}
    offenders = {path: modules for path, modules in found.items() if modules}
    assert offenders == {}


def test_the_import_check_sees_test_modules(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("from tests.e2e.test_slowpath import dig\nfrom tests import conftest\n"
                     "from tests.support.peers import dnsmasq\nimport tests.kernel.test_abi\n")
    assert imports_of_test_modules(probe) == ["tests.conftest", "tests.e2e.test_slowpath",
                                              "tests.e2e.test_slowpath.dig", "tests.kernel.test_abi"]


def test_unit_tests_ask_for_no_kernel_fixture() -> None:
    """Directly, or through a fixture of their own module that does."""
    offenders = []
    for path in sorted((TESTS / "unit").glob("test_*.py")):
        functions = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)]
        asked = {f.name: {a.arg for a in f.args.args} for f in functions}
        for name, args in asked.items():
            seen, todo = set(), set(args)
            while todo:  # the module's own fixtures, followed transitively
                arg = todo.pop()
                seen.add(arg)
                todo |= asked.get(arg, set()) - seen
            if name.startswith("test") and seen & KERNEL_FIXTURES:
                offenders.append(f"{path.name}::{name} asks for {sorted(seen & KERNEL_FIXTURES)}")
    assert offenders == []
