"""The package's structure: no import cycles, lower layers never import the command line, short functions,
a thin cli.py, and --help readable at 80 columns."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "kandinsky_cli"
# the command-line layer: nothing else in the package may import these
CLI_LAYER = {"cli", "__main__", "output", "flags"}
MAX_FUNCTION_LINES = 60
# network constructors mirror diffusers' modeling files (one line per submodule): exempt from the length rule
NETWORK_MODULES = {"unet", "movq", "clip", "mclip", "prior", "layers"}


def package_imports():
    """module -> the package modules it imports (at any depth of the file: lazy imports count too)."""
    graph = {}
    for path in sorted(PACKAGE.glob("*.py")):
        name = path.stem
        tree = ast.parse(path.read_text(encoding="utf-8"))
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1:
                    if node.module:
                        deps.add(node.module.split(".")[0])
                    else:
                        deps.update(alias.name for alias in node.names)
                elif node.module and node.module.startswith("kandinsky_cli."):
                    deps.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("kandinsky_cli."):
                        deps.add(alias.name.split(".")[1])
        graph[name] = {d for d in deps if (PACKAGE / f"{d}.py").exists() and d != name}
    return graph


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(package_imports()) == []


def test_lower_layers_never_import_the_command_line():
    offenders = {m: sorted(deps & CLI_LAYER) for m, deps in package_imports().items()
                 if m not in CLI_LAYER and deps & CLI_LAYER}
    assert offenders == {}


def long_functions():
    found = []
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                exempt = path.stem in NETWORK_MODULES and node.name == "__init__"
                if lines > MAX_FUNCTION_LINES and not exempt:
                    found.append(f"{path.name}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_functions_are_short():
    assert long_functions() == []


def test_cli_module_stays_thin():
    lines = len((PACKAGE / "cli.py").read_text(encoding="utf-8").splitlines())
    assert lines <= 350, f"cli.py has {lines} lines: parsing and calling only"


@pytest.mark.parametrize("command", ["inpaint", "prior", "batch", "mask", "grid", "download", "info"])
def test_help_is_readable_at_80_columns(command):
    env = {**os.environ, "COLUMNS": "80", "TERM": "dumb"}
    out = subprocess.run([sys.executable, "-m", "kandinsky_cli", command, "--help"], env=env, capture_output=True,
                         text=True, timeout=120).stdout
    assert out, "no help printed"
    assert "…" not in out, f"a cut name or text in `{command} --help` at 80 columns:\n{out}"
    assert max(len(line) for line in out.splitlines()) <= 80
    for line in out.splitlines():
        stripped = line.strip("│ ")
        if stripped.startswith("--"):
            assert stripped.split()[0].rstrip(",").isascii()
