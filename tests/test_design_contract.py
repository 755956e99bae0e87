"""docs/design.md names the public contract, and the code has exactly that contract.

The tables of docs/design.md marked `<!-- contract:NAME -->` are parsed here (the first cell of
every row holds one backticked name) and compared, in both directions, with the real objects:

- `commands`: `[project.scripts]` of pyproject.toml and each typer app's registered subcommands;
- `settings`: the `PCM_*` variables of `selector_service.settings.Settings` (and their defaults);
- `routes`: the HTTP routes of the app that `create_app` builds (its OpenAPI paths, plus the
  OpenAPI document itself);
- `grpc-methods`, `grpc-messages`: the `pcm.v1` file descriptor generated from the proto;
- `errors`: the `PCMError` types with their HTTP status and gRPC code;
- `redis-keys`, `lua`: `RunKeys` and the scripts of `selector_service.store.lua`;
- `metrics`: every metric of `selector_service.metrics.Metrics` with its type and labels.

So a name documented but missing from the code, or added to the code but not documented, fails.
"""

from __future__ import annotations

import importlib
import inspect
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer

REPO_ROOT = Path(__file__).resolve().parents[1]
DESIGN = REPO_ROOT / "docs" / "design.md"
MARKER = re.compile(r"^<!-- contract:([a-z-]+) -->$")
TABLES = ("commands", "settings", "routes", "grpc-methods", "grpc-messages", "errors",
          "redis-keys", "lua", "metrics")
# Placeholders of the per-task and per-request Redis keys, by the RunKeys method's parameter.
KEY_PLACEHOLDERS = {"task_id": "TASK", "request_id": "REQUEST_ID"}


# ---- the doc side -----------------------------------------------------------------------------


def _cells(line: str) -> list[str]:
    """The cells of a markdown table row (`\\|` inside a cell is not a separator)."""
    inner = line.strip().removeprefix("|").removesuffix("|")
    return [c.strip() for c in re.split(r"(?<!\\)\|", inner)]


def names(cell: str) -> list[str]:
    """The backticked names in a cell, in order."""
    return re.findall(r"`([^`]+)`", cell)


def contract_tables(text: str) -> dict[str, list[list[str]]]:
    """NAME -> the rows (cells) of the table after `<!-- contract:NAME -->`, header dropped."""
    tables: dict[str, list[list[str]]] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = MARKER.match(line.strip())
        if match is None:
            continue
        name = match.group(1)
        assert name not in tables, f"docs/design.md: two tables marked contract:{name}"
        rows = []
        for row in lines[i + 1:]:
            if not row.startswith("|"):
                break
            rows.append(_cells(row))
        assert len(rows) >= 2 and set(rows[1][0]) <= set("-: "), (
            f"docs/design.md: contract:{name} must be followed by a table (header, separator)")
        tables[name] = rows[2:]
    return tables


@pytest.fixture(scope="module")
def tables() -> dict[str, list[list[str]]]:
    return contract_tables(DESIGN.read_text(encoding="utf-8"))


def first_name(row: list[str], table: str) -> str:
    found = names(row[0])
    assert len(found) == 1, f"contract:{table}: the first cell {row[0]!r} needs one `name`"
    return found[0]


def doc_names(tables: dict[str, list[list[str]]], table: str) -> list[str]:
    out = [first_name(row, table) for row in tables[table]]
    duplicates = sorted({n for n in out if out.count(n) > 1})
    assert not duplicates, f"contract:{table} names these twice: {duplicates}"
    return out


def assert_same(documented: set[Any], in_code: set[Any], what: str) -> None:
    missing_in_code = sorted(documented - in_code, key=str)
    undocumented = sorted(in_code - documented, key=str)
    assert not missing_in_code and not undocumented, (
        f"{what}: named in docs/design.md but not in the code: {missing_in_code}; "
        f"in the code but not in docs/design.md: {undocumented}")


def test_every_contract_table_is_there(tables: dict[str, list[list[str]]]) -> None:
    assert set(tables) == set(TABLES)
    for name, rows in tables.items():
        assert rows, f"contract:{name} has no rows"


# ---- commands ---------------------------------------------------------------------------------


def _subcommands(entry_point: str) -> set[str]:
    module, _, attr = entry_point.partition(":")
    app = getattr(importlib.import_module(module), attr)
    assert isinstance(app, typer.Typer), f"{entry_point} is not a typer app"
    commands = getattr(typer.main.get_command(app), "commands", None)
    assert isinstance(commands, dict), f"{entry_point} has no subcommands"
    return set(commands)


def test_console_commands(tables: dict[str, list[list[str]]]) -> None:
    documented = set()
    for name in doc_names(tables, "commands"):
        words = name.split()
        assert len(words) == 2, f"contract:commands: {name!r} is not `SCRIPT SUBCOMMAND`"
        documented.add((words[0], words[1]))
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    scripts: dict[str, str] = pyproject["project"]["scripts"]
    assert_same({script for script, _ in documented}, set(scripts), "console scripts")
    in_code = {(script, sub) for script, entry in scripts.items()
               for sub in _subcommands(entry)}
    assert_same(documented, in_code, "subcommands")


# ---- settings ---------------------------------------------------------------------------------


def test_selector_settings(tables: dict[str, list[list[str]]]) -> None:
    from selector_service.settings import Settings

    fields = {f"PCM_{name.upper()}": info for name, info in Settings.model_fields.items()}
    rows = {first_name(row, "settings"): row for row in tables["settings"]}
    doc_names(tables, "settings")
    assert_same(set(rows), set(fields), "PCM_* settings")
    for variable, row in rows.items():
        default, cell = fields[variable].default, row[1]
        shown = names(cell)
        if isinstance(default, bool):
            assert cell == str(default).lower(), f"{variable}: default {default}, doc {cell!r}"
        elif isinstance(default, int | float):
            assert float(cell.replace(",", "")) == default, (
                f"{variable}: default {default}, doc {cell!r}")
        elif isinstance(default, str):
            assert shown == [default], f"{variable}: default {default!r}, doc {cell!r}"


# ---- HTTP -------------------------------------------------------------------------------------


def test_http_routes(tables: dict[str, list[list[str]]]) -> None:
    from selector_service.http_api import create_app
    from selector_service.service import SelectorService
    from selector_service.settings import Settings
    from selector_service.store import MemoryStore

    documented = set()
    for name in doc_names(tables, "routes"):
        method, _, path = name.partition(" ")
        assert method.isupper() and path.startswith("/"), (
            f"contract:routes: {name!r} is not `METHOD /path`")
        documented.add((method, path))
    app = create_app(SelectorService(MemoryStore()), Settings(docs_ui=False))
    in_code = {(method.upper(), path) for path, operations in app.openapi()["paths"].items()
               for method in operations}
    assert app.openapi_url is not None
    in_code.add(("GET", app.openapi_url))
    assert_same(documented, in_code, "HTTP routes")


# ---- gRPC -------------------------------------------------------------------------------------


def test_grpc_methods(tables: dict[str, list[list[str]]]) -> None:
    from pcm_contract.gen.pcm.v1 import selector_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["ChunkSelector"]
    routes = set(doc_names(tables, "routes"))
    documented = set()
    for row in tables["grpc-methods"]:
        method = first_name(row, "grpc-methods")
        request, response = names(row[1]), names(row[2])
        assert len(request) == len(response) == 1, f"contract:grpc-methods: {row}"
        documented.add((method, request[0], response[0]))
        for route in names(row[3]):
            assert route in routes, f"{method}: HTTP equivalent {route!r} is not a route"
    doc_names(tables, "grpc-methods")
    in_code = {(m.name, m.input_type.name, m.output_type.name) for m in service.methods}
    assert_same(documented, in_code, "pcm.v1.ChunkSelector methods (method, request, answer)")


def test_grpc_messages(tables: dict[str, list[list[str]]]) -> None:
    from pcm_contract.gen.pcm.v1 import selector_pb2 as pb

    messages = pb.DESCRIPTOR.message_types_by_name
    documented = {first_name(row, "grpc-messages"): names(row[1])
                  for row in tables["grpc-messages"]}
    doc_names(tables, "grpc-messages")
    assert_same(set(documented), set(messages), "pcm.v1 messages")
    for message, fields in documented.items():
        assert_same(set(fields), {f.name for f in messages[message].fields},
                    f"fields of pcm.v1.{message}")


# ---- errors -----------------------------------------------------------------------------------


def test_error_types(tables: dict[str, list[list[str]]]) -> None:
    from pcm_contract import errors

    documented = set()
    for row in tables["errors"]:
        codes = names(row[2])
        assert len(codes) == 1, f"contract:errors: {row}"
        documented.add((first_name(row, "errors"), int(row[1]), codes[0]))
    doc_names(tables, "errors")
    in_code = {(cls.__name__, cls.http_status, cls.grpc_code)
               for cls in vars(errors).values()
               if inspect.isclass(cls) and issubclass(cls, errors.PCMError)}
    assert_same(documented, in_code, "error types (type, HTTP status, gRPC code)")


# ---- Redis ------------------------------------------------------------------------------------


def test_redis_keys(tables: dict[str, list[list[str]]]) -> None:
    from selector_service.store.redis_store import RunKeys

    keys = RunKeys("RUN")
    in_code = {value for name, value in vars(keys).items()
               if isinstance(value, str) and name != "prefix"}
    for name, method in inspect.getmembers(RunKeys, inspect.isfunction):
        if name.startswith("_"):
            continue
        params = list(inspect.signature(method).parameters)[1:]
        unknown = [p for p in params if p not in KEY_PLACEHOLDERS]
        assert not unknown, f"RunKeys.{name}: add a placeholder for {unknown} to this test"
        in_code.add(getattr(keys, name)(*(KEY_PLACEHOLDERS[p] for p in params)))
    assert_same(set(doc_names(tables, "redis-keys")), in_code, "Redis keys")


def test_lua_scripts(tables: dict[str, list[list[str]]]) -> None:
    from selector_service.store import lua

    in_code = {name for name, value in vars(lua).items()
               if isinstance(value, str) and name.isupper() and not name.startswith("_")}
    assert_same(set(doc_names(tables, "lua")), in_code, "Lua scripts")


# ---- metrics ----------------------------------------------------------------------------------


def test_prometheus_metrics(tables: dict[str, list[list[str]]]) -> None:
    from prometheus_client.metrics import MetricWrapperBase

    from selector_service.metrics import Metrics

    documented = {}
    for row in tables["metrics"]:
        documented[first_name(row, "metrics")] = (row[1], frozenset(names(row[2])))
    doc_names(tables, "metrics")
    metrics = Metrics()
    in_code = {}
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase):
            family = next(iter(metric.describe()))
            name = family.name + ("_total" if family.type == "counter" else "")
            in_code[name] = (family.type, frozenset(metric._labelnames))
    # every metric on the registry is one of the attributes above
    registered = {family.name for family in metrics.registry.collect()}
    assert registered == {m.removesuffix("_total") for m in in_code}, (
        f"metrics registered without a Metrics attribute: {registered}")
    assert_same(set(documented), set(in_code), "Prometheus metrics")
    for name, (kind, labels) in documented.items():
        assert (kind, labels) == in_code[name], (
            f"{name}: docs/design.md says {kind} {sorted(labels)}, the code has "
            f"{in_code[name][0]} {sorted(in_code[name][1])}")
