"""`pcm-bench`: the measured claims (docs/design.md, "Measured claims"). Each subcommand prints
a table and, with --json PATH, writes its figures as JSON."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from pcm_bench.core import CoreConfig, run_core_bench
from pcm_bench.estimator import EstimatorConfig
from pcm_bench.grad import GradConfig, run_grad_bench
from pcm_bench.learning import LearningConfig, run_learning_bench
from pcm_bench.learning import print_table as print_learning
from pcm_bench.replay import ReplayConfig, run_replay_bench, score_runs
from pcm_bench.rollout import RolloutBenchConfig, run_rollout_bench
from pcm_bench.selector import SelectorBenchConfig, run_selector_bench
from pcm_bench.study import StudyError
from pcm_bench.timemodel import TimeModelConfig, run_time_model_bench
from trainer_client.cli_options import Body, config_command
from trainer_client.device import SetupError
from trainer_client.machine import machine

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
console = Console()

C = TypeVar("C")


@app.callback()
def main() -> None:
    """Benchmarks of PCM's measured claims; ratios are measured side by side in one run."""


@contextlib.contextmanager
def _run_errors() -> Iterator[None]:
    """A bad --device / --precision (SetupError) or a study that cannot run as asked
    (StudyError) ends the command with its one line and exit status 2."""
    try:
        yield
    except (SetupError, StudyError) as exc:
        _error(f"error: {exc}")
        raise typer.Exit(2) from None


def _error(line: str) -> None:
    console.print(line, style="red", markup=False, highlight=False)


def _config_command(name: str, cls: type[C]) -> Callable[[Body[C]], Body[C]]:
    """Register `body(config)` as the command `name` whose flags are `cls`'s fields
    (`trainer_client.cli_options.config_command`); a bad value exits 2 with the config's
    message, which says how to fix it."""
    return config_command(app, name, cls, report=_error, run_errors=_run_errors)


def _write(path: Path | None, payload: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2) + "\n")
        console.print(f"wrote {path}")


@_config_command("core", CoreConfig)
def core(config: CoreConfig) -> None:
    """Core select latency on 256x64x56 and 512x64x56 (trajectories x chunks x D)."""
    rows = run_core_bench(config)
    table = Table(title="pcm-bench core: select latency (ms)")
    for col in ("shape", "median_ms", "p99_ms", "embedded median", "embedded p99"):
        table.add_column(col, justify="right")
    for r in rows:
        s = r["shape"]
        table.add_row(f"{s['trajectories']}x{s['chunks']}x{s['feature_dim']}",
                      f"{r['median_ms']:.2f}", f"{r['p99_ms']:.2f}",
                      f"{r['embedded_median_ms']:.2f}", f"{r['embedded_p99_ms']:.2f}")
    console.print(table)
    _write(config.json_path, {"benchmark": "core", "machine": machine(), "results": rows})


@_config_command("selector", SelectorBenchConfig)
def selector(config: SelectorBenchConfig) -> None:
    """Select latency p50/p99, throughput and server CPU per select over gRPC and HTTP, memory
    and Redis stores, 1/4/16 concurrent clients, small and full-LIBERO batch shapes, and the
    server CPU per select over the embedded select's of the same batch, measured in the same
    run. Starts its own redis-server and selector processes on free 127.0.0.1 ports."""
    from pcm_bench.selector import TABLE_COLUMNS, format_rows

    table = Table(title="pcm-bench selector")
    for col in TABLE_COLUMNS:
        table.add_column(col, justify="right")
    result = run_selector_bench(
        config, progress=lambda row: console.print(" ".join(format_rows([row])[0])))
    for cells in format_rows(result["rows"]):
        table.add_row(*cells)
    console.print(table)
    _write(config.json_path, {**result, "machine": machine()})


@_config_command("grad", GradConfig)
def grad(config: GradConfig) -> None:
    """Actor-update time and peak activation memory of full GRPO vs PCM on the same batch,
    side by side, micro-batched the same way (per trajectory, and fixed-size rows) and, with
    --pack, GRPO at each of those vs PCM packed under a row cap of --pack-memory-ratio of
    GRPO's micro-batch; on CUDA also the allocator's peak memory per update."""
    from pcm_bench.grad import print_table

    result = run_grad_bench(config, log=console.print)
    # the table is wide: do not fold it into 80 columns when the output is not a terminal
    print_table(result, console if console.is_terminal else Console(width=220))
    _write(config.json_path, {**result, "machine": machine()})


@_config_command("learning", LearningConfig)
def learning(config: LearningConfig) -> None:
    """Paired learning comparison from one SFT checkpoint: held-out gain per algorithm with 95%
    intervals, success vs step and vs wall-clock, the time split. Resumable."""
    result = run_learning_bench(config)
    print_learning(result)
    if config.json_path is not None:
        config.json_path.parent.mkdir(parents=True, exist_ok=True)
        config.json_path.write_text(json.dumps(result, indent=2) + "\n")


@_config_command("rollout", RolloutBenchConfig)
def rollout(config: RolloutBenchConfig) -> None:
    """Rollout throughput of the env backends side by side: worker processes holding several
    envs each (the default) vs gymnasium's AsyncVectorEnv (a process per env), the same GRPO
    step's rollouts from the same policy, calls alternating."""
    result = run_rollout_bench(config, log=console.print)
    table = Table(title=f"pcm-bench rollout: {result['env']}, "
                        f"{config.init_states}x{config.group_size} rollouts per call")
    for col in ("backend", "wall s (median)", "env steps/s", "vs first", "processes",
                "RSS MiB"):
        table.add_column(col, justify="right")
    for r in result["rows"]:
        table.add_row(r["backend"], f"{r['wall_s_median']:.2f}", f"{r['steps_per_s_median']:.0f}",
                      f"{r['wall_vs_first']:.2f}x", str(r["processes"]), f"{r['rss_mib']:.0f}")
    console.print(table)
    _write(config.json_path, {**result, "machine": machine()})


@_config_command("timemodel", TimeModelConfig)
def timemodel(config: TimeModelConfig) -> None:
    """The learning study's time model (rollout s per env step, update s per kept chunk), fitted
    to two short runs (grpo; random at keep 0.2). Run it alone on the machine."""
    result = run_time_model_bench(config, log=console.print)
    m, fit = result["model"], result["fit"]
    console.print(f"rollout {m['c_env'] * 1e3:.3f} ms per env step + {m['c_rollout0']:.2f} s; "
                  f"update {m['c_row'] * 1e3:.2f} ms per kept chunk + {m['c_update0']:.2f} s "
                  f"(relative rmse per step {fit['step_rel_rmse']:.3f}; load average "
                  f"{result['machine']['loadavg_before'][0]:.2f} before, "
                  f"{result['machine']['loadavg_after'][0]:.2f} after)")
    _write(config.json_path, result)


@_config_command("estimator", EstimatorConfig)
def estimator(config: EstimatorConfig) -> None:
    """Where the learning signal is per phase, and how well each chunk selection and loss
    weighting (grpo, random, pcm action/signal x mean/ht, an oracle) aligns with the expected
    gradient at equal budget, from exact per-chunk gradients. Rollouts and gradients are cached
    in --out: re-runs with other selection settings take seconds."""
    from pcm_bench.estimator import plot_estimator, run_estimator_bench

    result = run_estimator_bench(config, log=console.print)
    env, batches, segmenter = config.env, config.batches, config.segmenter
    keep_fraction, json_path, out = config.selection.keep_fraction, config.json_path, config.out
    table = Table(title=f"pcm-bench estimator: {env}, {batches} batches, "
                        f"{result['informative_chunks']} informative chunks, {segmenter} phases")
    for col in ("phase", "chunks", "energy", "signal", "share"):
        table.add_column(col, justify="right")
    for p in result["phases"]:
        table.add_row(str(p["phase"]), str(p["chunks"]), f"{p['energy']:.4g}",
                      f"{p['signal']:.4g}", f"{p['share']:.3f}")
    console.print(table)
    table = Table(title=f"estimators at keep {keep_fraction} (default: {result['default']})")
    for col in ("estimator", "kept", "alignment", "+-se", "- grpo (paired)", "- random",
                "half-split avg", "cosine", "rel. variance", "max weight", "net adv.",
                "keep weights"):
        table.add_column(col, justify="right")
    for r in result["estimators"]:
        w = result["keep_weights"][r["name"]]
        table.add_row(r["name"] + (" *" if r["variant"] else ""), f"{r['kept_fraction']:.2f}",
                      f"{r['alignment']:.3f}",
                      f"{r['alignment_se']:.3f}",
                      f"{r['alignment_vs_grpo']:+.3f} +-{r['alignment_vs_grpo_se']:.3f}",
                      f"{r['alignment_vs_random']:+.3f} +-{r['alignment_vs_random_se']:.3f}",
                      f"{r['alignment_avg']:.3f}", f"{r['cosine']:.3f}",
                      f"{r['relative_variance']:.2f}", f"{r['max_weight']:.1f}",
                      f"{r['net_advantage']:+.2f}",
                      " ".join(f"{x:.2f}" for x in w))
    console.print(table)
    console.print("* a tried variant")
    if (online := result["online"]) is not None:
        console.print(
            f"online ({online['estimator']}, from an empty state at this policy, "
            f"{online['orders']} batch orders): largest weight on phase "
            f"{online['signal_top_phase']} (most signal) after "
            + ", ".join(f"{n} batches {frac:.0%}" for n, frac in
                        zip(online["positions"], online["top_on_signal_phase"], strict=True)),
            markup=False, highlight=False)
    print_regime(result["regime"])
    png = plot_estimator(result, (json_path.with_suffix(".png") if json_path
                                  else out / "estimator.png"))
    console.print(f"wrote {png}")
    _write(json_path, {**result, "machine": machine()})


@_config_command("replay", ReplayConfig)
def replay(config: ReplayConfig) -> None:
    """What each selection's first updates do to the policy, per phase: the same training
    batches replayed through pcm-train rl's update for every algorithm, scored on held-out
    batches (the PPO surrogate's gain dJ and how far the policy moved, per phase) and by
    held-out success. Resumable."""
    if config.runs is not None:
        scored = score_runs(config, log=console.print)
        print_scored_runs(scored)
        _write(config.json_path, {**scored, "machine": machine()})
        return
    result = run_replay_bench(config, log=console.print)
    print_replay(result)
    _write(config.json_path, {**result, "machine": machine()})


def print_regime(reg: dict[str, Any]) -> None:
    """The estimator's regime: GRPO's noise scale, and the predicted efficiency of masking."""
    def scale(value: float | None) -> str:
        return f"{value:.0f}" if value is not None else "- (no signal measured)"

    console.print(f"regime: GRPO's gradient noise scale {scale(reg['noise_scale_rollouts'])} "
                  f"rollouts (batch {reg['rollouts_per_batch']}); per phase "
                  + ", ".join(f"{p['phase']}: {scale(p['noise_scale_rollouts'])}"
                              for p in reg["phases"]), markup=False, highlight=False)
    table = Table(title="predicted per-step efficiency of a masked update (share of GRPO's "
                        "progress per step, noise-scale model; Horvitz-Thompson weights)")
    for col in ("selection", "kept fraction", "predicted efficiency",
                "the rule's own prediction (sketches)"):
        table.add_column(col, justify="right")
    for r in reg["selections"]:
        kept = r["kept_fraction"]
        span = r.get("kept_fraction_range")
        table.add_row(r["selection"],
                      "-" if kept is None else f"{kept:.2f}"
                      + (f" ({span[0]:.2f}-{span[1]:.2f})" if span else ""),
                      "-" if r["efficiency"] is None else f"{r['efficiency']:.2f}",
                      f"{r['rule_efficiency_mean']:.2f}" if r.get("rule_efficiency_mean")
                      else "-")
    console.print(table)


def print_scored_runs(result: dict[str, Any]) -> None:
    table = Table(title=f"pcm-bench replay --runs: {result['task']}; each step checkpoint "
                        "against the start, on the evaluation batches (dJ, dL x 1e3)")
    for col in ("run", "step", "held-out", "dJ", "+-se", "dJ per phase", "dL", "+-se",
                "dL per phase", "move per phase", "keep weights so far",
                "keep rate vs random since the last checkpoint"):
        table.add_column(col, justify="right")
    for run in result["runs"]:
        for c in run["checkpoints"]:
            w, rate = c.get("keep_probs_mean"), c.get("keep_rate_window")
            table.add_row(Path(run["run"]).name, str(c["step"]),
                          _num(c["heldout"]),
                          f"{c['dJ'] * 1e3:+.2f}", f"{(c['dJ_se'] or 0) * 1e3:.2f}",
                          " ".join(f"{x * 1e3:+.2f}" for x in c["dJ_phase"]),
                          f"{c['dL'] * 1e3:+.2f}", f"{(c['dL_se'] or 0) * 1e3:.2f}",
                          " ".join(f"{x * 1e3:+.2f}" for x in c["dL_phase"]),
                          " ".join(f"{x:.3f}" for x in c["move_phase"]),
                          " ".join(f"{x:.2f}" for x in w) if w else "-",
                          " ".join(f"{x:.2f}" for x in rate) if rate else "-")
    # in a file: wide enough for the table
    Console(width=None if sys.stdout.isatty() else 220).print(table)
    shares = result["phases"]
    console.print("phases' share of the evaluation chunks: "
                  + " ".join(f"{x:.2f}" for x in shares["chunks"]))
    if result.get("start") is not None:
        print_behaviour(result)


def print_behaviour(result: dict[str, Any]) -> None:
    """--heldout-episodes: each checkpoint on its own held-out episodes."""
    table = Table(title="each checkpoint on its own held-out episodes: how far they get, and "
                        "its action means minus --init's, per env phase (approach / at the "
                        "object / grasped)")
    for col in ("run", "step", "success", "reach", "grasp", "grasp | reach",
                "success | grasp", "dropped | failed grasp", "chunks per phase", "arm rms",
                "gripper shift", "gripper flips", "same on the eval batches: gripper shift",
                "flips"):
        table.add_column(col, justify="right")

    def row(name: str, step: int, b: dict[str, Any]) -> None:
        f, own, ref = b["funnel"] or {}, b["shift_own"] or {}, b["shift_ref"] or {}
        table.add_row(name, str(step), f"{b['success']:.2f}",
                      *(_num(f.get(k)) for k in ("reached", "grasped", "grasp_given_reach",
                                                 "success_given_grasp",
                                                 "dropped_given_failed_grasp")),
                      *(_nums(own.get(k), fmt) for k, fmt in (
                          ("chunks", ".2f"), ("arm_rms", ".3f"), ("gripper_shift", "+.3f"),
                          ("flip", ".3f"))),
                      _nums(ref.get("gripper_shift"), "+.3f"), _nums(ref.get("flip"), ".3f"))

    row("start", 0, result["start"])
    for run in result["runs"]:
        for c in run["checkpoints"]:
            if "behaviour" in c:
                row(Path(run["run"]).name, c["step"], c["behaviour"])
    Console(width=None if sys.stdout.isatty() else 260).print(table)


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def _nums(xs: list[float | None] | None, fmt: str) -> str:
    return "-" if xs is None else " ".join(_num(x, fmt) for x in xs)


def print_replay(result: dict[str, Any]) -> None:
    summary = result["summary"]
    steps = sorted({t for a in summary.values() for t in a["at"]}, key=int)

    def pm(mean: Any, ci: Any, scale: float = 1e3) -> str:
        if mean is None:
            return "-"
        if ci is None:
            return f"{mean * scale:+.2f}"
        return f"{mean * scale:+.2f} [{ci[0] * scale:+.2f}, {ci[1] * scale:+.2f}]"

    table = Table(title=f"pcm-bench replay: {result['task']}; dJ x 1e3 on the evaluation "
                        "batches (mean over seeds, 95% CI)")
    table.add_column("algo")
    table.add_column("after")
    for col in ("dJ", "- random", "- grpo", "dJ per phase", "move per phase"):
        table.add_column(col, justify="right")
    for algo, a in summary.items():
        for t in steps:
            if t not in a["at"]:
                continue
            r = a["at"][t]
            table.add_row(algo, t, pm(r["dJ"], r["dJ_ci95"]),
                          pm(r["dJ_vs_random"], r["dJ_vs_random_ci95"]),
                          pm(r["dJ_vs_grpo"], r["dJ_vs_grpo_ci95"]),
                          " ".join(f"{x * 1e3:+.2f}" for x in r["dJ_phase"]),
                          " ".join(f"{x:.3f}" for x in r["move_phase"]))
    console.print(table)
    table = Table(title="held-out success before and after the updates; the budget per phase")
    for col in ("algo", "seeds", "start -> end", "change", "- random", "- grpo",
                "budget per phase", "grad norm"):
        table.add_column(col, justify="right")
    for algo, a in summary.items():
        share = a.get("budget_share")
        table.add_row(algo, str(len(a["seeds"])),
                      f"{a['heldout_start']:.2f} -> {a['heldout_end']:.2f}",
                      pm(a["heldout_change"], a["heldout_change_ci95"], 1),
                      pm(a["heldout_vs_random"], a["heldout_vs_random_ci95"], 1),
                      pm(a["heldout_vs_grpo"], a["heldout_vs_grpo_ci95"], 1),
                      " ".join(f"{x:.2f}" for x in share) if share else "-",
                      f"{a['grad_norm_median']:.1f}")
    console.print(table)
    if not result.get("complete", True):
        console.print("incomplete: rerun the same command to continue")


if __name__ == "__main__":
    app()
