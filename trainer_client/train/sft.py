"""`pcm-train sft`: behaviour cloning on MetaWorld's scripted expert with action noise.

As in the paper, RL starts from a supervised-fine-tuned policy that succeeds only part of the
time. The demos come from the noisy expert (`trainer_client.expert`); the policy's mean is fitted
to the *executed, noisy* actions (`--labels noisy`, the default) by MSE (`VLAPolicy.bc_loss`),
and its action std stays at `--init-log-std` (BC does not train it). Sampling from the result is
a noisy expert whose success is partial and set mainly by that std (RL then has both a mean and
a std to improve); `--labels expert` fits the clean expert actions instead.

Output: OUT/sft.pt (a policy file that `pcm-train rl --init` and `pcm-train eval` load) and
OUT/sft.json (losses, timings and the held-out success rates).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from trainer_client.device import device_name, prepare_device, resolve_device
from trainer_client.expert import collect_expert_demos
from trainer_client.train.checkpoint import save_policy
from trainer_client.train.config import EVAL_INIT_OFFSET, SFTConfig, auto_workers
from trainer_client.train.evaluate import EvalResult, evaluate_policy
from trainer_client.train.model import ObsSpec, TrainPolicy, policy_config_for_env
from trainer_client.types import OBS_STATE

SFT_POLICY = "sft.pt"
SFT_SUMMARY = "sft.json"
LOSS_PROBE_ROWS = 1024  # the BC loss is reported on a fixed subset of this many demo chunks


@dataclass
class SFTResult:
    checkpoint: Path
    demo_success_rate: float  # the noisy expert's own success
    demo_chunks: int
    loss_start: float  # BC loss on the probe subset before training
    loss_end: float  # ... and after
    train_s: float
    collect_s: float
    evals: dict[str, EvalResult] = field(default_factory=dict)  # mode -> held-out result

    def summary(self) -> dict[str, Any]:
        return {
            "checkpoint": str(self.checkpoint),
            "demo_success_rate": self.demo_success_rate,
            "demo_chunks": self.demo_chunks,
            "loss_start": self.loss_start,
            "loss_end": self.loss_end,
            "train_s": self.train_s,
            "collect_s": self.collect_s,
            "eval": {mode: r.as_dict() for mode, r in self.evals.items()},
        }


def lr_factor(i: int, iters: int, warmup: float = 0.05, floor: float = 0.1) -> float:
    """Linear warm-up over the first `warmup` of the steps, then cosine decay to `floor`."""
    w = max(1, int(warmup * iters))
    if i < w:
        return (i + 1) / w
    t = min((i - w) / max(iters - w, 1), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def run_sft(cfg: SFTConfig, log: Callable[[str], None] = print) -> SFTResult:
    device = resolve_device(cfg.runtime.device)
    prepare_device(device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    # 1. demonstrations: the scripted expert with Gaussian action noise, cut into K-chunks
    t0 = time.perf_counter()
    demos = collect_expert_demos(
        cfg.task,
        num_episodes=cfg.episodes,
        noise_std=cfg.noise_std,
        chunk_size=cfg.chunk_size,
        seed=cfg.seed,
        max_steps=cfg.max_steps,
    )
    collect_s = time.perf_counter() - t0
    states = demos.obs[OBS_STATE]  # (N, S)
    targets = demos.actions if cfg.labels == "noisy" else demos.expert_actions  # (N, K, A)
    n = len(demos)
    log(
        f"sft: {cfg.episodes} expert episodes (noise {cfg.noise_std}, expert success "
        f"{demos.success_rate:.0%}) -> {n} chunks in {collect_s:.1f}s"
    )

    # 2. the policy, its state input standardised with the demos' statistics
    spec = ObsSpec(
        task_id=f"metaworld:{demos.task}",
        action_dim=int(targets.shape[2]),
        state_dim=int(states.shape[1]),
        num_cameras=0,
        image_size=0,
    )
    policy = TrainPolicy(
        policy_config_for_env(
            spec,
            preset=cfg.preset,
            chunk_size=cfg.chunk_size,
            init_log_std=cfg.init_log_std,
            width=cfg.width,
            depth=cfg.depth,
        )
    )
    policy.set_state_normalization(states)
    policy.to(device)
    policy.set_precision(cfg.runtime.precision)
    optimizer = torch.optim.AdamW(
        [p for name, p in policy.named_parameters() if name != "log_std"], lr=cfg.lr
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_factor(i, cfg.iters))
    probe = rng.choice(n, size=min(n, LOSS_PROBE_ROWS), replace=False)

    def probe_loss() -> float:
        with torch.no_grad():
            obs = {OBS_STATE: states[probe]}
            return float(policy.bc_loss(obs, [demos.instruction] * len(probe), targets[probe]))

    loss_start = probe_loss()
    log(
        f"sft: policy {policy.num_params() / 1e6:.2f} M params on {device} "
        f"({device_name(device)}, {cfg.runtime.precision}); BC loss {loss_start:.4f}"
    )

    # 3. behaviour cloning: MSE of the chunk mean to the demo chunk, uniform minibatches
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.iters), desc="sft", leave=False,
               disable=not (cfg.runtime.progress and sys.stderr.isatty()))  # no \r flood in files
    running = loss_start
    # without a bar (a file, CI): a plain line about every tenth of the run
    plain = cfg.runtime.progress and bar.disable
    every = max(cfg.iters // 10, 1)
    for it in bar:
        idx = rng.integers(0, n, size=cfg.batch_size)
        loss = policy.bc_loss(
            {OBS_STATE: states[idx]}, [demos.instruction] * len(idx), targets[idx]
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        running = 0.95 * running + 0.05 * float(loss.detach())
        bar.set_postfix(loss=f"{running:.4f}")
        if plain and (it + 1) % every == 0 and it + 1 < cfg.iters:
            log(f"sft: step {it + 1}/{cfg.iters}, BC loss {running:.4f} "
                f"({time.perf_counter() - t0:.0f}s)")
    bar.close()
    train_s = time.perf_counter() - t0
    loss_end = probe_loss()
    log(f"sft: {cfg.iters} steps in {train_s:.1f}s; BC loss {loss_start:.4f} -> {loss_end:.4f}")

    # 4. save, then evaluate on held-out initial states (sampled: what RL starts from)
    result = SFTResult(
        checkpoint=out / SFT_POLICY,
        demo_success_rate=demos.success_rate,
        demo_chunks=n,
        loss_start=loss_start,
        loss_end=loss_end,
        train_s=train_s,
        collect_s=collect_s,
    )
    save_policy(result.checkpoint, policy, extra={"sft": cfg.to_dict()})
    if cfg.eval_episodes:
        init_states = list(range(EVAL_INIT_OFFSET, EVAL_INIT_OFFSET + cfg.eval_episodes))
        for deterministic in (False, True):
            r = evaluate_policy(
                policy,
                cfg.env,
                init_states,
                deterministic=deterministic,
                seed=cfg.seed,
                max_steps=cfg.max_steps,
                num_workers=auto_workers(cfg.runtime.num_workers),
            )
            result.evals[r.mode] = r
            log(
                f"sft: held-out success ({r.mode}) {r.success_rate:.1%} over {r.episodes} "
                f"episodes ({r.seconds:.1f}s)"
            )
    (out / SFT_SUMMARY).write_text(json.dumps(result.summary(), indent=2) + "\n")
    log(f"sft: wrote {result.checkpoint}")
    return result
