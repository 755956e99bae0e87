"""`pcm-train rl`: GRPO post-training with PCM chunk selection, step by step.

Each step:

1. roll out G episodes from each of the step's initial states (this rank's share), recording
   the old log-probs as the actions are sampled (no extra forward pass);
2. submit the batch to the selector (one request for the global batch, id deterministic per
   (run, trainer, step)) and get chunk masks and weights back;
3. selective backward: only the kept chunks are gathered, forwarded and backpropagated (the
   gradients all-reduced across torchrun ranks), then one optimizer step;
4. report the outcome (success rate, loss, kept chunks, stage timings) to the selector; log a
   line, a metrics.jsonl row and, every --checkpoint-every steps, a checkpoint.

`--algo` is the selector's mode: pcm (phase-weighted fixed budget), grpo (every chunk of the
informative trajectories), random (the same budget as pcm, drawn uniformly).

`--device`, `--precision` and `--parallel`: `trainer_client.device`. The policy (rollout queries
included), the update and the optimizer state live on the device; the simulators stay in CPU
worker processes. Under `--parallel fsdp` the update runs on an FSDP2-sharded copy and the
rollouts on a full replica refreshed after every step (`trainer_client.train.distributed`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from trainer_client.clients import SelectorClient, connect
from trainer_client.device import (
    SetupError,
    device_name,
    prepare_device,
    resolve_device,
    synchronize,
)
from trainer_client.features import feature_dim_for
from trainer_client.grpo import GRPOConfig, UpdateStats, grpo_update
from trainer_client.rollout import RolloutCollector
from trainer_client.train.checkpoint import (
    FINAL_POLICY,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    save_policy,
    set_rng_state,
)
from trainer_client.train.config import (
    EVAL_INIT_OFFSET,
    TRAIN_INIT_POOL,
    TrainConfig,
    auto_workers,
    request_id,
)
from trainer_client.train.distributed import (
    Dist,
    distributed_update,
    fsdp_problem,
    init_distributed,
    load_optimizer_state,
    optimizer_state,
    shard,
    shard_policy,
    shutdown_distributed,
    sync_replica,
)
from trainer_client.train.evaluate import evaluate_policy
from trainer_client.train.metrics import METRICS_FILE, MetricsLog, read_metrics
from trainer_client.train.model import (
    TrainPolicy,
    check_policy_fits_env,
    load_policy,
    policy_config_for_env,
    probe_env,
)
from trainer_client.train.plots import PLOT_FILE, plot_training
from trainer_client.train.selection import StepSelection, select_global

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
DIGEST_FILE = "params_rank{rank}.sha256"  # written by every rank at the end (torchrun)


@dataclass
class RLResult:
    out: Path
    steps_done: int
    final_policy: Path
    metrics: Path
    plot: Path | None
    summary: dict[str, Any] = field(default_factory=dict)


def step_init_states(cfg: TrainConfig, step: int, num_init_states: int | None) -> list[int]:
    """The step's initial states (all ranks): distinct draws from the training pool, the same on
    every rank and in every re-run of the step."""
    pool = num_init_states if num_init_states is not None else TRAIN_INIT_POOL
    rng = np.random.default_rng([cfg.seed, step, 0x1517])
    return sorted(int(i) for i in rng.choice(pool, size=cfg.init_states, replace=False))


def step_seed(cfg: TrainConfig, step: int, rank: int) -> int:
    """Seed of the step's action sampling on a rank (so a resumed step samples the same)."""
    return int(np.random.SeedSequence([cfg.seed, step, rank]).generate_state(1)[0])


def eval_init_states(num_init_states: int | None, episodes: int) -> list[int]:
    if num_init_states is None:  # MetaWorld: the held-out range
        return list(range(EVAL_INIT_OFFSET, EVAL_INIT_OFFSET + episodes))
    return list(range(min(episodes, num_init_states)))  # LIBERO: its bundled states


# called on every rank with (step, the module the optimizer updates, the optimizer): once after
# set-up (with the start step) and after every step
Observer = Callable[[int, torch.nn.Module, torch.optim.Optimizer], None]


def train_rl(
    cfg: TrainConfig,
    log_line: Callable[[str], None] | None = None,
    client: SelectorClient | None = None,
    observer: Observer | None = None,
) -> RLResult:
    """Run (or resume) an RL job. `client` overrides --selector (e.g. a shared embedded one);
    `observer` sees the trained module and the optimizer after set-up and after every step.
    Raises `SetupError` (one line saying what to change) when the device, precision or
    parallelism asked for cannot run here."""
    device = resolve_device(cfg.device)
    prepare_device(device)
    dist = init_distributed(device)
    try:
        return _train(cfg, dist, device, log_line or _print_line, client, observer)
    finally:
        shutdown_distributed(dist)


def _print_line(line: str) -> None:
    tqdm.write(line, file=sys.stdout)


def _train(
    cfg: TrainConfig,
    dist: Dist,
    device: torch.device,
    say: Callable[[str], None],
    client: SelectorClient | None,
    observer: Observer | None,
) -> RLResult:
    assert cfg.run_id is not None and cfg.trainer_id is not None
    if not dist.is_main:
        say = lambda _line: None  # noqa: E731 - only rank 0 talks
    if cfg.parallel == "fsdp" and (problem := fsdp_problem(device)) is not None:
        raise SetupError(problem)  # refused at start-up, also where one process would not shard
    fsdp = cfg.parallel == "fsdp" and dist.enabled
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // dist.world_size))
    torch.manual_seed(cfg.seed)
    grpo_cfg = GRPOConfig(
        lr=cfg.lr,
        micro_batch=cfg.micro_batch,
        aggregation=cfg.aggregation,
        loss_denominator="kept" if cfg.weighting == "mean" else "full",
        max_grad_norm=cfg.max_grad_norm,
    )

    # ---- 1. the envs of this rank, the policy and the optimizer -----------------------------
    env_spec = probe_env(cfg.env, {"max_steps": cfg.max_steps} if cfg.max_steps else None)
    with RolloutCollector(
        cfg.env,
        num_workers=auto_workers(cfg.num_workers, dist.world_size),
        max_steps=cfg.max_steps,
    ) as collector:
        info = collector.info
        ckpt_path = latest_checkpoint(out) if cfg.resume else None
        if ckpt_path is not None:
            policy = load_policy(ckpt_path)
        elif cfg.init is not None:
            policy = load_policy(cfg.init)
        else:
            policy = TrainPolicy(
                policy_config_for_env(
                    env_spec,
                    preset=cfg.preset,
                    chunk_size=cfg.chunk_size,
                    init_log_std=cfg.init_log_std,
                )
            )
        check_policy_fits_env(policy, env_spec)
        policy.to(device)
        policy.set_precision(cfg.precision)
        dist.broadcast_parameters(policy)  # identical start on every rank
        # the module the optimizer updates: the policy itself, or its FSDP2 shards (the policy
        # then stays a full replica for the rollouts, evaluation and checkpoints)
        trained = shard_policy(policy, device, dist.world_size) if fsdp else policy
        optimizer = make_rl_optimizer(trained, grpo_cfg, cfg.log_std_lr)
        start_step, wall_s = 0, 0.0
        if ckpt_path is not None:
            ckpt = load_checkpoint(ckpt_path)
            load_optimizer_state(optimizer, ckpt["optimizer"])
            set_rng_state(ckpt["rng"])
            start_step, wall_s = int(ckpt["step"]), float(ckpt["wall_s"])
            say(f"resuming from {ckpt_path} (step {start_step})")
        elif cfg.resume:
            say(f"--resume: no checkpoint in {out / 'checkpoints'}; starting from step 0")
        if ckpt_path is None and dist.is_main:  # a fresh run owns this dir: drop an old run's files
            for _, old in list_checkpoints(out):
                old.unlink()
        if observer is not None:
            observer(start_step, trained, optimizer)
        k, a = policy.chunk_size, policy.action_dim
        feature_dim = feature_dim_for(cfg.score, k, a, cfg.signal_dim)

        # ---- 2. the selector run (rank 0 talks to the selector) ---------------------------------
        metrics: MetricsLog | None = None
        if dist.is_main:
            if client is None:
                options = {"token": cfg.token} if cfg.token and cfg.selector != "embedded" else {}
                client = connect(cfg.selector, **options)
            run = client.put_run(
                cfg.run_id,
                phases=cfg.phases,
                keep_fraction=cfg.keep_fraction,
                eps=cfg.eps,
                eta=cfg.eta,
                weighting=cfg.weighting,
                seed=cfg.seed,
                feature_dim=feature_dim,
                mode=cfg.algo,
                score=cfg.score,
                budget=cfg.budget,
            )
            if run.state_version and ckpt_path is None:
                say(
                    f"note: run {cfg.run_id} already has {run.state_version} selections at "
                    f"{cfg.selector}; steps this trainer repeats replay their stored answers "
                    "(use a new --run-id for an independent run)"
                )
            metrics = MetricsLog(
                out / METRICS_FILE, resume_after=start_step if ckpt_path is not None else None
            )
            say(
                f"rl: {cfg.algo} on {cfg.env} | run {cfg.run_id} | trainer {cfg.trainer_id} | "
                f"selector {cfg.selector} | {dist.world_size} rank(s)"
                + (f" ({cfg.parallel})" if dist.enabled else "")
                + f" | {device} ({device_name(device)}) {cfg.precision} | policy "
                f"{policy.num_params() / 1e6:.2f} M params | batch {cfg.init_states} init states "
                f"x G={cfg.group_size} | keep fraction {cfg.keep_fraction} | {info.task_id} "
                f"max {info.max_steps} steps"
            )
            if cfg.algo == "pcm" and start_step == 0:
                say(f"pcm: {cfg.score} score, {cfg.weighting} weighting, {cfg.segmenter} phases;"
                    " keep probs before the first batch: uniform ["
                    + " ".join(f"{1 / cfg.phases:.2f}" for _ in range(cfg.phases)) + "]")
            if cfg.parallel == "fsdp" and not dist.enabled:
                say("--parallel fsdp: a single process has nothing to shard; running unsharded")

        def evaluate(step: int) -> None:
            """Held-out success (rank 0; the other ranks wait at their next collective)."""
            if not dist.is_main or metrics is None:
                return
            r = evaluate_policy(
                policy,
                cfg.env,
                eval_init_states(info.num_init_states, cfg.eval_episodes),
                seed=cfg.seed,
                collector=collector,
            )
            metrics.write(
                {
                    "kind": "eval",
                    "step": step,
                    "mode": r.mode,
                    "wall_s": wall_s,
                    "success_rate": r.success_rate,
                    "episodes": r.episodes,
                }
            )
            say(f"eval step {step}: held-out success {r.success_rate:.1%} ({r.episodes} episodes)")

        if cfg.eval_every and start_step == 0:
            evaluate(0)

        # ---- 3. the training loop ---------------------------------------------------------------
        bar = tqdm(
            total=cfg.steps,
            initial=start_step,
            desc=f"rl {cfg.algo}",
            # a bar on a terminal; in a file or CI only the per-step lines (no \r flood)
            disable=not (cfg.progress and dist.is_main and sys.stderr.isatty()),
            file=sys.stderr,
            dynamic_ncols=True,
        )
        step = start_step
        budget_hit = False
        for step in range(start_step + 1, cfg.steps + 1):
            t_step = time.perf_counter()

            # rollout: G episodes from each of this rank's initial states; old log-probs recorded
            t0 = time.perf_counter()
            init_states = shard(step_init_states(cfg, step, info.num_init_states), dist)
            trajectories = collector.collect(
                policy,
                init_states,
                group_size=cfg.group_size,
                segmenter=cfg.segmenter,
                num_phases=cfg.phases,
                seed=step_seed(cfg, step, dist.rank),
                step=step,
                head_grads=cfg.score == "signal",
            )
            rollout_s = time.perf_counter() - t0
            env_steps = dist.all_sum([sum(t.num_steps for t in trajectories)])[0]

            # selection: one request for the global batch; masks and weights for our trajectories
            t0 = time.perf_counter()
            sel = select_global(
                dist,
                client,
                cfg.run_id,
                trajectories,
                request_id=request_id(cfg.run_id, cfg.trainer_id, step),
                trainer_id=cfg.trainer_id,
                step=step,
                score=cfg.score,
                feature_dim=feature_dim,
            )
            select_s = time.perf_counter() - t0

            # selective backward over the kept chunks only, then the optimizer step
            t0 = time.perf_counter()
            set_lr_for_step(optimizer, step, cfg.lr_warmup_steps)
            stats = _update(trained, optimizer, trajectories, sel, grpo_cfg, dist)
            if trained is not policy:
                sync_replica(trained, policy)  # the rollouts' full copy of the new weights
            synchronize(device)  # CUDA runs asynchronously: time the finished update
            backward_s = time.perf_counter() - t0

            # report the outcome, log, checkpoint
            step_s = time.perf_counter() - t_step
            wall_s += step_s
            if dist.is_main and client is not None and metrics is not None:
                client.report_outcomes(
                    cfg.run_id,
                    {
                        "selection_id": sel.selection_id,
                        "request_id": sel.request_id + "/outcome",
                        "trainer_id": cfg.trainer_id,
                        "step": step,
                        "success_rate": sel.success_rate,
                        "loss": float(stats.loss),
                        "kept_chunks": sel.kept_chunks,
                        "timings": {
                            "rollout_s": rollout_s,
                            "select_s": select_s,
                            "backward_s": backward_s,
                        },
                    },
                )
                row = _step_row(
                    step,
                    sel,
                    stats,
                    policy,
                    info.task_id,
                    env_steps,
                    rollout_s,
                    select_s,
                    backward_s,
                    step_s,
                    wall_s,
                )
                metrics.write(row)
                say(_format_line(row, cfg.steps, cfg.algo))
            bar.update(1)
            bar.set_postfix(success=f"{sel.success_rate:.2f}", kept=f"{sel.kept_fraction:.2f}")

            budget_hit = bool(cfg.time_budget_s) and wall_s >= cfg.time_budget_s
            if step % cfg.checkpoint_every == 0 or step == cfg.steps or budget_hit:
                _checkpoint(out, step, policy, optimizer, wall_s, cfg, dist)
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps or budget_hit):
                evaluate(step)
            if observer is not None:
                observer(step, trained, optimizer)
            dist.barrier()
            if budget_hit:
                say(f"time budget of {cfg.time_budget_s:.0f}s reached after step {step}; stopping")
                break
        bar.close()

    # ---- 4. the final policy, the summary and the PNG ---------------------------------------
    digest = dist.check_in_sync(policy)
    if dist.enabled:
        (out / DIGEST_FILE.format(rank=dist.rank)).write_text(digest + "\n")
    result = RLResult(
        out=out,
        steps_done=step,
        final_policy=out / FINAL_POLICY,
        metrics=out / METRICS_FILE,
        plot=None,
    )
    if dist.is_main:
        save_policy(result.final_policy, policy, extra={"rl": cfg.to_dict(), "step": step})
        rows = read_metrics(result.metrics)
        result.summary = summarize(rows, cfg)
        result.summary["runtime"] = {
            "device": str(device),
            "device_name": device_name(device),
            "precision": cfg.precision,
            "parallel": cfg.parallel if dist.enabled else "none",
            "world_size": dist.world_size,
        }
        (out / SUMMARY_FILE).write_text(json.dumps(result.summary, indent=2) + "\n")
        result.plot = plot_training(
            rows, out / PLOT_FILE, title=f"{cfg.algo} on {cfg.env} (run {cfg.run_id})"
        )
        s = result.summary
        if s.get("steps"):
            say(
                f"rl done: {s['steps']} steps in {s['wall_s']:.0f}s | time split rollout "
                f"{s['time_split']['rollout']:.0%} select {s['time_split']['select']:.0%} "
                f"backward {s['time_split']['backward']:.0%} | kept fraction "
                f"{s['kept_fraction']:.2f} | success first/last 10 steps "
                f"{s['success_first10']:.2f} -> {s['success_last10']:.2f}"
            )
        say(f"wrote {result.final_policy}, {result.metrics}, {result.plot}")
        if client is not None and cfg.selector != "embedded":
            client.close()
    return result


def make_rl_optimizer(
    policy: torch.nn.Module, config: GRPOConfig, log_std_lr: float = 0.0
) -> torch.optim.AdamW:
    """`grpo.make_optimizer`'s AdamW, with the action log-std in its own group at `log_std_lr`
    (0: the same lr). The network moves slowly (large steps wreck a fine-tuned policy) while
    the exploration noise adapts within tens of steps. Fused (one kernel; its state, the step
    counter included, lives on the parameters' device), also over FSDP2's sharded parameters."""
    noise = [p for name, p in policy.named_parameters() if name == "log_std"]
    rest = [p for name, p in policy.named_parameters() if name != "log_std"]
    groups: list[dict[str, Any]] = [
        {"params": rest},
        {"params": noise, "lr": log_std_lr or config.lr},
    ]
    optimizer = torch.optim.AdamW(
        groups,
        lr=config.lr,
        eps=config.adam_eps,
        weight_decay=config.weight_decay,
        fused=True,
    )
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    return optimizer


def set_lr_for_step(optimizer: torch.optim.Optimizer, step: int, warmup_steps: int) -> None:
    """Linear warm-up (a function of the step alone, so resuming needs no scheduler state)."""
    factor = min(1.0, step / warmup_steps) if warmup_steps else 1.0
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor


def _update(
    policy: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    trajectories: list[Any],
    sel: StepSelection,
    grpo_cfg: GRPOConfig,
    dist: Dist,
) -> UpdateStats:
    if not dist.enabled:
        return grpo_update(policy, optimizer, trajectories, sel.masks, sel.weights, config=grpo_cfg)
    return distributed_update(
        policy,
        optimizer,
        trajectories,
        sel.masks,
        sel.weights,
        config=grpo_cfg,
        dist=dist,
        global_informative_chunks=sel.informative_chunks,
        global_informative_trajectories=sel.informative_trajectories,
        global_kept_chunks=sel.kept_chunks,
    )


def _checkpoint(
    out: Path,
    step: int,
    policy: TrainPolicy,
    optimizer: torch.optim.Optimizer,
    wall_s: float,
    cfg: TrainConfig,
    dist: Dist,
) -> None:
    dist.check_in_sync(policy)  # ranks must agree before one of them speaks for all
    state = optimizer_state(optimizer)  # gathered from the shards under FSDP: every rank calls
    if dist.is_main:
        save_checkpoint(
            out,
            step,
            policy,
            optimizer,
            optimizer_state=state,
            wall_s=wall_s,
            config=cfg.to_dict(),
            keep=cfg.keep_checkpoints,
        )


def _step_row(
    step: int,
    sel: StepSelection,
    stats: UpdateStats,
    policy: TrainPolicy,
    task_id: str,
    env_steps: float,
    rollout_s: float,
    select_s: float,
    backward_s: float,
    step_s: float,
    wall_s: float,
) -> dict[str, Any]:
    return {
        "kind": "step",
        "step": step,
        "success_rate": sel.success_rate,
        "kept_fraction": sel.kept_fraction,
        "kept_chunks": sel.kept_chunks,
        "informative_chunks": sel.informative_chunks,
        "total_chunks": sel.total_chunks,
        "trajectories": sel.trajectories,
        "informative_trajectories": sel.informative_trajectories,
        "skipped_trajectories": sel.skipped_trajectories,
        "loss": stats.loss,
        "grad_norm": stats.grad_norm,
        "clip_frac": stats.clip_frac,
        "approx_kl": stats.approx_kl,
        "log_std": float(policy.log_std.detach().mean()),
        "env_steps": int(env_steps),
        "rollout_s": rollout_s,
        "select_s": select_s,
        "backward_s": backward_s,
        "step_s": step_s,
        "wall_s": wall_s,
        "keep_probs": sel.keep_probs.get(task_id),
        "selection_id": sel.selection_id,
    }


def _format_line(row: dict[str, Any], steps: int, algo: str = "pcm") -> str:
    """One step's line; the phase keep weights only where they choose chunks (pcm)."""
    probs = row.get("keep_probs") or []
    line = (
        f"step {row['step']:>4}/{steps} | success {row['success_rate']:.2f} | kept "
        f"{row['kept_fraction']:.2f} ({row['kept_chunks']}/{row['informative_chunks']}) | "
        f"loss {row['loss']:+.4f} | rollout {row['rollout_s']:.2f}s select "
        f"{row['select_s']:.3f}s backward {row['backward_s']:.2f}s"
    )
    if algo == "pcm" and probs:
        line += " | keep probs [" + " ".join(f"{p:.2f}" for p in probs) + "]"
    return line


def summarize(rows: list[dict[str, Any]], cfg: TrainConfig | None = None) -> dict[str, Any]:
    """Totals and means of a run's metrics rows (also used by `pcm-bench learning`)."""
    steps = [r for r in rows if r.get("kind", "step") == "step"]
    if not steps:
        return {"steps": 0}
    totals = {
        key: float(sum(r[key] for r in steps))
        for key in ("rollout_s", "select_s", "backward_s", "step_s")
    }
    staged = totals["rollout_s"] + totals["select_s"] + totals["backward_s"]
    success = [r["success_rate"] for r in steps]
    evals = [r for r in rows if r.get("kind") == "eval"]
    informative = sum(r["informative_chunks"] for r in steps)
    return {
        "algo": cfg.algo if cfg else None,
        "env": cfg.env if cfg else None,
        "steps": len(steps),
        "last_step": steps[-1]["step"],
        "wall_s": steps[-1]["wall_s"],
        "seconds": totals,
        "time_split": {
            "rollout": totals["rollout_s"] / staged,
            "select": totals["select_s"] / staged,
            "backward": totals["backward_s"] / staged,
        },
        # kept chunks / chunks of informative trajectories, over the whole run
        "kept_fraction": (
            sum(r["kept_chunks"] for r in steps) / informative if informative else 0.0
        ),
        "success_first10": float(np.mean(success[:10])),
        "success_last10": float(np.mean(success[-10:])),
        "success_mean": float(np.mean(success)),
        "keep_probs_last": steps[-1].get("keep_probs"),
        "evals": [
            {"step": r["step"], "mode": r["mode"], "success_rate": r["success_rate"]} for r in evals
        ],
    }
