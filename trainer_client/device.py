"""Where the policy runs and in what precision: `--device`, `--precision`, `--parallel`.

- `--device auto | cpu | cuda | cuda:N`: the policy, the rollout inference (the batched
  `policy.act` queries), the selective backward and the optimizer state live there; the
  simulators stay in CPU worker processes and exchange NumPy arrays with the policy. `auto` is
  CUDA when torch sees a GPU, else the CPU. Under torchrun (WORLD_SIZE > 1) `auto` and `cuda`
  give each rank cuda:LOCAL_RANK; an explicit `cuda:N` is refused there.
- `--precision fp32 | bf16`: bf16 is autocast of the policy forward (the encoders, the trunk and
  the action head run their matrix products in bfloat16; the parameters, gradients and optimizer
  state stay fp32), on CUDA and on the CPU (CPU autocast works but is usually slower than fp32
  on CPUs without bf16 units). The Gaussian log-probabilities, the PPO loss and the gradient
  sketches are computed in fp32 (`VLAPolicy._heads` casts the head's output back).
- `--parallel ddp | fsdp` (torchrun only): `ddp` keeps a full replica per rank and all-reduces
  the gradients; `fsdp` shards parameters, gradients and optimizer state over the ranks with
  FSDP2 (`trainer_client.train.distributed.shard_policy`).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


class SetupError(ValueError):
    """The device, precision or parallelism asked for cannot run here; the message is one line
    saying what to change (the CLI prints it and exits with status 2)."""


DEVICE_SPEC_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
PRECISIONS = ("fp32", "bf16")
PARALLELS = ("ddp", "fsdp")

DEVICE_HELP = (
    "auto (CUDA when available) | cpu | cuda | cuda:N: where the policy, rollout inference, "
    "backward and optimizer run (simulators stay on CPU workers); under torchrun each rank "
    "takes cuda:LOCAL_RANK"
)
PRECISION_HELP = (
    "fp32 | bf16 (autocast of the policy forward on CUDA or CPU; log-probs, loss, parameters "
    "and optimizer state stay fp32)"
)
PARALLEL_HELP = (
    "under torchrun: ddp (a full replica per rank, gradients all-reduced) | fsdp (FSDP2: "
    "parameters, gradients and optimizer state sharded over the ranks, per trunk block)"
)


def _world() -> tuple[int, int]:
    """(WORLD_SIZE, LOCAL_RANK) from torchrun's environment; (1, 0) without torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))


def check_device_spec(spec: str) -> None:
    """Raise a ValueError saying how to fix `spec` when it is malformed or names a device this
    process cannot use."""
    if not DEVICE_SPEC_RE.match(spec):
        raise SetupError(f"--device {spec!r}: use auto | cpu | cuda | cuda:N (e.g. cuda:0)")
    if spec in ("auto", "cpu"):
        return
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise SetupError(
            f"--device {spec}: torch {torch.__version__} ({build}) sees no CUDA GPU; install "
            "the CUDA build of torch on a GPU machine, or pass --device cpu (or auto)"
        )
    count = torch.cuda.device_count()
    world, local_rank = _world()
    if spec.startswith("cuda:"):
        index = int(spec.removeprefix("cuda:"))
        if world > 1:
            raise SetupError(
                f"--device {spec}: under torchrun each rank takes cuda:LOCAL_RANK; pass "
                "--device cuda (or auto), and CUDA_VISIBLE_DEVICES to choose the GPUs"
            )
        if index >= count:
            raise SetupError(
                f"--device {spec}: this machine has {count} GPU(s); use cuda:0 .. cuda:{count - 1}"
            )
    elif world > 1 and local_rank >= count:
        raise SetupError(
            f"--device {spec}: local rank {local_rank} has no GPU ({count} visible); start at "
            "most one rank per GPU (torchrun --nproc_per_node <= GPUs)"
        )


def resolve_device(spec: str = "auto") -> torch.device:
    """The torch device of `spec` for this process (see the module docstring)."""
    check_device_spec(spec)
    world, local_rank = _world()
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    elif spec in ("auto", "cuda"):
        return torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
    elif spec.startswith("cuda:"):
        return torch.device(spec)
    else:
        raise SetupError(f"--device {spec!r}: use auto | cpu | cuda | cuda:N")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise SetupError(f"--precision {precision!r}: use one of {' | '.join(PRECISIONS)}")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `precision` on `device` (None: no autocast, fp32). Raises a
    ValueError saying what to do when the device cannot run it."""
    if precision == "fp32":
        return None
    elif precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise SetupError(
                f"--precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16 "
                "support; pass --precision fp32"
            )
        return torch.bfloat16
    else:
        raise SetupError(f"--precision {precision!r}: use one of {' | '.join(PRECISIONS)}")


def check_parallel(parallel: str) -> None:
    if parallel not in PARALLELS:
        raise SetupError(f"--parallel {parallel!r}: use one of {' | '.join(PARALLELS)}")


def prepare_device(device: torch.device) -> None:
    """Make `device` the current CUDA device (collectives and generators follow it)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)


def device_name(device: torch.device) -> str:
    """A human-readable name: the GPU's model, or the CPU architecture."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return platform.processor() or platform.machine() or "cpu"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously); no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def same_device(a: torch.device, b: torch.device) -> bool:
    """`cuda` and `cuda:0` are the same device when 0 is the current one."""
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    index_a = a.index if a.index is not None else torch.cuda.current_device()
    index_b = b.index if b.index is not None else torch.cuda.current_device()
    return index_a == index_b


def misplaced_tensors(
    module: nn.Module, optimizer: torch.optim.Optimizer | None, device: torch.device
) -> list[str]:
    """Names of the module's parameters and buffers and the optimizer's state tensors that are
    NOT on `device` (an empty list: everything is where it should be)."""
    wrong = []
    named: list[tuple[str, Any]] = [
        *(("param " + n, p) for n, p in module.named_parameters()),
        *(("buffer " + n, b) for n, b in module.named_buffers()),
    ]
    if optimizer is not None:
        names = {id(p): n for n, p in module.named_parameters()}
        for p, state in optimizer.state.items():
            for key, value in state.items():
                named.append((f"optimizer {names.get(id(p), '?')}.{key}", value))
    for name, t in named:
        if isinstance(t, torch.Tensor) and not same_device(t.device, device):
            wrong.append(f"{name} on {t.device}")
    return wrong


class CudaPeakMemory:
    """Context manager: the CUDA caching allocator's peak of allocated bytes inside the block
    (`torch.cuda.max_memory_allocated`, reset on entry), and what was allocated on entry. On a
    CPU device it measures nothing (the fields stay None)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start_bytes: int | None = None
        self.peak_bytes: int | None = None

    @property
    def delta_bytes(self) -> int | None:
        """Peak above what was allocated on entry (activations, gradients, new optimizer
        state, temporaries)."""
        if self.peak_bytes is None or self.start_bytes is None:
            return None
        return self.peak_bytes - self.start_bytes

    def __enter__(self) -> CudaPeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """torch.autocast to `dtype` on the device's type; nothing when dtype is None."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
