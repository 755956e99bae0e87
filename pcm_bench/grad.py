"""`pcm-bench grad`: actor-update time and peak activation memory, full GRPO vs PCM.

docs/design.md, "Measured claims". One synthetic GRPO batch (every group mixed, so every
trajectory is informative), one policy; full GRPO (all chunks, weight 1) and PCM masks at each
keep fraction run the *same* `grpo_update` with the same micro-batching, measured side by side
in one process:
repeats are interleaved (the order rotates each repeat) and medians reported. After every
measured update the policy and optimizer state are restored, so each update sees the same
weights and the same batch.

- Actor update = what `trainer_client.grpo.grpo_update` times: zero_grad, gathering the kept
  chunks' inputs, micro-batched forward + backward, grad-norm clip and the AdamW step (the step
  is a fixed cost that both sides pay; it is reported separately too).
- Activation memory = peak over the update of the bytes of tensors saved for backward
  (`trainer_client.memory.SavedTensorMeter`): each saved tensor's storage is counted once while
  any saved reference to it is alive; parameter storages (weights saved by matmuls) and, under
  bf16 autocast, the low-precision copies of the parameters are not activations and are
  excluded. Works the same on CPU and GPU.
- On CUDA also the allocator's figures per update (`torch.cuda.max_memory_allocated`, reset
  before each side's update, in a run of its own): `cuda_peak_bytes`, the peak of everything
  allocated (parameters, optimizer state, gradients, activations), and `cuda_peak_delta_bytes`,
  that peak minus what was allocated when the update started (activations, gradients and
  temporaries; the parameters and the optimizer's saved state are the same on both sides).
- `--device` / `--precision` as for `pcm-train` (`trainer_client.device`). On CUDA every timed
  update is bracketed by device synchronisations, and `update_s` is that bracketed wall time.
- The process CPU time of each update is reported too (`update_cpu_s`, `update_cpu_time_ratio`):
  on a shared machine it is far less disturbed by other processes than wall-clock time, provided
  OpenMP threads sleep rather than spin while waiting (run with OMP_WAIT_POLICY=PASSIVE).

- Micro-batching: both sides one trajectory per micro-batch (`results`) and fixed rows:N
  (`results_rows`); and GRPO at each of those vs PCM at 'pack' (`results_pack`,
  `results_rows_pack`): the fewest micro-batches under a row cap of pack_memory_ratio (0.25)
  times GRPO's largest micro-batch, so that PCM's peak activation memory stays within that
  fraction of GRPO's while it runs as few micro-batches as the cap allows. Every entry has
  both sides' micro-batch counts; `runs` > 1 repeats everything and reports each ratio's range.

The masks are the selector's `random` mode drawn locally (`random_selection` of
trainer_client/train/selection.py, over `selector_service.core.random_masks`): round(f C_i) chunks
of each trajectory, uniformly, with Horvitz-Thompson weights, as the selector answers them.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from pcm_bench.options import as_paths, json_option, split
from pcm_contract.run_config import RunConfigSchema
from trainer_client.config_fields import check_fields, opt
from trainer_client.device import (
    DEVICE_HELP,
    PRECISION_HELP,
    CudaPeakMemory,
    check_precision,
    device_name,
    resolve_device,
    synchronize,
)
from trainer_client.grpo import (
    DEFAULT_MICRO_BATCH_ROWS,
    GRPOConfig,
    group_advantages,
    grpo_update,
    make_optimizer,
    pack_cap,
    plan_kept_rows,
    reference_micro_batch_rows,
)
from trainer_client.memory import SavedTensorMeter
from trainer_client.policy import PolicyConfig, VLAPolicy
from trainer_client.train.selection import random_selection
from trainer_client.types import OBS_IMAGES, OBS_STATE, Trajectory

Masks = tuple[list[np.ndarray], list[np.ndarray]]

LIBERO_POLICY = PolicyConfig(num_cameras=2, image_size=128, state_dim=9, action_dim=7)

INSTRUCTIONS = (
    "pick up the red block and place it in the bowl",
    "open the top drawer of the cabinet",
    "push the button on the wall",
    "put the mug on the left plate",
)


# ---- inputs -----------------------------------------------------------------------------------


def synthetic_batch(
    policy: VLAPolicy,
    num_trajectories: int,
    num_chunks: int,
    group_size: int,
    num_phases: int = RunConfigSchema.phases,
    seed: int = 0,
) -> list[Trajectory]:
    """A GRPO batch with random observations, actions sampled from `policy` (so old_logp is the
    policy's own log-prob, rho = 1) and half of each group successful (all informative)."""
    if num_trajectories % group_size or group_size < 2:
        raise ValueError(
            f"num_trajectories={num_trajectories} must be a multiple of group_size={group_size} "
            ">= 2 (groups need both outcomes)"
        )
    cfg = policy.config
    rng = np.random.default_rng(seed)
    policy.set_seed(seed)
    trajectories = []
    for i in range(num_trajectories):
        group = i // group_size
        obs: dict[str, np.ndarray] = {}
        if cfg.state_dim:
            obs[OBS_STATE] = rng.standard_normal((num_chunks, cfg.state_dim)).astype(np.float32)
        if cfg.num_cameras:
            shape = (num_chunks, cfg.num_cameras, cfg.image_size, cfg.image_size, 3)
            obs[OBS_IMAGES] = rng.integers(0, 256, shape, dtype=np.uint8)
        instruction = INSTRUCTIONS[group % len(INSTRUCTIONS)]
        actions, old_logp = policy.act(obs, [instruction] * num_chunks)
        trajectories.append(
            Trajectory(
                task_id=f"synthetic:{group % len(INSTRUCTIONS)}",
                group_id=f"group{group}",
                instruction=instruction,
                obs=obs,
                actions=actions,
                old_logp=old_logp,
                phase_ids=(np.arange(num_chunks) * num_phases // num_chunks).astype(np.int64),
                success=bool(i % group_size < group_size // 2),
                num_steps=num_chunks * cfg.chunk_size,
            )
        )
    return trajectories


CUDA_COLUMNS = ("GRPO CUDA peak MB", "PCM CUDA peak MB", "peak ratio", "peak-delta ratio")


# ---- the measurement --------------------------------------------------------------------------


# the trainer's bounds of pack_memory_ratio (GRPOConfig declares them)
_PACK_RATIO_BOUNDS = {k: v for k, v in next(
    f for f in dataclasses.fields(GRPOConfig) if f.name == "pack_memory_ratio").metadata.items()
    if k in ("ge", "gt", "le", "lt")}


@dataclasses.dataclass
class GradConfig:
    """`pcm-bench grad`: its flags are these fields (`trainer_client.cli_options`); the fields
    without a flag are for callers in Python (tests: a tiny policy)."""

    json_path: Path | None = dataclasses.field(default=None, metadata=json_option())
    keep_fractions: str = opt("0.1,0.2,0.5", "comma-separated")
    trajectories: int = opt(16, "trajectories in the batch", ge=2)
    chunks: int = opt(48, "chunks per trajectory", ge=1)
    repeats: int = opt(3, "interleaved repeats per side", ge=1)
    runs: int = opt(1, "whole measurements in a row (same model and batch); the ratios' min-max "
                    "over them is printed and written under `ranges`", ge=1)
    rows_micro_batch: int = opt(DEFAULT_MICRO_BATCH_ROWS,
                                "N of the fixed-size micro-batching rows:N", ge=1)
    pack: bool = opt(True, "also GRPO vs PCM with micro_batch 'pack' (row cap relative to "
                     "GRPO's)")
    pack_memory_ratio: float = opt(GRPOConfig.pack_memory_ratio, "pack's row cap: this "
                                   "fraction of GRPO's largest micro-batch, in (0, 1] (the "
                                   "trainer's --pack-memory-ratio, its bounds)",
                                   **_PACK_RATIO_BOUNDS)
    images: bool = opt(False, "camera images through the policy")
    threads: int = opt(0, "torch intra-op threads for the run; 0 = torch's default", ge=0)
    device: str = opt("auto", DEVICE_HELP)
    precision: str = opt("fp32", PRECISION_HELP)
    group_size: int = opt(4, "rollouts per group", cli=False, ge=1)
    # the policy (default: PolicyConfig(), or LIBERO_POLICY with --images) and the update's
    # settings
    policy_config: PolicyConfig | None = dataclasses.field(default=None,
                                                           metadata={"cli": False})
    grpo_config: GRPOConfig | None = dataclasses.field(default=None, metadata={"cli": False})
    seed: int = opt(0, "seed of the model and the batch", cli=False)

    def __post_init__(self) -> None:
        as_paths(self, "json_path")
        fractions = self.fractions
        if not fractions or not all(0 < f <= 1 for f in fractions):
            raise ValueError(f"--keep-fractions {self.keep_fractions!r}: use fractions in "
                             "(0, 1], comma-separated, e.g. 0.1,0.2,0.5")
        check_fields(self)

    @property
    def fractions(self) -> tuple[float, ...]:
        return split(self.keep_fractions, float, "keep_fractions")


def run_grad_bench(config: GradConfig, log: Callable[[str], None] | None = None
                   ) -> dict[str, Any]:
    """Full GRPO vs PCM on one batch, for micro-batching 'trajectory' (results) and
    'rows:{rows_micro_batch}' (results_rows), both sides micro-batched the same way; with
    pack=True also GRPO at each of those policies vs PCM at micro_batch 'pack' with the row cap
    floor(pack_memory_ratio x GRPO's largest micro-batch) (results_pack, results_rows_pack;
    measured interleaved with the same GRPO updates as results / results_rows, whose GRPO
    figures they repeat as grpo_results_pack / grpo_results_rows_pack). Every entry also has
    grpo_micro_batches and, for pack, pack_cap. runs > 1 repeats the whole measurement (same
    model and batch): the top-level figures are the first run's, `runs` has every run's
    entries and `ranges` the min and max of each ratio over the runs.
    Ratios: update_time_ratio = grpo / pcm time,
    activation_memory_ratio = pcm / grpo bytes (and on CUDA cuda_peak_ratio,
    cuda_peak_delta_ratio). images=True uses LIBERO-like observations (LIBERO_POLICY: two
    128x128 cameras, 9-D proprio, 7-D actions; ~7x the cost per row); policy_config overrides
    both. threads: torch intra-op threads for the run (0: as set). device: auto | cpu | cuda
    | cuda:N; precision: fp32 | bf16 (autocast of the policy forward)."""
    c = config
    runs, precision = c.runs, c.precision
    check_precision(precision)
    torch_device = resolve_device(c.device)
    threads_before = torch.get_num_threads()
    if c.threads:
        torch.set_num_threads(c.threads)
    say = log or (lambda _msg: None)
    try:
        results = []
        for run in range(runs):
            if runs > 1:
                say(f"run {run + 1}/{runs}")
            results.append(
                _measure(
                    c.fractions,
                    c.trajectories,
                    c.chunks,
                    c.group_size,
                    c.rows_micro_batch,
                    c.repeats,
                    c.pack_memory_ratio if c.pack else None,
                    c.policy_config or (LIBERO_POLICY if c.images else PolicyConfig()),
                    c.grpo_config or GRPOConfig(),
                    c.seed,
                    torch_device,
                    precision,
                    say,
                )
            )
    finally:
        torch.set_num_threads(threads_before)
    result = results[0]
    if runs > 1:
        result["runs"] = [{key: result_i[key] for key in _keys(result_i)} for result_i in results]
        result["ranges"] = _ranges(results)
    return result


RESULT_KEYS = ("results", "results_rows", "results_pack", "results_rows_pack")
RANGE_FIELDS = ("update_time_ratio", "update_cpu_time_ratio", "activation_memory_ratio")


def _keys(result: dict[str, Any]) -> list[str]:
    return [k for key in RESULT_KEYS if key in result for k in (key, f"grpo_{key}")]


def _ranges(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per result key and keep fraction: [min, max] over the runs of each ratio."""
    out: dict[str, list[dict[str, Any]]] = {}
    for key in RESULT_KEYS:
        if key not in results[0]:
            continue
        out[key] = []
        for j, first in enumerate(results[0][key]):
            entries = [r[key][j] for r in results]
            row: dict[str, Any] = {
                "keep_fraction": first["keep_fraction"],
                "micro_batch": first["micro_batch"],
                "grpo_micro_batch": first["grpo_micro_batch"],
                "micro_batches": first["micro_batches"],
                "grpo_micro_batches": first["grpo_micro_batches"],
                "runs": len(entries),
            }
            for name in RANGE_FIELDS:
                values = [e[name] for e in entries]
                row[name] = [min(values), max(values)]
            out[key].append(row)
    return out


def _measure(
    keep_fractions: Sequence[float],
    num_trajectories: int,
    num_chunks: int,
    group_size: int,
    rows_micro_batch: int,
    repeats: int,
    pack_memory_ratio: float | None,
    policy_config: PolicyConfig,
    base_cfg: GRPOConfig,
    seed: int,
    device: torch.device,
    precision: str,
    say: Callable[[str], None],
) -> dict[str, Any]:
    torch.manual_seed(seed)
    policy = VLAPolicy(policy_config).to(device)
    policy.set_precision(precision)
    optimizer = make_optimizer(policy, base_cfg)
    say(
        f"policy {policy.num_params() / 1e6:.2f} M params on {device} ({device_name(device)}, "
        f"{precision}); building the synthetic batch"
    )
    trajectories = synthetic_batch(policy, num_trajectories, num_chunks, group_size, seed=seed)
    total_rows = sum(t.num_chunks for t in trajectories)

    # mask set "grpo" is full GRPO; mask set f is PCM at keep fraction f
    masks_of: dict[Any, Masks | tuple[None, None]] = {"grpo": (None, None)}
    for j, f in enumerate(keep_fractions):
        masks_of[f] = random_selection(trajectories, f, seed + 1 + j)
    advantages = group_advantages(
        [t.success for t in trajectories], [t.group_id for t in trajectories], base_cfg.adv_eps
    )

    params = list(policy.parameters())
    saved_params = [p.detach().clone() for p in params]
    optimizer.zero_grad(set_to_none=True)

    def run(
        side: Any,
        cfg: GRPOConfig,
        meter: SavedTensorMeter | None = None,
        cuda_meter: CudaPeakMemory | None = None,
    ) -> dict[str, Any]:
        opt_state = copy.deepcopy(optimizer.state_dict())
        masks, weights = masks_of[side[0]]
        synchronize(device)
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        with meter or contextlib.nullcontext(), cuda_meter or contextlib.nullcontext():
            stats = grpo_update(policy, optimizer, trajectories, masks, weights, config=cfg)
            synchronize(device)  # CUDA kernels run asynchronously: time the finished update
        cpu_s = time.process_time() - cpu_start
        if device.type == "cuda":
            stats.update_s = time.perf_counter() - wall_start
        with torch.no_grad():  # restore: every update starts from the same weights and state
            for p, p0 in zip(params, saved_params, strict=True):
                p.copy_(p0)
        optimizer.load_state_dict(opt_state)
        optimizer.zero_grad(set_to_none=True)
        return {**stats.as_dict(), "cpu_s": cpu_s}

    result: dict[str, Any] = {
        "model": {
            "params": policy.num_params(),
            **{
                k: getattr(policy.config, k)
                for k in ("width", "depth", "heads", "state_dim", "num_cameras", "image_size")
            },
            "tokens_per_row": _tokens_per_row(policy, trajectories[0]),
        },
        "batch": {
            "trajectories": num_trajectories,
            "chunks_per_trajectory": num_chunks,
            "rows": total_rows,
            "group_size": group_size,
            "chunk_size": policy.chunk_size,
            "action_dim": policy.action_dim,
            "images": bool(policy.config.num_cameras),
        },
        "actor_update": "zero_grad + gather kept chunks + micro-batched forward/backward "
        "+ grad clip + AdamW step (grpo_update)",
        "activation_memory": "peak bytes of tensors saved for backward (saved_tensors_hooks), "
        "each storage once while alive, parameters excluded",
        "device": str(device),
        "device_name": device_name(device),
        "precision": precision,
        "cuda_memory": (
            "torch.cuda.max_memory_allocated over the update, reset per side: cuda_peak_bytes "
            "(everything allocated), cuda_peak_delta_bytes (the peak minus what was allocated "
            "when the update started)"
            if device.type == "cuda"
            else None
        ),
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "row_cost_ms": {"rollout_forward": _act_cost_ms(policy, trajectories)},
    }
    # a side is (mask set, micro-batching): GRPO at the block's policy; PCM at the same policy
    # and, with pack, at 'pack' capped relative to GRPO's largest micro-batch in that block
    for micro_batch, key in (
        ("trajectory", "results"),
        (f"rows:{rows_micro_batch}", "results_rows"),
    ):
        same = dataclasses.replace(base_cfg, micro_batch=micro_batch)
        cfgs: dict[str, GRPOConfig] = {"same": same}
        if pack_memory_ratio is not None:
            cfgs["pack"] = dataclasses.replace(
                base_cfg,
                micro_batch="pack",
                pack_memory_ratio=pack_memory_ratio,
                pack_reference=micro_batch,
            )
        sides = [("grpo", "same")] + [(f, c) for f in keep_fractions for c in cfgs]
        say(f"micro-batching {micro_batch}: warm-up")
        for side in sides:
            run(side, cfgs[side[1]])
        times: dict[Any, list[dict[str, Any]]] = {side: [] for side in sides}
        for r in range(repeats):
            for side in sides[r % len(sides) :] + sides[: r % len(sides)]:
                times[side].append(run(side, cfgs[side[1]]))
            say(f"micro-batching {micro_batch}: repeat {r + 1}/{repeats} done")
        summary = {}
        for side in sides:
            meter = SavedTensorMeter(exclude=params)
            run(side, cfgs[side[1]], meter)
            cuda_meter = CudaPeakMemory(device)  # a run of its own, without the hooks
            if device.type == "cuda":
                run(side, cfgs[side[1]], cuda_meter=cuda_meter)
            summary[side] = _summarise(times[side], meter.peak_bytes, cuda_meter)
        grpo = summary.pop(("grpo", "same"))
        if micro_batch == "trajectory":
            result["row_cost_ms"]["forward_backward"] = (
                1e3 * grpo["forward_backward_s"] / grpo["kept_rows"]
            )
        for c, out_key in (("same", key), ("pack", f"{key}_pack")):
            if c not in cfgs:
                continue
            result[f"grpo_{out_key}"] = {"micro_batch": micro_batch, **grpo}
            result[out_key] = []
            for f in keep_fractions:
                s = summary[(f, c)]
                entry = {
                    "keep_fraction": f,
                    "update_time_ratio": grpo["update_s"] / s["update_s"],
                    "update_cpu_time_ratio": grpo["update_cpu_s"] / s["update_cpu_s"],
                    "activation_memory_ratio": s["activation_bytes"] / grpo["activation_bytes"],
                    "cuda_peak_ratio": _ratio(s["cuda_peak_bytes"], grpo["cuda_peak_bytes"]),
                    "cuda_peak_delta_ratio": _ratio(
                        s["cuda_peak_delta_bytes"], grpo["cuda_peak_delta_bytes"]
                    ),
                    "kept_fraction_actual": s["kept_rows"] / grpo["kept_rows"],
                    "micro_batch": cfgs[c].micro_batch,
                    "grpo_micro_batch": micro_batch,
                    "grpo_micro_batches": grpo["micro_batches"],
                    **s,
                }
                if c == "pack":
                    masks, weights = masks_of[f]
                    rows = plan_kept_rows(
                        trajectories,
                        advantages,
                        masks,
                        weights,
                        base_cfg.aggregation,
                        "kept",  # grpo_update's default, what `run` measures
                    )
                    entry["pack_memory_ratio"] = pack_memory_ratio
                    entry["pack_cap"] = pack_cap(rows, cfgs[c].pack_memory_ratio, micro_batch)
                    entry["grpo_micro_batch_rows"] = reference_micro_batch_rows(rows, micro_batch)
                result[out_key].append(entry)
    return result


def _ratio(a: int | None, b: int | None) -> float | None:
    return a / b if a is not None and b else None


def _summarise(
    runs: list[dict[str, Any]], activation_bytes: int, cuda: CudaPeakMemory
) -> dict[str, Any]:
    def med(name: str) -> float:
        return statistics.median(r[name] for r in runs)

    return {
        "update_s": med("update_s"),
        "update_s_min": min(r["update_s"] for r in runs),
        "forward_backward_s": med("forward_backward_s"),
        "optimizer_s": med("optimizer_s"),
        "update_cpu_s": med("cpu_s"),
        "activation_bytes": activation_bytes,
        "cuda_peak_bytes": cuda.peak_bytes,
        "cuda_peak_delta_bytes": cuda.delta_bytes,
        "update_s_runs": [r["update_s"] for r in runs],
        "kept_rows": runs[0]["kept_rows"],
        "micro_batches": runs[0]["micro_batches"],
    }


def _tokens_per_row(policy: VLAPolicy, traj: Trajectory) -> int:
    obs = {k: traj.obs[k][:1] for k in policy.obs_keys}
    with torch.no_grad():
        tokens, _ = policy.encode(obs, [traj.instruction])
    return int(tokens.shape[1])


def _act_cost_ms(policy: VLAPolicy, trajectories: Sequence[Trajectory], batch: int = 32) -> float:
    """No-grad rollout forward (policy.act) per chunk row, batch rows at a time, median of 3."""
    traj = trajectories[0]
    b = min(batch, traj.num_chunks)
    obs = {k: traj.obs[k][:b] for k in policy.obs_keys}
    instructions = [traj.instruction] * b
    costs = []
    for _ in range(4):
        t0 = time.perf_counter()
        policy.act(obs, instructions)
        costs.append(1e3 * (time.perf_counter() - t0) / b)
    return statistics.median(costs[1:])


# ---- output -----------------------------------------------------------------------------------


def print_table(result: dict[str, Any], console: Console | None = None) -> None:
    """Rich table of a `run_grad_bench` result."""
    console = console or Console()
    model, batch = result["model"], result["batch"]
    row_cost = result["row_cost_ms"]
    console.print(
        f"policy {model['params'] / 1e6:.2f} M params (width {model['width']}, depth "
        f"{model['depth']}, {model['tokens_per_row']} tokens/row); batch {batch['trajectories']} "
        f"trajectories x {batch['chunks_per_trajectory']} chunks = {batch['rows']} rows; "
        f"per row: {row_cost.get('forward_backward', float('nan')):.2f} ms forward+backward, "
        f"{row_cost['rollout_forward']:.2f} ms rollout forward; {result['torch_threads']} threads"
        f"; {result.get('device', 'cpu')} ({result.get('device_name', '')}), "
        f"{result.get('precision', 'fp32')}"
    )
    cuda = result.get("grpo_results", {}).get("cuda_peak_bytes") is not None
    table = Table(title="actor update: full GRPO vs PCM (medians of interleaved repeats)")
    for col in (
        "GRPO micro-batch",
        "PCM micro-batch",
        "keep f",
        "kept rows",
        "micro-batches GRPO/PCM",
        "GRPO s",
        "PCM s",
        "speed-up",
        "CPU-time speed-up",
        "limit 1/f",
        "GRPO act. MB",
        "PCM act. MB",
        "memory ratio",
        *(CUDA_COLUMNS if cuda else ()),
    ):
        table.add_column(col, justify="right")
    for key in RESULT_KEYS:
        if key not in result:
            continue
        grpo = result[f"grpo_{key}"]
        for r in result[key]:
            pcm_mb = r["micro_batch"]
            if "pack_cap" in r:
                pcm_mb = f"{pcm_mb} (cap {r['pack_cap']})"
            table.add_row(
                grpo["micro_batch"],
                pcm_mb,
                f"{r['keep_fraction']:.2f}",
                f"{r['kept_rows']}/{grpo['kept_rows']}",
                f"{grpo['micro_batches']}/{r['micro_batches']}",
                f"{grpo['update_s']:.3f}",
                f"{r['update_s']:.3f}",
                f"{r['update_time_ratio']:.2f}x",
                f"{r['update_cpu_time_ratio']:.2f}x",
                f"{1 / r['kept_fraction_actual']:.2f}x",
                f"{grpo['activation_bytes'] / 2**20:.1f}",
                f"{r['activation_bytes'] / 2**20:.1f}",
                f"{r['activation_memory_ratio']:.3f}",
                *(
                    (
                        f"{grpo['cuda_peak_bytes'] / 2**20:.1f}",
                        f"{r['cuda_peak_bytes'] / 2**20:.1f}",
                        f"{r['cuda_peak_ratio']:.3f}",
                        f"{r['cuda_peak_delta_ratio']:.3f}",
                    )
                    if cuda
                    else ()
                ),
            )
    console.print(table)
    if "ranges" in result:
        print_ranges(result, console)


def print_ranges(result: dict[str, Any], console: Console | None = None) -> None:
    """Rich table of the min-max of each ratio over the runs of a `run_grad_bench(runs=N)`."""
    console = console or Console()
    ranges = result["ranges"]
    n = next(iter(ranges.values()))[0]["runs"] if ranges else 0
    table = Table(title=f"ratios over {n} runs: min - max (the table above is run 1)")
    for col in (
        "GRPO micro-batch",
        "PCM micro-batch",
        "keep f",
        "micro-batches GRPO/PCM",
        "speed-up",
        "CPU-time speed-up",
        "memory ratio",
    ):
        table.add_column(col, justify="right")
    for key in RESULT_KEYS:
        for r in ranges.get(key, []):
            t, c, m = (r[k] for k in RANGE_FIELDS)
            table.add_row(
                r["grpo_micro_batch"],
                r["micro_batch"],
                f"{r['keep_fraction']:.2f}",
                f"{r['grpo_micro_batches']}/{r['micro_batches']}",
                f"{t[0]:.2f}x - {t[1]:.2f}x",
                f"{c[0]:.2f}x - {c[1]:.2f}x",
                f"{m[0]:.3f} - {m[1]:.3f}",
            )
    console.print(table)
