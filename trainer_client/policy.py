"""The small VLA policy (docs/design.md, "Policy and environments").

Per chunk query the policy reads one observation (any of: camera images, proprio state, the task
instruction) and emits a chunk of K actions through a diagonal Gaussian:

    tokens  = [text (T)] + [state (1)] + [image patches (V * P)] + [action queries (K)]
    h       = TransformerEncoder(tokens)                       # pre-norm trunk, width x depth
    mu      = Linear(h[action queries])                        # (B, K, A)
    a       ~ Normal(mu, exp(log_std))                         # log_std: learned, (K, A)
    log pi(a | o) = sum over the K x A entries of the Normal log-density   (exact, tractable)

Everything is built in code: the instruction tokenizer hashes words into a fixed vocabulary
(crc32, stable across processes), there are no downloads and no pretrained weights. Width and
depth of the trunk set the gradient cost per chunk row, which is what PCM saves.

Behaviour cloning (`bc_loss`) is MSE between the predicted mean and the expert chunk. It leaves
`log_std` at its initial value on purpose: after SFT the RL exploration noise is the configured
`init_log_std`, not the (near-zero) noise of the demonstrations.

Precision (`set_precision`): with "bf16" the encoders, the trunk and the action head run under
bf16 autocast on the policy's device; the head's outputs are cast back to the parameters' dtype,
so log pi, the BC loss and the head-gradient sketches are computed in fp32 (in every query:
rollout, update and evaluation alike, so the ratio rho starts at 1).
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from trainer_client.device import autocast, autocast_dtype
from trainer_client.types import OBS_IMAGES, OBS_STATE

ObsBatch = Mapping[str, np.ndarray | Tensor]

_WORD_RE = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")
_LOG_2PI = math.log(2.0 * math.pi)


@dataclass
class PolicyConfig:
    """Sizes of the small VLA. Defaults fit MetaWorld state observations (39-D state, 4-D
    actions); for LIBERO use action_dim=7, num_cameras=2, image_size=128 and the proprio size."""

    action_dim: int = 4  # A: action dims per env step
    chunk_size: int = 8  # K: actions per chunk (one policy query)
    state_dim: int = 39  # S: proprio / low-dim state size; 0 = no state input
    num_cameras: int = 0  # V: cameras; 0 = no image input
    image_size: int = 128  # H = W of every camera image
    patch_size: int = 16  # conv patch embedding stride; P = (image_size / patch_size) ** 2
    use_text: bool = True  # encode the instruction
    vocab_size: int = 2048  # hashed word vocabulary (id 0 is padding)
    max_text_tokens: int = 16  # instruction words kept (longer ones are truncated)
    width: int = 512  # trunk width d
    depth: int = 8  # trunk layers
    heads: int = 8  # attention heads; width must be divisible by heads
    mlp_ratio: float = 4.0  # feed-forward width = mlp_ratio * width
    init_log_std: float = -1.0  # initial log-std of the action Gaussian (std ~ 0.37)
    min_log_std: float = -5.0  # log-std is clamped to [min_log_std, max_log_std]
    max_log_std: float = 2.0

    def __post_init__(self) -> None:
        for name in ("action_dim", "chunk_size", "width", "depth", "heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"PolicyConfig.{name}={getattr(self, name)}: must be >= 1")
        for name in ("state_dim", "num_cameras"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"PolicyConfig.{name}={getattr(self, name)}: must be >= 0 (0 = input absent)"
                )
        if self.state_dim == 0 and self.num_cameras == 0:
            raise ValueError(
                "PolicyConfig: no observation input; set state_dim > 0 (proprio) and/or "
                "num_cameras > 0 (images)"
            )
        if self.width % self.heads:
            raise ValueError(
                f"PolicyConfig.width={self.width} is not divisible by heads={self.heads}; "
                f"pick heads dividing the width (e.g. heads={math.gcd(self.width, 8)})"
            )
        if self.num_cameras and (self.patch_size < 1 or self.image_size % self.patch_size):
            raise ValueError(
                f"PolicyConfig.image_size={self.image_size} must be a multiple of "
                f"patch_size={self.patch_size} (e.g. patch_size=16 for 128x128 images)"
            )
        if self.use_text and (self.vocab_size < 2 or self.max_text_tokens < 1):
            raise ValueError(
                "PolicyConfig: with use_text=True need vocab_size >= 2 and max_text_tokens >= 1 "
                "(or set use_text=False)"
            )
        if self.mlp_ratio <= 0:
            raise ValueError(f"PolicyConfig.mlp_ratio={self.mlp_ratio}: must be > 0")
        if not self.min_log_std <= self.init_log_std <= self.max_log_std:
            raise ValueError(
                f"PolicyConfig.init_log_std={self.init_log_std} must lie in "
                f"[min_log_std={self.min_log_std}, max_log_std={self.max_log_std}]"
            )

    @property
    def num_patches(self) -> int:
        """P: patch tokens per camera."""
        return (self.image_size // self.patch_size) ** 2 if self.num_cameras else 0

    @property
    def obs_keys(self) -> tuple[str, ...]:
        """Observation keys the policy reads (others are ignored)."""
        keys = []
        if self.state_dim:
            keys.append(OBS_STATE)
        if self.num_cameras:
            keys.append(OBS_IMAGES)
        return tuple(keys)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> PolicyConfig:
        """A named trunk size (see PRESETS) with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown policy preset {name!r}: use one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def max_tokens(self) -> int:
        """Longest trunk sequence: text + state + image patches + action queries."""
        return (
            (self.max_text_tokens if self.use_text else 0)
            + (1 if self.state_dim else 0)
            + self.num_cameras * self.num_patches
            + self.chunk_size
        )


# Trunk sizes. "base" is the default: on a 2-core CPU (MetaWorld state obs, ~18 tokens a row) a
# chunk row costs about 14 ms forward+backward against about 4 ms for the no-grad rollout
# forward, so the actor update is the largest stage of a GRPO step, as in the paper. "small" is
# for quick experiments, "tiny" for tests.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"width": 32, "depth": 1, "heads": 2, "vocab_size": 64},
    "small": {"width": 256, "depth": 4, "heads": 4},
    "base": {"width": 512, "depth": 8, "heads": 8},
}
DEFAULT_PRESET = "base"  # `pcm-train sft` and `rl`'s trunk


class HashedWordTokenizer:
    """Lower-cased words and punctuation, each hashed (crc32) into [1, vocab_size); 0 is padding.
    Stable across processes and machines; instructions repeat, so results are cached."""

    def __init__(self, vocab_size: int, max_tokens: int) -> None:
        self.vocab_size = vocab_size
        self.max_tokens = max_tokens
        self._cache: dict[str, np.ndarray] = {}

    def encode(self, text: str) -> np.ndarray:
        """int64 (<= max_tokens,) token ids of one instruction."""
        ids = self._cache.get(text)
        if ids is None:
            words = _WORD_RE.findall(text.lower())[: self.max_tokens]
            ids = np.array(
                [1 + zlib.crc32(w.encode()) % (self.vocab_size - 1) for w in words], dtype=np.int64
            )
            self._cache[text] = ids
        return ids

    def __call__(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Returns ids (B, T) int64 and pad (B, T) bool (True = padding), T = longest in batch."""
        encoded = [self.encode(t) for t in texts]
        t_max = max((len(e) for e in encoded), default=0)
        ids = np.zeros((len(texts), t_max), dtype=np.int64)
        for b, e in enumerate(encoded):
            ids[b, : len(e)] = e
        ids_t = torch.from_numpy(ids)
        return ids_t, ids_t == 0


class VLAPolicy(nn.Module):
    """Small VLA with a Gaussian action-chunk head; implements `trainer_client.types.ChunkPolicy`.

    `act` is the rollout query (no grad, NumPy in and out); `log_prob` is the differentiable
    chunk log-probability used by the GRPO update; `forward` returns the Gaussian's parameters.
    """

    def __init__(self, config: PolicyConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or PolicyConfig()
        d = cfg.width
        self.chunk_size: int = cfg.chunk_size  # K (ChunkPolicy)
        self.action_dim: int = cfg.action_dim  # A (ChunkPolicy)
        self.tokenizer = HashedWordTokenizer(cfg.vocab_size, cfg.max_text_tokens)
        self._generator: torch.Generator | None = None
        # bf16 autocast of the forward (None: fp32); runtime state, not saved (set_precision)
        self.autocast_dtype: torch.dtype | None = None

        # encoders, one per input kind present
        if cfg.use_text:
            self.text_embed = nn.Embedding(cfg.vocab_size, d, padding_idx=0)
            self.text_pos = nn.Parameter(torch.zeros(cfg.max_text_tokens, d))
        if cfg.state_dim:
            self.state_encoder = nn.Sequential(
                nn.Linear(cfg.state_dim, d), nn.GELU(), nn.Linear(d, d)
            )
        if cfg.num_cameras:
            # one conv patch embedding shared by all cameras, plus patch and camera embeddings
            self.patch_embed = nn.Conv2d(3, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
            self.patch_pos = nn.Parameter(torch.zeros(cfg.num_patches, d))
            self.camera_embed = nn.Parameter(torch.zeros(cfg.num_cameras, d))
        self.action_queries = nn.Parameter(torch.zeros(cfg.chunk_size, d))

        # trunk: pre-norm transformer; no dropout so that act() and log_prob() agree exactly
        layer = nn.TransformerEncoderLayer(
            d_model=d,
            nhead=cfg.heads,
            dim_feedforward=int(cfg.mlp_ratio * d),
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.trunk = nn.TransformerEncoder(
            layer, cfg.depth, norm=nn.LayerNorm(d), enable_nested_tensor=False
        )

        # action-chunk head: Gaussian mean per query token, state-independent log-std
        self.action_head = nn.Linear(d, cfg.action_dim)
        self.log_std = nn.Parameter(torch.full((cfg.chunk_size, cfg.action_dim), cfg.init_log_std))
        self._init_weights()

    def _init_weights(self) -> None:
        for name, p in self.named_parameters():
            if name == "log_std":
                continue
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2 and "norm" not in name:
                nn.init.trunc_normal_(p, std=0.02)
        if self.config.use_text:
            with torch.no_grad():
                self.text_embed.weight[0].zero_()

    # ---- ChunkPolicy protocol -------------------------------------------------------------

    @property
    def obs_keys(self) -> tuple[str, ...]:
        return self.config.obs_keys

    @property
    def device(self) -> torch.device:
        return self.log_std.device

    @property
    def dtype(self) -> torch.dtype:
        return self.log_std.dtype

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def set_precision(self, precision: str) -> None:
        """Precision "fp32" (no autocast) or "bf16" (bf16 autocast of the forward on the
        policy's device; log-probs stay fp32). Call after moving the policy to its device."""
        self.autocast_dtype = autocast_dtype(precision, self.device)

    def set_seed(self, seed: int) -> None:
        """Use a private generator for action sampling (else torch's global RNG)."""
        self._generator = torch.Generator(device=self.device).manual_seed(seed)

    @torch.no_grad()
    def act(
        self,
        obs: dict[str, np.ndarray],
        instructions: list[str],
        deterministic: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """obs: key -> (B, ...). Returns actions (B, K, A) float32 and log pi(actions | obs) (B,)
        float32 (0 when deterministic: the mean is returned)."""
        mean, log_std = self(obs, instructions)  # (B, K, A), (K, A)
        if deterministic:
            actions = mean
            logp = torch.zeros(mean.shape[0], dtype=mean.dtype, device=mean.device)
        else:
            noise = torch.randn(
                mean.shape, generator=self._generator, dtype=mean.dtype, device=mean.device
            )
            actions = mean + log_std.exp() * noise
            actions = actions.float().to(mean.dtype)  # log-prob of exactly what is returned
            logp = gaussian_log_prob(actions, mean, log_std)
        return (
            actions.float().cpu().numpy(),
            logp.float().cpu().numpy(),
        )

    @torch.no_grad()
    def act_with_head_grad(
        self, obs: dict[str, np.ndarray], instructions: list[str]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sampled `act` plus each chunk's action-head gradient of log pi, from the activations
        the query computes anyway (no backward pass). The head is mu_k = W h_k + b, so with
        a_k = mu_k + sigma_k z_k:

            d log pi / dW = sum_k (z_k / sigma_k) outer h_k       (A, d)
            d log pi / db = sum_k  z_k / sigma_k                  (A,)

        Returns actions (B, K, A), log-probs (B,) and the gradient [dW | db] flattened to
        (B, A * (d + 1)), all float32."""
        mean, log_std, h = self._heads(obs, instructions)  # (B, K, A), (K, A), (B, K, d)
        noise = torch.randn(
            mean.shape, generator=self._generator, dtype=mean.dtype, device=mean.device
        )  # z (B, K, A)
        actions = (mean + log_std.exp() * noise).float().to(mean.dtype)
        logp = gaussian_log_prob(actions, mean, log_std)  # (B,)
        u = (actions - mean) * torch.exp(-2.0 * log_std)  # z / sigma = d log pi / d mu (B, K, A)
        grad_w = torch.einsum("bka,bkd->bad", u, h)  # (B, A, d)
        grad = torch.cat([grad_w, u.sum(dim=1, keepdim=True).transpose(1, 2)], dim=2)
        return (
            actions.float().cpu().numpy(),
            logp.float().cpu().numpy(),
            grad.flatten(1).float().cpu().numpy(),  # (B, A * (d + 1))
        )

    # ---- differentiable API ---------------------------------------------------------------

    def forward(self, obs: ObsBatch, instructions: list[str]) -> tuple[Tensor, Tensor]:
        """Returns the Gaussian mean (B, K, A) and the clamped log-std (K, A)."""
        mean, log_std, _ = self._heads(obs, instructions)
        return mean, log_std

    def _heads(self, obs: ObsBatch, instructions: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        """Mean (B, K, A), clamped log-std (K, A) and the action-query activations entering the
        head, h (B, K, d), all in the parameters' dtype (under bf16 autocast too)."""
        with autocast(self.device, self.autocast_dtype):
            tokens, pad = self.encode(obs, instructions)  # (B, L, d), (B, L) or None
            h = self.trunk(tokens, src_key_padding_mask=pad)[:, -self.config.chunk_size :]
            mean = self.action_head(h)  # (B, K, A)
        mean, h = mean.to(self.dtype), h.to(self.dtype)  # (B, K, A), (B, K, d)
        log_std = self.log_std.clamp(self.config.min_log_std, self.config.max_log_std)
        return mean, log_std, h

    def log_prob(
        self, obs: ObsBatch, instructions: list[str], actions: np.ndarray | Tensor
    ) -> Tensor:
        """(B,) log pi(actions | obs), summed over the chunk's K x A entries; differentiable."""
        mean, log_std = self(obs, instructions)
        actions_t = torch.as_tensor(actions, device=self.device).to(mean.dtype)  # (B, K, A)
        if actions_t.shape != mean.shape:
            raise ValueError(
                f"actions shape {tuple(actions_t.shape)} != (B, K, A) = {tuple(mean.shape)}"
            )
        return gaussian_log_prob(actions_t, mean, log_std)

    def bc_loss(
        self, obs: ObsBatch, instructions: list[str], actions: np.ndarray | Tensor
    ) -> Tensor:
        """Behaviour cloning: MSE between the predicted mean and the expert chunk (B, K, A),
        averaged over all entries. log_std is not trained by it (see module docstring)."""
        mean, _ = self(obs, instructions)
        target = torch.as_tensor(actions, device=self.device).to(mean.dtype)
        return torch.nn.functional.mse_loss(mean, target)

    def encode(self, obs: ObsBatch, instructions: list[str]) -> tuple[Tensor, Tensor | None]:
        """Builds the trunk input: tokens (B, L, d) and the key padding mask (B, L) (True = pad),
        None when nothing is padded. Observation keys the policy does not use are ignored."""
        cfg = self.config
        dev, dt = self.device, self.dtype
        batch = _batch_size(obs, cfg.obs_keys)
        parts: list[Tensor] = []
        pads: list[Tensor] = []
        if cfg.use_text:
            if len(instructions) != batch:
                raise ValueError(f"got {len(instructions)} instructions for a batch of {batch}")
            ids, text_pad = self.tokenizer(instructions)  # (B, T), (B, T) on the CPU
            if ids.shape[1]:
                if bool(text_pad.any()):  # checked on the CPU: no device sync
                    pads.append(text_pad)
                ids = ids.to(dev)
                parts.append(self.text_embed(ids) + self.text_pos[: ids.shape[1]])  # (B, T, d)
        if cfg.state_dim:
            state = torch.as_tensor(obs[OBS_STATE], device=dev).to(dt)  # (B, S)
            if state.shape != (batch, cfg.state_dim):
                raise ValueError(
                    f"obs['{OBS_STATE}'] has shape {tuple(state.shape)}, expected "
                    f"(B, state_dim) = ({batch}, {cfg.state_dim}); set PolicyConfig.state_dim"
                )
            parts.append(self.state_encoder(state)[:, None])  # (B, 1, d)
        if cfg.num_cameras:
            parts.append(self._encode_images(obs[OBS_IMAGES], batch))  # (B, V * P, d)
        parts.append(self.action_queries.expand(batch, -1, -1))  # (B, K, d)
        tokens = torch.cat(parts, dim=1)  # (B, L, d)
        pad = None
        if pads:  # the text is padded somewhere in the batch
            pad = torch.zeros(tokens.shape[:2], dtype=torch.bool)  # (B, L)
            pad[:, : pads[0].shape[1]] = pads[0]
            pad = pad.to(dev)
        return tokens, pad

    def _encode_images(self, images: np.ndarray | Tensor, batch: int) -> Tensor:
        cfg = self.config
        img = torch.as_tensor(images, device=self.device)  # uint8 (B, V, H, W, 3)
        expected = (batch, cfg.num_cameras, cfg.image_size, cfg.image_size, 3)
        if tuple(img.shape) != expected:
            raise ValueError(
                f"obs['{OBS_IMAGES}'] has shape {tuple(img.shape)}, expected (B, V, H, W, 3) = "
                f"{expected}; set PolicyConfig.num_cameras / image_size to match the env"
            )
        x = img.reshape(batch * cfg.num_cameras, *expected[2:]).permute(0, 3, 1, 2)
        x = x.to(self.dtype) * (2.0 / 255.0) - 1.0  # (B * V, 3, H, W) in [-1, 1]
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B * V, P, d)
        x = x + self.patch_pos
        x = x.reshape(batch, cfg.num_cameras, cfg.num_patches, -1)
        x = x + self.camera_embed[:, None]  # (B, V, P, d)
        return x.flatten(1, 2)  # (B, V * P, d)

    # ---- checkpoints ------------------------------------------------------------------------

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Writes {config, state_dict, extra} with torch.save."""
        torch.save(
            {"config": asdict(self.config), "state_dict": self.state_dict(), "extra": extra or {}},
            path,
        )

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> VLAPolicy:
        blob = torch.load(path, map_location=map_location, weights_only=True)
        policy = cls(PolicyConfig(**blob["config"]))
        policy.load_state_dict(blob["state_dict"])
        return policy.to(map_location)


def gaussian_log_prob(actions: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """Diagonal Normal log-density summed over the chunk. actions, mean (B, K, A); log_std (K, A)
    -> (B,)."""
    z = (actions - mean) * torch.exp(-log_std)  # (B, K, A)
    return (-0.5 * z.square() - log_std - 0.5 * _LOG_2PI).sum(dim=(1, 2))  # (B,)


def _batch_size(obs: ObsBatch, keys: tuple[str, ...]) -> int:
    missing = [k for k in keys if k not in obs]
    if missing:
        raise KeyError(
            f"observation lacks {missing} (has {sorted(obs)}); the policy config expects "
            f"{list(keys)}: set PolicyConfig.state_dim / num_cameras to what the env provides"
        )
    sizes = {k: int(obs[k].shape[0]) for k in keys}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"observation keys disagree on the batch size: {sizes}")
    return next(iter(sizes.values()))
