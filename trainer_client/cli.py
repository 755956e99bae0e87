"""`pcm-train`: supervised fine-tuning, GRPO/PCM post-training, evaluation and the demo.

    pcm-train demo --out runs/demo                       # SFT, then PCM-GRPO, embedded selector
    pcm-train sft --out runs/sft
    pcm-train rl --algo pcm --selector grpc://localhost:50051 --env metaworld:pick-place-v3 \\
        --init runs/sft/sft.pt --run-id exp1 --out runs/exp1
    pcm-train eval --checkpoint runs/exp1/final.pt --episodes 50
    torchrun --nproc_per_node 2 -m trainer_client.cli rl --init runs/sft/sft.pt --out runs/ddp
    pcm-train rl --device cuda --precision bf16 ...      # on a GPU (--device auto picks it)
    torchrun --nproc_per_node 4 -m trainer_client.cli rl --parallel fsdp --device cuda ...

The flags of sft, rl and eval are generated from the fields (and help texts) of `SFTConfig`,
`TrainConfig` (its `grpo: GRPOConfig` flattened: --lr, --clip-coef-low, --ppo-epochs, ...) and
`EvalConfig` in `trainer_client.train.config`, each with its `runtime: Runtime` flattened
(--num-workers, --device, --precision, ...), by `trainer_client.cli_options` (as the
selector's flags are from its Settings); a bad value exits with the config's message, which
says how to fix it.
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning. On a small shared CPU box this matters more than
# anything else: with another busy process on the 2 cores, torch's 2 spinning threads made a
# training step 4-30x slower (measured); set before torch is first imported. Override by
# exporting OMP_WAIT_POLICY.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from trainer_client.cli_options import Body, config_command
from trainer_client.device import DEVICE_HELP, PRECISION_HELP, SetupError
from trainer_client.train.config import EvalConfig, SFTConfig, TrainConfig

app = typer.Typer(
    help="PCM training: SFT, GRPO/PCM RL against a chunk selector, evaluation, demo.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

C = TypeVar("C")


def _config_command(name: str, cls: type[C]) -> Callable[[Body[C]], Body[C]]:
    """Register `body(config)` as a command whose flags are `cls`'s fields
    (`trainer_client.cli_options.config_command`); a bad value exits 2 with the config's
    message on stderr."""
    return config_command(app, name, cls, report=lambda line: typer.echo(line, err=True),
                          run_errors=_setup_errors)


@contextlib.contextmanager
def _setup_errors() -> Iterator[None]:
    """A `SetupError` (a device, precision or parallelism that cannot run here) ends the command
    with its one line (from rank 0 only under torchrun) and exit status 2."""
    try:
        yield
    except SetupError as exc:
        if os.environ.get("RANK", "0") == "0":
            typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _setup_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@_config_command("sft", SFTConfig)
def sft(config: SFTConfig) -> None:
    """Behaviour cloning on MetaWorld's noisy scripted expert, to a partial success rate: the
    checkpoint RL starts from. Prints the held-out success rate."""
    from trainer_client.train.sft import run_sft

    _setup_logging()
    run_sft(config)


@_config_command("rl", TrainConfig)
def rl(config: TrainConfig) -> None:
    """GRPO post-training with chunk selection (pcm | grpo | random) against a selector. Writes
    metrics.jsonl, checkpoints, final.pt, summary.json and training.png to --out."""
    from trainer_client.train.rl import train_rl

    _setup_logging()
    train_rl(config)


@_config_command("eval", EvalConfig)
def evaluate(config: EvalConfig) -> None:
    """Success rate of a checkpoint over N initial states (one episode each)."""
    from trainer_client.device import prepare_device, resolve_device
    from trainer_client.train.config import auto_workers
    from trainer_client.train.evaluate import evaluate_policy
    from trainer_client.train.model import check_policy_fits_env, load_policy, probe_env

    _setup_logging()
    try:
        policy = load_policy(config.checkpoint)
        # another env's checkpoint: one line naming both shapes, not a traceback mid-rollout
        env_kwargs = {"max_steps": config.max_steps} if config.max_steps else None
        check_policy_fits_env(policy, probe_env(config.env, env_kwargs))
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    device = resolve_device(config.runtime.device)
    prepare_device(device)
    policy.to(device)
    policy.set_precision(config.runtime.precision)
    assert config.init_offset is not None
    init_states = list(range(config.init_offset, config.init_offset + config.episodes))
    modes = [config.mode] if config.mode != "both" else ["sampled", "deterministic"]
    results = {}
    for mode in modes:
        r = evaluate_policy(
            policy,
            config.env,
            init_states,
            deterministic=mode == "deterministic",
            seed=config.seed,
            max_steps=config.max_steps,
            num_workers=auto_workers(config.runtime.num_workers),
        )
        results[mode] = r.as_dict()
        typer.echo(
            f"{config.checkpoint}: {mode} success {r.success_rate:.1%} over {r.episodes} "
            f"episodes on {config.env} (init states {init_states[0]}..{init_states[-1]}, "
            f"{r.mean_steps:.0f} steps on average, {r.seconds:.1f}s; {device}, "
            f"{config.runtime.precision})"
        )
    if config.json_path:
        Path(config.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(config.json_path).write_text(
            json.dumps(
                {
                    "checkpoint": config.checkpoint,
                    "env": config.env,
                    "device": str(device),
                    "precision": config.runtime.precision,
                    "results": results,
                },
                indent=2,
            )
            + "\n"
        )


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="output dir")] = Path("runs/demo"),
    algos: Annotated[str, typer.Option(
        help="comma-separated, run side by side from one SFT checkpoint: grpo, pcm, random")
    ] = "grpo,pcm",
    quick: Annotated[
        bool, typer.Option(help="a tiny run of the same path (tests; about a minute)")
    ] = False,
    rl_steps: Annotated[
        int | None, typer.Option(help="RL steps per algorithm (default: the demo's 12)", min=1)
    ] = None,
    seed: Annotated[int, typer.Option(help="seed")] = 0,
    progress: Annotated[bool, typer.Option(help="progress bars (on a terminal only)")] = True,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "fp32",
) -> None:
    """The main job: SFT on the MetaWorld demo task, then GRPO and PCM side by side from that
    checkpoint (same initial states and seeds), each evaluated on the same held-out initial
    states; a table, demo.json and demo.png."""
    from trainer_client.train.demo import DemoConfig, run_demo

    _setup_logging()
    cfg = DemoConfig.quick(out, seed=seed) if quick else DemoConfig.default(out, seed=seed)
    cfg.algos = tuple(a.strip() for a in algos.split(",") if a.strip())
    if rl_steps is not None:
        cfg.rl_steps = rl_steps
    try:
        # Runtime checks --device and --precision when it is made
        cfg.runtime = replace(cfg.runtime, progress=progress, device=device, precision=precision)
        cfg.check()
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    with _setup_errors():
        run_demo(cfg)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
