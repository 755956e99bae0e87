"""`pcm-train rl`: GRPO post-training with PCM chunk selection, step by step.

Each step:

1. roll out G episodes from each of the step's initial states (this rank's share), recording
   the old log-probs as the actions are sampled (no extra forward pass);
2. submit the batch to the selector (one request for the global batch, id deterministic per
   (run, trainer, step)) and get chunk masks and weights back;
3. update: `grpo_update` (`trainer_client.grpo`) with the run's `GRPOConfig` (`cfg.grpo`):
   only the kept chunks are gathered, forwarded and backpropagated, then the optimizer steps;
   across torchrun ranks the same update, its gradients summed over the ranks
   (`distributed_update`); with --kl-coef > 0 against the frozen start policy;
4. report the outcome (success rate, loss, kept chunks, stage timings) to the selector; log a
   line, a metrics.jsonl row and, every --checkpoint-every steps, a checkpoint.

`_train` reads top to bottom: the setup, then `for step` with each stage one call to a function
of this module (rollout, select_chunks, update, report_outcome, log_step, checkpoint, evaluate),
then `finish`.

`--algo` is the selector's mode: pcm (phase-weighted fixed budget), grpo (every chunk of the
informative trajectories), random (the same budget as pcm, drawn uniformly).

`--device`, `--precision` and `--parallel`: `trainer_client.device`. The policy (rollout queries
included), the update and the optimizer state live on the device; the simulators stay in CPU
worker processes. Under `--parallel fsdp` the update runs on an FSDP2-sharded copy and the
rollouts on a full replica refreshed after every step (`trainer_client.train.distributed`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from trainer_client.clients import EmbeddedClient, SelectorClient, connect
from trainer_client.device import (
    SetupError,
    device_name,
    prepare_device,
    resolve_device,
    synchronize,
)
from trainer_client.features import feature_dim_for
from trainer_client.grpo import GRPOConfig, UpdateStats, grpo_update
from trainer_client.phases import choose_segmenter, phase_counts, relabel
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
    load_keep_schedule,
    request_id,
    scheduled_keep_fraction,
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
from trainer_client.types import Trajectory

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


@dataclass
class Learner:
    """What a rank trains: the policy, the module the optimizer updates, where it starts."""

    policy: TrainPolicy  # the full replica: rollouts, evaluation, checkpoints
    trained: torch.nn.Module  # the policy itself, or its FSDP2 shards (--parallel fsdp)
    optimizer: torch.optim.Optimizer
    ref_policy: TrainPolicy | None  # the frozen start policy of the KL term (--kl-coef > 0)
    start_step: int = 0
    wall_s: float = 0.0  # training seconds so far (resumed runs count the earlier ones)
    resumed_from: Path | None = None
    segmenter: str | None = None  # --segmenter auto: the choice, made on the first batch
    selector_state: dict[str, Any] | None = None  # the embedded selector's, from the checkpoint


@dataclass
class SelectorRun:
    """Rank 0's side of the run at the selector (client and metrics are None on other ranks)."""

    client: SelectorClient | None
    metrics: MetricsLog | None
    feature_dim: int


@dataclass
class StepTimes:
    """Seconds of a step's stages, as the outcome report and the metrics carry them."""

    rollout_s: float = 0.0
    select_s: float = 0.0
    backward_s: float = 0.0
    step_s: float = 0.0

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        setattr(self, f"{name}_s", time.perf_counter() - t0)


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
    device = resolve_device(cfg.runtime.device)
    prepare_device(device)
    dist = init_distributed(device)
    try:
        result = _train(cfg, dist, device, log_line or _print_line, client, observer)
    except BaseException:
        shutdown_distributed(dist, finished=False)
        raise
    shutdown_distributed(dist)
    return result


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
    out = prepare_run(cfg, dist, device)
    with RolloutCollector(
        cfg.env,
        num_workers=auto_workers(cfg.runtime.num_workers, dist.world_size),
        max_steps=cfg.max_steps,
    ) as collector:
        # ---- setup: the policy and the optimizer, the selector run, the step-0 evaluation ------
        learner = setup_learner(cfg, dist, device, out, say)
        if observer is not None:
            observer(learner.start_step, learner.trained, learner.optimizer)
        run = open_selector_run(cfg, dist, device, learner, collector.info, client, say)
        # step 0's evaluation, or the one a resumed run missed (stopped between its checkpoint
        # and its evaluation)
        if evaluation_missing(cfg, run, learner.start_step):
            evaluate(cfg, dist, learner, collector, run, learner.start_step, say)
        bar = progress_bar(cfg, dist, learner.start_step)

        step = learner.start_step
        for step in range(learner.start_step + 1, cfg.steps + 1):
            times = StepTimes()
            t_step = time.perf_counter()
            # rollout: G episodes from each of this rank's initial states; old log-probs recorded
            with times.stage("rollout"):
                trajectories = rollout(cfg, dist, collector, learner, step, say)
            env_steps = dist.all_sum([sum(t.num_steps for t in trajectories)])[0]
            # select: one request for the global batch; masks and weights for our trajectories
            with times.stage("select"):
                sel = select_chunks(cfg, dist, run, trajectories, step)
            # update: selective backward over the kept chunks only, then the optimizer step
            with times.stage("backward"):
                stats = update(cfg, dist, device, learner, trajectories, sel, step)
            times.step_s = time.perf_counter() - t_step
            learner.wall_s += times.step_s

            # report the outcome to the selector, log the step
            if dist.is_main:
                report_outcome(cfg, run, sel, stats, times, step)
                log_step(cfg, run, learner, collector.info, sel, stats, times, env_steps, step, say)
            bar.update(1)
            bar.set_postfix(success=f"{sel.success_rate:.2f}", kept=f"{sel.kept_fraction:.2f}")

            # checkpoint and evaluate
            budget_hit = bool(cfg.time_budget_s) and learner.wall_s >= cfg.time_budget_s
            if step % cfg.checkpoint_every == 0 or step == cfg.steps or budget_hit:
                checkpoint(cfg, dist, out, learner, run, step)
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps or budget_hit):
                evaluate(cfg, dist, learner, collector, run, step, say)
            if observer is not None:
                observer(step, learner.trained, learner.optimizer)
            dist.barrier()
            if budget_hit:
                say(f"time budget of {cfg.time_budget_s:.0f}s reached after step {step}; stopping")
                break
        bar.close()

    # ---- the final policy, the summary and the PNG ----------------------------------------------
    return finish(cfg, dist, device, out, learner, run, step, say)


# ---- setup ------------------------------------------------------------------------------------


def prepare_run(cfg: TrainConfig, dist: Dist, device: torch.device) -> Path:
    """Refuse what cannot run here, make the output dir, set the threads and the seed."""
    if cfg.runtime.parallel == "fsdp" and (problem := fsdp_problem(device)) is not None:
        raise SetupError(problem)  # refused at start-up, also where one process would not shard
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.runtime.threads or max(1, (os.cpu_count() or 1) // dist.world_size))
    torch.manual_seed(cfg.seed)
    return out


def setup_learner(
    cfg: TrainConfig, dist: Dist, device: torch.device, out: Path, say: Callable[[str], None]
) -> Learner:
    """The policy (the latest checkpoint's with --resume, else --init's or a fresh one), the same
    on every rank, on the device; the module the optimizer updates and the optimizer, their
    state restored when resuming."""
    env_spec = probe_env(cfg.env, {"max_steps": cfg.max_steps} if cfg.max_steps else None)
    ckpt_path = latest_checkpoint(out) if cfg.resume else None
    policy, ref_policy = load_policies(cfg, env_spec, ckpt_path)
    check_policy_fits_env(policy, env_spec)
    for p in (policy, ref_policy):
        if p is not None:
            p.to(device)
            p.set_precision(cfg.runtime.precision)
    dist.broadcast_parameters(policy)  # identical start on every rank
    # the module the optimizer updates: the policy itself, or its FSDP2 shards (the policy then
    # stays a full replica for the rollouts, evaluation and checkpoints)
    fsdp = cfg.runtime.parallel == "fsdp" and dist.enabled
    trained = shard_policy(policy, device, dist.world_size) if fsdp else policy
    optimizer = make_rl_optimizer(trained, cfg.grpo, cfg.log_std_lr)
    learner = Learner(policy, trained, optimizer, ref_policy, resumed_from=ckpt_path)
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path)
        load_optimizer_state(optimizer, ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        learner.start_step, learner.wall_s = int(ckpt["step"]), float(ckpt["wall_s"])
        learner.selector_state = ckpt.get("selector_state")
        learner.segmenter = (ckpt.get("config") or {}).get("segmenter_used")
        say(f"resuming from {ckpt_path} (step {learner.start_step})")
    elif cfg.resume:
        say(f"--resume: no checkpoint in {out / 'checkpoints'}; starting from step 0")
    if ckpt_path is None and dist.is_main:  # a fresh run owns this dir: drop an old run's files
        for _, old in list_checkpoints(out):
            old.unlink()
    return learner


def load_policies(
    cfg: TrainConfig, env_spec: Any, ckpt_path: Path | None
) -> tuple[TrainPolicy, TrainPolicy | None]:
    """The policy to train (the checkpoint's when resuming, else the run's start policy: --init's
    or a fresh one) and, where the update has a KL term (--kl-coef > 0), the frozen reference:
    the run's start policy."""
    ref_policy = start_policy(cfg, env_spec) if cfg.grpo.kl_coef > 0 else None
    if ckpt_path is not None:
        policy = load_policy(ckpt_path)
    elif ref_policy is not None:
        policy = copy.deepcopy(ref_policy)
    else:
        policy = start_policy(cfg, env_spec)
    if ref_policy is not None:
        ref_policy.requires_grad_(False)
    return policy, ref_policy


def start_policy(cfg: TrainConfig, env_spec: Any) -> TrainPolicy:
    """The run's start: the --init checkpoint, or a fresh policy of --preset for the env."""
    if cfg.init is not None:
        return load_policy(cfg.init)
    return TrainPolicy(
        policy_config_for_env(
            env_spec, preset=cfg.preset, chunk_size=cfg.chunk_size, init_log_std=cfg.init_log_std
        )
    )


def open_selector_run(
    cfg: TrainConfig,
    dist: Dist,
    device: torch.device,
    learner: Learner,
    info: Any,
    client: SelectorClient | None,
    say: Callable[[str], None],
) -> SelectorRun:
    """Rank 0 connects to the selector, creates (or joins) the run and opens metrics.jsonl."""
    policy = learner.policy
    sel = cfg.selection
    feature_dim = feature_dim_for(sel.score, policy.chunk_size, policy.action_dim, cfg.signal_dim)
    if not dist.is_main:
        return SelectorRun(client=None, metrics=None, feature_dim=feature_dim)
    if client is None:
        options = {"token": cfg.token} if cfg.token and cfg.selector != "embedded" else {}
        client = connect(cfg.selector, **options)
    assert cfg.run_id is not None
    run = client.put_run(cfg.run_id, **cfg.run_config(feature_dim))
    resumed = learner.resumed_from is not None
    if resumed and learner.selector_state is not None and isinstance(client, EmbeddedClient):
        # the in-process selector starts empty: put back its state at the checkpoint
        client.import_state(cfg.run_id, learner.selector_state)
        run = client.get_run(cfg.run_id)
        say(f"embedded selector: run state restored at version {run.state_version}")
    if run.state_version and not resumed:
        say(
            f"note: run {cfg.run_id} already has {run.state_version} selections at "
            f"{cfg.selector}; steps this trainer repeats replay their stored answers "
            "(use a new --run-id for an independent run)"
        )
    metrics = MetricsLog(
        Path(cfg.out) / METRICS_FILE, resume_after=learner.start_step if resumed else None
    )
    say(
        f"rl: {cfg.algo} on {cfg.env} | run {cfg.run_id} | trainer {cfg.trainer_id} | "
        f"selector {cfg.selector} | {dist.world_size} rank(s)"
        + (f" ({cfg.runtime.parallel})" if dist.enabled else "")
        + f" | {device} ({device_name(device)}) {cfg.runtime.precision} | policy "
        f"{policy.num_params() / 1e6:.2f} M params | batch {cfg.init_states} init states "
        f"x G={cfg.group_size} | {_budget_words(cfg)} | {info.task_id} "
        f"max {info.max_steps} steps"
    )
    if cfg.algo == "pcm" and learner.start_step == 0:
        rules = "".join([
            f", scores over windows of {sel.score_window} batches" if sel.score_window else "",
            f", keep rule {sel.keep_rule}" if sel.keep_rule != "share" else "",
            f", {sel.phase_weighting} phase weights" if sel.phase_weighting != "none" else "",
        ])
        say(f"pcm: {sel.score} score, {sel.weighting} weighting{rules}, {cfg.segmenter} phases;"
            " keep probs before the first batch: uniform ["
            + " ".join(f"{1 / sel.phases:.2f}" for _ in range(sel.phases)) + "]")
    if cfg.runtime.parallel == "fsdp" and not dist.enabled:
        say("--parallel fsdp: a single process has nothing to shard; running unsharded")
    return SelectorRun(client=client, metrics=metrics, feature_dim=feature_dim)


def _budget_words(cfg: TrainConfig) -> str:
    sel = cfg.selection
    if cfg.algo == "grpo":
        return "every chunk"
    if cfg.keep_schedule:
        return f"keep fractions from {cfg.keep_schedule}"
    if sel.budget_rule == "auto" and sel.budget_objective == "rate":
        return (f"budget auto (the most progress per second from the reported timings, keep "
                f"fraction >= {sel.min_keep_fraction}; target efficiency "
                f"{sel.target_efficiency} until they give the step time)")
    if sel.budget_rule == "auto":
        return (f"budget auto (target efficiency {sel.target_efficiency}, keep fraction >= "
                f"{sel.min_keep_fraction})")
    return f"keep fraction {sel.keep_fraction}" if not sel.budget else f"budget {sel.budget}"


def progress_bar(cfg: TrainConfig, dist: Dist, start_step: int) -> tqdm:
    """A bar on a terminal; in a file or CI only the per-step lines (no carriage-return
    flood)."""
    return tqdm(
        total=cfg.steps,
        initial=start_step,
        desc=f"rl {cfg.algo}",
        disable=not (cfg.runtime.progress and dist.is_main and sys.stderr.isatty()),
        file=sys.stderr,
        dynamic_ncols=True,
    )


# ---- a step -----------------------------------------------------------------------------------


def rollout(
    cfg: TrainConfig,
    dist: Dist,
    collector: RolloutCollector,
    learner: Learner,
    step: int,
    say: Callable[[str], None],
) -> list[Trajectory]:
    """G episodes from each of this rank's share of the step's initial states. With --segmenter
    auto the first batch decides the run's segmenter (`phases.choose_segmenter`, the same on
    every rank) and is relabelled if that is not the gripper's."""
    init_states = shard(step_init_states(cfg, step, collector.info.num_init_states), dist)
    segmenter = cfg.segmenter if cfg.segmenter != "auto" else learner.segmenter or "gripper"
    trajectories = collector.collect(
        learner.policy,
        init_states,
        group_size=cfg.group_size,
        segmenter=segmenter,
        num_phases=cfg.selection.phases,
        seed=step_seed(cfg, step, dist.rank),
        step=step,
        head_grads=cfg.selection.score == "signal",
    )
    if cfg.segmenter == "auto" and learner.segmenter is None:
        num_phases = cfg.selection.phases
        counts = phase_counts(trajectories, num_phases)
        learner.segmenter, why = choose_segmenter(np.asarray(dist.all_sum(counts.tolist())))
        say(f"segmenter auto: {learner.segmenter} ({why})")
        if learner.segmenter != "gripper":
            relabel(trajectories, learner.segmenter, num_phases, collector.info.max_steps)
    return trajectories


def select_chunks(
    cfg: TrainConfig, dist: Dist, run: SelectorRun, trajectories: list[Trajectory], step: int
) -> StepSelection:
    """The selector's masks and weights for this rank's trajectories: one request for the global
    batch, its id deterministic per (run, trainer, step)."""
    assert cfg.run_id is not None and cfg.trainer_id is not None
    return select_global(
        dist,
        run.client,
        cfg.run_id,
        trajectories,
        request_id=request_id(cfg.run_id, cfg.trainer_id, step),
        trainer_id=cfg.trainer_id,
        step=step,
        score=cfg.selection.score,
        feature_dim=run.feature_dim,
        keep_fraction=(scheduled_keep_fraction(load_keep_schedule(cfg.keep_schedule), step)
                       if cfg.keep_schedule else None),
    )


def update(
    cfg: TrainConfig,
    dist: Dist,
    device: torch.device,
    learner: Learner,
    trajectories: list[Trajectory],
    sel: StepSelection,
    step: int,
) -> UpdateStats:
    """The actor update on the kept chunks (`grpo_update`; across ranks `distributed_update`,
    the same update with the gradients summed over the ranks), then the rollouts' replica
    refreshed under FSDP."""
    set_lr_for_step(learner.optimizer, step, cfg.lr_warmup_steps)
    update_fn: Callable[..., UpdateStats] = grpo_update
    if dist.enabled:  # the loss coefficients of the global batch, gradients summed over ranks
        update_fn = functools.partial(
            distributed_update,
            dist=dist,
            global_informative_chunks=sel.informative_chunks,
            global_informative_trajectories=sel.informative_trajectories,
            global_kept_chunks=sel.kept_chunks,
        )
    stats = update_fn(
        learner.trained,
        learner.optimizer,
        trajectories,
        sel.masks,
        sel.weights,
        config=cfg.grpo,
        denominator=cfg.loss_denominator,
        ref_policy=learner.ref_policy,
    )
    if learner.trained is not learner.policy:
        sync_replica(learner.trained, learner.policy)  # the rollouts' full copy of the new weights
    synchronize(device)  # CUDA runs asynchronously: time the finished update
    return stats


def report_outcome(
    cfg: TrainConfig,
    run: SelectorRun,
    sel: StepSelection,
    stats: UpdateStats,
    times: StepTimes,
    step: int,
) -> None:
    """Tell the selector how the step went (rank 0): its outcome updates the phase scores."""
    assert run.client is not None and cfg.run_id is not None
    run.client.report_outcomes(
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
                "rollout_s": times.rollout_s,
                "select_s": times.select_s,
                "backward_s": times.backward_s,
            },
        },
    )


def log_step(
    cfg: TrainConfig,
    run: SelectorRun,
    learner: Learner,
    info: Any,
    sel: StepSelection,
    stats: UpdateStats,
    times: StepTimes,
    env_steps: float,
    step: int,
    say: Callable[[str], None],
) -> None:
    """A metrics.jsonl row and a line (rank 0)."""
    assert run.metrics is not None
    row = _step_row(
        step, sel, stats, learner.policy, info.task_id, env_steps, times, learner.wall_s
    )
    run.metrics.write(row)
    say(_format_line(row, cfg.steps, cfg.algo))


def checkpoint(cfg: TrainConfig, dist: Dist, out: Path, learner: Learner, run: SelectorRun,
               step: int) -> None:
    """The policy, the optimizer state, the RNG state and, with the embedded selector, its run
    state (rank 0 writes; every rank takes part: the ranks must agree first, and FSDP gathers
    the optimizer state from the shards)."""
    dist.check_in_sync(learner.policy)  # ranks must agree before one of them speaks for all
    state = optimizer_state(learner.optimizer)  # gathered from the shards under FSDP
    if dist.is_main:
        assert cfg.run_id is not None
        selector_state = (run.client.export_state(cfg.run_id)
                          if isinstance(run.client, EmbeddedClient) else None)
        save_checkpoint(
            out,
            step,
            learner.policy,
            learner.optimizer,
            optimizer_state=state,
            wall_s=learner.wall_s,
            config={**cfg.to_dict(), "segmenter_used": learner.segmenter},
            keep=cfg.keep_checkpoints,
            selector_state=selector_state,
        )


def evaluation_missing(cfg: TrainConfig, run: SelectorRun, step: int) -> bool:
    """The held-out evaluation due at `step` (step 0, every --eval-every steps, the last step)
    is not in the run's metrics yet: a fresh run's step 0, or a run stopped after its
    checkpoint at `step` and before that step's evaluation, now resumed there (rank 0 says;
    the other ranks do not evaluate)."""
    if not cfg.eval_every or (step % cfg.eval_every and step != cfg.steps):
        return False
    return run.metrics is not None and step not in run.metrics.eval_steps


def evaluate(
    cfg: TrainConfig,
    dist: Dist,
    learner: Learner,
    collector: RolloutCollector,
    run: SelectorRun,
    step: int,
    say: Callable[[str], None],
) -> None:
    """Held-out success (rank 0; the other ranks wait at their next collective)."""
    if not dist.is_main or run.metrics is None:
        return
    r = evaluate_policy(
        learner.policy,
        cfg.env,
        eval_init_states(collector.info.num_init_states, cfg.eval_episodes),
        seed=cfg.seed,
        collector=collector,
    )
    run.metrics.write(
        {
            "kind": "eval",
            "step": step,
            "mode": r.mode,
            "wall_s": learner.wall_s,
            "success_rate": r.success_rate,
            "episodes": r.episodes,
        }
    )
    say(f"eval step {step}: held-out success {r.success_rate:.1%} ({r.episodes} episodes)")


# ---- the end ----------------------------------------------------------------------------------


def finish(
    cfg: TrainConfig,
    dist: Dist,
    device: torch.device,
    out: Path,
    learner: Learner,
    run: SelectorRun,
    step: int,
    say: Callable[[str], None],
) -> RLResult:
    """The final policy, summary.json and the PNG (rank 0); every rank's parameter digest."""
    policy = learner.policy
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
    if not dist.is_main:
        return result
    save_policy(result.final_policy, policy, extra={"rl": cfg.to_dict(), "step": step})
    rows = read_metrics(result.metrics)
    result.summary = summarize(rows, cfg)
    result.summary["runtime"] = {
        "device": str(device),
        "device_name": device_name(device),
        "precision": cfg.runtime.precision,
        "parallel": cfg.runtime.parallel if dist.enabled else "none",
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
    if run.client is not None and cfg.selector != "embedded":
        run.client.close()
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


def _step_row(
    step: int,
    sel: StepSelection,
    stats: UpdateStats,
    policy: TrainPolicy,
    task_id: str,
    env_steps: float,
    times: StepTimes,
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
        "rollout_s": times.rollout_s,
        "select_s": times.select_s,
        "backward_s": times.backward_s,
        "step_s": times.step_s,
        "wall_s": wall_s,
        "keep_probs": sel.keep_probs.get(task_id),
        "predicted_efficiency": sel.predicted_efficiency,
        "predicted_rate": sel.predicted_rate,
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
    if row.get("predicted_efficiency") is not None:  # the adaptive budget's prediction
        line += f" | predicted efficiency {row['predicted_efficiency']:.2f}"
    if row.get("predicted_rate") is not None:  # budget objective rate: progress per second
        line += f" | predicted rate {row['predicted_rate']:.2f}x"
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
