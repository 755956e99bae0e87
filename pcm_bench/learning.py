"""`pcm-bench learning`: does PCM learn as much per step as GRPO, and what does it save?

One MetaWorld task, ONE SFT checkpoint that every run starts from, several algorithms for the
same number of steps, several seeds. The comparison is paired: at a given seed every algorithm
sees the same initial states and the same action-sampling seeds at every step, and is evaluated
on the same held-out initial states with the same evaluation seed (common random numbers), so
the differences between algorithms are estimated per seed and the noise that all share cancels.
Runs are interleaved by seed (seed 0: grpo, pcm, random; seed 1: ...) so that load on the
machine hits the algorithms alike.

Per run: the training success of every step (the rollout batch), held-out evaluations at the
start, the middle and the end (sampled actions, `--eval-episodes` initial states that no run
trains on), and the time split rollout / select / backward (backward = the whole actor update).
Wall-clock is training time (evaluations excluded).

Per algorithm (DESIGN: the paired gain): gain = held-out end - held-out start per seed; its mean
and 95% t-interval over seeds; the same for the paired difference to grpo and to random (gain of
the algorithm minus gain of grpo at the same seed; the random is the one drawn at the algorithm's
own kept fractions, `random_for`); seconds per step and the time split; and the
wall-clock for its training success (trailing mean of 10 steps, mean over seeds) to reach GRPO's
final training success, as a ratio to GRPO's own time to get there.

Resumable: each finished run is appended to OUT/runs.jsonl (one JSON line per (task, algo,
seed)); a rerun of the same command skips finished runs and resumes an interrupted one from its
last checkpoint, so a long study runs in pieces (`--budget-s` stops before a run that would not
fit). OUT/learning.json and OUT/learning.png are rewritten from all finished runs every time.

JSON: {benchmark, task, checkpoint, config, machine, policy, summary: {ALGO: {seeds,
heldout_start, heldout_mid, heldout_end, gain_mean, gain_ci95, gain_vs_grpo_mean,
gain_vs_grpo_ci95, gain_vs_random_mean, gain_vs_random_ci95, halves: {first_half,
second_half: {change_mean, change_ci95, vs_grpo_mean, vs_grpo_ci95, vs_random_mean,
vs_random_ci95}}, s_per_step, rollout_share,
select_share, backward_share, backward_speedup_vs_grpo, step_speedup_vs_grpo, kept_fraction,
time_to_grpo_final_s, time_to_grpo_final_ratio}}, runs: [{task, algo, seed, step, success_rate,
wall_s, rollout_s, select_s, backward_s, kept_fraction, evals: [{step, success_rate, episodes}],
heldout_start, heldout_mid, heldout_end, gain, summary}], plot}.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from scipy import stats

from pcm_bench.options import as_paths, json_option, one_of, split
from pcm_bench.study import Study, StudyError, complete
from pcm_bench.timemodel import TimeModel
from pcm_contract.run_config import RunConfigSchema
from trainer_client.cli_options import build
from trainer_client.config_fields import check_fields, opt
from trainer_client.grpo import DEFAULT_RL_LR
from trainer_client.machine import machine
from trainer_client.train.checkpoint import latest_checkpoint
from trainer_client.train.config import DEMO_ENV, SFTConfig, TrainConfig
from trainer_client.train.metrics import read_metrics
from trainer_client.train.model import load_policy
from trainer_client.train.plots import moving_average, plot_time_split
from trainer_client.train.rl import summarize, train_rl

# algorithm name -> the TrainConfig options that define it (everything else is shared)
ALGOS: dict[str, dict[str, Any]] = {
    "grpo": {"algo": "grpo"},
    # the default PCM: the adaptive budget (budget_rule auto, Horvitz-Thompson weights, each
    # phase's kept chunks weighted by its Wiener factor S / (S + N))
    "pcm": {"algo": "pcm"},
    # uniform within each trajectory; at the default PCM's per-step kept fractions where the
    # study has its run at the same seed (`keep_schedule`, RANDOM_PACED_BY), else at
    # --keep-fraction
    "random": {"algo": "random", "budget_rule": "fixed"},
    # the adaptive budget's unbiased update (no phase weighting), and random at its budget
    "pcm-ht": {"algo": "pcm", "phase_weighting": "none"},
    "random-ht": {"algo": "random", "budget_rule": "fixed"},
    # the default asked for e* = 0.8 of the full batch's progress instead of 0.6 (more chunks a
    # step), and random at its budget: a test of whether a larger budget closes the per-step gap
    # where the signal is spread over the phases (hammer-v3)
    "pcm-e0.8": {"algo": "pcm", "target_efficiency": 0.8},
    "random-e0.8": {"algo": "random", "budget_rule": "fixed"},
    # the default keeping the chunks that maximise the predicted progress per second (the
    # budget objective rate, from the trainer's reported timings) instead of e* = 0.6, and
    # random at its budget: a test of whether the time model's optimum pays where e* does not
    "pcm-rate": {"algo": "pcm", "budget_objective": "rate"},
    "random-rate": {"algo": "random", "budget_rule": "fixed"},
    # the paper's phase score at the fixed keep fraction (action score, masked mean)
    "pcm-action": {"algo": "pcm", "score": "action", "budget_rule": "fixed",
                   "weighting": "mean"},
    # the earlier default: signal score, masked mean, fixed keep fraction
    "pcm-fixed": {"algo": "pcm", "budget_rule": "fixed", "weighting": "mean"},
    "pcm-progress": {"algo": "pcm", "budget_rule": "fixed", "weighting": "mean",
                     "segmenter": "progress"},  # the earlier default, time-bin phases
    # the earlier default with the learning rate times sqrt(1 / 0.2): a test of the explanation
    # that the masked gradient is ~sqrt(5) noisier (its norm, ~2.4x GRPO's on pick-place), so
    # under Adam's per-coordinate normalization its signal per step is ~1/sqrt(5) of GRPO's
    "pcm-lr": {"algo": "pcm", "budget_rule": "fixed", "weighting": "mean",
               "lr": DEFAULT_RL_LR * 5 ** 0.5},
    # the earlier default with exploration floor 0.5 instead of 0.1 (a phase's keep weight
    # between 0.125 and 0.625 with 4 phases): a test of the explanation that its dip in steps
    # 10-30 comes from ~90% of the budget sitting on one phase for 10-20 steps
    "pcm-eps0.5": {"algo": "pcm", "budget_rule": "fixed", "weighting": "mean", "eps": 0.5},
    # the paper's algorithm (arXiv 2605.16154, sections 4.3-4.5): action score over mixed
    # groups averaged over T_rc = 5 batches and held between refreshes, p = max(0.1, s / max s),
    # B chunks per trajectory drawn by weighted sampling without replacement, its five
    # gripper-fraction phases; B = 3 of our ~13.5 chunks is its 12 of 64
    "pcm-paper": {"algo": "pcm", "score": "action", "score_window": 5, "keep_rule": "paper",
                  "weighting": "mean", "budget_rule": "fixed", "segmenter": "paper",
                  "phases": 5, "budget": 3},
}
# random masking at the per-step kept fractions of this algorithm's run at the same seed
RANDOM_PACED_BY = {"random": "pcm", "random-ht": "pcm-ht", "random-e0.8": "pcm-e0.8",
                   "random-rate": "pcm-rate"}
DEFAULT_ALGOS = ("grpo", "pcm", "random")
COLORS = {"grpo": "tab:red", "pcm": "tab:blue", "random": "tab:gray", "pcm-action": "tab:green",
          "pcm-fixed": "tab:brown", "pcm-progress": "tab:cyan", "pcm-lr": "tab:purple",
          "pcm-eps0.5": "tab:orange", "pcm-paper": "tab:olive", "pcm-ht": "tab:pink",
          "random-ht": "silver", "pcm-e0.8": "navy", "random-e0.8": "darkgray",
          "pcm-rate": "teal", "random-rate": "lightgray"}
SMOOTH = 10  # trailing window of the training-success curves (steps)


@dataclass
class LearningConfig:
    """`pcm-bench learning`: its flags are these fields (`trainer_client.cli_options`); the
    fields without a flag are for callers in Python (tests: a short episode limit, one thread)."""

    json_path: Path | None = field(default=None, metadata=json_option(
        "also write the figures here as JSON"))
    out: Path = field(default=Path("runs/bench-learning"), metadata={
        "help": "study dir: runs.jsonl (appended per run), learning.json, learning.png, run "
                "dirs; rerun with the same dir to continue"})
    init: Path | None = field(default=None, metadata={
        "help": "SFT checkpoint every run starts from; default: train one into OUT/sft"})
    env: str = opt(DEMO_ENV, "metaworld:TASK")
    algos: str = opt(",".join(DEFAULT_ALGOS), "comma-separated, from: " + ", ".join(ALGOS)
                     + " (pcm = the default PCM; pcm-action = the paper's action score)")
    steps: int = opt(TrainConfig.steps, "RL steps per run", ge=2)
    seeds: int = opt(5, "paired seeds", ge=1)
    first_seed: int = opt(0, "the first seed (0, 1, ...)", ge=0)
    budget_s: float = opt(6000.0, "this call's time budget (s); no run starts that would not fit",
                          gt=0)
    init_states: int = opt(TrainConfig.init_states, "initial states per step", ge=1)
    group_size: int = opt(TrainConfig.group_size, "G: rollouts per initial state", ge=2)
    keep_fraction: float = opt(RunConfigSchema.keep_fraction, "pcm / random keep fraction")
    eval_episodes: int = opt(100, "held-out episodes at the start, the middle and the end",
                             ge=1)
    lr: float | None = opt(None, "network learning rate; default: pcm-train rl's")
    time_model: Path | None = field(default=None, metadata={
        "help": "pcm-bench timemodel's JSON: every run but grpo continues to grpo's modelled "
                "training time and is evaluated there (equal wall-clock)"})
    summarize_only: bool = opt(False, "start no run: write the figures of the finished runs in "
                               "OUT/runs.jsonl")
    num_workers: int = opt(-1, "env worker processes; -1 = auto", cli=False)
    threads: int = opt(0, "torch threads; 0 = all cores", cli=False)
    # more TrainConfig options every run sets (part of the study's configuration), and
    # SFTConfig options of the checkpoint trained without --init
    rl_overrides: dict[str, Any] = field(default_factory=dict, metadata={"cli": False})
    sft_overrides: dict[str, Any] = field(default_factory=dict, metadata={"cli": False})

    def __post_init__(self) -> None:
        as_paths(self, "out", "json_path", "init", "time_model")
        one_of("algos", self.algo_list, tuple(ALGOS))
        check_fields(self)

    @property
    def algo_list(self) -> list[str]:
        return list(split(self.algos, str, "algos"))

    @property
    def overrides(self) -> dict[str, Any]:
        """The TrainConfig options every run sets: `rl_overrides` and --lr."""
        return {**self.rl_overrides, **({"lr": self.lr} if self.lr is not None else {})}


def run_learning_bench(config: LearningConfig, log: Callable[[str], None] = print
                       ) -> dict[str, Any]:
    """Run what is missing of the study (seeds first_seed .. first_seed + seeds - 1, each algo),
    then write and return the figures of every finished run. Without `init`, an SFT checkpoint is
    trained first into OUT/sft (reused by later calls). `budget_s` bounds this call: a run starts
    only if the longest run of its algorithm so far still fits (an algorithm not run yet
    always starts). `summarize_only` starts nothing: it writes the figures of the runs that
    OUT/runs.jsonl holds (a study stopped between runs has no learning.json until then)."""
    c = config
    out, env, algos, steps = c.out, c.env, c.algo_list, c.steps
    if not c.summarize_only:
        out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    # ---- the one SFT checkpoint every run starts from -----------------------------------------
    init = c.init
    if init is None:
        init = out / "sft" / "sft.pt"
        if not init.is_file() and c.summarize_only:
            raise StudyError(f"{init} does not exist: nothing to summarize (pass --init)")
        if not init.is_file():
            from trainer_client.train.sft import run_sft

            sft_cfg = build(SFTConfig, dict(env=env, out=str(out / "sft"), progress=False,
                                            num_workers=c.num_workers, threads=c.threads,
                                            **c.sft_overrides))
            init = run_sft(sft_cfg, log=log).checkpoint
    init = Path(init)
    overrides = c.overrides
    study_config = {
        "env": env, "checkpoint": str(init), "steps": steps, "init_states": c.init_states,
        "group_size": c.group_size, "keep_fraction": c.keep_fraction,
        "eval_episodes": c.eval_episodes, "eval_steps": _eval_steps(steps), **overrides,
    }
    model = None
    if c.time_model is not None:
        try:
            model = TimeModel.load(c.time_model)
        except (OSError, ValueError, KeyError) as exc:
            raise StudyError(f"--time-model {c.time_model}: not a timemodel JSON ({exc})"
                             ) from None
        study_config["time_model"] = model.to_dict()
        algos = ["grpo", *[a for a in algos if a != "grpo"]]  # equal time needs grpo's first
    study = Study.open(out, study_config, init, summarize_only=c.summarize_only,
                       budget_s=c.budget_s, started=t_start)
    seeds = range(c.first_seed, c.first_seed + c.seeds)

    # ---- the runs: seed-major, algorithms interleaved -----------------------------------------
    pending = () if c.summarize_only else study.pending(
        algos, seeds, finished=lambda r: model is None or not _short_of_equal_time(r), log=log,
        name="learning bench")
    for seed, algo in pending:
        run_overrides = dict(overrides)
        pacer = next((r for r in study.runs()
                      if (r["algo"], r["seed"]) == (RANDOM_PACED_BY.get(algo), seed)), None)
        if pacer is not None:  # random at the budget of the pcm it is paired with
            schedule = out / f"{algo}-s{seed}.keep.json"
            schedule.write_text(json.dumps(_kept_series(pacer)))
            run_overrides["keep_schedule"] = str(schedule)
        short = next((r for r in study.done if (r["algo"], r["seed"]) == (algo, seed)), None)
        if short is not None:  # recorded, but its equal-time evaluation fell short: top up
            record = {k: v for k, v in short.items()
                      if k not in ("fingerprint", "config", "equal_time", "extension")}
        else:
            record = _run_one(c, init, algo, seed, run_overrides, log)
        if model is not None and algo != "grpo":
            grpo_run = next(r for r in study.runs() if (r["algo"], r["seed"]) == ("grpo", seed))
            record = _extend_to_equal_time(record, model, grpo_run, c, init, algo, seed,
                                           run_overrides, log)
        study.append(record)

    # ---- the figures of every finished run ----------------------------------------------------
    runs = study.runs()
    policy = load_policy(init)
    result: dict[str, Any] = {
        "benchmark": "learning",
        "task": env,
        "checkpoint": str(init),
        "config": study_config,
        "machine": machine(loadavg_end=list(os.getloadavg())),
        "policy": {"params": policy.num_params(), "width": policy.config.width,
                   "depth": policy.config.depth},
        "complete": complete(runs, algos, seeds),
        "summary": summarize_runs(runs),
        "runs": runs,
    }
    if runs:
        result["plot"] = str(plot_learning(result, out / "learning.png"))
    (out / "learning.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _eval_steps(steps: int) -> list[int]:
    """Held-out evaluations: the start, the middle and the end."""
    return sorted({0, steps // 2, steps})


def _run_one(c: LearningConfig, init: Path, algo: str, seed: int, overrides: dict[str, Any],
             log: Callable[[str], None], until: int | None = None) -> dict[str, Any]:
    """The run of `c.steps` steps (held-out evaluations at 0, steps / 2 and steps), or with
    `until`, its continuation from step `c.steps` to `until`, evaluated at `until` only."""
    steps, out = c.steps, c.out
    run_dir = out / f"{algo}-s{seed}"
    resume = latest_checkpoint(run_dir) is not None
    cfg = build(TrainConfig, dict(
        env=c.env, selector="embedded", run_id=f"learn-{algo}-s{seed}", out=str(run_dir),
        init=str(init), resume=resume, steps=until or steps, seed=seed, group_size=c.group_size,
        init_states=c.init_states, keep_fraction=c.keep_fraction,
        eval_every=until or steps // 2, eval_episodes=c.eval_episodes, checkpoint_every=10,
        keep_checkpoints=1, num_workers=c.num_workers, threads=c.threads, progress=False,
        trainer_id="bench", **{**overrides, **ALGOS[algo]},
    ))
    log(f"learning bench: {algo} seed {seed} ({until or steps} steps"
        f"{', resumed' if resume else ''}) -> {cfg.out}")
    t0 = time.perf_counter()
    with (out / f"{algo}-s{seed}.log").open("a") as f:

        def write_line(line: str) -> None:
            f.write(line + "\n")
            f.flush()

        result = train_rl(cfg, log_line=write_line)
    record = run_record(algo, seed, read_metrics(result.metrics), cfg, steps)
    record["duration_s"] = time.perf_counter() - t0
    log(f"  {algo} seed {seed}: {record['summary']['wall_s']:.0f}s training, held-out "
        f"{record['heldout_start']:.2f} -> {record['heldout_mid']:.2f} -> "
        f"{record['heldout_end']:.2f}")
    return record


def run_record(algo: str, seed: int, rows: list[dict[str, Any]], cfg: TrainConfig,
               steps: int | None = None) -> dict[str, Any]:
    """One finished run: per-step series, the held-out evaluations and the paired gain. Steps
    past `steps` (an equal-time continuation) go to `extension`, not to the series."""
    steps = steps or cfg.steps
    all_steps = [r for r in rows if r.get("kind", "step") == "step"]
    main = [r for r in all_steps if r["step"] <= steps]
    evals = {r["step"]: r for r in rows if r.get("kind") == "eval"}  # a resumed step: last wins
    evals_list = [{"step": s, "success_rate": evals[s]["success_rate"],
                   "episodes": evals[s].get("episodes")} for s in sorted(evals) if s <= steps]
    if len(evals_list) < 2:
        raise RuntimeError(f"{cfg.out}: need held-out evaluations at the start and the end, "
                           f"got steps {sorted(evals)}")
    start, end = evals_list[0]["success_rate"], evals_list[-1]["success_rate"]
    mid = evals_list[len(evals_list) // 2]["success_rate"]
    return {
        "task": cfg.env, "algo": algo, "seed": seed, "out": cfg.out,
        **_series(main),
        "keep_probs": [r.get("keep_probs") for r in main],
        "evals": evals_list,
        "heldout_start": start, "heldout_mid": mid, "heldout_end": end, "gain": end - start,
        "summary": summarize([r for r in rows if r.get("kind", "step") != "step"
                              or r["step"] <= steps], cfg),
    }


SERIES = ("step", "success_rate", "wall_s", "rollout_s", "select_s", "backward_s",
          "kept_fraction", "grad_norm", "env_steps", "kept_chunks")


def _series(step_rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    return {key: [r.get(key) for r in step_rows] for key in SERIES}


def _kept_series(run: dict[str, Any]) -> list[float]:
    """A run's kept fraction per step, its equal-time continuation included. A step that kept
    nothing (no informative group: every rollout of every group succeeded, or every one failed)
    chose no fraction: it takes the last one chosen (the first one, before any), so the series
    paces a random run whose batch at that step may have informative groups."""
    fractions = [float(f) for f in run["kept_fraction"] + run.get("extension", {}).get(
        "kept_fraction", [])]
    chosen = [f for f in fractions if f > 0]
    if not chosen:
        raise StudyError(f"{run['algo']} seed {run['seed']} kept no chunk at any step: nothing "
                         "to pace random masking by")
    last = chosen[0]
    series = []
    for f in fractions:
        last = f if f > 0 else last
        series.append(last)
    return series


def _extend_to_equal_time(
    record: dict[str, Any], model: TimeModel, grpo_run: dict[str, Any], c: LearningConfig,
    init: Path, algo: str, seed: int, overrides: dict[str, Any], log: Callable[[str], None],
) -> dict[str, Any]:
    """Continue the run until its modelled time reaches grpo's (`steps` steps at this seed),
    with a held-out evaluation there: the extra steps are predicted from the modelled time of
    the last steps/2 steps, and topped up the same way until the modelled time is reached (each
    stage is evaluated at its end; the last one is the equal-time evaluation). `equal_time`
    records where it landed."""
    t_grpo = float(model.run_s(grpo_run["env_steps"], grpo_run["kept_chunks"])[-1])
    mine = model.run_s(record["env_steps"], record["kept_chunks"])
    if mine[-1] >= t_grpo:  # as slow as grpo or slower: held-out at the equal time, interpolated
        record["equal_time"] = _interpolated_equal_time(record, mine, t_grpo)
        return record
    steps = c.steps
    until, extra, total = steps, [], mine
    while total[-1] < t_grpo:  # predict the steps left from the recent steps' modelled time
        recent = np.diff(np.r_[0.0, total])[-max(1, steps // 2):].mean()
        until += max(1, int(np.ceil((t_grpo - total[-1]) / recent)))
        extended = _run_one(c, init, algo, seed, overrides, log, until=until)
        rows = read_metrics(Path(extended["out"]) / "metrics.jsonl")
        extra = [r for r in rows if r.get("kind", "step") == "step" and steps < r["step"] <= until]
        evals = {r["step"]: r for r in rows if r.get("kind") == "eval"}
        total = model.run_s(record["env_steps"] + [r["env_steps"] for r in extra],
                            record["kept_chunks"] + [r["kept_chunks"] for r in extra])
    record["extension"] = _series(extra)
    record["equal_time"] = {
        "step": until, "model_s": float(total[-1]), "grpo_model_s": t_grpo,
        "model_ratio": float(total[-1] / t_grpo),
        "heldout": evals[until]["success_rate"] if until in evals else None,
        "interpolated": False,
    }
    return record


def _short_of_equal_time(record: dict[str, Any]) -> bool:
    """A run continued to grpo's modelled time that stopped short of it (an earlier version
    predicted the continuation's length once, without topping it up), or whose evaluation
    there is missing (an earlier trainer, stopped between the last checkpoint and that
    evaluation, did not run it on resume)."""
    et = record.get("equal_time")
    return (et is not None and not et.get("interpolated", False)
            and (et.get("model_ratio", 1.0) < 1.0 or et.get("heldout") is None))


def _interpolated_equal_time(record: dict[str, Any], model_s: np.ndarray, t_grpo: float
                             ) -> dict[str, Any]:
    """Held-out success at modelled time t_grpo, linear between the run's evaluations."""
    at = {e["step"]: e["success_rate"] for e in record["evals"]}
    times = [0.0 if s == 0 else float(model_s[s - 1]) for s in sorted(at)]
    heldout = float(np.interp(t_grpo, times, [at[s] for s in sorted(at)]))
    step = int(np.searchsorted(model_s, t_grpo) + 1)
    return {"step": step, "model_s": float(model_s[min(step, len(model_s)) - 1]),
            "grpo_model_s": t_grpo, "model_ratio": float(model_s[-1] / t_grpo),
            "heldout": heldout, "interpolated": True}


def mean_ci95(values: Sequence[float]) -> tuple[float, list[float] | None]:
    """Mean and the 95% Student-t interval of the mean (None with fewer than 2 values)."""
    v = np.asarray(values, dtype=np.float64)
    mean = float(v.mean())
    if v.size < 2:
        return mean, None
    half = float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return mean, [mean - half, mean + half]


def _paired(mine: dict[int, dict[str, Any]], other: dict[int, dict[str, Any]],
            change: Callable[[dict[str, Any]], float] = lambda r: r["gain"],
            ) -> tuple[float | None, list[float] | None]:
    """Mean and 95% interval over the shared seeds of change(mine) - change(other)."""
    seeds = sorted(set(mine) & set(other))
    if not seeds:
        return None, None
    return mean_ci95([change(mine[s]) - change(other[s]) for s in seeds])


# The two halves of a run: held-out change from the start to the middle evaluation, and from
# the middle to the end (where in a run a gap between algorithms arises).
HALVES: dict[str, Callable[[dict[str, Any]], float]] = {
    "first_half": lambda r: r["heldout_mid"] - r["heldout_start"],
    "second_half": lambda r: r["heldout_end"] - r["heldout_mid"],
}


def random_for(algo: str) -> str:
    """The random masking `algo` is compared with: the one drawn at its own per-step kept
    fractions (RANDOM_PACED_BY), else `random`."""
    return next((r for r, pcm in RANDOM_PACED_BY.items() if pcm == algo), "random")


def _halves(algo: str, mine: dict[int, dict[str, Any]],
            by_algo: dict[str, dict[int, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per half: the held-out change (mean, 95% CI over seeds) and its paired differences to
    grpo's and to its random's (`random_for`) at the same seeds."""
    out: dict[str, dict[str, Any]] = {}
    for half, change in HALVES.items():
        mean, ci = mean_ci95([change(r) for r in mine.values()])
        vs_grpo = _paired(mine, by_algo.get("grpo", {}), change)
        vs_random = _paired(mine, by_algo.get(random_for(algo), {}), change)
        out[half] = {"change_mean": mean, "change_ci95": ci,
                     "vs_grpo_mean": vs_grpo[0], "vs_grpo_ci95": vs_grpo[1],
                     "vs_random_mean": vs_random[0], "vs_random_ci95": vs_random[1]}
    return out


def _median_grad_norm(runs: Sequence[dict[str, Any]]) -> float | None:
    """Median over the runs' steps; runs recorded before the series existed read it from their
    metrics file when it is still there."""
    norms: list[float] = []
    for r in runs:
        series = r.get("grad_norm")
        if series is None and (Path(r["out"]) / "metrics.jsonl").is_file():
            rows = read_metrics(Path(r["out"]) / "metrics.jsonl")
            series = [row.get("grad_norm") for row in rows if row.get("kind", "step") == "step"]
        norms += [float(g) for g in series or [] if g is not None]
    return float(np.median(norms)) if norms else None


def _curve(runs: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """(mean cumulative training wall-clock, mean smoothed training success) per step over the
    runs, truncated to the shortest run."""
    n = min(len(r["step"]) for r in runs)
    wall = np.mean([np.asarray(r["wall_s"][:n]) for r in runs], axis=0)
    success = np.mean([moving_average(r["success_rate"][:n], SMOOTH) for r in runs], axis=0)
    return wall, success


def _time_to(wall: np.ndarray, success: np.ndarray, target: float) -> float | None:
    hit = np.flatnonzero(success >= target - 1e-12)
    return float(wall[hit[0]]) if hit.size else None


def runs_by_algo(runs: Sequence[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    """{algo: {seed: run}}: the pairing key of every comparison."""
    by_algo: dict[str, dict[int, dict[str, Any]]] = {}
    for r in runs:
        by_algo.setdefault(r["algo"], {})[r["seed"]] = r
    return by_algo


def summarize_runs(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per algorithm over its seeds; see the module docstring."""
    by_algo = runs_by_algo(runs)
    out: dict[str, Any] = {}
    for algo, mine in by_algo.items():
        rs = list(mine.values())
        secs = {k: float(sum(sum(r[f"{k}_s"]) for r in rs)) for k in ("rollout", "select",
                                                                     "backward")}
        n_steps = sum(len(r["step"]) for r in rs)
        total = sum(secs.values())
        gain_mean, gain_ci = mean_ci95([r["gain"] for r in rs])
        vs_grpo = _paired(mine, by_algo.get("grpo", {}))
        vs_random = _paired(mine, by_algo.get(random_for(algo), {}))
        out[algo] = {
            "seeds": sorted(mine),
            "heldout_start": float(np.mean([r["heldout_start"] for r in rs])),
            "heldout_mid": float(np.mean([r["heldout_mid"] for r in rs])),
            "heldout_end": float(np.mean([r["heldout_end"] for r in rs])),
            "gain_mean": gain_mean, "gain_ci95": gain_ci,
            "gain_vs_grpo_mean": vs_grpo[0], "gain_vs_grpo_ci95": vs_grpo[1],
            "gain_vs_random_mean": vs_random[0], "gain_vs_random_ci95": vs_random[1],
            "halves": _halves(algo, mine, by_algo),
            "s_per_step": total / n_steps,
            "seconds_per_step": {k: v / n_steps for k, v in secs.items()},
            "rollout_share": secs["rollout"] / total,
            "select_share": secs["select"] / total,
            "backward_share": secs["backward"] / total,
            "kept_fraction": float(np.mean([r["summary"]["kept_fraction"] for r in rs])),
            # the update's gradient norm before clipping (clipped to max_grad_norm): the masked
            # gradient's noise shows here
            "grad_norm_median": _median_grad_norm(rs),
            # only where the keep weights choose the chunks (grpo and random record them unused)
            "keep_weight_change": (None if algo == "grpo" or algo in RANDOM_PACED_BY
                                   else _keep_weight_change(rs)),
        }
    if "grpo" in out:
        g = out["grpo"]
        g_wall, g_success = _curve(list(by_algo["grpo"].values()))
        target = float(g_success[-1])  # GRPO's final training success (trailing mean)
        t_grpo = _time_to(g_wall, g_success, target)
        for algo, a in out.items():
            b = a["seconds_per_step"]["backward"]
            a["backward_speedup_vs_grpo"] = g["seconds_per_step"]["backward"] / b if b else None
            a["step_speedup_vs_grpo"] = g["s_per_step"] / a["s_per_step"]
            t = _time_to(*_curve(list(by_algo[algo].values())), target)
            a["grpo_final_training_success"] = target
            a["time_to_grpo_final_s"] = t
            a["time_to_grpo_final_ratio"] = t / t_grpo if t is not None and t_grpo else None
            a["backward_fraction"] = _backward_fraction(by_algo[algo], by_algo["grpo"])
            a["equal_time"] = _equal_time(algo, by_algo[algo], by_algo["grpo"])
    return out


def _equal_time_heldout(algo: str, run: dict[str, Any]) -> float | None:
    if algo == "grpo":
        return float(run["heldout_end"])
    et = run.get("equal_time")
    return None if et is None or et.get("heldout") is None else float(et["heldout"])


def _equal_time(algo: str, mine: dict[int, dict[str, Any]], grpo: dict[int, dict[str, Any]]
                ) -> dict[str, Any] | None:
    """Held-out success at grpo's modelled training time for the same steps (the time model's
    equal wall-clock), its gain from the start and its paired difference to grpo's gain."""
    at = {s: _equal_time_heldout(algo, r) for s, r in mine.items()}
    seeds = sorted(s for s, h in at.items() if h is not None)
    if not seeds:
        return None
    gains = [at[s] - mine[s]["heldout_start"] for s in seeds]
    gain_mean, gain_ci = mean_ci95(gains)
    paired = [at[s] - mine[s]["heldout_start"] - grpo[s]["gain"]
              for s in seeds if s in grpo]
    minus = mean_ci95(paired) if paired else (None, None)
    return {"seeds": seeds, "heldout_end": float(np.mean([at[s] for s in seeds])),
            "gain_mean": gain_mean, "gain_ci95": gain_ci,
            "minus_grpo_mean": minus[0], "minus_grpo_ci95": minus[1],
            "steps": [mine[s].get("equal_time", {}).get("step") for s in seeds],
            "model_ratio": [mine[s].get("equal_time", {}).get("model_ratio") for s in seeds]}


def _backward_fraction(mine: dict[int, dict[str, Any]], grpo: dict[int, dict[str, Any]]
                       ) -> float | None:
    """Backpropagated chunks over grpo's in the same steps, summed over the paired seeds."""
    seeds = [s for s in mine if s in grpo and mine[s].get("kept_chunks")
             and grpo[s].get("kept_chunks")]
    if not seeds:
        return None
    return (sum(sum(mine[s]["kept_chunks"]) for s in seeds)
            / sum(sum(grpo[s]["kept_chunks"]) for s in seeds))


def _keep_weight_change(runs: Sequence[dict[str, Any]]) -> dict[str, float] | None:
    """Step-to-step change of the keep weights, max_p |w_p(t) - w_p(t-1)|: median and max over
    the steps of every run."""
    changes: list[float] = []
    for r in runs:
        probs = [np.asarray(p) for p in r.get("keep_probs") or [] if p is not None]
        changes += [float(np.abs(b - a).max()) for a, b in itertools.pairwise(probs)
                    if a.shape == b.shape]
    if not changes:
        return None
    return {"median": float(np.median(changes)), "max": float(np.max(changes))}


# ---- the figure and the table ---------------------------------------------------------------


def plot_learning(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, summary = result["runs"], result["summary"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    (ax_step, ax_wall), (ax_eval, ax_time) = axes
    algos = list(summary)
    for algo in algos:
        mine = [r for r in runs if r["algo"] == algo]
        color = COLORS.get(algo, "k")
        for r in mine:  # each seed, faint
            smooth = moving_average(r["success_rate"], SMOOTH)
            ax_step.plot(r["step"], smooth, color=color, alpha=0.15, lw=0.8)
        wall, success = _curve(mine)
        steps = mine[0]["step"][: len(wall)]
        label = f"{algo} ({len(mine)} seeds)"
        ax_step.plot(steps, success, color=color, lw=2, label=label)
        ax_wall.plot(wall / 60, success, color=color, lw=2, label=label)
        # held-out: mean over seeds at each evaluation step, with the 95% interval
        eval_steps = sorted({e["step"] for r in mine for e in r["evals"]})
        means, lo, hi = [], [], []
        for s in eval_steps:
            vals = [e["success_rate"] for r in mine for e in r["evals"] if e["step"] == s]
            m, ci = mean_ci95(vals)
            means.append(m)
            lo.append(m - ci[0] if ci else 0.0)
            hi.append(ci[1] - m if ci else 0.0)
        offset = (algos.index(algo) - (len(algos) - 1) / 2) * 0.6
        ax_eval.errorbar(np.asarray(eval_steps) + offset, means, yerr=[lo, hi], fmt="o-",
                         color=color, capsize=3, label=algo)
    if "grpo" in summary and summary["grpo"].get("grpo_final_training_success") is not None:
        target = summary["grpo"]["grpo_final_training_success"]
        ax_wall.axhline(target, color="tab:red", ls=":", lw=1, label="GRPO's final")
    ax_step.set(xlabel="step", ylabel=f"training success (trailing mean {SMOOTH})",
                title="success vs step (thin: seeds; thick: mean)")
    ax_wall.set(xlabel="training wall-clock (min, mean over seeds)", ylabel="training success",
                title="success vs wall-clock")
    ax_eval.set(xlabel="step", ylabel="held-out success (sampled)",
                title=f"held-out ({result['config']['eval_episodes']} episodes; mean, 95% CI)")
    for ax in (ax_step, ax_wall, ax_eval):
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=8)
    plot_time_split(ax_time, {a: summary[a]["seconds_per_step"] for a in algos})
    fig.suptitle(f"pcm-bench learning: {result['task']}, {result['config']['steps']} steps, "
                 f"policy {result['policy']['params'] / 1e6:.1f} M params")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pm(mean: float | None, ci: list[float] | None) -> str:
    if mean is None:
        return "-"
    if ci is None:
        return f"{mean:+.3f}"
    return f"{mean:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"


def print_table(result: dict[str, Any], console: Console | None = None) -> None:
    # in a file or CI: wide enough for the table
    console = console or Console(width=None if sys.stdout.isatty() else 240)
    table = Table(title=f"pcm-bench learning: {result['task']} "
                        f"({result['config']['steps']} steps; 95% intervals over seeds)")
    for col in ("algo", "seeds", "held-out start -> mid -> end", "gain", "gain vs grpo",
                "gain vs random", "equal time: held-out, gain minus grpo's", "backward fraction",
                "s/step", "rollout/select/backward", "backward speed-up", "grad norm",
                "keep weight change (median, max)"):
        table.add_column(col, justify="right")
    for algo, a in result["summary"].items():
        speed = a.get("backward_speedup_vs_grpo")
        et, bf, kw = a.get("equal_time"), a.get("backward_fraction"), a.get("keep_weight_change")
        table.add_row(
            algo, str(len(a["seeds"])),
            f"{a['heldout_start']:.2f} -> {a['heldout_mid']:.2f} -> {a['heldout_end']:.2f}",
            _pm(a["gain_mean"], a["gain_ci95"]),
            _pm(a["gain_vs_grpo_mean"], a["gain_vs_grpo_ci95"]) if algo != "grpo" else "0",
            _pm(a["gain_vs_random_mean"], a["gain_vs_random_ci95"])
            if algo not in RANDOM_PACED_BY else "0",
            (f"{et['heldout_end']:.2f}, "
             + (_pm(et["minus_grpo_mean"], et["minus_grpo_ci95"]) if algo != "grpo" else "0"))
            if et else "-",
            f"{bf:.2f}" if bf is not None else "-",
            f"{a['s_per_step']:.2f}",
            f"{a['rollout_share']:.0%}/{a['select_share']:.1%}/{a['backward_share']:.0%}",
            f"{speed:.2f}x" if speed else "-",
            f"{a['grad_norm_median']:.1f}" if a.get("grad_norm_median") else "-",
            f"{kw['median']:.2f}, {kw['max']:.2f}" if kw else "-",
        )
    console.print(table)
    halves = Table(title="where in the run: held-out change per half (start -> mid, mid -> end)"
                         "; paired differences over seeds")
    for col in ("algo", "first half", "minus grpo's", "minus random's", "second half",
                "minus grpo's", "minus random's"):
        halves.add_column(col, justify="right")
    for algo, a in result["summary"].items():
        cells = [algo]
        for half in HALVES:
            h = a["halves"][half]
            cells += [_pm(h["change_mean"], h["change_ci95"]),
                      _pm(h["vs_grpo_mean"], h["vs_grpo_ci95"]) if algo != "grpo" else "0",
                      _pm(h["vs_random_mean"], h["vs_random_ci95"])
                      if algo not in RANDOM_PACED_BY else "0"]
        halves.add_row(*cells)
    console.print(halves)
    if result.get("plot"):
        console.print(f"plot: {result['plot']}")
    if not result.get("complete", True):
        console.print("incomplete: rerun the same command to continue the study")
