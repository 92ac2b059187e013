"""The package's architecture, checked: families in their folders, imports that run one way, no cycles.

Layers, lowest first. A module may import its own layer and the layers below, never one above;
the imports inside functions and under ``TYPE_CHECKING`` count too (a lazy import is still a
dependency). ``cli``, ``__main__`` and the package's ``__init__`` sit on top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vlpeft"

LAYERS = [
    ("_version", "errors", "io", "registry", "utils", "runs"),
    ("data",),
    ("backbones",),
    ("features", "text"),
    ("training",),
    ("methods",),
    ("engine",),
    ("world",),
    ("bench",),
    ("demo", "export"),
    ("cli", "__main__", "__init__"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__") or "__init__"


def layer_of(module: str) -> int:
    top = module.split(".")[0]
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"vlpeft.{module} belongs to no layer: add it to LAYERS in {__file__}")


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module without the ``vlpeft.`` prefix) of every vlpeft import in the file."""
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("vlpeft"):
            base = node.module.removeprefix("vlpeft").lstrip(".")
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                out.append((node.lineno, sub if sub in modules else base or "__init__"))
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("vlpeft.")]
            out += [(node.lineno, name.removeprefix("vlpeft.")) for name in names]
    return out


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    for path in SOURCES:
        layer_of(module_name(path))


def test_imports_never_point_up():
    upward = []
    for path in SOURCES:
        me = module_name(path)
        for line, target in imports_of(path):
            if layer_of(target) > layer_of(me):
                upward.append(f"vlpeft.{me}:{line} imports vlpeft.{target}")
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_no_import_cycles_between_modules():
    graph = {module_name(p): {t for _, t in imports_of(p)} for p in SOURCES}
    cycles, done, stack = [], set(), []

    def visit(node: str) -> None:
        if node in stack:
            cycles.append(" -> ".join([*stack[stack.index(node) :], node]))
            return
        if node in done:
            return
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        stack.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


FAMILIES = {"heads": "feature-head", "prompts": "prompt", "adapters": "module-adapter"}


@pytest.mark.parametrize("name", sorted(__import__("vlpeft.methods", fromlist=["x"]).list_methods()))
def test_each_method_lives_in_its_family_folder(name):
    from vlpeft.methods import get_method

    cls = get_method(name)
    folder = cls.__module__.split(".")[2]
    assert folder in FAMILIES, f"{name} is defined in {cls.__module__}, outside a family folder"
    assert FAMILIES[folder] == cls.family, f"{name} ({cls.family}) sits in methods/{folder}/"
