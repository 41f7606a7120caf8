"""The package's shape: layers that only import downwards (import-linter), no cycle between packages even through
function-level imports or "polymodal.x.y:name" strings, and a training loop that names no task."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "polymodal"
TASK_WORDS = ("classify", "align", "asr", "instruct", "zeroshot", "zero-shot", "coop", "wer", "whisper", "HeadTask")
_MODULE_STRING = re.compile(r"^polymodal(?:\.[A-Za-z_]\w*)+(?::\w+)?$")


def _unit(module: str) -> str:
    """The architectural unit of a module: its subpackage, or itself for a module at the top (tasks, run_folder)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "polymodal"


def _module_of(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _referenced(path: Path) -> list[tuple[str, int, str]]:
    """(module, line, how) for every import statement (any depth) and every module-path string in a file."""
    module = _module_of(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, "import") for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [f"{target}.{a.name}" for a in node.names] if not node.module else [target]
            else:
                names = [node.module or ""]
            out += [(n, node.lineno, "import") for n in names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_STRING.match(node.value.strip()):
            out.append((node.value.strip().partition(":")[0], node.lineno, "string"))
    return [(m, line, how) for m, line, how in out if m == "polymodal" or m.startswith("polymodal.")]


def _package_graph() -> dict[str, dict[str, list[str]]]:
    units = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    units |= {p.stem for p in SRC.glob("*.py") if p.stem != "__init__"}
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in SRC.rglob("*.py"):
        src = _unit(_module_of(path))
        if src == "polymodal":  # the package's own __init__: lazy re-exports of the public API
            continue
        for target, line, how in _referenced(path):
            dst = target.split(".")[1] if "." in target else "polymodal"
            if dst in units and dst != src:
                graph[src][dst].append(f"{path.relative_to(SRC)}:{line} ({how})")
    return graph


def _cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Strongly connected components with more than one package (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def test_no_cycle_between_packages_counting_function_level_imports_and_module_strings():
    graph = _package_graph()
    cycles = _cycles(graph)
    detail = [f"{a} -> {b}: {graph[a][b][0]}" for c in cycles for a in c for b in graph[a] if b in c]
    assert not cycles, f"import cycles between packages {cycles}:\n" + "\n".join(detail)


def test_the_cycle_check_finds_a_cycle_made_through_a_module_string(tmp_path, monkeypatch):
    # The check itself must see function-level imports and "polymodal.x:name" strings, or it proves nothing.
    pkg = tmp_path / "polymodal"
    for name, body in {"a": "def f():\n    from ..b import g\n", "b": 'BUILDERS = {"x": "polymodal.a.mod:build"}\n'}.items():
        (pkg / name).mkdir(parents=True)
        (pkg / name / "__init__.py").write_text(body)
    monkeypatch.setattr(sys.modules[__name__], "SRC", pkg)
    assert _cycles(_package_graph()) == [["a", "b"]]


def test_layers_contract_holds():
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    result = subprocess.run([str(lint), "--config", str(SRC.parents[1] / "pyproject.toml")], cwd=SRC.parents[1],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "polymodal layers KEPT" in result.stdout


def test_the_training_loop_knows_no_task():
    loop = (SRC / "train" / "loop.py").read_text()
    assert len(loop.splitlines()) < 400
    named = [w for w in TASK_WORDS if re.search(rf"\b{re.escape(w)}\b", loop, re.IGNORECASE)]
    assert not named, f"train/loop.py names tasks: {named}"
