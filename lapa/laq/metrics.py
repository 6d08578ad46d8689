"""Image and codebook metrics for LAQ training logs and evaluation."""

from __future__ import annotations

import torch
from torch import Tensor


def _unit(x: Tensor) -> Tensor:
    """uint8 [0, 255] or float [0, 1] -> float32 [0, 1]."""
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def psnr(pred: Tensor, target: Tensor, data_range: float = 1.0, reduction: str = "mean") -> Tensor:
    """Peak signal-to-noise ratio in dB of (B, ...) images, uint8 or float in [0, 1].

    reduction "none" gives one value per sample (B,); "mean" averages those. A perfect match is
    capped at 100 dB instead of inf so that means stay finite.
    """
    if pred.shape != target.shape:
        raise ValueError(f"psnr: shapes differ {tuple(pred.shape)} vs {tuple(target.shape)}")
    mse = (_unit(pred) - _unit(target)).pow(2).flatten(1).mean(dim=1)  # (B,)
    value = 10 * torch.log10(data_range**2 / mse.clamp_min(1e-10))  # (B,)
    if reduction == "none":
        return value
    if reduction == "mean":
        return value.mean()
    raise ValueError(f"psnr: unknown reduction {reduction!r}")


def code_usage(codes: Tensor, codebook_size: int) -> Tensor:
    """(N, L) int codes -> (L, K) int64 counts of each code at each token position."""
    if codes.dim() != 2:
        raise ValueError(f"codes must be (N, L), got {tuple(codes.shape)}")
    one_hot = torch.nn.functional.one_hot(codes.long(), codebook_size)  # (N, L, K)
    return one_hot.sum(0)


def perplexity_from_counts(counts: Tensor) -> Tensor:
    """(..., K) counts -> (...) perplexity exp(H(p)): 1 = one code used, K = all used uniformly."""
    counts = counts.double()
    p = counts / counts.sum(-1, keepdim=True).clamp_min(1)
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)
    return entropy.exp().float()


def codebook_perplexity(codes: Tensor, codebook_size: int) -> Tensor:
    """Per-position codebook perplexity (L,) of (N, L) codes."""
    return perplexity_from_counts(code_usage(codes, codebook_size))


def copy_baseline_gain(pred: Tensor, x_t: Tensor, x_tH: Tensor) -> Tensor:
    """PSNR(pred, x_tH) - PSNR(x_t, x_tH) in dB: > 0 when the model beats "nothing moves"."""
    return psnr(pred, x_tH) - psnr(x_t, x_tH)
