"""`pcm-bench learning`: success rate vs wall-clock and vs step for grpo, pcm and random.

DESIGN.md section 8. One MetaWorld task, ONE SFT checkpoint that every run starts from, the three
selector modes for the same number of steps, several seeds. Runs are interleaved by seed
(seed 0: grpo, pcm, random; seed 1: ...), so load on the machine hits the algorithms alike, and
with the same seed every algorithm sees the same initial states at every step (paired
comparison). Seeds are added while the time budget allows (at least one).

Per run: the training success rate of every step (the rollout batch), held-out evaluations every
--eval-every steps (sampled actions on initial states no run trains on), and the time split
rollout / select / backward (backward = the whole actor update: gather, forward, backward,
all-reduce, clip, optimizer step). Wall-clock is training time (evaluations excluded).

Writes OUT/learning.json (field names below) and OUT/learning.png; each run's own metrics.jsonl,
summary.json and training.png are in OUT/ALGO-sSEED/.

JSON: {benchmark, machine, config, policy, sft, elapsed_s, seeds_run, runs: [{algo, seed, steps,
success_rate, wall_s, rollout_s, select_s, backward_s, kept_fraction, evals: [{step, wall_s,
success_rate}], summary}], algos: {ALGO: {runs, steps, wall_s, seconds_per_step: {rollout,
select, backward, step}, time_split: {rollout, select, backward}, kept_fraction,
backward_speedup_vs_grpo, step_speedup_vs_grpo, success_first10, success_last10,
eval_first, eval_last, eval_last_std}}, plot}.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from trainer_client.train.config import DEMO_ENV, SFTConfig, TrainConfig
from trainer_client.train.metrics import read_metrics
from trainer_client.train.model import load_policy
from trainer_client.train.plots import moving_average
from trainer_client.train.rl import summarize, train_rl

ALGOS = ("grpo", "pcm", "random")
COLORS = {"grpo": "tab:red", "pcm": "tab:blue", "random": "tab:gray"}


def run_learning_bench(
    out: Path,
    *,
    init: Path | None = None,
    env: str = DEMO_ENV,
    algos: Sequence[str] = ALGOS,
    max_seeds: int = 3,
    first_seed: int = 0,
    steps: int = 30,
    budget_s: float = 1500.0,
    init_states: int = 4,
    group_size: int = 8,
    keep_fraction: float = 0.2,
    eval_every: int = 10,
    eval_episodes: int = 32,
    num_workers: int = -1,
    threads: int = 0,
    rl_overrides: dict[str, Any] | None = None,
    sft_overrides: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the comparison; returns (and writes) the JSON figures. Without `init`, an SFT
    checkpoint is trained first with `pcm-train sft`'s defaults (its time counts against the
    budget). `budget_s` bounds the whole job: a further seed starts only if the previous seed's
    duration still fits."""
    for algo in algos:
        if algo not in ALGOS:
            raise ValueError(f"unknown algo {algo!r}; use {', '.join(ALGOS)}")
    if max_seeds < 1 or steps < 1 or budget_s <= 0:
        raise ValueError("need max_seeds >= 1, steps >= 1 and budget_s > 0")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    # the one SFT checkpoint every run starts from
    sft_info: dict[str, Any] = {}
    if init is None:
        from trainer_client.train.sft import run_sft

        sft_cfg = SFTConfig(
            env=env,
            out=str(out / "sft"),
            progress=False,
            num_workers=num_workers,
            threads=threads,
            **(sft_overrides or {}),
        )
        sft = run_sft(sft_cfg, log=log)
        init = sft.checkpoint
        sft_info = sft.summary()
    policy = load_policy(init)
    sft_info["checkpoint"] = str(init)

    runs: list[dict[str, Any]] = []
    seeds_run = 0
    for seed in range(first_seed, first_seed + max_seeds):
        t_round = time.perf_counter()
        for algo in algos:
            cfg = TrainConfig(
                env=env,
                algo=algo,
                selector="embedded",
                run_id=f"learn-{algo}-s{seed}",
                out=str(out / f"{algo}-s{seed}"),
                init=str(init),
                steps=steps,
                seed=seed,
                group_size=group_size,
                init_states=init_states,
                keep_fraction=keep_fraction,
                eval_every=eval_every,
                eval_episodes=eval_episodes,
                checkpoint_every=steps,
                keep_checkpoints=1,
                num_workers=num_workers,
                threads=threads,
                progress=False,
                trainer_id="bench",
                **(rl_overrides or {}),
            )
            log(f"learning bench: {algo} seed {seed} ({steps} steps) -> {cfg.out}")
            with (Path(cfg.out).parent / f"{algo}-s{seed}.log").open("w") as f:

                def write_line(line: str, f: Any = f) -> None:
                    f.write(line + "\n")

                result = train_rl(cfg, log_line=write_line)
            runs.append(_run_record(algo, seed, read_metrics(result.metrics), cfg))
            s = runs[-1]["summary"]
            log(
                f"  {algo} seed {seed}: {s['wall_s']:.0f}s, backward "
                f"{s['seconds']['backward_s'] / s['steps']:.2f}s/step, success first/last 10 "
                f"{s['success_first10']:.2f} -> {s['success_last10']:.2f}"
            )
        seeds_run += 1
        elapsed = time.perf_counter() - t_start
        if elapsed + (time.perf_counter() - t_round) > budget_s:
            break

    result_json: dict[str, Any] = {
        "benchmark": "learning",
        "machine": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "loadavg_end": list(os.getloadavg()),
        },
        "config": {
            "env": env,
            "algos": list(algos),
            "steps": steps,
            "budget_s": budget_s,
            "init_states": init_states,
            "group_size": group_size,
            "keep_fraction": keep_fraction,
            "eval_every": eval_every,
            "eval_episodes": eval_episodes,
            **(rl_overrides or {}),
        },
        "policy": {
            "params": policy.num_params(),
            "width": policy.config.width,
            "depth": policy.config.depth,
        },
        "sft": sft_info,
        "elapsed_s": time.perf_counter() - t_start,
        "seeds_run": seeds_run,
        "runs": runs,
        "algos": aggregate(runs),
    }
    result_json["plot"] = str(plot_learning(result_json, out / "learning.png"))
    (out / "learning.json").write_text(json.dumps(result_json, indent=2) + "\n")
    return result_json


def _run_record(
    algo: str, seed: int, rows: list[dict[str, Any]], cfg: TrainConfig
) -> dict[str, Any]:
    steps = [r for r in rows if r.get("kind", "step") == "step"]
    evals = [r for r in rows if r.get("kind") == "eval"]
    return {
        "algo": algo,
        "seed": seed,
        "out": cfg.out,
        **{
            key: [r[key] for r in steps]
            for key in (
                "step",
                "success_rate",
                "wall_s",
                "rollout_s",
                "select_s",
                "backward_s",
                "kept_fraction",
            )
        },
        "evals": [
            {"step": r["step"], "wall_s": r["wall_s"], "success_rate": r["success_rate"]}
            for r in evals
        ],
        "summary": summarize(rows, cfg),
    }


def merge_results(results: Sequence[dict[str, Any]], path: Path) -> dict[str, Any]:
    """Combine the runs of several `run_learning_bench` results (e.g. seeds run as separate jobs
    with --first-seed) into one result; writes path (JSON) and its PNG beside it."""
    merged = dict(results[0])
    merged["runs"] = [run for r in results for run in r["runs"]]
    merged["seeds_run"] = len({run["seed"] for run in merged["runs"]})
    merged["elapsed_s"] = sum(r["elapsed_s"] for r in results)
    merged["algos"] = aggregate(merged["runs"])
    merged["plot"] = str(plot_learning(merged, path.with_suffix(".png")))
    path.write_text(json.dumps(merged, indent=2) + "\n")
    return merged


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per algorithm: means over its runs (seeds)."""
    out: dict[str, Any] = {}
    for algo in dict.fromkeys(r["algo"] for r in runs):
        mine = [r for r in runs if r["algo"] == algo]
        n_steps = sum(len(r["step"]) for r in mine)
        per_step = {
            stage: sum(sum(r[f"{stage}_s"]) for r in mine) / n_steps
            for stage in ("rollout", "select", "backward")
        }
        per_step["step"] = sum(per_step.values())
        last_evals = [r["evals"][-1]["success_rate"] for r in mine if r["evals"]]
        first_evals = [r["evals"][0]["success_rate"] for r in mine if r["evals"]]
        out[algo] = {
            "runs": len(mine),
            "steps": n_steps // len(mine),
            "wall_s": statistics.mean(r["summary"]["wall_s"] for r in mine),
            "seconds_per_step": per_step,
            "time_split": {
                k: per_step[k] / per_step["step"] for k in ("rollout", "select", "backward")
            },
            "kept_fraction": statistics.mean(r["summary"]["kept_fraction"] for r in mine),
            "success_first10": statistics.mean(r["summary"]["success_first10"] for r in mine),
            "success_last10": statistics.mean(r["summary"]["success_last10"] for r in mine),
            "success_mean": statistics.mean(r["summary"]["success_mean"] for r in mine),
            "eval_first": statistics.mean(first_evals) if first_evals else None,
            "eval_last": statistics.mean(last_evals) if last_evals else None,
            "eval_last_std": statistics.pstdev(last_evals) if len(last_evals) > 1 else 0.0,
        }
    if "grpo" in out:
        g = out["grpo"]["seconds_per_step"]
        for a in out.values():
            s = a["seconds_per_step"]
            a["backward_speedup_vs_grpo"] = g["backward"] / s["backward"] if s["backward"] else None
            a["step_speedup_vs_grpo"] = g["step"] / s["step"] if s["step"] else None
    return out


def plot_learning(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    (ax_step, ax_wall), (ax_eval, ax_time) = axes
    window = 5
    for run in result["runs"]:
        color = COLORS.get(run["algo"], "k")
        label = f"{run['algo']} s{run['seed']}"
        smooth = moving_average(run["success_rate"], window)
        ax_step.plot(run["step"], smooth, color=color, alpha=0.8, label=label)
        ax_wall.plot(np.asarray(run["wall_s"]) / 60, smooth, color=color, alpha=0.8, label=label)
        if run["evals"]:
            ax_eval.plot(
                [e["step"] for e in run["evals"]],
                [e["success_rate"] for e in run["evals"]],
                "o-",
                color=color,
                alpha=0.8,
                label=label,
            )
    ax_step.set(
        xlabel="step",
        ylabel=f"success rate (rollouts, trailing mean {window})",
        title="success vs step",
    )
    ax_wall.set(
        xlabel="training wall-clock (min)", ylabel="success rate", title="success vs wall-clock"
    )
    ax_eval.set(xlabel="step", ylabel="held-out success (sampled)", title="held-out evaluations")
    for ax in (ax_step, ax_wall, ax_eval):
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7, ncol=2)
    algos = list(result["algos"])
    bottom = np.zeros(len(algos))
    for stage, color in (
        ("rollout", "tab:orange"),
        ("select", "tab:purple"),
        ("backward", "tab:red"),
    ):
        vals = np.array([result["algos"][a]["seconds_per_step"][stage] for a in algos])
        ax_time.bar(algos, vals, bottom=bottom, color=color, label=stage)
        bottom += vals
    for i, a in enumerate(algos):
        split = result["algos"][a]["time_split"]["backward"]
        ax_time.text(i, bottom[i], f"backward {split:.0%}", ha="center", va="bottom", fontsize=8)
    ax_time.set(ylabel="seconds per step (mean)", title="time split per RL step")
    ax_time.legend(fontsize=8)
    fig.suptitle(
        f"pcm-bench learning: {result['config']['env']}, {result['seeds_run']} seed(s), "
        f"{result['config']['steps']} steps, policy {result['policy']['params'] / 1e6:.1f}"
        " M params"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def print_table(result: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(
        title=f"pcm-bench learning: {result['config']['env']} "
        f"({result['seeds_run']} seed(s) x {result['config']['steps']} steps)"
    )
    for col in (
        "algo",
        "s/step",
        "rollout",
        "select",
        "backward",
        "backward %",
        "backward speed-up",
        "kept",
        "success first/last 10",
        "held-out first/last",
    ):
        table.add_column(col, justify="right")
    for algo, a in result["algos"].items():
        s = a["seconds_per_step"]
        ev = f"{a['eval_first']:.2f} / {a['eval_last']:.2f}" if a["eval_last"] is not None else "-"
        speed = a.get("backward_speedup_vs_grpo")
        table.add_row(
            algo,
            f"{s['step']:.2f}",
            f"{s['rollout']:.2f}",
            f"{s['select']:.3f}",
            f"{s['backward']:.2f}",
            f"{a['time_split']['backward']:.0%}",
            f"{speed:.2f}x" if speed else "-",
            f"{a['kept_fraction']:.2f}",
            f"{a['success_first10']:.2f} / {a['success_last10']:.2f}",
            ev,
        )
    console.print(table)
    console.print(f"plot: {result['plot']}")


def learning_command(
    json_path: Annotated[
        Path | None, typer.Option("--json", help="also write the figures here as JSON")
    ] = None,
    out: Annotated[Path, typer.Option(help="output dir (runs, learning.json, learning.png)")] = (
        Path("runs/bench-learning")
    ),
    init: Annotated[
        Path | None, typer.Option(help="SFT checkpoint every run starts from; default: train one")
    ] = None,
    env: Annotated[str, typer.Option(help="metaworld:TASK")] = DEMO_ENV,
    steps: Annotated[int, typer.Option(min=1, help="RL steps per run")] = 30,
    max_seeds: Annotated[int, typer.Option(min=1, help="seeds at most (budget permitting)")] = 3,
    first_seed: Annotated[int, typer.Option(min=0, help="the first seed (0, 1, ...)")] = 0,
    budget_s: Annotated[float, typer.Option(min=1, help="time budget of the whole job (s)")] = (
        1500.0
    ),
    init_states: Annotated[int, typer.Option(min=1, help="initial states per step")] = 4,
    group_size: Annotated[int, typer.Option(min=2, help="G: rollouts per initial state")] = 8,
    keep_fraction: Annotated[float, typer.Option(help="pcm / random keep fraction")] = 0.2,
    eval_every: Annotated[int, typer.Option(min=0, help="held-out evaluation every N steps")] = 10,
    eval_episodes: Annotated[int, typer.Option(min=1, help="episodes per evaluation")] = 32,
    lr: Annotated[
        float | None, typer.Option(help="network learning rate; default: pcm-train rl's")
    ] = None,
) -> None:
    """Success vs wall-clock and vs step for grpo, pcm and random from one SFT checkpoint."""
    result = run_learning_bench(
        out,
        init=init,
        env=env,
        max_seeds=max_seeds,
        first_seed=first_seed,
        steps=steps,
        budget_s=budget_s,
        init_states=init_states,
        group_size=group_size,
        keep_fraction=keep_fraction,
        eval_every=eval_every,
        eval_episodes=eval_episodes,
        rl_overrides={"lr": lr} if lr is not None else None,
    )
    print_table(result)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2) + "\n")
