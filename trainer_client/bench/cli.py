"""`pcm-bench`: the measured claims of DESIGN.md section 8. Each subcommand prints a table and,
with --json PATH, writes its figures as JSON."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
console = Console()

JsonPath = Annotated[Path | None, typer.Option("--json", help="write the figures here as JSON")]


@app.callback()
def main() -> None:
    """Benchmarks of PCM's measured claims; ratios are measured side by side in one run."""


def _machine() -> dict[str, Any]:
    import os

    return {"python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count()}


def _write(path: Path | None, payload: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2) + "\n")
        console.print(f"wrote {path}")


@app.command()
def core(
    json_path: JsonPath = None,
    repeats: Annotated[int, typer.Option(min=10, help="timed selects per shape")] = 200,
) -> None:
    """Core select latency on 256x64x56 and 512x64x56 (trajectories x chunks x D)."""
    from trainer_client.bench.core import run_core_bench

    rows = run_core_bench(repeats=repeats)
    table = Table(title="pcm-bench core: select latency (ms)")
    for col in ("shape", "median_ms", "p99_ms", "embedded median", "embedded p99"):
        table.add_column(col, justify="right")
    for r in rows:
        s = r["shape"]
        table.add_row(f"{s['trajectories']}x{s['chunks']}x{s['feature_dim']}",
                      f"{r['median_ms']:.2f}", f"{r['p99_ms']:.2f}",
                      f"{r['embedded_median_ms']:.2f}", f"{r['embedded_p99_ms']:.2f}")
    console.print(table)
    _write(json_path, {"benchmark": "core", "machine": _machine(), "results": rows})


if __name__ == "__main__":
    app()
