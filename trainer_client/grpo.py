"""GRPO loss and the selective (masked) backward of PCM (docs/design.md, "The trainer's
update").

Notation (paper names): trajectory i with outcome y_i, group g(i), C_i chunks; chunk c has the
observation o_ic, actions a_ic (K x A) and the rollout log-prob logp_old_ic.

    A_i   = (y_i - mean_g y) / (std_g y + 1e-6)          std: population std (ddof=0) of the group
    rho   = exp(logp_ic - logp_old_ic)
    l_ic  = -min(rho A_i, clip(rho, 1 - clip_coef_low, 1 + clip_coef_high) A_i)    (+ KL, off)

Only *informative* trajectories (their group's outcomes are not all equal; A_i != 0) take part;
the others have zero advantage, the selector gives them all-false masks, and they cost nothing.
With kept-chunk masks m_ic and weights w_ic (1, or Horvitz-Thompson 1/pi_ic), the loss is

    denominator "kept" (the selector's `mean` weighting, the paper's and veRL's masked mean):
        aggregation "chunk":       L = sum_{i inf} sum_{c kept} w_ic l_ic / R       R kept chunks
        aggregation "trajectory":  L = (1 / N_traj) sum_{i inf} (1 / k_i) sum_{c kept} w_ic l_ic
    denominator "full" (weightings `ht` and `none`):
        aggregation "chunk":       L = sum_{i inf} sum_{c kept} w_ic l_ic / N_chunks,
                                   N_chunks = sum_{i inf} C_i
        aggregation "trajectory" (SimpleVLA-RL: chunk-mean in a trajectory, mean over
        trajectories):             L = (1 / N_traj) sum_{i inf} (1 / C_i) sum_{c kept} w_ic l_ic

"full" divides by what the *full* loss divides by, so under HT weights E[L_masked] = L_full;
"kept" is the biased masked mean, lower in variance. With all masks true and w = 1 every variant
is exactly the full GRPO loss. All are linear in l_ic, L = sum_r coef_r l_r over kept rows r,
which makes the selective backward exact under any micro-batching: each micro-batch
backpropagates sum_{r in mb} coef_r l_r and the accumulated gradient is dL/dtheta.

The saving is real because only kept chunks are ever gathered, forwarded and backpropagated.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from trainer_client.config_fields import check_choice, check_fields, opt
from trainer_client.types import Trajectory

AGGREGATIONS = ("chunk", "trajectory")
DENOMINATORS = ("kept", "full")
# the network's AdamW learning rate: `pcm-train rl`'s on the base trunk (at 1e-5 the masked
# methods collapsed, docs/research/learning-study.md)
DEFAULT_RL_LR = 3e-6
# `pcm-train rl`'s micro-batching: fixed micro-batches of this many gathered chunk rows
DEFAULT_MICRO_BATCH_ROWS = 32


@dataclass
class GRPOConfig:
    """GRPO / PCM actor-update hyper-parameters (the flags of `pcm-train rl`'s update)."""

    clip_coef_low: float = opt(
        0.2, "lower PPO clip: rho is clipped at 1 - clip_coef_low", ge=0, lt=1
    )
    clip_coef_high: float = opt(
        0.28, "upper PPO clip (clip-higher, DAPO): rho is clipped at 1 + this", ge=0
    )
    aggregation: str = opt(
        "chunk",
        "'chunk': sum of w*l over kept chunks / number of chunks of informative "
        "trajectories (docs/design.md); 'trajectory': per-trajectory sum of w*l / C_i, "
        "then mean over informative trajectories (SimpleVLA-RL)",
    )
    micro_batch: str = opt(
        f"rows:{DEFAULT_MICRO_BATCH_ROWS}",
        "'trajectory': one trajectory's kept chunks per micro-batch (SimpleVLA-RL); "
        "'rows:N': fixed micro-batches of N gathered chunk rows (RLinf); 'pack:N': the "
        "fewest micro-batches of at most N rows (ceil(R / N), as many as 'rows:N'), cut "
        "at trajectory boundaries wherever that costs no extra micro-batch (a trajectory "
        "is split only where keeping it whole would need one more); 'pack': 'pack:N' with the "
        "cap set per update from what full GRPO would use on the same batch, N = "
        "floor(pack_memory_ratio x the rows of full GRPO's largest micro-batch under "
        "pack_reference). The cap bounds the rows per micro-batch and so the peak "
        "activation memory (linear in rows); fewer micro-batches cut the fixed cost each "
        "one has (weights read, weight gradients written and accumulated, kernel launches)",
    )
    pack_memory_ratio: float = opt(
        0.25,
        "micro_batch 'pack' only: the row cap as a fraction of full GRPO's largest "
        "micro-batch under pack_reference (0.25: PCM's peak activation memory at most 25% "
        "of GRPO's)",
        gt=0, le=1,
    )
    pack_reference: str = opt(
        "trajectory",
        "micro_batch 'pack' only: the micro-batching full GRPO is compared with, "
        "'trajectory' (its largest micro-batch: the longest informative trajectory) or "
        "'rows:N' (N rows, at most the batch's informative chunks)",
    )
    lr: float = opt(
        DEFAULT_RL_LR,
        "AdamW learning rate of the network (the base trunk: pcm and random "
        "collapsed at 1e-5, see docs/research/learning-study.md)",
        gt=0,
    )
    weight_decay: float = opt(0.0, "AdamW weight decay")
    adam_eps: float = opt(1e-8, "AdamW epsilon")
    max_grad_norm: float | None = opt(
        1.0, "clip the global gradient norm to this; None = no clip", gt=0,
        hint="or None for no clip"
    )
    ppo_epochs: int = opt(
        1, "optimizer steps per batch, each a full pass over the kept chunks", ge=1
    )
    kl_coef: float = opt(
        0.0, "weight of the k3 KL estimate to a reference policy; 0 = no KL term", ge=0,
        hint="0 disables the KL term"
    )
    adv_eps: float = opt(1e-6, "A = (y - mean) / (std + adv_eps)", gt=0)

    def __post_init__(self) -> None:
        check_fields(self)
        check_choice("aggregation", self.aggregation, AGGREGATIONS)
        parse_micro_batch(self.micro_batch)  # validates
        if parse_micro_batch(self.pack_reference)[0] not in ("trajectory", "rows"):
            raise ValueError(
                f"pack_reference={self.pack_reference!r}: use 'trajectory' or 'rows:N'"
            )


MICRO_BATCH_KINDS = ("trajectory", "rows", "pack")


def parse_micro_batch(spec: str) -> tuple[str, int | None]:
    """'trajectory' -> ('trajectory', None); 'rows:N' -> ('rows', N); 'pack:N' -> ('pack', N);
    'pack' -> ('pack', None) (the cap is set per update, see GRPOConfig.micro_batch)."""
    if spec in ("trajectory", "pack"):
        return spec, None
    kind, sep, n = spec.partition(":")
    if sep and kind in ("rows", "pack"):
        if not n.isdigit() or int(n) < 1:
            raise ValueError(f"micro_batch={spec!r}: N in '{kind}:N' must be an integer >= 1")
        return kind, int(n)
    raise ValueError(
        f"micro_batch={spec!r}: use 'trajectory', 'rows:N' (e.g. 'rows:32'), 'pack:N' or 'pack'"
    )


def micro_batch_rows(spec: str) -> int | None:
    """'trajectory' and 'pack' -> None; 'rows:N' and 'pack:N' -> N (validates the spec)."""
    return parse_micro_batch(spec)[1]


class LogProbPolicy(Protocol):
    """What the update needs from a policy (`trainer_client.policy.VLAPolicy` is one)."""

    def log_prob(
        self, obs: dict[str, np.ndarray], instructions: list[str], actions: np.ndarray
    ) -> Tensor:
        """(B,) differentiable log pi(actions | obs) over the whole chunk."""
        ...


# ---- advantages -----------------------------------------------------------------------------


def group_advantages(
    success: Sequence[float] | np.ndarray, group_ids: Sequence[str],
    eps: float = GRPOConfig.adv_eps,
) -> np.ndarray:
    """A_i = (y_i - mean_g y) / (std_g y + eps), std the population std (ddof=0) of the group.
    success (N,), group_ids (N,) -> float64 (N,). All-equal groups (incl. singletons) get exactly
    0. (Sample std, as torch.std in veRL, only rescales a group of size G by sqrt((G-1)/G).)"""
    y = np.asarray(success, dtype=np.float64)  # (N,)
    if y.ndim != 1 or len(group_ids) != len(y):
        raise ValueError(f"success {y.shape} and group_ids ({len(group_ids)}) must be (N,) each")
    _, g = np.unique(np.array([str(gid) for gid in group_ids]), return_inverse=True)
    count = np.bincount(g)  # (G,)
    mean = np.bincount(g, weights=y) / count  # (G,)
    std = np.sqrt(np.bincount(g, weights=(y - mean[g]) ** 2) / count)  # (G,) population
    adv = (y - mean[g]) / (std[g] + eps)  # (N,)
    adv[std[g] == 0.0] = 0.0
    return adv


def informative_trajectories(advantages: np.ndarray) -> np.ndarray:
    """bool (N,): trajectories whose group's outcomes differ (A_i != 0)."""
    return np.asarray(advantages) != 0.0


# ---- per-chunk loss terms -------------------------------------------------------------------


def ppo_clip_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    clip_coef_low: float = GRPOConfig.clip_coef_low,
    clip_coef_high: float = GRPOConfig.clip_coef_high,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-chunk l = -min(rho A, clip(rho, 1 - low, 1 + high) A). All inputs (B,).
    Returns l (B,), rho (B,), log rho (B,)."""
    logratio = logp - old_logp  # (B,)
    ratio = logratio.exp()  # (B,) rho
    pg_loss1 = -advantages * ratio  # (B,)
    pg_loss2 = -advantages * torch.clamp(ratio, 1.0 - clip_coef_low, 1.0 + clip_coef_high)
    return torch.max(pg_loss1, pg_loss2), ratio, logratio


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 estimate of KL(pi || pi_ref) per chunk: exp(r) - r - 1 with r = ref_logp - logp. (B,)."""
    r = ref_logp - logp  # (B,)
    return r.exp() - r - 1.0


# ---- which rows are computed, with what coefficient -----------------------------------------


@dataclass(frozen=True)
class KeptRows:
    """The compact batch: kept chunks of informative trajectories, trajectory-major order.
    The loss is sum_r coef[r] * l_r over these R rows, exactly."""

    traj: np.ndarray  # int64 (R,) trajectory index
    chunk: np.ndarray  # int64 (R,) chunk index within the trajectory
    coef: np.ndarray  # float64 (R,) loss coefficient (weight / aggregation denominator)
    advantage: np.ndarray  # float64 (R,) A_i of the row's trajectory
    old_logp: np.ndarray  # float64 (R,) rollout log-prob
    total_rows: int  # chunks of informative trajectories (what full GRPO computes)
    informative: int  # informative trajectories
    skipped: int  # non-informative trajectories (never computed)
    max_chunks: int = 0  # largest C_i of an informative trajectory (full GRPO's largest one)

    @property
    def num_rows(self) -> int:
        return len(self.traj)


def plan_kept_rows(
    trajectories: Sequence[Trajectory],
    advantages: np.ndarray,
    masks: Sequence[np.ndarray] | None = None,
    weights: Sequence[np.ndarray] | None = None,
    aggregation: str = "chunk",
    denominator: str = "full",
) -> KeptRows:
    """masks: per trajectory bool (C_i,) (None = all chunks: full GRPO); weights: per trajectory
    float (C_i,) (None = 1). Rows of non-informative trajectories are dropped (A_i = 0).
    denominator: "full" (divide by the full loss's counts) or "kept" (by the kept counts)."""
    n = len(trajectories)
    num_chunks = np.array([t.num_chunks for t in trajectories], dtype=np.int64)  # (N,)
    if masks is None:
        masks = [np.ones(c, dtype=bool) for c in num_chunks]
    if weights is None:
        weights = [np.ones(c, dtype=np.float64) for c in num_chunks]
    if len(masks) != n or len(weights) != n or len(advantages) != n:
        raise ValueError(
            f"{n} trajectories but {len(masks)} masks, {len(weights)} weights, "
            f"{len(advantages)} advantages"
        )
    informative = informative_trajectories(advantages)  # (N,)
    total_rows = int(num_chunks[informative].sum())
    num_informative = int(informative.sum())
    if denominator == "full":
        counts = num_chunks  # (N,) C_i: the full loss's counts (HT stays unbiased)
    elif denominator == "kept":
        counts = np.array([int(np.count_nonzero(m)) for m in masks], dtype=np.int64)  # (N,) k_i
    else:
        raise ValueError(f"denominator={denominator!r}: use one of {', '.join(DENOMINATORS)}")
    # L = sum coef * l with coef = w / denom: "chunk" divides by the informative trajectories'
    # (kept or all) chunks, "trajectory" by each one's count and the number of them
    if aggregation == "chunk":
        denom = np.full(n, max(int(counts[informative].sum()), 1), dtype=np.float64)  # (N,)
    elif aggregation == "trajectory":
        denom = (np.maximum(counts, 1) * num_informative).astype(np.float64)  # (N,)
    else:
        raise ValueError(f"aggregation={aggregation!r}: use one of {', '.join(AGGREGATIONS)}")

    traj, chunk, coef, old_logp = [], [], [], []
    for i, (m, w, c_i) in enumerate(zip(masks, weights, num_chunks, strict=True)):
        m = np.asarray(m)
        w = np.asarray(w, dtype=np.float64)
        if m.dtype != np.bool_ or m.shape != (c_i,):
            raise ValueError(f"masks[{i}]: need bool ({c_i},), got {m.dtype} {m.shape}")
        if w.shape != (c_i,) or not np.all(np.isfinite(w)):
            raise ValueError(f"weights[{i}]: need finite float ({c_i},), got {w.shape}")
        if not informative[i] or not m.any():
            continue
        kept = np.flatnonzero(m)  # (k_i,)
        traj.append(np.full(len(kept), i, dtype=np.int64))
        chunk.append(kept)
        coef.append(w[kept] / denom[i])
        old_logp.append(np.asarray(trajectories[i].old_logp, dtype=np.float64)[kept])

    traj_a = np.concatenate(traj) if traj else np.zeros(0, dtype=np.int64)  # (R,)
    chunk_a = np.concatenate(chunk) if chunk else np.zeros(0, dtype=np.int64)  # (R,)
    return KeptRows(
        traj=traj_a,
        chunk=chunk_a,
        coef=np.concatenate(coef) if coef else np.zeros(0),
        advantage=np.asarray(advantages, dtype=np.float64)[traj_a],
        old_logp=np.concatenate(old_logp) if old_logp else np.zeros(0),
        total_rows=total_rows,
        informative=num_informative,
        skipped=n - num_informative,
        max_chunks=int(num_chunks[informative].max()) if num_informative else 0,
    )


def split_micro_batches(
    rows: KeptRows,
    micro_batch: str,
    *,
    pack_memory_ratio: float = GRPOConfig.pack_memory_ratio,
    pack_reference: str = GRPOConfig.pack_reference,
) -> list[np.ndarray]:
    """Index arrays into the R kept rows, one per micro-batch, in order: consecutive ranges
    that partition arange(R) (so the loss, a sum over rows, is the same under every policy).
    pack_memory_ratio / pack_reference: for micro_batch 'pack' (see GRPOConfig)."""
    kind, n_rows = parse_micro_batch(micro_batch)
    if rows.num_rows == 0:
        return []
    if kind == "trajectory":  # one trajectory's kept chunks per micro-batch
        starts = np.flatnonzero(np.diff(rows.traj)) + 1
        return np.split(np.arange(rows.num_rows), starts)
    if kind == "pack":
        cap = n_rows or pack_cap(rows, pack_memory_ratio, pack_reference)
        return [np.arange(s, e) for s, e in _pack_bounds(rows.traj, cap)]
    assert n_rows is not None
    return [np.arange(s, min(s + n_rows, rows.num_rows)) for s in range(0, rows.num_rows, n_rows)]


def split_for(rows: KeptRows, config: GRPOConfig) -> list[np.ndarray]:
    """`split_micro_batches` with the config's micro-batching."""
    return split_micro_batches(
        rows,
        config.micro_batch,
        pack_memory_ratio=config.pack_memory_ratio,
        pack_reference=config.pack_reference,
    )


def reference_micro_batch_rows(rows: KeptRows,
                               reference: str = GRPOConfig.pack_reference) -> int:
    """Rows of the largest micro-batch full GRPO (every chunk of the informative trajectories)
    runs on the batch `rows` was planned from, micro-batched by `reference`: 'trajectory' ->
    the longest informative trajectory's C_i; 'rows:N' -> min(N, its chunks)."""
    kind, n = parse_micro_batch(reference)
    if kind == "trajectory":
        return rows.max_chunks
    if kind == "rows" and n is not None:
        return min(n, rows.total_rows)
    raise ValueError(f"pack_reference={reference!r}: use 'trajectory' or 'rows:N'")


def pack_cap(rows: KeptRows, memory_ratio: float = GRPOConfig.pack_memory_ratio,
             reference: str = GRPOConfig.pack_reference) -> int:
    """The automatic row cap of micro_batch 'pack': floor(memory_ratio x the rows of full
    GRPO's largest micro-batch under `reference`), at least 1."""
    ref = reference_micro_batch_rows(rows, reference)
    return max(1, int(np.floor(memory_ratio * ref + 1e-9)))


def _pack_bounds(traj: np.ndarray, cap: int) -> list[tuple[int, int]]:
    """[start, end) of each micro-batch: M = ceil(R / cap) of them (the fewest possible), each
    of at most cap rows, in row order. Walking the trajectories in order, one that does not fit
    in the current micro-batch's room starts a new micro-batch when the rows left still fit in
    the micro-batches left (so the cut costs nothing); otherwise it fills the current one to
    the cap and continues in the next (a split). Invariant: the rows from the current
    micro-batch's start on fit in the micro-batches not yet closed."""
    r = len(traj)
    total = -(-r // cap)  # M
    cuts = np.flatnonzero(np.diff(traj)) + 1
    bounds: list[tuple[int, int]] = []
    mb_start = 0
    for seg_start, seg_end in zip([0, *cuts.tolist()], [*cuts.tolist(), r], strict=True):
        pos = seg_start
        while seg_end - pos > cap - (pos - mb_start):  # the rest does not fit
            if pos > mb_start and r - pos <= (total - len(bounds) - 1) * cap:
                bounds.append((mb_start, pos))  # cut at the trajectory boundary
                mb_start = pos
            else:
                pos = mb_start + cap  # fill to the cap: the trajectory is split here
                bounds.append((mb_start, pos))
                mb_start = pos
        # the rest of this trajectory fits in the current micro-batch
    if mb_start < r:
        bounds.append((mb_start, r))
    return bounds


def gather_rows(
    trajectories: Sequence[Trajectory],
    rows: KeptRows,
    idx: np.ndarray,
    obs_keys: Sequence[str] | None = None,
) -> tuple[dict[str, np.ndarray], list[str], np.ndarray]:
    """Copies only the selected kept chunks' inputs: obs key -> (b, ...), instructions (b,),
    actions (b, K, A). obs_keys limits the observation keys (None = all). Each output is
    allocated once and every trajectory's rows are taken straight into it (one copy)."""
    traj, chunk = rows.traj[idx], rows.chunk[idx]  # (b,), (b,)
    seg_starts = np.flatnonzero(np.diff(traj)) + 1
    bounds = zip([0, *seg_starts.tolist()], [*seg_starts.tolist(), len(traj)], strict=True)
    segments = [(int(traj[s]), chunk[s:e], s, e) for s, e in bounds]
    keys = list(obs_keys) if obs_keys is not None else list(trajectories[segments[0][0]].obs)

    def take(get: Callable[[Trajectory], np.ndarray]) -> np.ndarray:
        if len(segments) == 1:
            t, c, _, _ = segments[0]
            return get(trajectories[t])[c]  # fancy indexing: one copy
        first = get(trajectories[segments[0][0]])
        dtype = np.result_type(*(get(trajectories[t]).dtype for t, _, _, _ in segments))
        out = np.empty((len(traj), *first.shape[1:]), dtype=dtype)  # (b, ...)
        for t, c, s, e in segments:
            src = get(trajectories[t])
            if src.dtype == out.dtype:  # straight into the output ('clip': no buffering;
                np.take(src, c, axis=0, out=out[s:e], mode="clip")  # c is in range)
            else:
                out[s:e] = src[c]
        return out

    obs = {k: take(lambda tr, k=k: tr.obs[k]) for k in keys}  # type: ignore[misc]
    actions = take(lambda tr: tr.actions)  # (b, K, A)
    instructions = [trajectories[t].instruction for t, c, _, _ in segments for _ in range(len(c))]
    return obs, instructions, actions


# ---- the update -----------------------------------------------------------------------------


@dataclass
class UpdateStats:
    loss: float = 0.0  # the aggregated loss L (last epoch)
    kept_rows: int = 0  # chunk rows forwarded and backpropagated (per epoch)
    total_rows: int = 0  # chunks of informative trajectories (full GRPO's rows)
    informative_trajectories: int = 0
    skipped_trajectories: int = 0
    micro_batches: int = 0  # per epoch
    clip_frac: float = 0.0  # fraction of kept rows with rho outside the clip range
    approx_kl: float = 0.0  # mean over kept rows of (rho - 1) - log rho (old -> new)
    kl_ref: float = 0.0  # mean k3 KL to the reference policy (when kl_coef > 0)
    grad_norm: float | None = None  # global grad norm before clipping (grpo_update only)
    forward_backward_s: float = 0.0  # gather + forward + backward, all epochs
    optimizer_s: float = 0.0  # grad clip + optimizer step, all epochs
    update_s: float = 0.0  # the whole actor update

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def selective_backward(
    policy: LogProbPolicy,
    trajectories: Sequence[Trajectory],
    masks: Sequence[np.ndarray] | None = None,
    weights: Sequence[np.ndarray] | None = None,
    *,
    config: GRPOConfig | None = None,
    denominator: str = "kept",
    advantages: np.ndarray | None = None,
    ref_policy: LogProbPolicy | None = None,
) -> UpdateStats:
    """Accumulates dL/dtheta into the policy's .grad, computing only the kept chunks.

    masks / weights: per trajectory (C_i,) bool / float, e.g. the selector's answer; None = full
    GRPO (every chunk, weight 1), which runs through the same micro-batching. denominator: what
    the loss divides by (the module docstring), which the weighting of `weights` asks for:
    "kept" for the selector's `mean`, "full" for `ht` and `none`. Does not zero the gradients
    and does not step: `grpo_update` does both."""
    cfg = config or GRPOConfig()
    t_start = time.perf_counter()
    if advantages is None:
        advantages = group_advantages(
            [t.success for t in trajectories], [t.group_id for t in trajectories], cfg.adv_eps
        )
    if cfg.kl_coef > 0 and ref_policy is None:
        raise ValueError("kl_coef > 0 needs ref_policy (the frozen reference policy)")
    rows = plan_kept_rows(
        trajectories, advantages, masks, weights, cfg.aggregation, denominator
    )
    batches = split_for(rows, cfg)
    obs_keys = getattr(policy, "obs_keys", None)
    # once per update, not per micro-batch: the per-row scalars as one tensor on the policy's
    # device (each micro-batch takes a view) and the statistics accumulated there (one host sync
    # at the end instead of three per micro-batch). The inputs are gathered per micro-batch, one
    # copy each: gathering the whole batch at once would hold a second copy of every kept row's
    # observations (gigabytes for a full GRPO batch of images) for no measurable gain.
    scalars: Tensor | None = None  # (3, R): old_logp, advantage, coef
    sums: Tensor | None = None  # (4,): loss, clipped rows, approx_kl, kl_ref
    for idx in batches:
        obs, instructions, actions = gather_rows(trajectories, rows, idx, obs_keys)
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        # a consecutive range (every policy makes these): a view of the scalars
        sl: slice | np.ndarray = slice(lo, hi) if hi - lo == len(idx) else idx
        logp = policy.log_prob(obs, instructions, actions)  # (b,)
        dtype, device = logp.dtype, logp.device
        if scalars is None or scalars.dtype != dtype or scalars.device != device:
            scalars = torch.as_tensor(
                np.stack([rows.old_logp, rows.advantage, rows.coef]), dtype=dtype, device=device
            )
            sums = torch.zeros(4, dtype=torch.float64, device=device)
        assert sums is not None
        old_logp, adv, coef = scalars[:, sl]  # (b,) each

        l_ic, ratio, logratio = ppo_clip_loss(
            logp, old_logp, adv, cfg.clip_coef_low, cfg.clip_coef_high
        )  # (b,) each
        kl_sum: Tensor | None = None
        if ref_policy is not None and cfg.kl_coef > 0:
            with torch.no_grad():
                ref_logp = ref_policy.log_prob(obs, instructions, actions)  # (b,)
                ref_logp = ref_logp.to(device=device, dtype=dtype)
            kl = kl_k3(logp, ref_logp)  # (b,)
            l_ic = l_ic + cfg.kl_coef * kl
            kl_sum = kl.detach().sum()
        mb_loss = (coef * l_ic).sum()  # this micro-batch's share of L
        mb_loss.backward()

        with torch.no_grad():
            clipped = (ratio < 1.0 - cfg.clip_coef_low) | (ratio > 1.0 + cfg.clip_coef_high)
            parts = [mb_loss, clipped.sum(), ((ratio - 1.0) - logratio).sum()]
            parts.append(kl_sum if kl_sum is not None else torch.zeros_like(mb_loss))
            sums += torch.stack([x.to(torch.float64) for x in parts])
    loss_sum, clipped_sum, approx_kl, kl_ref = (
        sums.tolist() if sums is not None else [0.0, 0.0, 0.0, 0.0]
    )

    r = max(rows.num_rows, 1)
    elapsed = time.perf_counter() - t_start
    return UpdateStats(
        loss=loss_sum,
        kept_rows=rows.num_rows,
        total_rows=rows.total_rows,
        informative_trajectories=rows.informative,
        skipped_trajectories=rows.skipped,
        micro_batches=len(batches),
        clip_frac=clipped_sum / r,
        approx_kl=approx_kl / r,
        kl_ref=kl_ref / r,
        forward_backward_s=elapsed,
        update_s=elapsed,
    )


# the hook of `grpo_update` between an epoch's backward and its optimizer step
AfterBackward = Callable[[UpdateStats], UpdateStats]


def make_optimizer(policy: nn.Module, config: GRPOConfig | None = None) -> torch.optim.AdamW:
    """AdamW, fused (one kernel over all parameters: on CPU the default per-tensor loop costs
    several times more, a fixed cost per update that both GRPO and PCM pay)."""
    cfg = config or GRPOConfig()
    return torch.optim.AdamW(
        policy.parameters(),
        lr=cfg.lr,
        eps=cfg.adam_eps,
        weight_decay=cfg.weight_decay,
        fused=True,
    )


def grpo_update(
    policy: nn.Module,
    optimizer: torch.optim.Optimizer,
    trajectories: Sequence[Trajectory],
    masks: Sequence[np.ndarray] | None = None,
    weights: Sequence[np.ndarray] | None = None,
    *,
    config: GRPOConfig | None = None,
    denominator: str = "kept",
    advantages: np.ndarray | None = None,
    ref_policy: LogProbPolicy | None = None,
    after_backward: AfterBackward | None = None,
) -> UpdateStats:
    """The actor update: per epoch, zero grads, selective backward, clip, optimizer step.
    Loss and ratio stats are the last epoch's; times are summed over epochs. With no kept rows
    (no informative trajectory) nothing is computed and the optimizer does not step.
    denominator: the loss's, as in `selective_backward`.

    after_backward: called after each epoch's backward with its stats, before the clip and the
    step; it returns the stats the update goes on with. The data-parallel update
    (`trainer_client.train.distributed`) sums the gradients and the statistics over the ranks
    here, so every rank clips and steps on the global gradient and takes the same branch."""
    cfg = config or GRPOConfig()
    t_start = time.perf_counter()
    params = [p for p in policy.parameters() if p.requires_grad]
    fb_s, opt_s = 0.0, 0.0
    stats = UpdateStats()
    for _ in range(cfg.ppo_epochs):
        optimizer.zero_grad(set_to_none=True)
        stats = selective_backward(
            policy,  # type: ignore[arg-type]
            trajectories,
            masks,
            weights,
            config=cfg,
            denominator=denominator,
            advantages=advantages,
            ref_policy=ref_policy,
        )
        fb_s += stats.forward_backward_s
        if after_backward is not None:
            stats = after_backward(stats)
        if stats.kept_rows == 0:
            break
        t_opt = time.perf_counter()
        grads = [p.grad for p in params if p.grad is not None]
        if cfg.max_grad_norm is not None:
            grad_norm = nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        else:
            grad_norm = nn.utils.get_total_norm(grads)
        if hasattr(grad_norm, "full_tensor"):  # a DTensor (FSDP2 shards): its full value
            grad_norm = grad_norm.full_tensor()
        stats.grad_norm = float(grad_norm)
        optimizer.step()
        opt_s += time.perf_counter() - t_opt
    stats.forward_backward_s = fb_s
    stats.optimizer_s = opt_s
    stats.update_s = time.perf_counter() - t_start
    return stats
