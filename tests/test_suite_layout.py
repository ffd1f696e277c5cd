"""The test suite's own rules: shared code lives in helpers.py (fixtures in conftest.py), no
test module imports another, and every test module holds a test."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent


def test_no_test_module_imports_another():
    crossings = []
    for path in sorted(TESTS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                last = name.rpartition(".")[2]
                if last.startswith("test_") or last == "conftest":
                    crossings.append(f"{path.name} imports {name}")
    assert crossings == [], "move what is shared to tests/helpers.py (or a fixture in conftest.py)"


def test_every_test_module_holds_a_test():
    empty = []
    for path in sorted(TESTS.glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if not any(
            isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name.startswith("test") for n in tree.body
        ):
            empty.append(path.name)
    assert empty == []
