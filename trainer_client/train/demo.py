"""`pcm-train demo`: GRPO and PCM side by side on one MetaWorld task, on a CPU, in minutes.

1. SFT: behaviour cloning of the noisy scripted expert -> one checkpoint that succeeds part of
   the time, evaluated on held-out initial states (the start of both RL runs);
2. RL: from that checkpoint, with the same initial states and sampling seeds at every step, full
   GRPO and PCM (the default configuration: `signal` score, `mean` weighting, `gripper` phases,
   keep 0.2), each with the embedded selector, for a fixed number of steps;
3. each RL policy evaluated on the same held-out initial states with the same seed;
4. the actor update's activation memory, GRPO vs PCM, on one rollout batch of the SFT policy.

The policy is the default `base` trunk (26.6 M params) so that, as on the GPUs PCM is for, the
actor update is the largest stage of a GRPO step; the step count is fixed so that the figures do
not depend on the machine's speed. Writes OUT/demo.json, OUT/demo.png, OUT/sft, OUT/ALGO.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from scipy import stats

from pcm_contract.run_config import RunConfigSchema
from trainer_client.cli_options import build
from trainer_client.device import resolve_device
from trainer_client.grpo import GRPOConfig, selective_backward
from trainer_client.machine import machine
from trainer_client.memory import SavedTensorMeter
from trainer_client.policy import DEFAULT_PRESET
from trainer_client.rollout import collect_groups
from trainer_client.train.config import (
    DEMO_ENV,
    EVAL_INIT_OFFSET,
    Runtime,
    SFTConfig,
    TrainConfig,
)
from trainer_client.train.evaluate import evaluate_policy
from trainer_client.train.metrics import read_metrics
from trainer_client.train.model import load_policy
from trainer_client.train.plots import moving_average, plot_time_split
from trainer_client.train.rl import train_rl
from trainer_client.train.selection import random_selection
from trainer_client.train.sft import run_sft

DEMO_SUMMARY = "demo.json"
DEMO_PLOT = "demo.png"
DEMO_ALGOS = ("grpo", "pcm")
EXPECTED_S = 15 * 60  # what the default demo should take on a 2-core machine
COLORS = {"grpo": "tab:red", "pcm": "tab:blue", "random": "tab:gray"}


@dataclass
class DemoConfig:
    out: Path
    seed: int = 0
    env: str = DEMO_ENV
    algos: tuple[str, ...] = DEMO_ALGOS
    # SFT: `pcm-train sft`'s `base` trunk and 300 BC steps, at half its batch (32 chunks a step:
    # half the time; 150 steps or a higher lr left the policy at 0-5% held-out success, measured
    # on a GPU: docs/research/demo.md, "The demo's sizes")
    sft_episodes: int = SFTConfig.episodes
    sft_iters: int = SFTConfig.iters
    sft_batch_size: int = SFTConfig.batch_size // 2
    sft_lr: float | None = None  # None: pcm-train sft's
    preset: str = DEFAULT_PRESET
    # RL: the same batch, seeds and steps for every algorithm
    rl_steps: int = 12
    init_states: int = 3
    group_size: int = TrainConfig.group_size
    keep_fraction: float = RunConfigSchema.keep_fraction
    lr: float | None = None  # None: pcm-train rl's default for the trunk
    checkpoint_every: int = TrainConfig.checkpoint_every
    # held-out evaluation (the SFT and each RL policy on the same initial states and seed)
    eval_episodes: int = 100
    # workers, threads, progress bar, device, precision: those of pcm-train sft and rl (checked
    # when made)
    runtime: Runtime = field(default_factory=Runtime)
    rl_overrides: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """Raise a ValueError saying how to fix a bad option."""
        for algo in self.algos:
            if algo not in ("grpo", "pcm", "random"):
                raise ValueError(f"--algos: unknown {algo!r}; use grpo, pcm and / or random")
        if not self.algos:
            raise ValueError("--algos: name at least one of grpo, pcm, random")

    @classmethod
    def default(cls, out: Path, seed: int = 0) -> DemoConfig:
        return cls(out=Path(out), seed=seed)

    @classmethod
    def quick(cls, out: Path, seed: int = 0) -> DemoConfig:
        """The same path at toy sizes (a test runs it in well under a minute)."""
        return cls(out=Path(out), seed=seed, sft_episodes=4, sft_iters=20, preset="tiny",
                   rl_steps=2, init_states=2, group_size=4, checkpoint_every=1, eval_episodes=4,
                   runtime=Runtime(num_workers=0, threads=1))


def run_demo(cfg: DemoConfig, console: Console | None = None) -> dict[str, Any]:
    # in a file or CI: plain lines, wide enough for the table
    console = console or Console(highlight=False, width=None if sys.stdout.isatty() else 132)
    say = console.print
    t_start = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    say(f"pcm-train demo: {' vs '.join(cfg.algos)} on {cfg.env} from one SFT checkpoint, "
        f"{cfg.rl_steps} steps each, embedded selector -> {out}")

    # ---- 1. SFT, and the held-out start of every RL run -----------------------------------------
    say("[1/4] SFT: behaviour cloning of the noisy scripted expert")
    sft_lr: dict[str, Any] = {"lr": cfg.sft_lr} if cfg.sft_lr is not None else {}
    sft = run_sft(SFTConfig(
        env=cfg.env, out=str(out / "sft"), episodes=cfg.sft_episodes, iters=cfg.sft_iters,
        batch_size=cfg.sft_batch_size, preset=cfg.preset, **sft_lr, seed=cfg.seed,
        eval_episodes=0, runtime=cfg.runtime))
    init_states = list(range(EVAL_INIT_OFFSET, EVAL_INIT_OFFSET + cfg.eval_episodes))
    start = _evaluate("the SFT policy", sft.checkpoint, cfg, init_states, say)

    # ---- 2-3. each algorithm from the same checkpoint, then its held-out evaluation -------------
    algos: dict[str, dict[str, Any]] = {}
    for n, algo in enumerate(cfg.algos):
        say(f"[2/4] RL {n + 1}/{len(cfg.algos)}: {algo}, {cfg.rl_steps} steps")
        overrides: dict[str, Any] = {**cfg.rl_overrides}
        if cfg.lr is not None:
            overrides["lr"] = cfg.lr
        rl_cfg = build(TrainConfig, dict(
            env=cfg.env, algo=algo, selector="embedded", run_id=f"demo-{algo}-s{cfg.seed}",
            out=str(out / algo), init=str(sft.checkpoint), steps=cfg.rl_steps, seed=cfg.seed,
            group_size=cfg.group_size, init_states=cfg.init_states,
            keep_fraction=cfg.keep_fraction, checkpoint_every=cfg.checkpoint_every,
            runtime=cfg.runtime, **overrides))
        t_run = time.perf_counter()
        rl = train_rl(rl_cfg)
        if n == 0 and len(cfg.algos) > 1:
            _warn_if_slow(cfg, time.perf_counter() - t_start,
                          time.perf_counter() - t_run, say)
        end = _evaluate(f"{algo} after {rl.steps_done} steps", rl.final_policy, cfg,
                        init_states, say)
        algos[algo] = _algo_figures(read_metrics(rl.metrics), start, end, rl.steps_done)

    # ---- 4. activation memory of the actor update, on one batch -------------------------------
    say("[4/4] activation memory of the actor update: one rollout batch of the SFT policy, "
        "full GRPO vs PCM's budget")
    # at PCM's budget: the adaptive budget's mean kept fraction over its run
    pcm_fraction = algos["pcm"]["kept_fraction"] if "pcm" in algos else cfg.keep_fraction
    memory = _activation_memory(cfg, sft.checkpoint, rl_cfg, pcm_fraction)
    if "grpo" in algos:
        g = algos["grpo"]
        for algo, a in algos.items():
            a["update_speedup"] = (g["backward_s_per_step"] / a["backward_s_per_step"]
                                   if a["backward_s_per_step"] else None)
            if algo != "grpo":
                a["activation_memory_ratio"] = memory["ratio_micro_batched"]
                a["activation_memory_ratio_whole_batch"] = memory["ratio_whole_batch"]

    wall_s = time.perf_counter() - t_start
    summary: dict[str, Any] = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "machine": machine(),
        "wall_s": wall_s,
        "sft": sft.summary(),
        "heldout_start": start,
        "algos": algos,
        "activation_memory": memory,
    }
    summary["plot"] = str(plot_demo(summary, out / DEMO_PLOT))
    (out / DEMO_SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    print_table(summary, console)
    say(f"demo done in {wall_s / 60:.1f} min | figure {summary['plot']} | figures "
        f"{out / DEMO_SUMMARY}")
    return summary


def _evaluate(what: str, checkpoint: Path, cfg: DemoConfig, init_states: list[int],
              say: Any) -> dict[str, Any]:
    """Held-out success (sampled actions) with its 95% Wilson interval; says what it does."""
    say(f"[3/4] evaluating {what} on {len(init_states)} held-out initial states "
        "(sampled actions, one episode each) ...")
    policy = load_policy(checkpoint).to(resolve_device(cfg.runtime.device))
    policy.set_precision(cfg.runtime.precision)
    r = evaluate_policy(policy, cfg.env, init_states, seed=cfg.seed,
                        num_workers=0 if cfg.runtime.num_workers == 0 else 2)
    k = round(r.success_rate * r.episodes)
    ci = stats.binomtest(k, r.episodes).proportion_ci(confidence_level=0.95, method="wilson")
    say(f"      {what}: {r.success_rate:.1%} [{ci.low:.1%}, {ci.high:.1%}] "
        f"({r.seconds:.0f}s)")
    return {"success_rate": r.success_rate, "episodes": r.episodes,
            "ci95": [float(ci.low), float(ci.high)], "seconds": r.seconds}


def _warn_if_slow(cfg: DemoConfig, elapsed_s: float, run_s: float, say: Any) -> None:
    """After the first RL run: the demo runs every step it was given; if it will take longer
    than it should, say so and how to shorten it (rather than stopping early)."""
    remaining = run_s * (len(cfg.algos) - 1) * 0.75  # PCM's steps are shorter than GRPO's
    projected = elapsed_s + remaining
    if projected > EXPECTED_S:
        say(f"note: this machine is slower than the demo expects: about "
            f"{projected / 60:.0f} min in all (expected {EXPECTED_S // 60}); shorten it with "
            f"--rl-steps {max(2, cfg.rl_steps // 2)} or --algos pcm")


def _algo_figures(rows: list[dict[str, Any]], start: dict[str, Any], end: dict[str, Any],
                  steps_done: int) -> dict[str, Any]:
    steps = [r for r in rows if r.get("kind", "step") == "step"]
    secs = {k: float(sum(r[f"{k}_s"] for r in steps)) for k in ("rollout", "select", "backward")}
    total = sum(secs.values()) or 1.0
    n = max(len(steps), 1)
    return {
        "steps": steps_done,
        "heldout_start": start["success_rate"],
        "heldout_end": end["success_rate"],
        "heldout_end_ci95": end["ci95"],
        "s_per_step": total / n,
        "rollout_share": secs["rollout"] / total,
        "select_share": secs["select"] / total,
        "backward_share": secs["backward"] / total,
        "backward_s_per_step": secs["backward"] / n,
        "kept_fraction": (sum(r["kept_chunks"] for r in steps)
                          / max(sum(r["informative_chunks"] for r in steps), 1)),
        "success_rate": [r["success_rate"] for r in steps],
        "wall_s": [r["wall_s"] for r in steps],
        "keep_probs": [r.get("keep_probs") for r in steps],
        # None where a step had no informative group (nothing to keep)
        "kept_fraction_per_step": [r["kept_fraction"] if r["informative_chunks"] else None
                                   for r in steps],
    }


def _activation_memory(cfg: DemoConfig, checkpoint: Path, rl_cfg: TrainConfig,
                       keep_fraction: float) -> dict[str, Any]:
    """Peak bytes saved for backward by one actor update, full GRPO vs PCM's budget (k_i =
    round(f C_i) chunks per trajectory, f the PCM run's kept fraction, drawn by the selector's
    random mode), with the runs' micro-batching and with the whole batch in one micro-batch
    (what the paper's figure compares)."""
    policy = load_policy(checkpoint).to(resolve_device(cfg.runtime.device))
    policy.set_precision(cfg.runtime.precision)
    trajs = collect_groups(policy, cfg.env, list(range(cfg.init_states)),
                           group_size=cfg.group_size, chunk_size=policy.chunk_size,
                           seed=cfg.seed, max_steps=rl_cfg.max_steps,
                           num_workers=0 if cfg.runtime.num_workers == 0 else 2)
    masks, _ = random_selection(trajs, keep_fraction, cfg.seed)
    # memory depends on which rows are computed, not on the outcomes: count every trajectory
    advantages = np.where(np.arange(len(trajs)) % 2 == 0, 1.0, -1.0)
    params = list(policy.parameters())
    out: dict[str, Any] = {"chunks": sum(t.num_chunks for t in trajs),
                           "keep_fraction": keep_fraction}
    for label, micro_batch in (("micro_batched", rl_cfg.grpo.micro_batch),
                               ("whole_batch", f"rows:{out['chunks']}")):
        peaks = {}
        for side, side_masks in (("grpo", None), ("pcm", masks)):
            meter = SavedTensorMeter(exclude=params)
            with meter:
                selective_backward(policy, trajs, side_masks, None, advantages=advantages,
                                   config=GRPOConfig(micro_batch=micro_batch),
                                   denominator="kept")
            policy.zero_grad(set_to_none=True)
            peaks[side] = meter.peak_bytes
        out[f"grpo_bytes_{label}"] = peaks["grpo"]
        out[f"pcm_bytes_{label}"] = peaks["pcm"]
        out[f"ratio_{label}"] = peaks["pcm"] / peaks["grpo"] if peaks["grpo"] else None
    out["micro_batch"] = rl_cfg.grpo.micro_batch
    return out


# ---- the table and the figure -----------------------------------------------------------------


def print_table(summary: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(highlight=False, width=None if sys.stdout.isatty() else 132)
    mem = summary["activation_memory"]
    table = Table(title=f"pcm-train demo: {summary['config']['env']} "
                        f"({summary['config']['eval_episodes']} held-out episodes, 95% CI)")
    for col in ("algo", "steps", "held-out start -> end", "kept (per step)", "s/step",
                "rollout/select/backward", "update speed-up", "activation memory"):
        table.add_column(col, justify="right")
    for algo, a in summary["algos"].items():
        lo, hi = a["heldout_end_ci95"]
        speed = a.get("update_speedup")
        ratio = a.get("activation_memory_ratio")
        table.add_row(
            algo, str(a["steps"]),
            f"{a['heldout_start']:.0%} -> {a['heldout_end']:.0%} [{lo:.0%}, {hi:.0%}]",
            _kept_words(a),
            f"{a['s_per_step']:.1f}",
            f"{a['rollout_share']:.0%} / {a['select_share']:.1%} / {a['backward_share']:.0%}",
            f"{speed:.2f}x" if speed and algo != "grpo" else "1" if algo == "grpo" else "-",
            (f"{ratio:.2f} ({a['activation_memory_ratio_whole_batch']:.2f} whole batch)"
             if ratio is not None else "1" if algo == "grpo" else "-"),
        )
    console.print(table)
    console.print(f"activation memory = PCM / GRPO peak bytes saved for backward on one batch "
                  f"({mem['chunks']} chunks, PCM at its run's kept fraction "
                  f"{mem['keep_fraction']:.2f}), with the runs' micro-batches "
                  f"({mem['micro_batch']}) and in one micro-batch", style="dim")


def _kept_words(a: dict[str, Any]) -> str:
    """The run's kept fraction, with its per-step range where the budget moved."""
    per_step = [f for f in a.get("kept_fraction_per_step") or [] if f is not None]
    spread = (f" ({min(per_step):.2f}-{max(per_step):.2f})"
              if per_step and max(per_step) - min(per_step) > 0.005 else "")
    return f"{a['kept_fraction']:.2f}{spread}"


def plot_demo(summary: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    algos = summary["algos"]
    fig, ((ax_step, ax_wall), (ax_keep, ax_time)) = plt.subplots(2, 2, figsize=(12, 8.5))
    for algo, a in algos.items():
        color = COLORS.get(algo, "k")
        steps = np.arange(1, len(a["success_rate"]) + 1)
        smooth = moving_average(a["success_rate"], 5)
        ax_step.plot(steps, smooth, color=color, label=f"{algo} (training, trailing 5)")
        ax_wall.plot(np.asarray(a["wall_s"]) / 60, smooth, color=color, label=algo)
        lo, hi = a["heldout_end_ci95"]
        ax_step.errorbar([steps[-1] if len(steps) else 0], [a["heldout_end"]],
                         yerr=[[a["heldout_end"] - lo], [hi - a["heldout_end"]]], fmt="s",
                         color=color, capsize=4, label=f"{algo} held-out end")
    start = summary["heldout_start"]
    ax_step.errorbar([0], [start["success_rate"]],
                     yerr=[[start["success_rate"] - start["ci95"][0]],
                           [start["ci95"][1] - start["success_rate"]]],
                     fmt="o", color="k", capsize=4, label="SFT held-out")
    ax_step.set(xlabel="RL step", ylabel="success rate", title="success vs step")
    ax_wall.set(xlabel="training wall-clock (min)", ylabel="training success (trailing 5)",
                title="success vs wall-clock")
    for ax in (ax_step, ax_wall):
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7)
    pcm = algos.get("pcm")
    if pcm and any(pcm["keep_probs"]):
        probs = [p for p in pcm["keep_probs"] if p]
        num_phases = len(probs[0])
        w = np.vstack([np.full(num_phases, 1.0 / num_phases), np.asarray(probs)])  # step 0
        for p in range(num_phases):
            ax_keep.plot(np.arange(len(w)), w[:, p], label=f"phase {p}")
        # the adaptive budget: the fraction of the informative chunks kept at each step
        kept = [np.nan if f is None else f for f in pcm.get("kept_fraction_per_step") or []]
        ax_keep.plot(np.arange(1, len(kept) + 1), kept, "k--", lw=2,
                     label="kept fraction (budget)")
        ax_keep.legend(fontsize=8)
    ax_keep.set(xlabel="RL step (0: before the first batch)",
                ylabel="keep weight / kept fraction",
                title="PCM: per-phase keep weights and the per-step budget", ylim=(0, 1))
    plot_time_split(ax_time, {a: {k: v["s_per_step"] * v[f"{k}_share"]
                                  for k in ("rollout", "select", "backward")}
                              for a, v in algos.items()})
    fig.suptitle(f"pcm-train demo: {summary['config']['env']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

