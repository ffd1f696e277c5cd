"""The tree is the architecture: imgcls's modules import only down the layers, with no circle.

Imports inside functions count too: hiding an import in a function hides a circle, it does
not remove it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import imgcls

PACKAGE = Path(imgcls.__file__).parent

# Each module's layer, by its longest matching prefix; a module may import only from its own
# layer or below. report renders metrics and predictions, so training and inference both use it;
# training validates with inference's batching, so a run is scored exactly as it will predict.
LAYERS = {
    "imgcls": 0, "imgcls.errors": 0, "imgcls.config": 0, "imgcls.files": 0, "imgcls.workers": 0,
    "imgcls.progress": 0, "imgcls.device": 0,
    "imgcls.metrics": 1, "imgcls.data": 1, "imgcls.models": 1,
    "imgcls.checkpoint": 2,
    "imgcls.report": 3,
    "imgcls.inference": 4,
    "imgcls.training": 5, "imgcls.serve": 5, "imgcls.retrieval": 5, "imgcls.zeroshot": 5, "imgcls.doctor": 5,
    "imgcls.cli": 6, "imgcls.__main__": 6,
}  # fmt: skip
# Same-layer neighbours that must never meet: what serves predictions must not drag in the trainer.
FORBIDDEN = [
    (app, "imgcls.training") for app in ("imgcls.serve", "imgcls.retrieval", "imgcls.zeroshot", "imgcls.doctor")
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imgcls_imports(path: Path, modules: set[str]) -> set[str]:
    """The imgcls modules a file imports anywhere in it (`from imgcls.x import y` names module
    imgcls.x.y when that is a module, else imgcls.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("imgcls")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("imgcls"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imgcls_imports(path, set(files)) - {name} for name, path in files.items()}


def layer(module: str) -> tuple[str, int]:
    prefix = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return prefix, LAYERS[prefix]


def test_every_import_runs_down_the_layers():
    upward = []
    for module, imports in import_graph().items():
        for target in imports:
            if module == "imgcls" or target == "imgcls":  # the package root: version, lazy API
                continue
            if layer(target)[1] > layer(module)[1]:
                upward.append(f"{module} -> {target}")
            for a, b in FORBIDDEN:
                if module.startswith(a) and target.startswith(b):
                    upward.append(f"{module} -> {target}")
    assert upward == []


def test_no_import_circle():
    graph = import_graph()
    graph["imgcls"] = set()  # the root's lazy API names are resolved on first use only
    circles, state = [], {}

    def visit(node: str, path: list[str]) -> None:  # depth-first; an edge back to an open node closes a circle
        state[node] = "open"
        for nxt in sorted(graph.get(node, set()) - {"imgcls"}):
            if state.get(nxt) == "open":
                circles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert circles == []


def test_prediction_surfaces_load_no_training_code():
    code = (
        "import sys, imgcls.inference.predictor, imgcls.inference.export, imgcls.serve.app, imgcls.report, "
        "imgcls.retrieval.commands, imgcls.zeroshot; "
        "print(sorted(m for m in sys.modules if m.startswith('imgcls.training')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
