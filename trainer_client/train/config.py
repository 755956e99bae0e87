"""Configuration of the training commands: one dataclass per command, each field with its help
text (the `pcm-train` flags are generated from these fields by `trainer_client.cli_options`) and
checks that say how to fix a bad value.

- `TrainConfig`: `pcm-train rl` (GRPO / PCM post-training against a selector); the actor update
  is its `grpo: GRPOConfig` (`trainer_client.grpo`) and the selector run config its
  `selection: RunConfigSchema` (`pcm_contract.run_config`, checked by the schema's own checks),
  whose fields are flags of their own
- `SFTConfig`: `pcm-train sft` (behaviour cloning on MetaWorld's noisy scripted expert)
- `EvalConfig`: `pcm-train eval`

Each is composed of `runtime: Runtime` (where and how the command runs: env workers, torch
threads, progress bar, device, precision, parallelism; the same flags for every command, checked
once), declared with `runtime_options`, which names the options a command does not use.

Init states. MetaWorld has unboundedly many initial states: RL training draws each step's from
[0, TRAIN_INIT_POOL), evaluation uses the held-out EVAL_INIT_OFFSET + i, and the SFT demos use
`trainer_client.expert.DEMO_INIT_STATE_OFFSET + e`, so the three never overlap. LIBERO has 50
bundled initial states per task: training draws from all of them and evaluation uses 0..N-1
(there is no held-out set).
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pcm_contract.models import RUN_ID_PATTERN
from pcm_contract.run_config import MODES, RunConfigSchema
from trainer_client.config_fields import check_choice, check_fields, opt
from trainer_client.device import (
    DEVICE_HELP,
    PARALLEL_HELP,
    PRECISION_HELP,
    check_device_spec,
    check_parallel,
    check_precision,
)
from trainer_client.envs import parse_env_spec
from trainer_client.envs.factory import check_env_installed
from trainer_client.expert import DEMO_MAX_STEPS, DEMO_NOISE_STD, DEMO_TASK
from trainer_client.grpo import GRPOConfig
from trainer_client.phases import TRAINER_SEGMENTERS
from trainer_client.policy import DEFAULT_PRESET, PRESETS, PolicyConfig

ALGOS = MODES  # the selector's modes, weightings and scores (pcm_contract.run_config)
TRAIN_INIT_POOL = 50_000  # MetaWorld RL training draws init states from [0, TRAIN_INIT_POOL)
EVAL_INIT_OFFSET = 50_000  # MetaWorld evaluation uses init states EVAL_INIT_OFFSET + i
DEMO_ENV = f"metaworld:{DEMO_TASK}"
RUN_ID_RE = re.compile(RUN_ID_PATTERN)  # the selector's run id pattern
_ID_BAD_CHARS = re.compile(r"[^A-Za-z0-9._:/@+=-]")
# the run config's fields the trainer sets itself: feature_dim from the score and the policy
# (trainer_client.train.rl)
SELECTION_DERIVED = ("feature_dim",)
# the run config's fields whose flags are the trainer's own: the run's mode is --algo, and its
# seed is the trainer's --seed (-1 derives one from the trainer id)
SELECTION_RENAMED = {"mode": "algo"}
SELECTION_TRAINER = ("mode", "seed")


# ---- where and how a command runs -------------------------------------------------------------


@dataclass
class Runtime:
    """Where and how a training command runs: env worker processes, torch threads, the progress
    bar, and the device, precision and parallelism of the policy (`trainer_client.device`). One
    definition for every command (its `runtime` field, see `runtime_options`); the checks run when
    it is made, and each error says how to fix the value. A bf16 request on a GPU without bf16
    is refused when the job starts."""

    num_workers: int = opt(-1, "env worker processes; -1 = auto", ge=-1, hint="-1 = auto")
    threads: int = opt(0, "torch threads; 0 = all cores", ge=0)
    progress: bool = opt(True, "show a progress bar")
    device: str = opt("auto", DEVICE_HELP)
    precision: str = opt("fp32", PRECISION_HELP)
    parallel: str = opt("ddp", PARALLEL_HELP)

    def __post_init__(self) -> None:
        check_fields(self)
        check_device_spec(self.device)
        check_precision(self.precision)
        check_parallel(self.parallel)


def runtime_options(unused: tuple[str, ...] = (), **help_for: str) -> dict[str, Any]:
    """The metadata of a command's `runtime: Runtime` field, whose fields are flags of their own
    (`--device`, ...): `unused` names those the command does not use (no flag; they keep their
    defaults), `help_for` the help of those whose use by the command needs other words."""
    return {"help": "where and how it runs (Runtime)", "unused": unused, "help_for": help_for}


# ---- RL ---------------------------------------------------------------------------------------

# what the weighting asks of the loss: `mean` averages over the kept chunks, `ht` and `none`
# divide by what the full loss divides by (trainer_client.grpo)
LOSS_DENOMINATORS = {"mean": "kept", "ht": "full", "none": "full"}


def trainer_selection() -> RunConfigSchema:
    """pcm-train's run config defaults: the schema's, with the adaptive budget (budget_rule
    auto), its Horvitz-Thompson weights and each phase's Wiener factor (phase_weighting
    wiener; docs/design.md, "Why these defaults")."""
    return RunConfigSchema(budget_rule="auto", weighting="ht", phase_weighting="wiener")


@dataclass
class TrainConfig:
    """`pcm-train rl`: GRPO post-training with chunk selection by a PCM selector."""

    # what to train, where (the algorithm, --algo, is the run config's mode: `selection`)
    env: str = opt(DEMO_ENV, "environment: metaworld:TASK or libero:SUITE:TASK_INDEX")
    selector: str = opt("embedded", "embedded | grpc://HOST:PORT | http://HOST:PORT")
    run_id: str | None = opt(
        None, "selector run id (letters, digits, ._-); default: ALGO-TASK-sSEED"
    )
    out: str = opt("runs/rl", "output dir: metrics.jsonl, checkpoints/, final.pt, PNG")
    init: str | None = opt(None, "policy checkpoint to start from (e.g. the SFT's sft.pt)")
    resume: bool = opt(False, "continue from the latest checkpoint in --out")
    steps: int = opt(60, "RL steps (each: rollout, select, selective backward, report)", ge=1)
    # the batch
    group_size: int = opt(8, "G: rollouts per initial state (a GRPO group)", ge=2,
                          hint="GRPO compares within a group")
    init_states: int = opt(4, "initial states per step (all ranks together); batch = this x G",
                           ge=1)
    max_steps: int | None = opt(
        None,
        "env step limit of an episode; default: 120 for MetaWorld (as the SFT demos), the "
        "suite's limit for LIBERO; 0 = the env's own default",
        show_default=False, ge=0, hint="0 = the env's default",
    )
    # chunk selection: the selector run config (pcm_contract.run_config.RunConfigSchema), its
    # fields flattened into flags (--keep-fraction, --phases, --eps, --eta, --weighting, --score,
    # --budget, and any field the schema gains); its mode is --algo and its seed --seed, the
    # trainer's own (`algo` and `seed` read them)
    selection: RunConfigSchema = field(
        default_factory=trainer_selection,
        metadata={
            "help": "the selector run config (pcm_contract.run_config.RunConfigSchema)",
            "derived": SELECTION_DERIVED,
            "rename": SELECTION_RENAMED,
            "help_for": {
                "mode": "pcm | grpo (every chunk) | random (same budget, phase-blind)",
                "seed": "seed of init-state draws, action sampling, a fresh policy and the "
                "selector run; -1 = derived from the trainer id, so scaled replicas sharing a "
                "run roll out different initial states",
                "budget": "B: a fixed number of chunks per trajectory (k_i = min(B, C_i)) "
                "instead of --keep-fraction; 0 = off",
                "phase_weighting": "with --budget-rule auto and --algo pcm: wiener (each "
                "phase's kept chunks also weighted by its measured signal over signal plus "
                "noise; biased, damps noise-only phases) | none (the unbiased update); fixed "
                "budgets, grpo and random use none",
            },
        },
    )
    segmenter: str = opt(
        "auto",
        "phase labels: auto (gripper where the gripper splits the first batch into two or more "
        "phases, else progress; the log says which) | gripper (a new phase at each gripper "
        "close / open; the estimator bench's best) | progress (equal time bins) | env | paper "
        "(the paper's five gripper-fraction phases; use with --phases 5)",
    )
    signal_dim: int = opt(128, "feature_dim of the signal score's gradient sketches", ge=1)
    trainer_id: str | None = opt(None, "trainer id at the selector; default: the hostname")
    token: str | None = opt(
        None, "bearer token for the selector", envvar="PCM_AUTH_TOKEN", show_default=False
    )
    # the update: the GRPO config, its fields flattened into flags (--lr, --micro-batch, ...)
    grpo: GRPOConfig = field(
        default_factory=GRPOConfig,
        metadata={"help": "the actor update (trainer_client.grpo.GRPOConfig)"},
    )
    log_std_lr: float = opt(
        1e-2, "AdamW learning rate of the action log-std (exploration noise); 0 = --lr", ge=0,
        hint="0 = same as --lr"
    )
    lr_warmup_steps: int = opt(5, "linear learning-rate warm-up over the first N steps", ge=0)
    # a fresh policy (ignored with --init)
    preset: str = opt(DEFAULT_PRESET, "policy trunk preset: " + " | ".join(PRESETS))
    chunk_size: int = opt(PolicyConfig.chunk_size, "K: actions per chunk (a fresh policy)", ge=1)
    init_log_std: float = opt(PolicyConfig.init_log_std, "initial action log-std (a fresh policy)")
    # bookkeeping
    checkpoint_every: int = opt(10, "save a checkpoint every N steps (and at the end)", ge=1)
    keep_checkpoints: int = opt(2, "step checkpoints kept on disk (older ones are deleted)",
                                ge=1)
    eval_every: int = opt(0, "evaluate on held-out init states every N steps; 0 = never", ge=0)
    eval_episodes: int = opt(32, "episodes of each evaluation (one per held-out init state)",
                             ge=1)
    time_budget_s: float = opt(0.0, "stop after the step that passes this many seconds; 0 = off",
                               ge=0, hint="0 = off")
    keep_schedule: str = opt(
        "", "a JSON list of keep fractions, one per step, sent with each step's batch instead "
        "of the run's budget (replays another run's per-step budget, e.g. random at the "
        "adaptive budget's fractions; steps past its end take the mean of its last 10); "
        "'' = off")
    runtime: Runtime = field(
        default_factory=Runtime,
        metadata=runtime_options(
            num_workers="env worker processes; -1 = auto (2, or 0 under torchrun)",
            threads="torch threads; 0 = auto (cores / ranks)",
        ),
    )

    @property
    def algo(self) -> str:
        """pcm | grpo | random: the run config's mode (--algo)."""
        return self.selection.mode

    @property
    def seed(self) -> int:
        """The trainer's seed, the run config's (--seed; -1 is resolved when the config is
        made)."""
        return self.selection.seed

    @property
    def loss_denominator(self) -> str:
        """What the loss divides by, as the weighting asks (`trainer_client.grpo`)."""
        return LOSS_DENOMINATORS[self.selection.weighting]

    def __post_init__(self) -> None:
        spec = _check_env(self.env)
        check_choice("algo", self.algo, ALGOS)
        check_choice("segmenter", self.segmenter, TRAINER_SEGMENTERS)
        _check_selection(self.selection, skip=SELECTION_TRAINER)
        check_fields(self)
        check_choice("preset", self.preset, tuple(PRESETS))
        if not self.selector == "embedded" and not self.selector.startswith(
            ("grpc://", "http://", "https://")
        ):
            raise ValueError(
                f"--selector {self.selector!r}: use 'embedded', 'grpc://HOST:PORT' or "
                "'http://HOST:PORT'"
            )
        if self.trainer_id is None:
            self.trainer_id = default_trainer_id()
        self.trainer_id = sanitize_id(self.trainer_id)
        if self.seed == -1:
            self.selection = replace(self.selection, seed=seed_from_trainer_id(self.trainer_id))
        elif self.seed < 0:
            raise ValueError(
                f"--seed {self.seed}: use a seed >= 0, or -1 to derive one from the trainer id"
            )
        _check_selection(self.selection, only=("seed",))
        if self.run_id is None:
            self.run_id = f"{self.algo}-{spec.task}-s{self.seed}".replace(":", "-")[:64]
        if not RUN_ID_RE.match(self.run_id):
            raise ValueError(
                f"--run-id {self.run_id!r}: use 1-64 letters, digits or ._- (starting with a "
                "letter or digit)"
            )
        if self.token is None:
            self.token = os.environ.get("PCM_AUTH_TOKEN") or None
        self.max_steps = _default_max_steps(self.max_steps, spec.family)
        if spec.family == "libero" and self.init_states > 50:
            raise ValueError(f"--init-states {self.init_states}: LIBERO tasks have 50")
        if self.keep_schedule:
            load_keep_schedule(self.keep_schedule)  # refused here, not at the first step
        # feature_dim is set when the policy is known (`run_config`); grpo keeps every chunk:
        # record what actually runs
        if self.algo == "grpo":
            self.selection = replace(self.selection, keep_fraction=1.0)
        # the Wiener factor weights the adaptive budget's phases from their measured signal and
        # noise; a fixed budget, grpo and random have none to weight
        if self.selection.phase_weighting == "wiener" and (
                self.selection.budget_rule != "auto" or self.algo != "pcm"):
            self.selection = replace(self.selection, phase_weighting="none")
        if self.selection.budget_objective == "rate" and self.selection.budget_rule != "auto":
            raise ValueError(
                "--budget-objective rate chooses how many chunks the adaptive budget keeps: use "
                "--budget-rule auto (or --budget-objective efficiency)"
            )
        if (self.selection.budget_rule == "auto" and self.algo != "grpo"
                and self.selection.score != "signal"):
            raise ValueError(
                f"--budget-rule auto chooses chunks from their gradient sketches, which only "
                f"--score signal sends (--score is {self.selection.score!r}); use "
                "--budget-rule fixed with --score action"
            )

    def to_dict(self) -> dict[str, Any]:
        """The fields (the token masked), and `algo` and `seed` (the run config's mode and
        seed) at the top as well, for readers of the saved config."""
        d = {"algo": self.algo, "seed": self.seed, **asdict(self)}
        d["token"] = "***" if self.token else None  # never written to disk
        return d

    def run_config(self, feature_dim: int) -> dict[str, Any]:
        """The selector run config (`put_run`'s fields): every field of `selection`, with the
        feature dimension of the score's rows (which needs the policy)."""
        return {**asdict(self.selection), "feature_dim": feature_dim}


# ---- SFT --------------------------------------------------------------------------------------


@dataclass
class SFTConfig:
    """`pcm-train sft`: behaviour cloning on MetaWorld's scripted expert with action noise."""

    env: str = opt(DEMO_ENV, "MetaWorld task with a scripted expert: metaworld:TASK")
    out: str = opt("runs/sft", "output dir: sft.pt and sft.json")
    episodes: int = opt(200, "expert episodes to collect", ge=1)
    noise_std: float = opt(DEMO_NOISE_STD, "std of the Gaussian noise on the expert's actions",
                           ge=0)
    labels: str = opt("noisy", "BC targets: noisy (executed; partial success) | expert (clean)")
    max_steps: int = opt(DEMO_MAX_STEPS, "env step limit of an episode (demos and evaluation)",
                         ge=1)
    iters: int = opt(300, "gradient steps", ge=1)
    batch_size: int = opt(64, "chunks per gradient step", ge=1)
    lr: float = opt(3e-4, "AdamW peak learning rate (5% warm-up, cosine decay to 10%)", gt=0)
    preset: str = opt(DEFAULT_PRESET, "policy trunk preset: " + " | ".join(PRESETS))
    width: int | None = opt(None, "override the preset's trunk width")
    depth: int | None = opt(None, "override the preset's trunk depth")
    chunk_size: int = opt(PolicyConfig.chunk_size, "K: actions per chunk", ge=1)
    init_log_std: float = opt(
        PolicyConfig.init_log_std,
        "action log-std of the policy (BC fits the mean only): sets the sampled success",
    )
    seed: int = opt(0, "seed of the demo noise, the init and the batches")
    eval_episodes: int = opt(32, "held-out episodes to evaluate the SFT policy; 0 = skip", ge=0)
    runtime: Runtime = field(
        default_factory=Runtime,
        metadata=runtime_options(
            unused=("parallel",), num_workers="env worker processes for evaluation; -1 = auto"
        ),
    )

    def __post_init__(self) -> None:
        spec = _check_env(self.env)
        if spec.family != "metaworld":
            raise ValueError(
                f"--env {self.env}: SFT uses MetaWorld's scripted experts; pass metaworld:TASK"
            )
        check_choice("labels", self.labels, ("noisy", "expert"))
        check_choice("preset", self.preset, tuple(PRESETS))
        check_fields(self)

    @property
    def task(self) -> str:
        return parse_env_spec(self.env).task

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- eval -------------------------------------------------------------------------------------


@dataclass
class EvalConfig:
    """`pcm-train eval`: success rate of a checkpoint over N initial states."""

    checkpoint: str = opt("runs/demo/rl/final.pt", "policy checkpoint (sft.pt, final.pt, ...)")
    env: str = opt(DEMO_ENV, "environment: metaworld:TASK or libero:SUITE:TASK_INDEX")
    episodes: int = opt(50, "episodes, one per initial state", ge=1)
    mode: str = opt("both", "sampled (what RL optimises) | deterministic (the mean) | both")
    max_steps: int | None = opt(
        None,
        "env step limit; default: as `pcm-train rl`; 0 = the env's own default",
        show_default=False, ge=0, hint="0 = the env's default",
    )
    init_offset: int | None = opt(
        None, "first initial state; default: the held-out range (MetaWorld), 0 (LIBERO)"
    )
    seed: int = opt(0, "seed of the action sampling")
    json_path: str | None = opt(None, "also write the figures here as JSON", flag="--json")
    runtime: Runtime = field(
        default_factory=Runtime,
        metadata=runtime_options(unused=("threads", "progress", "parallel")),
    )

    def __post_init__(self) -> None:
        spec = _check_env(self.env)
        check_choice("mode", self.mode, ("sampled", "deterministic", "both"))
        check_fields(self)
        self.max_steps = _default_max_steps(self.max_steps, spec.family)
        if self.init_offset is None:
            self.init_offset = EVAL_INIT_OFFSET if spec.family == "metaworld" else 0
        if spec.family == "libero" and self.init_offset + self.episodes > 50:
            raise ValueError(
                f"--episodes {self.episodes} from --init-offset {self.init_offset}: LIBERO "
                "tasks have 50 initial states"
            )


# ---- helpers ----------------------------------------------------------------------------------


def seed_from_trainer_id(trainer_id: str) -> int:
    """A stable seed in [0, 2**31) from a trainer id (the same id gives the same seed)."""
    import hashlib

    digest = hashlib.blake2b(trainer_id.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") >> 1


def default_trainer_id() -> str:
    """The hostname (distinct per docker replica), as a valid selector id."""
    return sanitize_id(socket.gethostname() or "trainer")


def sanitize_id(value: str) -> str:
    """Make `value` a valid selector identifier (letters, digits, ._:/@+=-; <= 48 chars)."""
    cleaned = _ID_BAD_CHARS.sub("-", value.strip())[:48].lstrip("._:/@+=-")
    return cleaned or "trainer"


def request_id(run_id: str, trainer_id: str, step: int) -> str:
    """Deterministic per (run, trainer, step): a resumed or retried step replays, not recounts."""
    return f"{run_id}/{trainer_id}/step{step}"


def auto_workers(requested: int, world_size: int = 1) -> int:
    """-1 -> 2 env worker processes (0 under torchrun: the ranks already fill the cores)."""
    if requested >= 0:
        return requested
    return 0 if world_size > 1 else min(2, os.cpu_count() or 1)


def _default_max_steps(max_steps: int | None, family: str) -> int | None:
    """None -> 120 for MetaWorld (the SFT demos' limit), the suite's own for LIBERO; 0 -> the
    env's own default (a negative limit is refused by the field's bound)."""
    if max_steps is None:
        return DEMO_MAX_STEPS if family == "metaworld" else None
    return max_steps or None


def load_keep_schedule(path: str) -> list[float]:
    """The --keep-schedule file's fractions (each in (0, 1]); ValueError naming the flag."""
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"--keep-schedule {path}: not a readable JSON file ({exc})") from None
    if (not isinstance(values, list) or not values
            or not all(isinstance(v, int | float) and 0 < v <= 1 for v in values)):
        raise ValueError(f"--keep-schedule {path}: must hold a non-empty JSON list of keep "
                         "fractions in (0, 1]")
    return [float(v) for v in values]


def scheduled_keep_fraction(schedule: list[float], step: int) -> float:
    """Step `step`'s (1-based) entry; past the end, the mean of the last 10 entries."""
    if step <= len(schedule):
        return schedule[step - 1]
    return sum(schedule[-10:]) / len(schedule[-10:])


def _check_env(env: str) -> Any:
    try:
        return check_env_installed(env)
    except ValueError as exc:
        raise ValueError(f"--env: {exc}") from None


def _check_selection(
    selection: RunConfigSchema, skip: tuple[str, ...] = (), only: tuple[str, ...] | None = None
) -> None:
    """The run config's flags, by the schema's own checks (what the selector would refuse):
    every field but the derived ones and `skip`, or the fields `only`."""
    check_fields(selection, skip=(*SELECTION_DERIVED, *skip), only=only,
                 rename=SELECTION_RENAMED)
