"""The product's layers import only downwards: kernel bindings, fast path, policy, slow path, daemon,
CLI (README, "How it is built"). The lab may import anything; no product module imports the lab."""

from __future__ import annotations

import ast
from pathlib import Path

import hyperion

PACKAGE = Path(hyperion.__file__).resolve().parent
# Lower numbers are lower layers; top-level modules shared by every layer are 0.
LAYERS = {
    "errors": 0, "durations": 0, "protocols": 0, "_slowpath": 0, "_seccomp": 0, "kernel": 0,
    "fastpath": 1, "policy": 2, "slowpath": 3, "daemon": 4, "cli": 5, "replay": 5, "lab": 9,
}


def _imported(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "hyperion":
                found += [(node.lineno, f"hyperion.{alias.name}") for alias in node.names]
            elif node.module.startswith("hyperion."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("hyperion.")]
    return found


def upward_imports(package: Path = PACKAGE) -> list[str]:
    problems = []
    for path in sorted(package.rglob("*.py")):
        top = path.relative_to(package).parts[0].removesuffix(".py")
        if top == "__init__":
            continue
        assert top in LAYERS, f"{path}: a module outside every layer (add it to LAYERS and the README)"
        for line, module in _imported(ast.parse(path.read_text(), str(path))):
            target = module.split(".")[1]
            if LAYERS.get(target, 0) > LAYERS[top]:
                problems.append(f"{path.relative_to(package)}:{line} imports {module}")
    return problems


def test_layers_import_only_downwards() -> None:
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    (tmp_path / "fastpath").mkdir()
    (tmp_path / "fastpath" / "program.py").write_text("from hyperion.policy.compiler import PolicyCompiler\n")
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "compiler.py").write_text("from hyperion.fastpath.maps import CompiledPolicy\n")
    assert upward_imports(tmp_path) == ["fastpath/program.py:1 imports hyperion.policy.compiler"]
