"""The packages import downwards only (docs/design.md, "Layers"), checked by the import-linter
contracts of pyproject.toml ([tool.importlinter]), which this test runs:

- layers: pcm_bench (benchmarks, research instruments) above trainer_client above
  selector_service above pcm_contract: pcm_contract imports neither side, selector_service never
  imports trainer_client, and the product never imports pcm_bench;
- selector_service.core (the algorithm) imports no other part of selector_service;
- trainer_client imports of selector_service its core only, except the embedded client, which
  runs the service in-process;
- no import cycles between the modules of a package, at any depth.

Imports inside functions count. What the contracts cannot say is checked here from the sources
(ast): the embedded client imports the service when it is created, not at module import.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
IMPORTLINTER = CONFIG["tool"]["importlinter"]
PACKAGES = tuple(IMPORTLINTER["root_packages"])
CONTRACTS = {c["id"]: c["name"] for c in IMPORTLINTER["contracts"]}
SERVER_SIDE = ("selector_service.service", "selector_service.store", "selector_service.http_api",
               "selector_service.grpc_api", "selector_service.server",
               "selector_service.workers")
EMBEDDED = "trainer_client.clients.embedded"


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` over the packages under `root` with the pyproject.toml there, no cache
    written; one contract per line (wide columns)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"COLUMNS": "300"}
    return subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()",
         "--no-cache", "--no-logo"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300)


def verdicts(output: str) -> dict[str, str]:
    """Contract id -> KEPT or BROKEN, from lint-imports' summary lines."""
    out = {}
    for line in output.splitlines():
        for cid, name in CONTRACTS.items():
            if line.startswith(f"{name} "):
                out[cid] = line[len(name) + 1:].split()[0]
    return out


def test_the_import_contracts_are_kept() -> None:
    done = lint_imports(REPO_ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert verdicts(done.stdout) == dict.fromkeys(CONTRACTS, "KEPT"), done.stdout


def test_the_contracts_cover_every_package() -> None:
    """Every package that pip installs is a root package of the contracts, and each is in the
    layers and in the cycle check."""
    shipped = {p.rstrip("*") for p in CONFIG["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert set(PACKAGES) == shipped
    by_id = {c["id"]: c for c in IMPORTLINTER["contracts"]}
    assert set(by_id["layers"]["layers"]) == shipped
    assert set(by_id["no-cycles"]["ancestors"]) == shipped


# (file, an import added inside a function, the contracts it breaks)
VIOLATIONS = {
    # ... and through it the trainer, which imports the contract, reaches the core indirectly
    "contract-imports-core": ("pcm_contract/models.py", "import selector_service.core",
                              {"layers", "trainer-uses-the-core"}),
    "service-imports-trainer": ("selector_service/service.py", "import trainer_client.grpo",
                                {"layers"}),
    "trainer-imports-bench": ("trainer_client/train/demo.py", "import pcm_bench.grad",
                              {"layers", "product-without-bench"}),
    "core-imports-store": ("selector_service/core/state.py", "import selector_service.store",
                           {"core-imports-the-contract-only", "no-cycles"}),
    "trainer-imports-server": ("trainer_client/rollout.py", "import selector_service.server",
                               {"trainer-uses-the-core"}),
    "server-imports-workers": ("selector_service/server.py", "import selector_service.workers",
                               {"no-cycles"}),
}


@pytest.mark.parametrize("case", sorted(VIOLATIONS))
def test_a_broken_contract_fails_the_check(case: str, tmp_path: Path) -> None:
    """A copy of the packages with one forbidden import (inside a function: those count too)
    fails lint-imports, on exactly the contracts that import breaks."""
    path, statement, broken = VIOLATIONS[case]
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in PACKAGES:
        shutil.copytree(REPO_ROOT / package, tmp_path / package, ignore=ignore)
    shutil.copy2(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with (tmp_path / path).open("a", encoding="utf-8") as f:
        f.write(f"\n\ndef _forbidden() -> None:\n    {statement}\n")
    done = lint_imports(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    expected = {cid: "BROKEN" if cid in broken else "KEPT" for cid in CONTRACTS}
    assert verdicts(done.stdout) == expected, done.stdout


# -- what the contracts cannot express: when the embedded client imports the service ---------


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


def _hits(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_embedded_client_imports_the_service_when_created() -> None:
    """The contract lets trainer_client.clients.embedded import the service; it does so when a
    client is created, so that importing trainer_client loads no server-side module."""
    path = REPO_ROOT / Path(*EMBEDDED.split(".")).with_suffix(".py")
    embedded = [(m, top) for m, top in _imports(path) if _hits(m, SERVER_SIDE)]
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
