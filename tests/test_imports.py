"""The structure stays walkable: no import cycles between umlroot's modules
(lazy imports count, TYPE_CHECKING ones do not), no package importing back
into one that imports it, and no private member of a class used outside
its module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "umlroot"
# Lower layers first: a package may import from its own and lower ones only.
LAYERS = ["umlroot", "umlroot.kernel", "umlroot.guest", "umlroot.images", "umlroot.cli"]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path, modules: set[str]) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in modules else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in modules}


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in ROOT.rglob("*.py")}
    modules = set(paths)
    return {name: imports_of(path, modules) - {name} for name, path in paths.items()}


def test_no_import_cycles() -> None:
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            walk(node)


def _layer(module: str) -> int:
    package = module if module in LAYERS else module.rsplit(".", 1)[0]
    return LAYERS.index(package) if package in LAYERS else 0


def test_packages_only_import_lower_layers() -> None:
    wrong = [f"{src} imports {dst}" for src, dsts in graph().items() for dst in dsts
             if src not in ("umlroot", "umlroot.__main__") and _layer(dst) > _layer(src)]
    assert wrong == []


def test_no_private_member_used_outside_its_module() -> None:
    """`obj._name` on anything but self/cls (or the module's own names)."""
    wrong = []
    for path in ROOT.rglob("*.py"):
        source = path.read_text()
        tree = ast.parse(source)
        defined = {n.name for n in ast.walk(tree)
                   if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
        defined |= {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign)
                    for t in n.targets if isinstance(t, ast.Name)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not re.match(r"^_[a-z]", node.attr):
                continue
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls", "sys", "os"):
                continue
            if isinstance(owner, ast.Name) and owner.id in defined:
                continue  # the module's own class or object
            wrong.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}: .{node.attr}")
    assert wrong == []


def test_guest_init_units_form_no_cycle(tmp_path: Path) -> None:
    """Each C unit's undefined symbols resolved against the others' defined
    ones: the graph has no cycle, and nothing calls into init.c (main only)."""
    import shutil
    import subprocess

    import pytest

    cc = shutil.which("cc") or shutil.which("gcc")
    nm = shutil.which("nm")
    if cc is None or nm is None:
        pytest.skip("needs cc and nm")
    sources = sorted((ROOT.parent / "guest-init").glob("*.c"))
    defined: dict[str, set[str]] = {}
    undefined: dict[str, set[str]] = {}
    for source in sources:
        obj = tmp_path / (source.stem + ".o")
        subprocess.run([cc, "-c", "-O2", "-std=gnu11", "-o", str(obj), str(source)], check=True)
        symbols = subprocess.run([nm, str(obj)], capture_output=True, text=True,
                                 check=True).stdout.splitlines()
        defined[source.stem] = {s.split()[-1] for s in symbols if s.split()[-2:-1] == ["T"]}
        undefined[source.stem] = {s.split()[-1] for s in symbols if s.split()[0] == "U"}
    edges = {unit: {other for other, names in defined.items()
                    if other != unit and names & undefined[unit]} for unit in defined}
    assert defined["init"] == {"main"}
    seen: dict[str, int] = {}

    def walk(unit: str, path: list[str]) -> None:
        seen[unit] = 1
        for nxt in sorted(edges[unit]):
            assert seen.get(nxt) != 1, "C units call each other in a circle: " + " -> ".join(
                [*path, unit, nxt])
            if nxt not in seen:
                walk(nxt, [*path, unit])
        seen[unit] = 2

    for unit in sorted(edges):
        if unit not in seen:
            walk(unit, [])


def test_every_package_folder_ships() -> None:
    """A new folder under umlroot/ must be in pyproject.toml's package list,
    or an installed umlroot lacks it (an editable install would not notice)."""
    pyproject = (ROOT.parent / "pyproject.toml").read_text()
    match = re.search(r"^packages = \[(.*?)\]", pyproject, re.MULTILINE | re.DOTALL)
    assert match is not None
    listed = set(re.findall(r'"([^"]+)"', match.group(1)))
    folders = {module_name(init.parent / "__init__.py") for init in ROOT.rglob("__init__.py")}
    assert folders <= listed
