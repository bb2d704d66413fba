"""The house's shape, checked: imports flow one way (faces → the service core → retrieval and
finetune), no import is tucked into a function to dodge a cycle, and the README's layout table
names every room that exists and nothing that does not (docs/architecture.md explains the why).

Read from the source with `ast`, so a new import that breaks the direction fails here, not in
review."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.services import REPO

PACKAGES = ("bot", "retrieval", "finetune")
# The faces: what employees, platforms and operators talk to. Only the server and the CLI put
# them together; nothing in the core may reach up into one.
FACES = ("bot.channels", "bot.console", "bot.server", "bot.cli")
ASSEMBLERS = ("bot.server", "bot.cli")


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int
    in_function: bool


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def our_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if "versions" not in path.parts:  # Alembic revisions are loaded by Alembic, by path
                modules[module_name(path)] = path
    return modules


def imports_of(name: str, path: Path, known: set[str]) -> Iterator[Import]:
    """Every import of one of our modules, resolved to the module (not the name) it loads. An
    import inside a function counts as hidden unless its line says `# lazy: <why>` (a heavy
    third-party library behind it that most processes never need)."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    tree = ast.parse(source)
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    nested = {id(n) for f in functions for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{a.name}" for a in node.names]
            targets = [t if t in known else node.module for t in targets]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                declared_lazy = "# lazy:" in lines[node.lineno - 1]
                yield Import(name, target, node.lineno, id(node) in nested and not declared_lazy)


def is_under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def face_of(module: str) -> str | None:
    return next((f for f in FACES if is_under(module, f)), None)


@pytest.fixture(scope="module")
def graph() -> list[Import]:
    modules = our_modules()
    return [i for name, path in modules.items() for i in imports_of(name, path, set(modules))]


def test_retrieval_and_finetune_never_import_bot_nor_each_other(graph: list[Import]) -> None:
    wrong = [
        i
        for i in graph
        if (is_under(i.importer, "retrieval") and not is_under(i.imported, "retrieval"))
        or (is_under(i.importer, "finetune") and not is_under(i.imported, "finetune"))
    ]
    assert not wrong, wrong


def test_faces_are_imported_only_by_the_server_and_the_cli(graph: list[Import]) -> None:
    wrong = []
    for i in graph:
        face = face_of(i.imported)
        if face is None or face_of(i.importer) == face:
            continue  # not a face, or within one face's own folder (slack's channel → blocks)
        if not any(is_under(i.importer, a) for a in ASSEMBLERS):
            wrong.append(i)
    assert not wrong, "\n".join(f"{i.importer}:{i.line} imports the face {i.imported}" for i in wrong)


def test_no_import_of_ours_is_hidden_in_a_function(graph: list[Import]) -> None:
    """A function-local import of our own code is how a cycle gets dodged instead of fixed; the
    only ones allowed say `# lazy:` and why (a start-up cost, not a design question)."""
    hidden = [i for i in graph if i.in_function]
    assert not hidden, "\n".join(f"{i.importer}:{i.line} imports {i.imported} inside a function" for i in hidden)


def test_the_modules_import_each_other_without_a_cycle(graph: list[Import]) -> None:
    edges: dict[str, set[str]] = {}
    for i in graph:
        edges.setdefault(i.importer, set()).add(i.imported)
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle.extend(path[path.index(nxt) :] + [node, nxt] if nxt in path else [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, [*path, node]):
                return True
        state[node] = 2
        return False

    for start in sorted(edges):
        if state.get(start) is None and visit(start, []):
            break
    assert not cycle, " → ".join(cycle)


def test_the_readme_layout_table_names_every_room() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`((?:bot|retrieval|finetune)/[\w/]*(?:\.py)?)`", table))
    rooms = {f"bot/{p.name}/" for p in (REPO / "bot").iterdir() if (p / "__init__.py").is_file()}
    rooms |= {f"bot/{p.name}" for p in (REPO / "bot").glob("*.py") if p.name != "__init__.py"}
    missing = sorted(rooms - named)
    assert not missing, f"the README's layout table does not name {missing}"
    stale = sorted(n for n in named if not (REPO / n).exists())
    assert not stale, f"the README's layout table names what does not exist: {stale}"
