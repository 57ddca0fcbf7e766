"""The logging layer's structure: an acyclic import graph, JAX internals in one module.

Both are read from the source with ``ast`` (imports inside functions count too:
a lazy import is still a dependency), so a cycle hidden behind a function-level
import or ``importlib`` is caught as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import nlsq
import pytest

PACKAGE = Path(nlsq.__file__).parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The nlsq modules ``name`` imports, anywhere in its body."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level > 1:
                    base = base[: -(node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from pkg import mod` imports the submodule pkg.mod when it is one.
            targets = [f"{stem}.{alias.name}" for alias in node.names] + [stem]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            targets = [str(node.args[0].value)]
        else:
            continue
        for target in targets:
            if target in known and target != name:
                found.add(target)
    return found


def _graph(prefix: str) -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        if name.startswith(prefix):
            # Importing nlsq.utils.x runs nlsq.utils/__init__ first; that edge is
            # not a dependency of x's code, so package inits are left out.
            graph[name] = {
                m
                for m in _imports(name, path, known)
                if m.startswith(prefix) and m != prefix.rstrip(".")
            }
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_nlsq_utils_import_graph_has_no_cycle() -> None:
    graph = _graph("nlsq.utils.")
    assert "nlsq.utils._routes" in graph, sorted(graph)
    assert _find_cycle(graph) is None, _find_cycle(graph)


def test_whole_package_import_graph_has_no_cycle() -> None:
    graph = _graph("nlsq.")
    assert _find_cycle(graph) is None, _find_cycle(graph)


@pytest.mark.parametrize(
    ("module", "must_not_import"),
    [
        # Native-target registration knows nothing of routes or the runtime.
        ("nlsq.utils._native", {"nlsq.utils._routes", "nlsq.utils._log_runtime"}),
        # The route table sits below the templates and the public API.
        ("nlsq.utils._routes", {"nlsq.utils._emit", "nlsq.utils.async_logger"}),
        ("nlsq.utils._emit", {"nlsq.utils.async_logger"}),
        ("nlsq.utils._log_runtime", {"nlsq.utils._routes", "nlsq.utils._emit"}),
    ],
)
def test_layers_point_one_way(module: str, must_not_import: set[str]) -> None:
    graph = _graph("nlsq.")
    assert not (graph[module] & must_not_import), graph[module] & must_not_import


INTERNAL_MARKERS = (
    "jax._src",
    "jax.interpreters",
    "jax.extend",
    "dce_rules",
    "primitive_batchers",
    "primitive_jvps",
    "emit_python_callback",
    "api_version=",
    "XLA_FFI_API",
)


def test_jax_internals_only_in_the_compat_module() -> None:
    offenders = []
    for name, path in _modules().items():
        if name == "nlsq._jax_compat":
            continue
        tree = ast.parse(path.read_text())
        # Docstrings may name the internals; code may not.
        for node in ast.walk(tree):
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                node.value.value = ""
        code = ast.unparse(tree)
        offenders += [f"{name}: {m}" for m in INTERNAL_MARKERS if m in code]
    assert not offenders, offenders
