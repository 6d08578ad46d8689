"""LAQ hyper-parameters: one validated dataclass with a `tiny` (tests, CPU) and a `paper` preset."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from lapa.config_checks import check_patch_grid, check_positive_ints, from_known_keys, from_preset


@dataclass(frozen=True)
class LAQConfig:
    image_size: int = 256  # square frames, pixels per side
    patch_size: int = 32  # -> a (image_size // patch_size)^2 grid of patch tokens per frame
    channels: int = 3
    dim: int = 1024  # transformer width
    heads: int = 16
    dim_head: int = 64  # heads * dim_head must equal dim
    mlp_ratio: float = 4.0
    spatial_depth: int = 8  # encoder: attention within a frame
    temporal_depth: int = 8  # encoder: causal attention across the two frames per patch position
    decoder_depth: int = 8  # decoder: spatial self-attention + cross-attention to the action tokens
    quant_dim: int = 32  # NSVQ latent width
    latent_seq_len: int = 4  # latent action tokens per frame pair
    codebook_size: int = 8  # one codebook shared by every token position
    nsvq_eps: float = 1e-12
    dead_code_threshold: float = 0.1  # a code is dead if used < threshold * batch_size times per window

    def __post_init__(self) -> None:
        positive = ("image_size", "patch_size", "channels", "dim", "heads", "dim_head", "spatial_depth",
                    "decoder_depth", "quant_dim", "latent_seq_len")
        check_positive_ints(self, positive)
        if not isinstance(self.temporal_depth, int) or self.temporal_depth < 0:
            raise ValueError(f"LAQConfig.temporal_depth must be an int >= 0, got {self.temporal_depth!r}")
        check_patch_grid(self.image_size, self.patch_size)
        if self.heads * self.dim_head != self.dim:
            raise ValueError(f"heads * dim_head = {self.heads} * {self.dim_head} must equal dim {self.dim}")
        if not isinstance(self.codebook_size, int) or self.codebook_size < 2:
            raise ValueError(f"codebook_size must be an int >= 2, got {self.codebook_size!r}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not 0 < self.nsvq_eps < 1e-3:
            raise ValueError(f"nsvq_eps must be a small positive number, got {self.nsvq_eps}")
        if not 0 <= self.dead_code_threshold:
            raise ValueError(f"dead_code_threshold must be >= 0, got {self.dead_code_threshold}")
        lh, lw = self.latent_grid
        g2 = self.reduced_grid
        if lh > g2 or lw > g2:
            raise ValueError(
                f"latent_seq_len {self.latent_seq_len} needs a {lh}x{lw} latent grid, but the quantiser's "
                f"stride-2 conv leaves only {g2}x{g2} from the {self.grid_size}x{self.grid_size} patch grid"
            )

    # ------------------------------------------------------------------ derived sizes
    @property
    def grid_size(self) -> int:
        """Patch tokens per side of a frame."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def patch_dim(self) -> int:
        return self.patch_size * self.patch_size * self.channels

    @property
    def reduced_grid(self) -> int:
        """Side of the quantiser map after conv3x3 stride 2 padding 1: ceil(g / 2)."""
        return (self.grid_size + 1) // 2

    @property
    def latent_grid(self) -> tuple[int, int]:
        """(rows, cols) of latent tokens: the most square factorisation of latent_seq_len."""
        n = self.latent_seq_len
        rows = next(r for r in range(math.isqrt(n), n + 1) if n % r == 0)
        return rows, n // rows

    @property
    def quant_kernel(self) -> tuple[int, int]:
        """Kernel of the quantiser's second (unpadded, stride 1) conv that yields the latent grid."""
        lh, lw = self.latent_grid
        return self.reduced_grid - lh + 1, self.reduced_grid - lw + 1

    # ------------------------------------------------------------------ presets and I/O
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> LAQConfig:
        return from_preset(PRESETS, "LAQ", name, overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LAQConfig:
        return from_known_keys(cls, data)

    def fake_inputs(self, batch: int = 2, seed: int | None = 0) -> torch.Tensor:
        """Random uint8 frame pairs (B, 2, H, W, 3) for tests, export and benchmarks."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        shape = (batch, 2, self.image_size, self.image_size, self.channels)
        return torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)


PRESETS: dict[str, LAQConfig] = {
    "tiny": LAQConfig(
        image_size=64, patch_size=8, dim=128, heads=4, dim_head=32, spatial_depth=2, temporal_depth=2,
        decoder_depth=2, quant_dim=32, latent_seq_len=4, codebook_size=8,
    ),
    "paper": LAQConfig(),
}
