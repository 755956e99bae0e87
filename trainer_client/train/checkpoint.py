"""Training checkpoints: policy, optimizer state, step, RNG states, config; atomic writes.

Layout in an RL output dir:

    checkpoints/step_000010.pt    every --checkpoint-every steps (the newest --keep-checkpoints)
    final.pt                      the policy at the end (a policy file: `load_policy` reads it)

A step checkpoint holds {"policy": {config, state_dict, extra}, "optimizer", "step", "wall_s",
"rng": {torch, numpy, python}, "config"}. Everything is plain tensors and containers, so it loads
with `torch.load(weights_only=True)`. Writes go to a temporary file first and are renamed into
place, so a crash never leaves a half-written checkpoint behind.

RNG state is saved for completeness; the training loop also reseeds the rollout sampling per step
from (seed, step, rank), so a resumed run replays exactly what the uninterrupted run would have.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer_client.policy import VLAPolicy
from trainer_client.train.model import policy_blob

CHECKPOINT_DIR = "checkpoints"
FINAL_POLICY = "final.pt"
_STEP_RE = re.compile(r"^step_(\d+)\.pt$")


def atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    """torch, numpy and python global RNG states, as weights_only-loadable containers."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": [py[0], list(py[1]), py[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def step_checkpoint_path(out: Path, step: int) -> Path:
    return out / CHECKPOINT_DIR / f"step_{step:06d}.pt"


def list_checkpoints(out: Path) -> list[tuple[int, Path]]:
    """(step, path) of the step checkpoints in `out`, oldest first."""
    folder = out / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _STEP_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(out: Path) -> Path | None:
    found = list_checkpoints(out)
    return found[-1][1] if found else None


def save_checkpoint(
    out: Path,
    step: int,
    policy: VLAPolicy,
    optimizer: torch.optim.Optimizer,
    *,
    wall_s: float,
    config: dict[str, Any],
    keep: int = 2,
    optimizer_state: dict[str, Any] | None = None,
    selector_state: dict[str, Any] | None = None,
) -> Path:
    """Write checkpoints/step_N.pt and delete all but the newest `keep` step checkpoints.
    `optimizer_state` replaces `optimizer.state_dict()` (FSDP: the state gathered from the
    shards, `trainer_client.train.distributed.optimizer_state`); `selector_state`: the embedded
    selector's run state (`EmbeddedClient.export_state`), which dies with the process."""
    path = step_checkpoint_path(out, step)
    atomic_torch_save(
        {
            "policy": policy_blob(policy),
            "optimizer": optimizer_state if optimizer_state is not None else optimizer.state_dict(),
            "step": int(step),
            "wall_s": float(wall_s),
            "rng": rng_state(),
            "config": config,
            **({"selector_state": selector_state} if selector_state is not None else {}),
        },
        path,
    )
    for _, old in list_checkpoints(out)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def save_policy(path: Path, policy: VLAPolicy, extra: dict[str, Any] | None = None) -> Path:
    """A policy file (VLAPolicy.save's format), written atomically."""
    atomic_torch_save(policy_blob(policy, extra), path)
    return path
