"""`pcm-train demo`: the whole method end to end on one MetaWorld task, on a CPU.

1. SFT: behaviour cloning on the noisy scripted expert of the demo task -> a policy that
   succeeds part of the time (held-out success printed);
2. RL: PCM-GRPO from that checkpoint with the embedded selector (in-process, in-memory store):
   a line per step, a progress bar, metrics.jsonl, checkpoints and training.png in OUT/rl;
3. the SFT and RL policies evaluated on the same held-out initial states.

`--time-budget-s` bounds the whole demo: RL stops early (after a step, with a checkpoint) when
the budget left would not cover the final evaluation.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trainer_client.train.config import DEMO_ENV, EVAL_INIT_OFFSET, SFTConfig, TrainConfig
from trainer_client.train.evaluate import evaluate_policy
from trainer_client.train.model import load_policy
from trainer_client.train.rl import train_rl
from trainer_client.train.sft import run_sft

DEMO_SUMMARY = "demo.json"


@dataclass
class DemoConfig:
    out: Path
    seed: int = 0
    env: str = DEMO_ENV
    # SFT: a compact policy (the default `base` trunk needs minutes of BC on 2 cores; this one
    # fits the demos in well under a minute and RL steps stay short)
    sft_episodes: int = 200
    sft_iters: int = 600
    sft_lr: float = 1e-3
    preset: str = "small"
    width: int | None = 128
    depth: int | None = 2
    init_log_std: float = -0.7
    # RL
    rl_steps: int = 100
    init_states: int = 8
    group_size: int = 8
    keep_fraction: float = 0.2
    lr: float = 3e-5
    log_std_lr: float = 1e-2
    checkpoint_every: int = 20
    # evaluation (SFT and RL on the same held-out initial states)
    eval_episodes: int = 100
    time_budget_s: float = 720.0
    num_workers: int = -1
    threads: int = 0
    progress: bool = True

    @classmethod
    def default(cls, out: Path, seed: int = 0) -> DemoConfig:
        return cls(out=Path(out), seed=seed)

    @classmethod
    def quick(cls, out: Path, seed: int = 0) -> DemoConfig:
        """The same path at toy sizes (a test runs it in well under a minute)."""
        return cls(
            out=Path(out),
            seed=seed,
            sft_episodes=4,
            sft_iters=20,
            preset="tiny",
            width=None,
            depth=None,
            rl_steps=2,
            init_states=2,
            group_size=4,
            checkpoint_every=1,
            eval_episodes=4,
            time_budget_s=0.0,
            num_workers=0,
            threads=1,
        )


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    t_start = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"pcm-train demo: SFT then PCM-GRPO on {cfg.env}, embedded selector -> {out}")

    # 1. SFT to a partial success rate, evaluated on held-out initial states
    sft = run_sft(
        SFTConfig(
            env=cfg.env,
            out=str(out / "sft"),
            episodes=cfg.sft_episodes,
            iters=cfg.sft_iters,
            lr=cfg.sft_lr,
            preset=cfg.preset,
            width=cfg.width,
            depth=cfg.depth,
            init_log_std=cfg.init_log_std,
            seed=cfg.seed,
            eval_episodes=cfg.eval_episodes,
            num_workers=cfg.num_workers,
            threads=cfg.threads,
            progress=cfg.progress,
        )
    )

    # 2. PCM-GRPO from the SFT checkpoint; the budget keeps room for the final evaluation
    eval_reserve_s = 1.5 * sum(r.seconds for r in sft.evals.values())
    rl_budget = 0.0
    if cfg.time_budget_s:
        rl_budget = max(cfg.time_budget_s - (time.perf_counter() - t_start) - eval_reserve_s, 1.0)
    rl_cfg = TrainConfig(
        env=cfg.env,
        algo="pcm",
        selector="embedded",
        run_id=f"demo-pcm-s{cfg.seed}",
        out=str(out / "rl"),
        init=str(sft.checkpoint),
        steps=cfg.rl_steps,
        seed=cfg.seed,
        group_size=cfg.group_size,
        init_states=cfg.init_states,
        keep_fraction=cfg.keep_fraction,
        lr=cfg.lr,
        log_std_lr=cfg.log_std_lr,
        checkpoint_every=cfg.checkpoint_every,
        time_budget_s=rl_budget,
        num_workers=cfg.num_workers,
        threads=cfg.threads,
        progress=cfg.progress,
    )
    rl = train_rl(rl_cfg)

    # 3. the RL policy on the SFT's held-out initial states
    policy = load_policy(rl.final_policy)
    init_states = list(range(EVAL_INIT_OFFSET, EVAL_INIT_OFFSET + cfg.eval_episodes))
    rl_evals = {}
    for deterministic in (False, True):
        r = evaluate_policy(
            policy,
            cfg.env,
            init_states,
            deterministic=deterministic,
            seed=cfg.seed,
            num_workers=0 if cfg.num_workers == 0 else 2,
            max_steps=rl_cfg.max_steps,
        )
        rl_evals[r.mode] = r
    wall_s = time.perf_counter() - t_start

    s = rl.summary
    summary = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "wall_s": wall_s,
        "sft": sft.summary(),
        "rl": s,
        "rl_eval": {mode: r.as_dict() for mode, r in rl_evals.items()},
        "plot": str(rl.plot) if rl.plot else None,
        "metrics": str(rl.metrics),
    }
    (out / DEMO_SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")

    lines = [
        "",
        f"demo done in {wall_s:.0f}s ({wall_s / 60:.1f} min)",
        f"  held-out success over {cfg.eval_episodes} init states   sampled   deterministic",
        _row(f"SFT ({sft.checkpoint})", sft.evals),
        _row(f"RL  ({rl.final_policy}, {rl.steps_done} PCM steps)", rl_evals),
    ]
    if s.get("steps"):
        probs = s.get("keep_probs_last") or []
        lines += [
            f"  kept fraction {s['kept_fraction']:.2f} | keep probabilities at the end "
            "[" + " ".join(f"{p:.2f}" for p in probs) + "] (uniform "
            f"{1 / max(len(probs), 1):.2f})",
            f"  RL time split: rollout {s['time_split']['rollout']:.0%}, select "
            f"{s['time_split']['select']:.0%}, backward {s['time_split']['backward']:.0%}",
        ]
    lines.append(f"  plot {rl.plot} | metrics {rl.metrics} | summary {out / DEMO_SUMMARY}")
    print("\n".join(lines))
    return summary


def _row(label: str, evals: dict[str, Any]) -> str:
    sampled, det = evals["sampled"].success_rate, evals["deterministic"].success_rate
    return f"    {label}".ljust(52) + f"{sampled:6.1%}   {det:6.1%}"
