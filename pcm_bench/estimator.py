"""`pcm-bench estimator`: where is the learning signal, and which chunk selection finds it?

The instrument behind PCM's phase score and loss weighting (docs/BENCHMARKS.md, "estimator").
From one checkpoint and one task:

1. Collect K rollout batches (init_states x group_size each, the training pool's initial states,
   seeded), recording each chunk's action-head gradient as `pcm-train rl` does for the `signal`
   score.
2. Exact per-chunk gradients of the GRPO objective, g_ic = A_i d log pi(a_ic | o_ic) / d theta
   (every network parameter but the action log-std, which has its own optimizer group), by a
   single-row backward each, sketched to S dims by a random-sign fold (E <Sx, Sy> = <x, y>).
   The first PPO epoch has rho = 1, so these are the exact per-chunk loss gradients.
3. Per phase p: energy E||g_ic||^2 over its chunks, and the signal ||E G_p||^2 with
   G_bp = sum_{c in p} g_ic / N_b the phase's part of batch b's GRPO gradient (N_b informative
   chunks), estimated without the noise term from inner products across batches,
   mean_{b != b'} <G_bp, G_b'p>; share = signal / total signal (negatives count as 0).
4. Per estimator at equal budget (k_i = round(f C_i) kept chunks per informative trajectory),
   R mask draws per batch, each giving g_hat = sum_c coef_c g_ic:
   - `grpo`: every chunk, coef 1 / N_b (the batch gradient g_b itself);
   - `random`: uniform masks; `pcm` with score `action` or `signal`: masks from the selector
     core run over the K batches in order (its online state carried, as in training); `oracle`:
     phase keep weights from the measured signal shares of the *other* batches, with the same
     exploration floor;
   - weighting `mean`: coef 1 / (kept chunks), the masked mean; `ht`: coef (1 / pi) / N_b;
     (`none`: coef 1 / N_b, the same direction as `mean` since the kept count is fixed, so it is
     not listed).
   Reported per estimator, averaged over batches: `alignment`, the cosine of g_hat with the
   held-out expected gradient mean_{b' != b} g_b' (leave-one-batch-out; what an update should
   move along); `cosine` with its own batch's GRPO gradient g_b; `relative_variance`,
   E||g_hat - E g_hat||^2 / ||E g_hat||^2 over the mask draws; `max_weight`, the largest loss
   weight the selector answered (1 / pi under `ht`); `alignment_avg`, the cosine of the
   estimator's mean over half of the batches (each batch's g_hat averaged over its draws) with
   GRPO's mean over the other half, averaged over random half-splits: the direction left once
   averaging over many steps (Adam's momentum, a whole run) has removed the per-batch noise, so
   it exposes an estimator's bias (weight taken off a phase that holds signal) that the
   one-batch `alignment`, dominated by noise, hides. GRPO's own `alignment_avg` is the
   reference, not a ceiling: an estimator quieter than GRPO's half-mean can exceed it;
   `net_advantage`, sum_c coef_c A_c / sum_c coef_c |A_c| over the kept chunks, averaged over
   the draws: how far the kept set leans to failures' (< 0) or successes' (> 0) chunks.
5. `online` (the default PCM): how many batches its online score needs, from an empty state at
   this fixed policy, to put the largest keep weight on the phase with the most signal, over
   random orders of the K batches (`online_convergence`).

Gradient-norm clipping at 1.0 is active on every step at these sizes, so the direction of an
update, which these cosines measure, is what an estimator changes.

Deterministic given --seed (rollouts, sketch signs, selections and draws are all seeded). The
per-batch rollouts and gradient sketches are cached in --out, so a re-run with other estimator
settings (--segmenter, --keep-fraction, --signal-dim, ...) reuses them (same checkpoint, task,
seed, batch shape and sketch size) and costs seconds.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pcm_bench.options import as_paths, json_option
from pcm_bench.regime import regime
from pcm_contract.run_config import RunConfigSchema, schema_fields
from selector_service.core import ChunkBatch, RunConfig, TaskState, keep_weights, select_chunks
from selector_service.core.select import request_rng, sample_chunks
from trainer_client.config_fields import check_choice, check_fields, opt
from trainer_client.device import DEVICE_HELP, resolve_device
from trainer_client.expert import DEMO_MAX_STEPS
from trainer_client.features import chunk_features
from trainer_client.grpo import group_advantages
from trainer_client.phases import label_trajectory, make_segmenter
from trainer_client.policy import VLAPolicy
from trainer_client.rollout import RolloutCollector
from trainer_client.train.config import DEMO_ENV, TRAIN_INIT_POOL, TrainConfig, auto_workers
from trainer_client.train.model import load_policy
from trainer_client.types import Trajectory

# the run config's fields the estimator uses (the common budget and the phases of every
# selection); the others keep their defaults and are no flags
ESTIMATOR_SELECTION = ("phases", "keep_fraction", "eps")
ESTIMATOR_SEGMENTERS = ("gripper", "progress")  # relabelled from the cached rollouts


@dataclass
class EstimatorConfig:
    """`pcm-bench estimator`: its flags are these fields (`trainer_client.cli_options`); the
    budget and the phases (--keep-fraction, --phases, --eps) are the selector run config's, with
    its defaults and checks."""

    init: Path = field(metadata={
        "help": "policy checkpoint to measure (any MetaWorld task: `pcm-train sft --env "
                "metaworld:TASK --out runs/sft-TASK` writes runs/sft-TASK/sft.pt)",
        "typer": {"exists": True, "dir_okay": False}})
    env: str = opt(DEMO_ENV, "metaworld:TASK")
    batches: int = opt(10, "K rollout batches (>= 3: leave-one-out needs two others)", ge=3)
    init_states: int = opt(TrainConfig.init_states, "initial states per batch", ge=1)
    group_size: int = opt(TrainConfig.group_size, "G rollouts per initial state", ge=2)
    selection: RunConfigSchema = field(default_factory=RunConfigSchema, metadata={
        "unused": tuple(f.name for f in schema_fields() if f.name not in ESTIMATOR_SELECTION),
        "help_for": {"keep_fraction": "f: the common chunk budget of every selection",
                     "eps": "exploration floor of pcm and oracle"}})
    segmenter: str = opt("gripper", " | ".join(ESTIMATOR_SEGMENTERS)
                         + " (the phases, relabelled from the cached rollouts)")
    signal_dim: int = opt(TrainConfig.signal_dim, "sketch size the trainer sends", ge=1)
    sketch_dim: int = opt(2**17, "S: size of the exact-gradient sketch", ge=64)
    draws: int = opt(32, "mask draws per batch and estimator", ge=2)
    seed: int = opt(0, "seed of the rollouts and the mask draws", ge=0)
    max_steps: int = opt(DEMO_MAX_STEPS, "env step limit (pcm-train rl's for MetaWorld)", ge=1)
    out: Path = field(default=Path("runs/bench-estimator"), metadata={
        "help": "cache of rollouts and gradient sketches, and the plot"})
    json_path: Path | None = field(default=None, metadata=json_option())
    device: str = opt("auto", DEVICE_HELP)
    num_workers: int = opt(-1, "env worker processes; -1 = auto", cli=False)

    def __post_init__(self) -> None:
        as_paths(self, "init", "out", "json_path")
        check_fields(self.selection, only=ESTIMATOR_SELECTION)
        check_choice("segmenter", self.segmenter, ESTIMATOR_SEGMENTERS)
        check_fields(self)


CACHE_VERSION = 1
AVG_SPLITS = 64  # random half-splits behind `alignment_avg` (the same splits for every estimator)
ONLINE_ORDERS = 64  # random batch orders behind `online` (when the online score finds the signal)


@dataclass(frozen=True)
class Estimator:
    """One row of the table: a chunk selection and a loss weighting at the common budget."""

    name: str
    kind: str  # grpo | random | pcm | oracle | auto | random-auto
    score: str = "-"  # pcm: action | signal
    weighting: str = RunConfigSchema.weighting  # mean | ht
    eps: float = RunConfigSchema.eps
    transform: str = "none"  # pcm: none | sqrt (of the score before the keep weights)
    signal_dim: int = TrainConfig.signal_dim
    variant: bool = False  # a tried variant (beyond the default rows)
    # auto, random-auto: the adaptive budget's target efficiency e*
    target: float = RunConfigSchema.target_efficiency
    phase_weighting: str = RunConfigSchema.phase_weighting  # auto: none | wiener
    carried: bool = False  # auto: the selector state folded from the other batches, not empty


def default_estimators(eps: float, signal_dim: int) -> list[Estimator]:
    rows = [Estimator("grpo", "grpo", weighting="mean", eps=eps),
            Estimator("random mean", "random", weighting="mean", eps=eps),
            Estimator("random ht", "random", weighting="ht", eps=eps)]
    for score in ("action", "signal"):
        for weighting in ("mean", "ht"):
            rows.append(Estimator(f"pcm {score} {weighting}", "pcm", score, weighting, eps,
                                  signal_dim=signal_dim))
    rows.append(Estimator("oracle mean", "oracle", weighting="mean", eps=eps))
    rows.append(Estimator("oracle ht", "oracle", weighting="ht", eps=eps))
    # the adaptive budget (pcm-train's default) and random at its per-batch budget; their
    # budget is the rule's, not --keep-fraction
    rows.append(Estimator("auto ht", "auto", "signal", "ht", signal_dim=signal_dim))
    rows.append(Estimator("random at auto's budget", "random-auto", "signal", "ht",
                          signal_dim=signal_dim))
    # the adaptive budget as a run sees it (its phase scores folded from the other batches),
    # unbiased and with the Wiener phase weighting (biased toward phases whose signal stands
    # above their noise)
    rows.append(Estimator("auto ht carried", "auto", "signal", "ht", signal_dim=signal_dim,
                          carried=True, variant=True))
    rows.append(Estimator("auto wiener carried", "auto", "signal", "ht", signal_dim=signal_dim,
                          phase_weighting="wiener", carried=True, variant=True))
    # variants tried for the default (exploration floor, sqrt of the score, sketch size)
    rows += [
        Estimator("pcm signal mean eps0", "pcm", "signal", "mean", 0.0, signal_dim=signal_dim,
                  variant=True),
        Estimator("pcm signal mean eps0.3", "pcm", "signal", "mean", 0.3,
                  signal_dim=signal_dim, variant=True),
        Estimator("pcm signal mean sqrt", "pcm", "signal", "mean", eps, "sqrt",
                  signal_dim=signal_dim, variant=True),
        Estimator("pcm signal mean D32", "pcm", "signal", "mean", eps, signal_dim=32,
                  variant=True),
        Estimator("pcm signal mean D256", "pcm", "signal", "mean", eps, signal_dim=256,
                  variant=True),
        Estimator("pcm signal mean D512", "pcm", "signal", "mean", eps, signal_dim=512,
                  variant=True),
        Estimator("pcm action mean sqrt", "pcm", "action", "mean", eps, "sqrt", variant=True),
    ]
    return rows


@dataclass
class BatchData:
    """One rollout batch, reduced to what the analysis needs."""

    trajectories: list[Trajectory]  # obs dropped after the gradients are taken
    advantages: np.ndarray  # (N,)
    rows: np.ndarray  # int64 (R, 2): (trajectory, chunk) of every informative chunk
    grads: np.ndarray  # float32 (R, S): sketched A_i d log pi / d theta per informative chunk
    success_rate: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)


# ---- 1-2. rollouts and per-chunk gradient sketches --------------------------------------------


class SignFoldSketch:
    """x (n,) -> S-dim sketch: sum over j = i mod S of s_j x_j with fixed random signs s.
    Unbiased for inner products (E <Sx, Sy> = <x, y>), one multiply and one fold per vector."""

    def __init__(self, params: Sequence[torch.Tensor], dim: int, seed: int,
                 device: torch.device | None = None) -> None:
        self.dim = dim
        n = sum(p.numel() for p in params)
        self.padded = -(-n // dim) * dim
        gen = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same on any device
        signs = torch.randint(0, 2, (self.padded,), generator=gen).float().mul_(2).sub_(1)
        self.signs = signs.to(device)
        self.buffer = torch.zeros(self.padded, device=device)

    def __call__(self, grads: Sequence[torch.Tensor]) -> np.ndarray:
        offset = 0
        for g in grads:
            n = g.numel()
            self.buffer[offset:offset + n] = g.reshape(-1)
            offset += n
        return (self.buffer * self.signs).view(-1, self.dim).sum(0).cpu().numpy()


def chunk_gradients(policy: VLAPolicy, trajectories: Sequence[Trajectory],
                    advantages: np.ndarray, sketch: SignFoldSketch) -> tuple[np.ndarray,
                                                                             np.ndarray]:
    """rows (R, 2) and sketched gradients (R, S) of every chunk of informative trajectories."""
    params = [p for name, p in policy.named_parameters() if name != "log_std"]
    obs_keys = policy.obs_keys
    rows, out = [], []
    for i, (traj, adv) in enumerate(zip(trajectories, advantages, strict=True)):
        if adv == 0.0:
            continue
        for c in range(traj.num_chunks):
            obs = {k: traj.obs[k][c:c + 1] for k in obs_keys}
            logp = policy.log_prob(obs, [traj.instruction], traj.actions[c:c + 1])  # (1,)
            grads = torch.autograd.grad(float(adv) * logp.sum(), params, allow_unused=True)
            out.append(sketch([g if g is not None else torch.zeros_like(p)
                               for g, p in zip(grads, params, strict=True)]))
            rows.append((i, c))
    rows_a = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
    grads_a = (np.stack(out).astype(np.float32) if out
               else np.zeros((0, sketch.dim), np.float32))
    return rows_a, grads_a


def _cache_key(init: Path, env: str, seed: int, init_states: int, group_size: int,
               max_steps: int, sketch_dim: int) -> str:
    digest = hashlib.blake2b(init.read_bytes(), digest_size=8).hexdigest()
    return (f"v{CACHE_VERSION}-{digest}-{env.replace(':', '_')}-s{seed}-{init_states}x"
            f"{group_size}-m{max_steps}-S{sketch_dim}")


def _save_batch(path: Path, data: BatchData) -> None:
    trajs = [{
        "task_id": t.task_id, "group_id": t.group_id, "instruction": t.instruction,
        "success": t.success, "num_steps": t.num_steps,
    } for t in data.trajectories]
    arrays: dict[str, np.ndarray] = {"advantages": data.advantages, "rows": data.rows,
                                     "grads": data.grads}
    for i, t in enumerate(data.trajectories):
        arrays[f"actions_{i}"] = t.actions
        arrays[f"old_logp_{i}"] = t.old_logp
        arrays[f"phase_ids_{i}"] = t.phase_ids
        if t.gripper is not None:
            arrays[f"gripper_{i}"] = t.gripper
        if t.head_grad is not None:
            arrays[f"head_grad_{i}"] = t.head_grad
    tmp = path.with_suffix(".tmp.npz")
    arrays["meta"] = np.array(json.dumps({"trajectories": trajs, **data.meta}))
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    tmp.replace(path)


def _load_batch(path: Path) -> BatchData:
    z = np.load(path, allow_pickle=False)
    meta = json.loads(str(z["meta"]))
    trajs = []
    for i, t in enumerate(meta.pop("trajectories")):
        trajs.append(Trajectory(
            task_id=t["task_id"], group_id=t["group_id"], instruction=t["instruction"], obs={},
            actions=z[f"actions_{i}"], old_logp=z[f"old_logp_{i}"],
            phase_ids=z[f"phase_ids_{i}"], success=bool(t["success"]),
            num_steps=int(t["num_steps"]),
            gripper=z.get(f"gripper_{i}"), head_grad=z.get(f"head_grad_{i}")))
    return BatchData(trajectories=trajs, advantages=z["advantages"], rows=z["rows"],
                     grads=z["grads"], success_rate=float(np.mean([t.success for t in trajs])),
                     meta=meta)


def collect_batches(
    init: Path, env: str, *, batches: int, init_states: int, group_size: int, max_steps: int,
    sketch_dim: int, seed: int, cache_dir: Path, num_workers: int,
    log: Callable[[str], None], device: torch.device | None = None,
) -> list[BatchData]:
    """K batches with their gradient sketches, from the cache where present (appended per
    batch, so an interrupted run resumes)."""
    key = _cache_key(init, env, seed, init_states, group_size, max_steps, sketch_dim)
    cache = cache_dir / key
    cache.mkdir(parents=True, exist_ok=True)
    out: list[BatchData | None] = [None] * batches
    missing = []
    for b in range(batches):
        path = cache / f"batch{b:03d}.npz"
        if path.exists():
            out[b] = _load_batch(path)
        else:
            missing.append(b)
    if missing:
        policy = load_policy(init).to(device or torch.device("cpu"))
        policy.eval()
        policy.set_seed(seed)
        params = [p for name, p in policy.named_parameters() if name != "log_std"]
        sketch = SignFoldSketch(params, sketch_dim, seed, policy.device)
        log(f"estimator: {len(missing)} batch(es) to collect ({len(out) - len(missing)} "
            f"cached in {cache}); policy {policy.num_params() / 1e6:.1f} M params, sketch "
            f"{sketch_dim} dims")
        with RolloutCollector(env, num_workers=num_workers, max_steps=max_steps) as collector:
            for b in missing:
                t0 = time.perf_counter()
                rng = np.random.default_rng([seed, b, 0xE57])
                states = sorted(int(i) for i in rng.choice(TRAIN_INIT_POOL, init_states,
                                                           replace=False))
                trajs = collector.collect(
                    policy, states, group_size=group_size, segmenter="progress", num_phases=4,
                    seed=int(np.random.SeedSequence([seed, b]).generate_state(1)[0]), step=b,
                    head_grads=True)
                t1 = time.perf_counter()
                adv = group_advantages([t.success for t in trajs], [t.group_id for t in trajs])
                rows, grads = chunk_gradients(policy, trajs, adv, sketch)
                data = BatchData(trajectories=trajs, advantages=adv, rows=rows, grads=grads,
                                 success_rate=float(np.mean([t.success for t in trajs])),
                                 meta={"init_states": states, "max_steps": max_steps,
                                       "gripper_threshold": collector.info.gripper_threshold})
                _save_batch(cache / f"batch{b:03d}.npz", data)
                for t in trajs:
                    t.obs = {}
                out[b] = data
                log(f"estimator: batch {b + 1}/{batches}: success {data.success_rate:.2f}, "
                    f"{len(rows)} informative chunks; rollout {t1 - t0:.1f}s, gradients "
                    f"{time.perf_counter() - t1:.1f}s")
    return [d for d in out if d is not None]


# ---- 3. phases: energy, signal, share ---------------------------------------------------------


def phase_of_rows(data: BatchData, segmenter: str, num_phases: int,
                  max_steps: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Per trajectory phase ids under `segmenter` (relabelled from the recorded gripper
    commands), and the phase of each informative row."""
    kw = ({"threshold": float(data.meta["gripper_threshold"])} if segmenter == "gripper"
          else {})
    seg = make_segmenter(segmenter, num_phases, **kw)
    phases = [np.asarray(label_trajectory(seg, t, max_steps), dtype=np.int64)
              for t in data.trajectories]
    row_phase = np.array([phases[i][c] for i, c in data.rows], dtype=np.int64)
    return phases, row_phase


def phase_table(data: Sequence[BatchData], row_phases: Sequence[np.ndarray],
                num_phases: int) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Per phase: chunks, energy, signal, share; and G (K, P, S): each batch's phase parts of
    its GRPO gradient."""
    k = len(data)
    s_dim = data[0].grads.shape[1]
    parts = np.zeros((k, num_phases, s_dim))
    energy_sum = np.zeros(num_phases)
    chunks = np.zeros(num_phases, dtype=np.int64)
    for b, (d, rp) in enumerate(zip(data, row_phases, strict=True)):
        n_b = max(len(d.rows), 1)
        for p in range(num_phases):
            g = d.grads[rp == p].astype(np.float64)
            parts[b, p] = g.sum(0) / n_b
            energy_sum[p] += float(np.einsum("rs,rs->", g, g))
            chunks[p] += len(g)
    signal = cross_batch_signal(parts)  # (P,)
    share = _shares(signal)
    rows = [{"phase": p, "chunks": int(chunks[p]),
             "energy": float(energy_sum[p] / max(chunks[p], 1)),
             "signal": float(signal[p]), "share": float(share[p])} for p in range(num_phases)]
    return rows, parts


def cross_batch_signal(parts: np.ndarray, exclude: int | None = None) -> np.ndarray:
    """||E G_p||^2 per phase from parts (K, P, S): mean over ordered pairs b != b' of
    <G_bp, G_b'p>, leaving out batch `exclude`."""
    idx = [b for b in range(parts.shape[0]) if b != exclude]
    x = parts[idx]  # (K', P, S)
    k = len(idx)
    if k < 2:
        return np.zeros(parts.shape[1])
    total = x.sum(0)
    return (np.einsum("ps,ps->p", total, total) - np.einsum("kps,kps->p", x, x)) / (k * (k - 1))


def _shares(signal: np.ndarray) -> np.ndarray:
    pos = np.maximum(signal, 0.0)
    return pos / pos.sum() if pos.sum() > 0 else np.full_like(pos, 1.0 / len(pos))


# ---- 4. estimators ----------------------------------------------------------------------------


def _batch_for_core(data: BatchData, phases: list[np.ndarray], features: list[np.ndarray],
                    num_phases: int) -> ChunkBatch:
    t = data.trajectories
    return ChunkBatch.from_trajectories(
        [x.task_id for x in t], [x.group_id for x in t], np.array([x.success for x in t]),
        phases, features, num_phases, features[0].shape[1])


def _keep_weights_per_batch(est: Estimator, data: Sequence[BatchData],
                            phases: Sequence[list[np.ndarray]], parts: np.ndarray,
                            num_phases: int, keep_fraction: float,
                            seed: int) -> list[np.ndarray]:
    """The phase keep weights (P,) each batch is sampled with."""
    if est.kind in ("grpo", "random", "auto", "random-auto"):
        return [np.full(num_phases, 1.0 / num_phases) for _ in data]
    if est.kind == "oracle":
        out = []
        for b in range(len(data)):
            share = _shares(cross_batch_signal(parts, exclude=b))
            out.append(est.eps / num_phases + (1.0 - est.eps) * share)
        return out
    config = RunConfig(phases=num_phases, keep_fraction=keep_fraction, eps=est.eps,
                       weighting=est.weighting, seed=seed, score=est.score,
                       feature_dim=est.signal_dim if est.score == "signal" else 1, mode="pcm")
    states: dict[str, TaskState] = {}
    out = []
    for b, (d, ph) in enumerate(zip(data, phases, strict=True)):
        feats = chunk_features(d.trajectories, d.advantages, est.score, est.signal_dim)
        config = replace(config, feature_dim=feats[0].shape[1])
        batch = _batch_for_core(d, ph, feats, num_phases)
        sel = select_chunks(config, batch, states, f"estimator/{b}")
        states = sel.new_states
        if est.transform == "sqrt":
            task = d.trajectories[0].task_id
            w = keep_weights(np.sqrt(np.maximum(np.nan_to_num(states[task].scores), 0.0)),
                             est.eps)
        elif est.transform == "none":
            w = next(iter(sel.keep_probs.values()))
        else:
            raise ValueError(f"unknown transform {est.transform!r}")
        out.append(np.asarray(w, dtype=np.float64))
    return out


def online_convergence(est: Estimator, data: Sequence[BatchData],
                       phases: Sequence[list[np.ndarray]], parts: np.ndarray, num_phases: int,
                       keep_fraction: float, seed: int, orders: int = ONLINE_ORDERS
                       ) -> dict[str, Any]:
    """How many batches the online phase score needs, at this fixed policy, to put its weight
    where the signal is: the selector run from an empty state over `orders` random orders of
    the K batches. Per position n (1, 2, 5, 10, K batches seen): the mean keep weights (P,) and
    the fraction of orders whose largest weight is on the phase with the largest measured
    signal share (`phase_table`). A training run starts from an empty state too, so the first
    positions are its first steps, before the policy has moved."""
    k = len(data)
    top = int(np.argmax(_shares(cross_batch_signal(parts))))
    positions = sorted({n for n in (1, 2, 5, 10, k) if n <= k})
    rng = np.random.default_rng(seed)
    ws = np.zeros((orders, k, num_phases))
    for o in range(orders):
        order = rng.permutation(k)
        ws[o] = _keep_weights_per_batch(est, [data[i] for i in order],
                                        [phases[i] for i in order], parts, num_phases,
                                        keep_fraction, seed)
    return {
        "estimator": est.name, "orders": orders, "signal_top_phase": top,
        "positions": positions,
        "mean_keep_weights": [ws[:, n - 1].mean(0).tolist() for n in positions],
        "top_on_signal_phase": [float(np.mean(ws[:, n - 1].argmax(1) == top))
                                for n in positions],
    }


def _carried_states(est: Estimator, data: Sequence[BatchData],
                    phases: Sequence[list[np.ndarray]], num_phases: int,
                    b: int) -> dict[str, TaskState]:
    """The selector state after the batches other than b, in order: what a run that has seen
    them selects batch b with (the adaptive budget's signal term S and, with `wiener`, the
    phases' alpha come from it)."""
    config = _auto_config(est, num_phases)
    states: dict[str, TaskState] = {}
    for j, (d, ph) in enumerate(zip(data, phases, strict=True)):
        if j == b or len(d.rows) == 0:
            continue
        feats = chunk_features(d.trajectories, d.advantages, "signal", est.signal_dim)
        states = dict(select_chunks(config, _batch_for_core(d, ph, feats, num_phases), states,
                                    f"carry/{b}/{j}").new_states)
    return states


def _draw_coefficients(est: Estimator, data: BatchData, traj_phases: list[np.ndarray],
                       w: np.ndarray, keep_fraction: float, draws: int,
                       seed: int, b: int, states: dict[str, TaskState] | None = None,
                       ) -> tuple[np.ndarray, float]:
    """coef (draws, R) over the batch's informative rows, and the largest selector weight.
    The masks and weights are the selector's own (core `sample_chunks`) with keep weights w;
    `auto` selects from `states` (empty when None)."""
    rows = data.rows
    n_rows = len(rows)
    if est.kind == "grpo":
        return np.full((1, n_rows), 1.0 / max(n_rows, 1)), 1.0
    if est.kind in ("auto", "random-auto"):
        auto = _auto_selection(est, data, traj_phases, len(w))
        if est.kind == "random-auto":  # uniform within trajectories at the rule's count
            keep_fraction = max(auto.budget.keep_fraction, 1e-9) if auto.budget else 0.2
            est = replace(est, kind="random")
        else:
            config = _auto_config(est, len(w))
            feats = chunk_features(data.trajectories, data.advantages, "signal", est.signal_dim)
            batch = _batch_for_core(data, traj_phases, feats, len(w))
            flat = batch.offsets[rows[:, 0]] + rows[:, 1]
            coef = np.zeros((draws, n_rows))
            max_weight = 0.0
            for r in range(draws):
                sel = select_chunks(config, batch, states or {}, f"draw/{est.name}/{b}/{r}")
                coef[r] = sel.weight[flat] / max(n_rows, 1)  # 1/pi over the full count
                max_weight = max(max_weight, float(sel.weight.max(initial=0.0)))
            return coef, max_weight
    lengths = np.array([t.num_chunks for t in data.trajectories], dtype=np.int64)
    n = len(lengths)
    batch = ChunkBatch(
        task_ids=["task"], task_index=np.zeros(n, dtype=np.int64),
        group_index=np.zeros(n, dtype=np.int64), success=np.zeros(n, dtype=bool),
        lengths=lengths, offsets=np.r_[0, np.cumsum(lengths)],
        phase=np.concatenate(traj_phases).astype(np.int64),
        features=np.zeros((int(lengths.sum()), 0), dtype=np.float32),
        traj_of_chunk=np.repeat(np.arange(n), lengths))
    config = RunConfig(phases=len(w), weighting=est.weighting,
                       mode="random" if est.kind == "random" else "pcm")
    informative = data.advantages != 0.0  # (N,): mixed-outcome groups only
    flat = batch.offsets[rows[:, 0]] + rows[:, 1]  # informative rows' flat chunk index
    coef = np.zeros((draws, n_rows))
    max_weight = 0.0
    for r in range(draws):
        rng = request_rng(seed, f"draw/{est.name}/{b}/{r}")
        mask, weight, _pi = sample_chunks(config, batch, w[None, :], informative, rng,
                                          keep_fraction)
        mask, weight = mask[flat], weight[flat]
        if est.weighting == "mean":  # the trainer averages over the kept chunks
            coef[r] = weight / max(mask.sum(), 1)
        elif est.weighting == "ht":  # 1/pi, over the full loss's count
            coef[r] = weight / max(n_rows, 1)
        else:
            raise ValueError(f"unknown weighting {est.weighting!r}")
        max_weight = max(max_weight, float(weight.max(initial=0.0)))
    return coef, max_weight


def _auto_config(est: Estimator, num_phases: int) -> RunConfig:
    return RunConfig(phases=num_phases, feature_dim=est.signal_dim, budget_rule="auto",
                     weighting="ht", target_efficiency=est.target,
                     phase_weighting=est.phase_weighting)


def _auto_selection(est: Estimator, data: BatchData, traj_phases: list[np.ndarray],
                    num_phases: int) -> Any:
    """The adaptive budget's selection of the batch from an empty state (its signal term S from
    the batch's own evidence, as on a run's first batch): its kept count does not depend on the
    draw."""
    feats = chunk_features(data.trajectories, data.advantages, "signal", est.signal_dim)
    batch = _batch_for_core(data, traj_phases, feats, num_phases)
    return select_chunks(_auto_config(est, num_phases), batch, {}, "budget")


def net_advantage(coef: np.ndarray, row_adv: np.ndarray) -> float:
    """The kept set's net advantage, sum_c coef_c A_c / sum_c coef_c |A_c|, averaged over the
    draws; coef (draws, R) as `_draw_coefficients` returns, row_adv (R,) each informative row's
    trajectory advantage. In [-1, 1]: 0 when the kept chunks' positive and negative advantages
    balance, -1 when only failures' chunks are kept. GRPO's own value is the batch's imbalance
    between the chunk counts of its successes and failures."""
    signed = coef @ row_adv  # (draws,)
    absolute = coef @ np.abs(row_adv)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(absolute > 0, signed / absolute, 0.0)
    return float(ratio.mean())


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of a (R, S) with b (S,)."""
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((na > 0) & (nb > 0), a @ b / (na * nb), 0.0)


def averaged_alignment(est_means: np.ndarray, full: np.ndarray, splits: int,
                       seed: int) -> float:
    """Mean over `splits` random half-splits (A, B) of the batches of
    cos(mean_A est_means, mean_B full); est_means, full: (K, S), one row per batch."""
    k = len(full)
    if k < 2:
        return 0.0
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(splits):
        order = rng.permutation(k)
        a, b = order[: k // 2], order[k // 2:]
        out.append(float(_cos(est_means[a].mean(0)[None, :], full[b].mean(0))[0]))
    return float(np.mean(out))


def evaluate_estimators(
    estimators: Sequence[Estimator], data: Sequence[BatchData],
    phases: Sequence[list[np.ndarray]], parts: np.ndarray, num_phases: int,
    keep_fraction: float, draws: int, seed: int,
) -> tuple[list[dict[str, Any]], dict[str, list[float]]]:
    """The estimator table and each estimator's mean keep weights over the batches."""
    full = [d.grads.astype(np.float64).sum(0) / max(len(d.rows), 1) for d in data]  # g_b
    total = np.sum(full, axis=0)
    rows: list[dict[str, Any]] = []
    weights_out: dict[str, list[float]] = {}
    per_batch: dict[str, list[float]] = {}
    for est in estimators:
        ws = _keep_weights_per_batch(est, data, phases, parts, num_phases, keep_fraction, seed)
        weights_out[est.name] = np.mean(ws, axis=0).tolist()
        align, cosine, relvar, net, kept, max_w = [], [], [], [], [], 0.0
        means, used = [], []  # per batch: g_hat averaged over the draws, and the batch index
        for b, d in enumerate(data):
            if len(d.rows) == 0:
                continue
            states = (_carried_states(est, data, phases, num_phases, b)
                      if est.kind == "auto" and est.carried else None)
            coef, mw = _draw_coefficients(est, d, phases[b], ws[b], keep_fraction, draws, seed,
                                          b, states)
            max_w = max(max_w, mw)
            kept.append(float((coef > 0).sum(axis=1).mean() / len(d.rows)))
            g_hat = coef @ d.grads.astype(np.float64)  # (R, S)
            net.append(net_advantage(coef, d.advantages[d.rows[:, 0]]))
            held_out = (total - full[b]) / (len(data) - 1)
            align.append(float(_cos(g_hat, held_out).mean()))
            cosine.append(float(_cos(g_hat, full[b]).mean()))
            mean = g_hat.mean(0)  # E g_hat over the draws
            means.append(mean)
            used.append(b)
            if len(g_hat) > 1:
                spread = np.sum((g_hat - mean) ** 2, axis=1).mean() * len(g_hat) / (len(g_hat) - 1)
                relvar.append(float(spread / max(float(mean @ mean), 1e-300)))
            else:
                relvar.append(0.0)
        per_batch[est.name] = align
        rows.append({
            "name": est.name, "kind": est.kind, "score": est.score, "weighting": est.weighting,
            "eps": est.eps, "transform": est.transform,
            "signal_dim": est.signal_dim if est.score == "signal" else None,
            "variant": est.variant,
            "alignment": float(np.mean(align)), "alignment_se": _se(align),
            "alignment_avg": averaged_alignment(np.stack(means), np.stack([full[b] for b in used]),
                                                AVG_SPLITS, seed) if means else 0.0,
            "cosine": float(np.mean(cosine)),
            "relative_variance": float(np.mean(relvar)),
            "max_weight": max_w,
            "net_advantage": float(np.mean(net)) if net else 0.0,
            "kept_fraction": float(np.mean(kept)) if kept else 0.0,
        })
    # paired over the same batches: the difference to grpo and to random (mean), with its SE
    for row in rows:
        for ref in ("grpo", "random mean"):
            if ref in per_batch:
                diff = np.subtract(per_batch[row["name"]], per_batch[ref])
                key = "vs_" + ref.split()[0]
                row[f"alignment_{key}"] = float(diff.mean())
                row[f"alignment_{key}_se"] = _se(diff.tolist())
    return rows, weights_out


def _se(values: Sequence[float]) -> float:
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


# ---- the whole bench --------------------------------------------------------------------------


def run_estimator_bench(
    config: EstimatorConfig, *, estimators: Sequence[Estimator] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    c = config
    init, env, batches, init_states, group_size = (c.init, c.env, c.batches, c.init_states,
                                                   c.group_size)
    keep_fraction, phases, eps = (c.selection.keep_fraction, c.selection.phases,
                                  c.selection.eps)
    segmenter, signal_dim, sketch_dim, draws, seed, max_steps, out, num_workers, device = (
        c.segmenter, c.signal_dim, c.sketch_dim, c.draws, c.seed, c.max_steps, c.out,
        c.num_workers, c.device)
    torch.manual_seed(seed)
    torch_device = resolve_device(device)  # the policy's, for rollouts and per-chunk gradients
    t0 = time.perf_counter()
    data = collect_batches(init, env, batches=batches, init_states=init_states,
                           group_size=group_size, max_steps=max_steps, sketch_dim=sketch_dim,
                           seed=seed, cache_dir=out / "cache",
                           num_workers=auto_workers(num_workers), log=log,
                           device=torch_device)
    traj_phases, row_phases = [], []
    for d in data:
        tp, rp = phase_of_rows(d, segmenter, phases, max_steps)
        traj_phases.append(tp)
        row_phases.append(rp)
    phase_rows, parts = phase_table(data, row_phases, phases)
    ests = list(estimators) if estimators is not None else default_estimators(eps, signal_dim)
    table, keep_weights = evaluate_estimators(ests, data, traj_phases, parts, phases,
                                              keep_fraction, draws, seed)
    defaults = RunConfig()
    default_name = f"pcm {defaults.score} {defaults.weighting}"
    default_est = next((e for e in ests if e.name == default_name), None)
    online = (online_convergence(default_est, data, traj_phases, parts, phases, keep_fraction,
                                 seed) if default_est is not None else None)
    return {
        "benchmark": "estimator",
        "task": env,
        "checkpoint": str(init),
        "device": str(torch_device),
        "batches": batches,
        "default": default_name,
        "config": {"init_states": init_states, "group_size": group_size,
                   "keep_fraction": keep_fraction, "phases": phases, "segmenter": segmenter,
                   "eps": eps, "signal_dim": signal_dim, "sketch_dim": sketch_dim,
                   "draws": draws, "seed": seed, "max_steps": max_steps},
        "success_rate": float(np.mean([d.success_rate for d in data])),
        "informative_chunks": int(sum(len(d.rows) for d in data)),
        "phases": phase_rows,
        "estimators": table,
        "keep_weights": keep_weights,
        "online": online,
        "regime": regime(data, row_phases, parts, init_states * group_size, signal_dim),
        "elapsed_s": time.perf_counter() - t0,
    }


def plot_estimator(result: dict[str, Any], path: Path) -> Path:
    """Per phase: the measured signal share beside the mean keep weights of the selections."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = [r["phase"] for r in result["phases"]]
    series = {"signal share (measured)": [r["share"] for r in result["phases"]]}
    for name in ("pcm action mean", "pcm signal mean", "oracle mean"):
        if name in result["keep_weights"]:
            series[f"keep weight: {name}"] = result["keep_weights"][name]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / len(series)
    for j, (label, values) in enumerate(series.items()):
        ax.bar(np.arange(len(phases)) + (j - (len(series) - 1) / 2) * width, values, width,
               label=label)
    ax.set_xticks(range(len(phases)), [f"phase {p}" for p in phases])
    ax.set_ylabel("share of the budget / of the signal")
    cfg = result["config"]
    ax.set_title(f"{result['task']}: signal vs keep weights ({cfg['segmenter']} phases)")
    ax.legend(fontsize=8)
    rows = [r for r in result["estimators"] if not r["variant"]]
    ax2.barh([r["name"] for r in rows], [r["alignment"] for r in rows],
             xerr=[r["alignment_se"] for r in rows], color="tab:blue")
    ax2.invert_yaxis()
    ax2.set_xlabel("alignment: cosine with the held-out expected gradient")
    ax2.set_title(f"keep {cfg['keep_fraction']}, {result['batches']} batches")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
