"""`pcm-bench replay`: what do each selection's first updates do to the policy, phase by phase?

The learning study's open question on pick-place (docs/research/learning-study.md, "Left to
test"): the default PCM falls below random in steps 0-30 although the estimator, at the same
policy, ranks its per-batch gradient above random's. The estimator measures one raw gradient's
direction; a training step is that gradient clipped, then Adam's per-coordinate step with its
running moments, applied to a shared network whose other phases move with it. This bench
measures what the real updates do, on data they never saw, split by phase.

From one checkpoint and one task, per seed:

1. Collect T training batches and M evaluation batches at the checkpoint (init_states x
   group_size rollouts each, initial states from the training pool, seeded; the evaluation
   batches on their own draws and sampling seeds), labelled with the run's phases. Cached in
   OUT, so a rerun or another algorithm reuses them.
2. Per algorithm, from the checkpoint and a fresh optimizer: `pcm-train rl`'s own update
   (its TrainConfig with the algorithm's overrides, `make_rl_optimizer`, the warm-up,
   `grpo_update` with its clipping, and the embedded selector with its online state and
   outcome reports), one update per training batch in order. Every algorithm replays the
   same batches, so they differ only in the selection: the data are the checkpoint's, and
   the PPO ratio (clipped at the config's clip range) accounts for the policy having moved.
3. After the updates in --at, on the evaluation batches, with pi_0 the checkpoint and pi_t the
   policy after t updates, per phase p:
   - dJ_p = sum over the informative chunks c in p of A_c (pi_t(a_c|o_c) / pi_0(a_c|o_c) - 1),
     divided by the number of informative chunks N: the PPO surrogate's gain, a first-order
     estimate of how much the updates raised the expected (group-normalised) advantage, i.e.
     improved the policy, where its actions in phase p are concerned; dJ = sum_p dJ_p.
   - dL_p, the same with log(pi_t / pi_0) for pi_t / pi_0 - 1, centred within each (group,
     phase): the surrogate's first-order term as a within-group contrast, whether the policy
     made the actions of successes likelier than those of failures; it stays bounded where
     dJ's ratio explodes (a policy far from pi_0), and the centring removes the part that
     grows with any move (every sampled action loses log-prob by the KL, and failures'
     chunks outnumber successes').
   - move_p = root mean square of log pi_t - log pi_0 over every chunk in p (informative or
     not): how far the policy moved on that phase's observations.
   dJ is computed per evaluation batch too; its spread gives a standard error within a seed.
4. Held-out success (sampled; the held-out initial states, the seed's evaluation seed) at the
   checkpoint and after the last update, as `pcm-bench learning` evaluates.

Per algorithm over seeds: mean and 95% t-interval of dJ, dJ_p and move_p at each t, of the
held-out change, and the paired differences to random and to grpo (the same seed's batches).

Resumable: each finished (algo, seed) is appended to OUT/runs.jsonl; a rerun skips them.

`--runs DIR,...` applies step 3 to finished `pcm-train rl` runs instead (on-policy training,
where a replay of fixed batches goes off-policy after a few updates): each step checkpoint
against the runs' start checkpoint, with the runs' held-out evaluations beside it.

JSON: {benchmark, task, checkpoint, config, phases, summary: {ALGO: {seeds, at: {T: {dJ, dJ_ci95,
dJ_phase, dJ_phase_ci95, move_phase, dJ_vs_random, dJ_vs_random_ci95, dJ_vs_grpo,
dJ_vs_grpo_ci95, dJ_phase_vs_random}}, heldout_change, heldout_change_ci95,
heldout_vs_random, heldout_vs_random_ci95, heldout_vs_grpo, heldout_vs_grpo_ci95,
budget_share}}, runs: [{algo, seed, at: {T: {dJ, dJ_se, dJ_phase, dL, dL_se, dL_phase, move_phase}},
heldout_start,
heldout_end, updates: [{step, grad_norm, kept_fraction, clip_frac, keep_probs}]}]}.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pcm_bench import behaviour
from pcm_bench.learning import ALGOS, mean_ci95, runs_by_algo
from pcm_bench.options import as_paths, json_option, one_of, split
from pcm_bench.study import Study, StudyError, complete, fingerprint
from pcm_contract.run_config import RunConfigSchema
from trainer_client.cli_options import build
from trainer_client.clients import connect
from trainer_client.config_fields import check_fields, opt
from trainer_client.envs.metaworld_env import NUM_ENV_PHASES
from trainer_client.features import feature_dim_for
from trainer_client.grpo import group_advantages, grpo_update
from trainer_client.phases import choose_segmenter, phase_counts, relabel
from trainer_client.rollout import RolloutCollector
from trainer_client.train.checkpoint import list_checkpoints
from trainer_client.train.config import (
    DEMO_ENV,
    TRAIN_INIT_POOL,
    TrainConfig,
    auto_workers,
)
from trainer_client.train.distributed import Dist
from trainer_client.train.evaluate import evaluate_policy
from trainer_client.train.metrics import read_metrics
from trainer_client.train.model import load_policy
from trainer_client.train.rl import eval_init_states, make_rl_optimizer, set_lr_for_step
from trainer_client.train.selection import select_global
from trainer_client.types import Trajectory

CACHE_VERSION = 1
DEFAULT_AT = (1, 3, 10, 30)
EVAL_ROWS = 256  # chunk rows per forward pass when scoring the evaluation batches


@dataclass
class ReplayConfig:
    """`pcm-bench replay`: its flags are these fields (`trainer_client.cli_options`); the fields
    without a flag are for callers in Python (tests: a short episode limit, one thread)."""

    init: Path = field(metadata={
        "help": "checkpoint every update starts from (`pcm-train sft` writes runs/sft/sft.pt)",
        "typer": {"exists": True, "dir_okay": False}})
    env: str = opt(DEMO_ENV, "metaworld:TASK")
    algos: str = opt("grpo,pcm,random", "comma-separated, from pcm-bench learning's (pcm = the "
                     "default PCM)")
    seeds: int = opt(3, "seeds (each its own batches)", ge=1)
    first_seed: int = opt(0, "the first seed (0, 1, ...)", ge=0)
    train_batches: int = opt(30, "T: updates, one per training batch", ge=1)
    eval_batches: int = opt(8, "M: evaluation batches the updates are scored on", ge=2)
    at: str = opt(",".join(map(str, DEFAULT_AT)), "comma-separated update counts to score after "
                  "(T is always scored)")
    init_states: int = opt(TrainConfig.init_states, "initial states per batch", ge=1)
    group_size: int = opt(TrainConfig.group_size, "G rollouts per initial state", ge=2)
    keep_fraction: float = opt(RunConfigSchema.keep_fraction, "pcm / random keep fraction")
    eval_episodes: int = opt(100, "held-out episodes before and after the T updates (0: none)",
                             ge=0)
    out: Path = field(default=Path("runs/bench-replay"), metadata={
        "help": "batch cache, runs.jsonl (appended per run), replay.json; rerun to continue"})
    summarize_only: bool = opt(False, "run nothing: write the figures of the finished runs")
    runs: str | None = opt(None, "comma-separated `pcm-train rl` run dirs started from --init: "
                           "score their step checkpoints on the evaluation batches instead of "
                           "replaying")
    seed: int = opt(0, "with --runs: the evaluation batches' seed", ge=0)
    heldout_episodes: int = opt(0, "with --runs: also run each checkpoint (and --init) on this "
                                "many held-out episodes, as pcm-train rl evaluates, and report "
                                "how far they get (reach, grasp, success) and how its action "
                                "means moved, arm and gripper apart", ge=0)
    heldout_seed: int = opt(0, "with --heldout-episodes: the runs' --seed (their evaluation's "
                            "sampling seed), so that the success at their evaluation steps is "
                            "theirs", ge=0)
    json_path: Path | None = field(default=None, metadata=json_option())
    num_workers: int = opt(-1, "env worker processes; -1 = auto", cli=False)
    threads: int = opt(0, "torch threads; 0 = as set", cli=False)
    # with --runs: the runs' episode limit where they set one (the env's default otherwise)
    max_steps: int | None = opt(None, "the runs' episode limit", cli=False)
    # more TrainConfig options of every replay (part of the study's configuration)
    rl_overrides: dict[str, Any] = field(default_factory=dict, metadata={"cli": False})

    def __post_init__(self) -> None:
        as_paths(self, "init", "out", "json_path")
        one_of("algos", self.algo_list, tuple(ALGOS))
        split(self.at, int, "at")  # a list of integers, or the error that says so
        check_fields(self)

    @property
    def algo_list(self) -> list[str]:
        return list(split(self.algos, str, "algos"))

    @property
    def at_list(self) -> list[int]:
        """--at as integers (not yet bounded by T)."""
        return list(split(self.at, int, "at"))

    @property
    def run_dirs(self) -> list[Path]:
        """--runs as paths (none without it)."""
        return [Path(r) for r in split(self.runs or "", str, "runs")]


# ---- 1. the batches, cached ---------------------------------------------------------------------


def _save_trajectories(path: Path, trajs: Sequence[Trajectory]) -> None:
    arrays: dict[str, np.ndarray] = {}
    meta = []
    for i, t in enumerate(trajs):
        meta.append({"task_id": t.task_id, "group_id": t.group_id,
                     "instruction": t.instruction, "success": bool(t.success),
                     "num_steps": int(t.num_steps), "obs": sorted(t.obs)})
        for k, v in t.obs.items():
            arrays[f"obs_{k}_{i}"] = v
        arrays[f"actions_{i}"] = t.actions
        arrays[f"old_logp_{i}"] = t.old_logp
        arrays[f"phase_ids_{i}"] = t.phase_ids
        for name in ("gripper", "env_phase_ids", "head_grad"):
            value = getattr(t, name)
            if value is not None:
                arrays[f"{name}_{i}"] = value
    arrays["meta"] = np.array(json.dumps(meta))
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    tmp.replace(path)


def _load_trajectories(path: Path) -> list[Trajectory]:
    z = np.load(path, allow_pickle=False)
    out = []
    for i, t in enumerate(json.loads(str(z["meta"]))):
        out.append(Trajectory(
            task_id=t["task_id"], group_id=t["group_id"], instruction=t["instruction"],
            obs={k: z[f"obs_{k}_{i}"] for k in t["obs"]}, actions=z[f"actions_{i}"],
            old_logp=z[f"old_logp_{i}"], phase_ids=z[f"phase_ids_{i}"],
            success=bool(t["success"]), num_steps=int(t["num_steps"]),
            gripper=z.get(f"gripper_{i}"), env_phase_ids=z.get(f"env_phase_ids_{i}"),
            head_grad=z.get(f"head_grad_{i}")))
    return out


def collect_batches(
    cfg: TrainConfig, seed: int, kind: str, count: int, cache: Path,
    collector_factory: Callable[[], RolloutCollector], log: Callable[[str], None],
) -> list[list[Trajectory]]:
    """`count` batches of `kind` ("train" or "eval") for a seed, from the cache where present."""
    salt = {"train": 0x7E1, "eval": 0xE7A}[kind]
    out: list[list[Trajectory]] = []
    policy = None
    collector: RolloutCollector | None = None
    try:
        for b in range(count):
            path = cache / f"s{seed}-{kind}{b:03d}.npz"
            if path.exists():
                out.append(_load_trajectories(path))
                continue
            if policy is None:
                assert cfg.init is not None
                policy = load_policy(Path(cfg.init))
                collector = collector_factory()
            assert collector is not None
            rng = np.random.default_rng([seed, b, salt])
            states = sorted(int(i) for i in rng.choice(TRAIN_INIT_POOL, cfg.init_states,
                                                       replace=False))
            t0 = time.perf_counter()
            auto = cfg.segmenter == "auto"  # decided per batch here, as on a run's first
            trajs = collector.collect(
                policy, states, group_size=cfg.group_size,
                segmenter="gripper" if auto else cfg.segmenter,
                num_phases=cfg.selection.phases,
                seed=int(np.random.SeedSequence([seed, b, salt]).generate_state(1)[0]),
                step=b + 1, head_grads=True)
            if auto:
                name, _why = choose_segmenter(phase_counts(trajs, cfg.selection.phases))
                if name != "gripper":
                    relabel(trajs, name, cfg.selection.phases, collector.info.max_steps)
            _save_trajectories(path, trajs)
            out.append(trajs)
            log(f"replay: seed {seed} {kind} batch {b + 1}/{count}: success "
                f"{np.mean([t.success for t in trajs]):.2f} ({time.perf_counter() - t0:.1f}s)")
    finally:
        if collector is not None:
            collector.close()
    return out


# ---- 3. the updates' effect on the evaluation batches -------------------------------------------


class EvalSet:
    """The evaluation batches' chunks as rows: their observations, actions, advantages, phases
    and log pi_0; `score(policy)` gives dJ (total, per phase, per batch) and move per phase."""

    def __init__(self, batches: Sequence[Sequence[Trajectory]], num_phases: int) -> None:
        self.num_phases = num_phases
        self.items: list[tuple[Trajectory, int]] = []  # (trajectory, chunk)
        adv, phase, batch, group = [], [], [], []
        groups: dict[tuple[int, str], int] = {}
        for b, trajs in enumerate(batches):
            a = group_advantages([t.success for t in trajs], [t.group_id for t in trajs])
            for t, a_i in zip(trajs, a, strict=True):
                g = groups.setdefault((b, t.group_id), len(groups))
                for c in range(t.num_chunks):
                    self.items.append((t, c))
                    adv.append(float(a_i))
                    phase.append(int(t.phase_ids[c]))
                    batch.append(b)
                    group.append(g)
        self.adv = np.asarray(adv)  # (R,)
        self.phase = np.asarray(phase, dtype=np.int64)  # (R,)
        self.batch = np.asarray(batch, dtype=np.int64)  # (R,)
        # (group, phase) cell of each row: log-ratios are centred within a cell for dL
        cell = np.asarray(group, dtype=np.int64) * num_phases + self.phase
        self.cell = np.unique(cell, return_inverse=True)[1]  # (R,) in [0, cells)
        self.num_batches = len(batches)
        self.informative = self.adv != 0.0
        self.logp0: np.ndarray | None = None

    def log_probs(self, policy: Any) -> np.ndarray:
        """(R,) log pi(a_c | o_c) of every row, no gradient."""
        out = np.empty(len(self.items))
        keys = policy.obs_keys
        with torch.no_grad():
            for s in range(0, len(self.items), EVAL_ROWS):
                part = self.items[s:s + EVAL_ROWS]
                obs = {k: np.stack([t.obs[k][c] for t, c in part]) for k in keys}
                actions = np.stack([t.actions[c] for t, c in part])
                lp = policy.log_prob(obs, [t.instruction for t, _ in part], actions)
                out[s:s + len(part)] = lp.double().cpu().numpy()
        return out

    def score(self, policy: Any) -> dict[str, Any]:
        logp = self.log_probs(policy)
        if self.logp0 is None:
            raise RuntimeError("EvalSet.logp0 is unset: score the checkpoint first")
        diff = logp - self.logp0
        inf = self.informative.astype(np.float64)
        gain = inf * self.adv * np.expm1(diff)  # A (rho - 1) on informative rows
        # the same in log space, A (log pi_t - log pi_0), the surrogate's first-order term,
        # with the log-ratio centred within each (group, phase): a move away from pi_0 lowers
        # every sampled action's log-prob on average (by the KL), and failures' chunks
        # outnumber successes' (sum A < 0), so the raw term grows with any move; centred, it
        # is the within-group contrast (successes' actions made likelier than failures').
        # Bounded where rho is not (policies far from pi_0).
        cell_mean = _sums(diff * inf, self.cell) / np.maximum(_sums(inf, self.cell), 1.0)
        lin = inf * self.adv * (diff - cell_mean[self.cell])
        n_inf = max(float(inf.sum()), 1.0)
        batch_inf = np.maximum(_sums(inf, self.batch, self.num_batches), 1.0)
        rows = _sums(np.ones_like(diff), self.phase, self.num_phases)
        move = np.sqrt(_sums(diff ** 2, self.phase, self.num_phases) / np.maximum(rows, 1.0))
        out: dict[str, Any] = {"move_phase": move.tolist()}
        for name, values in (("dJ", gain), ("dL", lin)):
            per_batch = _sums(values, self.batch, self.num_batches) / batch_inf
            out[name] = float(values.sum() / n_inf)
            out[f"{name}_se"] = (float(np.std(per_batch, ddof=1) / np.sqrt(per_batch.size))
                                 if per_batch.size > 1 else None)
            out[f"{name}_batches"] = per_batch.tolist()
            out[f"{name}_phase"] = (_sums(values, self.phase, self.num_phases) / n_inf).tolist()
        return out

    def phase_shares(self) -> dict[str, list[float]]:
        """Per phase: its share of the chunks, and of the informative chunks."""
        counts = np.bincount(self.phase, minlength=self.num_phases)
        inf = np.bincount(self.phase[self.informative], minlength=self.num_phases)
        return {"chunks": (counts / counts.sum()).tolist(),
                "informative_chunks": (inf / max(inf.sum(), 1)).tolist()}


def _sums(values: np.ndarray, index: np.ndarray, length: int = 0) -> np.ndarray:
    """(length,) sums of `values` per index (rows share an index: a phase, batch or cell)."""
    return np.bincount(index, weights=values, minlength=length)


# ---- 2. one algorithm's updates on one seed's batches ------------------------------------------


def replay_run(cfg: TrainConfig, train: Sequence[list[Trajectory]], evalset: EvalSet,
               at: Sequence[int], heldout: Callable[[Any], float],
               log: Callable[[str], None]) -> dict[str, Any]:
    """`pcm-train rl`'s updates on the given batches, scored after the updates in `at`."""
    assert cfg.init is not None and cfg.run_id is not None and cfg.trainer_id is not None
    policy = load_policy(Path(cfg.init))
    optimizer = make_rl_optimizer(policy, cfg.grpo, cfg.log_std_lr)
    sel_cfg = cfg.selection
    feature_dim = feature_dim_for(sel_cfg.score, policy.chunk_size, policy.action_dim,
                                  cfg.signal_dim)
    client = connect("embedded")
    client.put_run(cfg.run_id, **cfg.run_config(feature_dim))
    dist = Dist()
    scores: dict[str, Any] = {}
    updates = []
    try:
        for step, trajs in enumerate(train, start=1):
            # select (the selector's online state carried from step to step), then update
            sel = select_global(dist, client, cfg.run_id, trajs,
                                request_id=f"{cfg.run_id}/step{step}", trainer_id=cfg.trainer_id,
                                step=step, score=sel_cfg.score, feature_dim=feature_dim)
            set_lr_for_step(optimizer, step, cfg.lr_warmup_steps)
            stats = grpo_update(policy, optimizer, trajs, sel.masks, sel.weights,
                                config=cfg.grpo, denominator=cfg.loss_denominator)
            client.report_outcomes(cfg.run_id, {
                "selection_id": sel.selection_id, "request_id": sel.request_id + "/outcome",
                "trainer_id": cfg.trainer_id, "step": step, "success_rate": sel.success_rate,
                "loss": float(stats.loss), "kept_chunks": sel.kept_chunks,
                "timings": {"rollout_s": 0.0, "select_s": sel.select_s,
                            "backward_s": stats.update_s}})
            updates.append({"step": step, "grad_norm": stats.grad_norm,
                            "kept_fraction": sel.kept_fraction, "clip_frac": stats.clip_frac,
                            "keep_probs": next(iter(sel.keep_probs.values()), None)})
            if step in at:
                scores[str(step)] = evalset.score(policy)
                s = scores[str(step)]
                log(f"  after {step} update(s): dJ {s['dJ'] * 1e3:+.2f}e-3, per phase "
                    + " ".join(f"{x * 1e3:+.2f}" for x in s["dJ_phase"]))
    finally:
        client.close()
    return {"at": scores, "updates": updates, "heldout_end": heldout(policy)}


# ---- the study ----------------------------------------------------------------------------------


def run_replay_bench(config: ReplayConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run what is missing (each algo on seeds first_seed .. first_seed + seeds - 1), then
    write OUT/replay.json from every finished run and return it. `summarize_only` runs nothing."""
    c = config
    out, init, env, algos = c.out, c.init, c.env, c.algo_list
    at = sorted({t for t in c.at_list if 1 <= t <= c.train_batches} | {c.train_batches})
    if not init.is_file():
        raise StudyError(f"--init {init} is not a file (an SFT checkpoint, `pcm-train sft`)")

    def config_for(algo: str, seed: int) -> TrainConfig:
        return build(TrainConfig, dict(
            env=env, selector="embedded", run_id=f"replay-{algo}-s{seed}", out=str(out),
            init=str(init), seed=seed, group_size=c.group_size, init_states=c.init_states,
            keep_fraction=c.keep_fraction, num_workers=c.num_workers, threads=c.threads,
            progress=False, trainer_id="bench", **{**c.rl_overrides, **ALGOS[algo]}))

    base = config_for("grpo", 0)
    for algo in algos:
        other = config_for(algo, 0)
        if (other.segmenter, other.selection.phases) != (base.segmenter, base.selection.phases):
            raise StudyError(f"{algo} labels phases otherwise ({other.segmenter}); the batches "
                             f"are labelled with {base.segmenter}: run it with another --out")
    study_config = {"env": env, "train_batches": c.train_batches,
                    "eval_batches": c.eval_batches, "at": at, "init_states": c.init_states,
                    "group_size": c.group_size, "keep_fraction": c.keep_fraction,
                    "eval_episodes": c.eval_episodes, "segmenter": base.segmenter,
                    "phases": base.selection.phases, "cache_version": CACHE_VERSION,
                    **c.rl_overrides}
    study = Study.open(out, study_config, init, summarize_only=c.summarize_only)
    seeds = range(c.first_seed, c.first_seed + c.seeds)
    torch.set_num_threads(c.threads or torch.get_num_threads())

    def collector() -> RolloutCollector:
        return RolloutCollector(env, num_workers=auto_workers(c.num_workers, 1),
                                max_steps=base.max_steps)

    pending = () if c.summarize_only else study.pending(algos, seeds, log=log, name="replay")
    cache = out / f"cache-{study.fingerprint}"
    for seed, todo in itertools.groupby(pending, key=lambda pair: pair[0]):
        cache.mkdir(parents=True, exist_ok=True)
        train = collect_batches(base, seed, "train", c.train_batches, cache, collector, log)
        evalset = EvalSet(collect_batches(base, seed, "eval", c.eval_batches, cache,
                                          collector, log), base.selection.phases)
        checkpoint = load_policy(init)
        evalset.logp0 = evalset.log_probs(checkpoint)
        with collector() as coll:

            def heldout(policy: Any, coll: RolloutCollector = coll, seed: int = seed) -> float:
                if not c.eval_episodes:
                    return float("nan")
                r = evaluate_policy(policy, env, eval_init_states(
                    coll.info.num_init_states, c.eval_episodes), seed=seed, collector=coll)
                return r.success_rate

            start = heldout(checkpoint)
            for _, algo in todo:
                log(f"replay: {algo} seed {seed}, {c.train_batches} updates")
                t0 = time.perf_counter()
                record = replay_run(config_for(algo, seed), train, evalset, at, heldout, log)
                record.update(algo=algo, seed=seed, heldout_start=start,
                              duration_s=time.perf_counter() - t0,
                              phases=evalset.phase_shares())
                log(f"  held-out {start:.2f} -> {record['heldout_end']:.2f} "
                    f"({record['duration_s']:.0f}s)")
                study.append(record)
    runs = study.runs()
    result = {"benchmark": "replay", "task": env, "checkpoint": str(init),
              "config": study_config, "summary": summarize_replay(runs), "runs": runs,
              "complete": complete(runs, algos, seeds)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "replay.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _paired(mine: dict[int, dict[str, Any]], other: dict[int, dict[str, Any]],
            value: Callable[[dict[str, Any]], Any]) -> tuple[Any, Any]:
    """Mean and 95% interval over shared seeds of value(mine) - value(other), elementwise."""
    seeds = sorted(set(mine) & set(other))
    if not seeds:
        return None, None
    diffs = np.array([np.asarray(value(mine[s])) - np.asarray(value(other[s])) for s in seeds])
    return _mean_ci(diffs)


def _mean_ci(values: np.ndarray) -> tuple[Any, Any]:
    if values.ndim == 1:
        return mean_ci95(values.tolist())
    pairs = [mean_ci95(values[:, j].tolist()) for j in range(values.shape[1])]
    return [m for m, _ in pairs], [ci for _, ci in pairs]


def _at_value(t: str, key: str) -> Callable[[dict[str, Any]], Any]:
    """A run's figure `key` after t updates."""
    return lambda r: r["at"][t][key]


def summarize_replay(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per algorithm over its seeds: the module docstring's figures."""
    by_algo = runs_by_algo(runs)
    out: dict[str, Any] = {}
    for algo, mine in by_algo.items():
        rs = list(mine.values())
        steps = sorted(set.intersection(*(set(r["at"]) for r in rs)), key=int)
        at: dict[str, Any] = {}
        for t in steps:
            d_j, d_j_ci = mean_ci95([r["at"][t]["dJ"] for r in rs])
            phase, phase_ci = _mean_ci(np.array([r["at"][t]["dJ_phase"] for r in rs]))
            row: dict[str, Any] = {
                "dJ": d_j, "dJ_ci95": d_j_ci, "dJ_phase": phase, "dJ_phase_ci95": phase_ci,
                "move_phase": np.mean([r["at"][t]["move_phase"] for r in rs], axis=0).tolist()}
            for ref in ("random", "grpo"):
                other = {s: r for s, r in by_algo.get(ref, {}).items() if t in r["at"]}
                row[f"dJ_vs_{ref}"], row[f"dJ_vs_{ref}_ci95"] = _paired(
                    mine, other, _at_value(t, "dJ"))
                row[f"dJ_phase_vs_{ref}"], row[f"dJ_phase_vs_{ref}_ci95"] = _paired(
                    mine, other, _at_value(t, "dJ_phase"))
            at[t] = row
        change, change_ci = mean_ci95([r["heldout_end"] - r["heldout_start"] for r in rs])
        summary: dict[str, Any] = {"seeds": sorted(mine), "at": at,
                                   "heldout_start": float(np.mean([r["heldout_start"]
                                                                   for r in rs])),
                                   "heldout_end": float(np.mean([r["heldout_end"] for r in rs])),
                                   "heldout_change": change, "heldout_change_ci95": change_ci}
        for ref in ("random", "grpo"):
            summary[f"heldout_vs_{ref}"], summary[f"heldout_vs_{ref}_ci95"] = _paired(
                mine, by_algo.get(ref, {}), lambda r: r["heldout_end"] - r["heldout_start"])
        # the selection's budget per phase over the updates (the selector's keep weights)
        # (grpo and random runs record the selector's weights too, but do not use them)
        probs = [u["keep_probs"] for r in rs for u in r["updates"] if u.get("keep_probs")]
        uses = ALGOS.get(algo, {}).get("algo") == "pcm"
        summary["budget_share"] = np.mean(probs, axis=0).tolist() if probs and uses else None
        summary["grad_norm_median"] = float(np.median(
            [u["grad_norm"] for r in rs for u in r["updates"] if u["grad_norm"] is not None]))
        summary["clip_frac_last"] = float(np.mean([r["updates"][-1]["clip_frac"] for r in rs]))
        out[algo] = summary
    return out


# ---- the same score along finished runs: `--runs` -----------------------------------------------


def score_runs(config: ReplayConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Step 3 on the step checkpoints of finished `pcm-train rl` runs (`--runs`) that started
    from `init`: dJ and move per phase of each checkpoint against `init`, on evaluation batches
    collected at `init` with `seed` (cached in OUT), with the run's held-out evaluations and the
    mean keep weights the selector answered in the steps up to each checkpoint (from its
    metrics.jsonl).

    With `heldout_episodes` > 0, also what each checkpoint does on its own held-out episodes
    (`pcm-train rl`'s evaluation: its held-out initial states, sampled with `heldout_seed`, the
    run's --seed, so that at the run's evaluation steps the success equals the run's): the
    funnel (reach, grasp, success), and the shift of its action means from `init`'s, arm and
    gripper apart, by env phase, on those episodes' states (`shift_own`) and on the evaluation
    batches' (`shift_ref`); see pcm_bench/behaviour.py. `max_steps`: the runs'
    episode limit, where they set one (the env's default otherwise)."""
    c = config
    init, env, max_steps = c.init, c.env, c.max_steps
    if not init.is_file():
        raise StudyError(f"--init {init} is not a file (the runs' start checkpoint)")
    base = build(TrainConfig, dict(env=env, selector="embedded", init=str(init),
                                   init_states=c.init_states, group_size=c.group_size,
                                   num_workers=c.num_workers, progress=False,
                                   max_steps=max_steps))
    settings = {"env": env, "eval_batches": c.eval_batches, "seed": c.seed,
                "init_states": c.init_states, "group_size": c.group_size,
                **({"max_steps": max_steps} if max_steps is not None else {}),
                "segmenter": base.segmenter, "phases": base.selection.phases,
                "cache_version": CACHE_VERSION}
    cache = c.out / f"cache-{fingerprint(settings, init)}"
    cache.mkdir(parents=True, exist_ok=True)

    def collector() -> RolloutCollector:
        return RolloutCollector(env, num_workers=auto_workers(c.num_workers, 1),
                                max_steps=base.max_steps)

    evalset = EvalSet(collect_batches(base, c.seed, "eval", c.eval_batches, cache, collector,
                                      log), base.selection.phases)
    start = load_policy(init)
    evalset.logp0 = evalset.log_probs(start)
    episodes = (_Behaviour(start, evalset, collector(), c.heldout_episodes, c.heldout_seed)
                if c.heldout_episodes else None)
    try:
        runs = [_score_run(d, evalset, episodes, log) for d in c.run_dirs]
    finally:
        if episodes is not None:
            episodes.close()
    settings.update(heldout_episodes=c.heldout_episodes, heldout_seed=c.heldout_seed)
    return {"benchmark": "replay --runs", "task": env, "checkpoint": str(init),
            "config": settings, "phases": evalset.phase_shares(),
            "start": episodes.start if episodes is not None else None, "runs": runs}


class _Behaviour:
    """A policy's held-out episodes (the funnel) and its action means' shift from the start
    policy's, on those episodes' states and on the evaluation batches' (behaviour.py)."""

    def __init__(self, start: Any, evalset: EvalSet, coll: RolloutCollector, episodes: int,
                 seed: int) -> None:
        self.start_policy, self.coll, self.seed = start, coll, seed
        try:
            self.states = eval_init_states(coll.info.num_init_states, episodes)
            self.ref_items, self.ref_phase = behaviour.chunk_items(
                [t for t, c in evalset.items if c == 0])
            self.ref_mu0 = behaviour.chunk_means(start, self.ref_items)
            self.start = self.score(start)
        except BaseException:
            coll.close()
            raise

    def score(self, policy: Any) -> dict[str, Any]:
        info = self.coll.info
        r = evaluate_policy(policy, info.task_id, self.states, seed=self.seed,
                            collector=self.coll, keep_trajectories=True)
        items, phase = behaviour.chunk_items(r.trajectories)
        kw: dict[str, Any] = {"gripper_index": info.gripper_index,
                              "threshold": info.gripper_threshold,
                              "num_env_phases": NUM_ENV_PHASES}
        own = (behaviour.mean_shift(behaviour.chunk_means(policy, items),
                                    behaviour.chunk_means(self.start_policy, items), phase, **kw)
               if items else None)
        ref = (behaviour.mean_shift(behaviour.chunk_means(policy, self.ref_items),
                                    self.ref_mu0, self.ref_phase, **kw)
               if self.ref_items else None)
        return {"success": r.success_rate, "funnel": behaviour.funnel(r.trajectories),
                "shift_own": own, "shift_ref": ref}

    def close(self) -> None:
        self.coll.close()


def _score_run(run_dir: Path, evalset: EvalSet, episodes: _Behaviour | None,
               log: Callable[[str], None]) -> dict[str, Any]:
    """One `pcm-train rl` run's checkpoints, scored."""
    found = list_checkpoints(run_dir)
    if not found:
        raise StudyError(f"{run_dir} holds no step checkpoint (pcm-train rl --out DIR "
                         "writes DIR/checkpoints; --keep-checkpoints keeps more)")
    rows = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl"
                                                        ).is_file() else []
    steps = [r for r in rows if r.get("kind", "step") == "step"]
    evals = {r["step"]: r["success_rate"] for r in rows if r.get("kind") == "eval"}
    summary_path = run_dir / "summary.json"
    algo = (json.loads(summary_path.read_text()).get("algo") if summary_path.is_file()
            else None)
    if (episodes is not None and evals.get(0) is not None
            and abs(episodes.start["success"] - evals[0]) > 1e-9):
        log(f"  warning: --init's held-out success {episodes.start['success']:.2f} here, "
            f"{evals[0]:.2f} in {run_dir.name}: another --heldout-seed or episodes?")
    scored = []
    shares = np.asarray(evalset.phase_shares()["chunks"])
    previous = 0
    for step, path in found:
        policy = load_policy(path)
        s = evalset.score(policy)
        # the selector's weights, where the run used them (grpo and random record them too)
        probs = [r["keep_probs"] for r in steps
                 if r["step"] <= step and r.get("keep_probs") and algo == "pcm"]
        window = [_phase_weights(r["keep_probs"]) for r in steps
                  if previous < r["step"] <= step and r.get("keep_probs") and algo == "pcm"]
        s.update(step=step, heldout=evals.get(step),
                 keep_probs_mean=(np.mean([_phase_weights(p) for p in probs], axis=0)
                                  .tolist() if probs else None),
                 keep_rate_window=_keep_rate(window, shares) if window else None)
        previous = step
        log(f"{run_dir.name} step {step}: dJ {s['dJ'] * 1e3:+.2f}e-3 (se "
            f"{(s['dJ_se'] or 0) * 1e3:.2f}), per phase "
            + " ".join(f"{x * 1e3:+.2f}" for x in s["dJ_phase"])
            + f"; dL {s['dL'] * 1e3:+.2f}e-3 (se {(s['dL_se'] or 0) * 1e3:.2f}), per phase "
            + " ".join(f"{x * 1e3:+.2f}" for x in s["dL_phase"]) + "; move "
            + " ".join(f"{x:.3f}" for x in s["move_phase"]))
        if episodes is not None:
            b = episodes.score(policy)
            s["behaviour"] = b
            if s["heldout"] is not None and abs(b["success"] - s["heldout"]) > 1e-9:
                log(f"  warning: held-out success {b['success']:.2f} here, "
                    f"{s['heldout']:.2f} in the run: another --heldout-seed or episodes?")
            log("  own episodes: " + _describe(b))
        scored.append(s)
    return {"run": str(run_dir), "algo": algo, "heldout_start": evals.get(0),
            "checkpoints": scored}


def _describe(b: dict[str, Any]) -> str:
    f, own = b["funnel"], b["shift_own"]
    text = f"success {b['success']:.2f}"
    if f is not None:
        text += f", reach {f['reached']:.2f}, grasp {f['grasped']:.2f}"
    if own is not None:
        text += ("; gripper shift per env phase "
                 + " ".join("-" if x is None else f"{x:+.3f}" for x in own["gripper_shift"])
                 + ", flips " + " ".join("-" if x is None else f"{x:.3f}" for x in own["flip"]))
    return text


def _keep_rate(weights: Sequence[Sequence[float]], shares: np.ndarray) -> list[float]:
    """Per phase, the rate at which a selection with these keep weights (averaged over the
    steps) keeps a chunk, relative to a uniform selection at the same budget: w_p / sum_q s_q
    w_q, with s the phases' shares of the chunks (the evaluation batches'). 1 is random's rate;
    sum_p s_p rate_p = 1 (the budget). Approximate: a trajectory's own phase mix, and chunks
    kept with certainty, move it."""
    w = np.mean(np.asarray(weights, dtype=np.float64), axis=0)
    return (w / max(float(shares @ w), 1e-12)).tolist()


def _phase_weights(keep_probs: Any) -> list[float]:
    """metrics.jsonl's keep_probs: a list of weights, or {task: weights} (one task here)."""
    if isinstance(keep_probs, dict):
        keep_probs = next(iter(keep_probs.values()))
    return [float(x) for x in keep_probs]
