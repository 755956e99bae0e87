"""The layers import downwards only (docs/design.md, "Layers").

contract (pcm_contract) <- core (selector_service.core) <- service (selector_service) and
trainer (trainer_client). Read from the sources (ast), so an import inside a function counts:
- pcm_contract imports neither selector_service nor trainer_client;
- selector_service.core imports no other part of selector_service, nor trainer_client;
- selector_service never imports trainer_client;
- no trainer_client module imports the service, its stores or its servers
  (selector_service.service, .store, .http_api, .grpc_api), except the embedded client, which
  runs the service in-process and imports it when it is created (not at module import).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVER_SIDE = ("selector_service.service", "selector_service.store", "selector_service.http_api",
               "selector_service.grpc_api", "selector_service.server",
               "selector_service.workers")
EMBEDDED = "trainer_client.clients.embedded"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, bool]]:
    return _imports_of(path.read_text(encoding="utf-8"), _module_name(path),
                       path.name == "__init__.py")


def _imports_of(source: str, module: str, is_package: bool) -> list[tuple[str, bool]]:
    """(imported module, run when the module is imported?) for every import in the source,
    relative ones resolved. Imports inside a function or under `if TYPE_CHECKING:` are not run
    at module import."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    out: list[tuple[str, bool]] = []

    def visit(node: ast.AST, eager: bool) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            eager = False
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for stmt in node.body:
                visit(stmt, False)
            for stmt in node.orelse:
                visit(stmt, eager)
            return
        if isinstance(node, ast.Import):
            out.extend((alias.name, eager) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], base]).strip(".")
            out.append((base, eager))
            out.extend((f"{base}.{alias.name}", eager) for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child, eager)

    visit(ast.parse(source), True)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _sources(package: str) -> list[Path]:
    return sorted(p for p in (REPO_ROOT / package).rglob("*.py") if "gen" not in
                  p.relative_to(REPO_ROOT).parts)


def _hits(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_contract_imports_neither_side() -> None:
    bad = [(_module_name(p), m) for p in _sources("pcm_contract") for m, _ in _imports(p)
           if _hits(m, ("selector_service", "trainer_client"))]
    assert not bad, f"pcm_contract must import neither side: {bad}"


def test_the_core_imports_only_the_contract() -> None:
    bad = [(_module_name(p), m) for p in _sources("selector_service/core") for m, _ in _imports(p)
           if _hits(m, ("selector_service", "trainer_client"))
           and not _hits(m, ("selector_service.core",))]
    assert not bad, f"selector_service.core imports above itself: {bad}"


def test_the_service_never_imports_the_trainer() -> None:
    bad = [(_module_name(p), m) for p in _sources("selector_service") for m, _ in _imports(p)
           if _hits(m, ("trainer_client",))]
    assert not bad, f"selector_service imports the trainer: {bad}"


def test_the_trainer_imports_the_contract_and_the_core_not_the_service() -> None:
    bad, embedded = [], []
    for path in _sources("trainer_client"):
        name = _module_name(path)
        for module, top in _imports(path):
            if not _hits(module, SERVER_SIDE):
                continue
            if name == EMBEDDED:
                embedded.append((module, top))
            else:
                bad.append((name, module))
    assert not bad, (f"trainer modules import the service, a store or a server: {bad}; use "
                     "pcm_contract (models, errors, codec) and selector_service.core")
    assert embedded, "the embedded client runs the service in-process: it should import it"
    eager = [m for m, top in embedded if top]
    assert not eager, f"{EMBEDDED} imports {eager} at module level; import when created"


@pytest.mark.parametrize("source, expected", [
    ("from selector_service.store import MemoryStore\n", ("selector_service.store", True)),
    ("def f():\n    import selector_service.service\n", ("selector_service.service", False)),
    ("if TYPE_CHECKING:\n    from ..service import X\n", ("selector_service.service", False)),
    ("try:\n    from . import store\nexcept ImportError:\n    pass\n",
     ("selector_service.store", True)),
])
def test_the_walk_sees_every_import(source: str, expected: tuple[str, bool]) -> None:
    module = "selector_service.core.probe" if ".." in source else "selector_service.probe"
    assert expected in _imports_of(source, module, is_package=False)
