"""The shape of the code: which module may import which, and who writes a status.

These read the source with `ast`; they fail with the offending file and line.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("access", "api", "common", "console", "gateway", "metering", "pools", "services")


def project_modules() -> dict[str, Path]:
    """Every module of the project's packages (migrations aside), by dotted name."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).with_suffix("")
            if "migrations" in relative.parts:
                continue
            parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
            modules[".".join(parts)] = path
    return modules


MODULES = project_modules()


def imports_of(module: str, path: Path) -> Iterator[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import in the file,
    at any depth (an import inside a function is still a dependency)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [alias.name for alias in node.names]
            # `from services import tasks` imports the module services.tasks.
            submodules = [f"{base}.{name}" for name in names if f"{base}.{name}" in MODULES]
            if submodules:
                for submodule in submodules:
                    yield submodule, [], node.lineno
                rest = [name for name in names if f"{base}.{name}" not in MODULES]
                if rest:
                    yield base, rest, node.lineno
            else:
                yield base, names, node.lineno


def project_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for module, path in MODULES.items():
        for imported, _, _ in imports_of(module, path):
            if imported in MODULES and imported != module:
                graph[module].add(imported)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that starts and ends at the same module, or None."""
    visiting: list[str] = []
    state: dict[str, str] = {}

    def visit(module: str) -> list[str] | None:
        state[module] = "visiting"
        visiting.append(module)
        for imported in sorted(graph[module]):
            if state.get(imported) == "visiting":
                return [*visiting[visiting.index(imported) :], imported]
            if imported not in state:
                cycle = visit(imported)
                if cycle:
                    return cycle
        visiting.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def test_no_import_cycle_among_the_project_modules():
    graph = project_graph()
    # The one-way street: user-facing writes -> tasks -> worker-side bodies.
    assert "services.tasks" in graph["services.actions"]
    assert {"services.lifecycle", "services.reconcile"} <= graph["services.tasks"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_another_modules_private_names():
    offences = []
    for module, path in MODULES.items():
        for imported, names, line in imports_of(module, path):
            if imported not in MODULES or imported == module:
                continue
            offences += [f"{path.relative_to(ROOT)}:{line} {imported}.{name}" for name in names if name.startswith("_")]
    assert offences == []


@pytest.mark.parametrize(
    ("importer", "forbidden"),
    [
        # The gateway and the modules it shares with the console load neither Django nor aiohttp's peers.
        ("services.contract", ("django", "aiohttp", "gateway", "celery")),
        ("services.choices", ("django", "aiohttp", "gateway", "celery")),
        ("common.env", ("django", "celery")),
        ("gateway.app", ("django", "celery", "console")),
        ("gateway.server", ("django", "celery", "console")),
        ("gateway.routing", ("django", "celery", "console")),
        ("gateway.store", ("django", "celery", "console")),
        ("gateway.keeper", ("django", "celery", "console")),
        ("gateway.config", ("django", "celery", "console")),
        ("services.models", ("gateway",)),
    ],
)
def test_shared_modules_stay_free_of_the_other_sides_frameworks(importer, forbidden):
    """Follows the project's own imports transitively from `importer`."""
    graph = project_graph()
    seen, stack, external = set(), [importer], set()
    while stack:
        module = stack.pop()
        if module in seen:
            continue
        seen.add(module)
        for imported, _, _ in imports_of(module, MODULES[module]):
            if imported in MODULES:
                stack.append(imported)
            else:
                external.add(imported)
        stack.extend(graph[module])
    reached = sorted(name for name in external | seen if any(name == f or name.startswith(f + ".") for f in forbidden))
    assert reached == [], f"{importer} reaches {reached}"


def status_writes_in(source: str) -> list[tuple[int, str]]:
    """(line, code) of every write of a service's status in Python source."""
    writes = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Attribute) and target.attr == "status":
                    if "service" in ast.unparse(target.value).lower():
                        writes.append((node.lineno, f"{ast.unparse(target)} = …"))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update":
            receiver = ast.unparse(node.func.value)
            if receiver.startswith("Service.objects") and any(keyword.arg == "status" for keyword in node.keywords):
                writes.append((node.lineno, f"{receiver}.update(status=…)"))
    return writes


def test_the_status_write_finder_finds_writes():
    source = (
        "Service.objects.filter(id=1, status='running').update(status='alarm')\n"
        "service.status = 'stopped'\n"
        "Instance.objects.filter(id=1).update(state='running')\n"
        "token.status = 'x'\n"
    )
    assert sorted(line for line, _ in status_writes_in(source)) == [1, 2]


def test_only_the_transitions_module_writes_a_service_status():
    """Service.status changes through services.transitions.service_transition
    alone: no `Service.objects….update(status=…)`, no `service.status = …`, elsewhere."""
    offences = [
        f"{path.relative_to(ROOT)}:{line} {code}"
        for module, path in MODULES.items()
        if module != "services.transitions"
        for line, code in status_writes_in(path.read_text())
    ]
    assert offences == []
