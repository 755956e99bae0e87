"""Activation memory of an actor update: the peak bytes of the tensors autograd saves for
backward (`SavedTensorMeter`), what `pcm-train demo` and `pcm-bench grad` report, GRPO vs PCM.

Each saved tensor's storage is counted once while any saved reference to it is alive (measured
with `torch.autograd.graph.saved_tensors_hooks`); parameter storages (weights saved by matmuls)
and, under bf16 autocast, the low-precision copies of the parameters are not activations and are
excluded. Works the same on CPU and GPU.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

_CAST_OR_VIEW = {
    "ToCopyBackward0",
    "TBackward0",
    "TransposeBackward0",
    "PermuteBackward0",
    "ViewBackward0",
    "UnsafeViewBackward0",
    "ExpandBackward0",
    "ReshapeAliasBackward0",
}


class _Saved:
    """What autograd keeps instead of a saved tensor while the meter is on."""

    __slots__ = ("key", "meter", "tensor")

    def __init__(self, tensor: torch.Tensor, key: int, meter: SavedTensorMeter) -> None:
        self.tensor, self.key, self.meter = tensor, key, meter

    def __del__(self) -> None:
        self.meter._release(self.key)


class SavedTensorMeter:
    """Context manager: peak bytes of tensors saved for backward, each storage counted once while
    any saved reference to it is alive. Storages of `exclude` (the parameters) are not counted."""

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self._exclude = {p.untyped_storage().data_ptr() for p in exclude}
        self._live: dict[int, list[int]] = {}  # storage ptr -> [nbytes, saved references]
        self.current_bytes = 0
        self.peak_bytes = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def __enter__(self) -> SavedTensorMeter:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)

    def _pack(self, tensor: torch.Tensor) -> Any:
        storage = tensor.untyped_storage()
        key, nbytes = storage.data_ptr(), storage.nbytes()
        if nbytes == 0 or key in self._exclude or self._is_param_copy(tensor):
            return tensor
        entry = self._live.get(key)
        if entry is None:
            self._live[key] = [nbytes, 1]
            self.current_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.current_bytes)
        else:
            entry[1] += 1
        return _Saved(tensor, key, self)

    def _is_param_copy(self, tensor: torch.Tensor) -> bool:
        """True for autocast's cast of an excluded parameter (or a view of one): its autograd
        history is casts and views back to the parameter, with at least one cast."""
        fn, cast = tensor.grad_fn, False
        for _ in range(8):
            if fn is None:
                return False
            name = type(fn).__name__
            if name == "AccumulateGrad":
                variable = fn.variable  # type: ignore[attr-defined]
                return cast and variable.untyped_storage().data_ptr() in self._exclude
            if name not in _CAST_OR_VIEW:
                return False
            cast = cast or name == "ToCopyBackward0"
            inputs = [f for f, _ in fn.next_functions if f is not None]
            if len(inputs) != 1:
                return False
            fn = inputs[0]
        return False

    @staticmethod
    def _unpack(saved: Any) -> torch.Tensor:
        return saved.tensor if isinstance(saved, _Saved) else saved

    def _release(self, key: int) -> None:
        entry = self._live[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.current_bytes -= entry[0]
            del self._live[key]
