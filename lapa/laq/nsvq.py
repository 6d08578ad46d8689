"""NSVQ: noise-substitution vector quantisation of the latent action (LAPA's quantiser).

Each frame's encoder tokens are projected to `quant_dim`, laid out as a (quant_dim, g, g) map and
shrunk by two convs to `latent_seq_len` tokens. The latent action is the difference of the two
frames' encodings (last - first), matched token by token against one shared codebook.

Training uses noise substitution instead of a straight-through estimator:
    q = x + (||x - e|| / ||v|| + eps) * v,   v ~ N(0, I),   e = nearest code
so q is as far from x as the code is, and gradients reach x and (through ||x - e||) the codebook.
No commitment loss. Evaluation returns the hard nearest code. Codes that go unused are replaced
on a fixed schedule (`dead_code_schedule`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lapa.laq.config import LAQConfig


def dead_code_schedule(step: int) -> bool:
    """True after optimizer steps 10..90 every 10, 100..900 every 100, 1000..4500 every 500."""
    if 10 <= step < 100:
        return step % 10 == 0
    if 100 <= step < 1000:
        return step % 100 == 0
    if 1000 <= step <= 4500:
        return step % 500 == 0
    return False


@dataclass
class NSVQOutput:
    tokens: Tensor  # (B, L, dim) quantised latents projected back to the model width
    quantized: Tensor  # (B, L, quant_dim) noisy substitute (train) or codebook[codes] (eval)
    latent: Tensor  # (B, L, quant_dim) last - first, before quantisation
    codes: Tensor  # (B, L) int64 nearest codebook entries
    usage: Tensor  # (L, K) int64 code counts per token position in this batch


class NSVQ(nn.Module):
    def __init__(self, config: LAQConfig) -> None:
        super().__init__()
        c = config
        self.num_codes = c.codebook_size
        self.quant_dim = c.quant_dim
        self.grid = c.grid_size
        self.latent_seq_len = c.latent_seq_len
        self.eps = c.nsvq_eps
        self.dead_code_threshold = c.dead_code_threshold

        self.project_in = nn.Linear(c.dim, c.quant_dim)
        self.conv = nn.Sequential(
            nn.Conv2d(c.quant_dim, c.quant_dim, kernel_size=3, stride=2, padding=1),  # g -> ceil(g/2)
            nn.ReLU(),
            nn.Conv2d(c.quant_dim, c.quant_dim, kernel_size=c.quant_kernel),  # -> latent_grid
        )
        self.codebook = nn.Parameter(torch.randn(c.codebook_size, c.quant_dim))
        self.project_out = nn.Linear(c.quant_dim, c.dim)
        # code usage since the last dead-code replacement; persistent so a resumed run continues it
        self.register_buffer("usage_since_reset", torch.zeros(c.codebook_size, dtype=torch.int64))
        # the latest training latents, the pool that dead codes are re-seeded from
        self.register_buffer("recent_latents", torch.zeros(0, c.quant_dim), persistent=False)

    # ------------------------------------------------------------------ encoding
    def encode_frame(self, tokens: Tensor) -> Tensor:
        """Encoder tokens of one frame (B, g*g, dim) -> latent tokens (B, L, quant_dim)."""
        B = tokens.shape[0]
        x = self.project_in(tokens)  # (B, g*g, Q)
        x = x.transpose(1, 2).reshape(B, self.quant_dim, self.grid, self.grid)  # (B, Q, g, g)
        x = self.conv(x)  # (B, Q, lh, lw)
        return x.flatten(2).transpose(1, 2)  # (B, L, Q)

    def nearest(self, latent: Tensor) -> Tensor:
        """Index of the nearest codebook entry for each latent token: (B, L, Q) -> (B, L) int64."""
        x = latent.float()
        e = self.codebook.float()
        dist = (x * x).sum(-1, keepdim=True) - 2 * x @ e.t() + (e * e).sum(-1)  # (B, L, K)
        return dist.argmin(dim=-1)

    def embed_codes(self, codes: Tensor) -> Tensor:
        """Hard codes (B, L) -> action tokens (B, L, dim) for the decoder."""
        return self.project_out(self.codebook[codes])

    # ------------------------------------------------------------------ forward
    def forward(self, first: Tensor, last: Tensor) -> NSVQOutput:
        """first, last: encoder tokens (B, g*g, dim) of frame t and frame t+H."""
        latent = self.encode_frame(last) - self.encode_frame(first)  # (B, L, Q)
        codes = self.nearest(latent)  # (B, L)
        hard = self.codebook[codes]  # (B, L, Q)
        if self.training:
            noise = torch.randn_like(latent)
            residual_norm = (latent - hard).norm(dim=-1, keepdim=True)  # (B, L, 1), grads -> codebook
            noise_norm = noise.norm(dim=-1, keepdim=True)
            quantized = latent + (residual_norm / noise_norm + self.eps) * noise
            with torch.no_grad():
                self.usage_since_reset += torch.bincount(codes.flatten(), minlength=self.num_codes)
                self.recent_latents = latent.detach().reshape(-1, self.quant_dim).clone()
        else:
            quantized = hard
        with torch.no_grad():
            one_hot = nn.functional.one_hot(codes, self.num_codes)  # (B, L, K)
            usage = one_hot.sum(0)  # (L, K)
        return NSVQOutput(self.project_out(quantized), quantized, latent, codes, usage)

    # ------------------------------------------------------------------ codebook health
    def alive_mask(self, batch_size: int, counts: Tensor | None = None) -> Tensor:
        """(K,) bool: codes used at least dead_code_threshold * batch_size times in the window."""
        counts = self.usage_since_reset if counts is None else counts
        return counts >= self.dead_code_threshold * batch_size

    def check_collapse(self, batch_size: int, counts: Tensor | None = None) -> int:
        """Number of alive codes; warns when fewer than half the codebook is alive."""
        alive = int(self.alive_mask(batch_size, counts).sum())
        if alive < self.num_codes / 2:
            warnings.warn(
                f"LAQ codebook collapse: only {alive}/{self.num_codes} codes alive "
                f"(used >= {self.dead_code_threshold} x batch {batch_size} times in the window)",
                RuntimeWarning,
                stacklevel=2,
            )
        return alive

    @torch.no_grad()
    def replace_dead_codes(self, batch_size: int, noise_scale: float = 1e-3) -> Tensor:
        """Re-seed dead codes from random recent latents (+ tiny noise); reset the usage window.

        Returns the indices of the replaced codes. If nothing was counted since the last reset
        there is no evidence of death and nothing changes.
        """
        counts = self.usage_since_reset
        if int(counts.sum()) == 0:
            return torch.zeros(0, dtype=torch.int64)
        alive = self.alive_mask(batch_size)
        if not bool(alive.any()):  # everything under threshold: keep the most used code(s)
            alive = counts == counts.max()
        dead = (~alive).nonzero().flatten()
        n = dead.numel()
        if n:
            pool = self.recent_latents
            if pool.shape[0] == 0:  # no latents seen (e.g. a fresh resume): copy used codes
                pool = self.codebook[alive.nonzero().flatten()]
            pool = pool.to(self.codebook)
            if pool.shape[0] >= n:
                pick = torch.randperm(pool.shape[0], device=pool.device)[:n]
            else:
                pick = torch.randint(pool.shape[0], (n,), device=pool.device)
            scale = noise_scale * (float(pool.std()) if pool.numel() > 1 else 1.0) + 1e-8
            self.codebook[dead] = pool[pick] + scale * torch.randn(n, self.quant_dim, device=pool.device)
        self.usage_since_reset.zero_()
        return dead.cpu()
