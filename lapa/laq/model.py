"""LAQ: latent action quantisation, stage 1 of LAPA. Read top-down.

Frame convention: a batch of frame pairs is `(B, 2, H, W, 3)`, channels last, index 0 = x_t and
index 1 = x_{t+H}; `uint8` in [0, 255] or floating in [0, 1]. Single frames are `(B, H, W, 3)`.
Everything is scaled to [0, 1] float inside; reconstructions come back as `(B, H, W, 3)` floats.

    x_t, x_t+H --shared patch embedding--> tokens (B, 2, N, D)        N = g*g patches, D = dim
            --spatial blocks (within a frame), temporal blocks (causal, across the 2 frames)-->
            --NSVQ: encode(last) - encode(first) -> L latent tokens -> codes / quantised-->
    decoder: queries = patch embedding of x_t with stop-gradient, cross-attending to the
             L projected action tokens in every layer --linear head--> pixels of x_t+H
    loss = MSE(recon, x_t+H)

Attention is written with plain matmuls and a float32 softmax so that it exports to ONNX and
stays finite in reduced precision.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lapa.laq.config import LAQConfig
from lapa.laq.nsvq import NSVQ

# ----------------------------------------------------------------------------- building blocks


class Attention(nn.Module):
    """Pre-norm multi-head attention; self-attention, or cross-attention when given a context."""

    def __init__(
        self, dim: int, heads: int, dim_head: int, causal: bool = False, cross: bool = False
    ) -> None:
        super().__init__()
        self.heads, self.dim_head, self.causal = heads, dim_head, causal
        inner = heads * dim_head
        self.norm = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim) if cross else None
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        B, T, _ = x.shape  # (B, T, D)
        h = self.norm(x)
        kv_in = h if self.norm_context is None else self.norm_context(context)  # (B, S, D)
        S = kv_in.shape[1]
        q = self.to_q(h).reshape(B, T, self.heads, self.dim_head).transpose(1, 2)  # (B, h, T, dh)
        k, v = self.to_kv(kv_in).chunk(2, dim=-1)  # (B, S, h*dh) each
        k = k.reshape(B, S, self.heads, self.dim_head).transpose(1, 2)  # (B, h, S, dh)
        v = v.reshape(B, S, self.heads, self.dim_head).transpose(1, 2)  # (B, h, S, dh)
        scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(self.dim_head)  # (B, h, T, S)
        if self.causal:
            future = torch.ones(T, S, dtype=torch.bool, device=x.device).triu(1)  # (T, S)
            scores = scores.masked_fill(future, torch.finfo(scores.dtype).min)
        attn = scores.softmax(dim=-1).to(v.dtype)  # softmax subtracts the row max: finite
        out = attn @ v  # (B, h, T, dh)
        out = out.transpose(1, 2).reshape(B, T, self.heads * self.dim_head)  # (B, T, h*dh)
        return self.to_out(out)


class MLP(nn.Module):
    def __init__(self, dim: int, ratio: float) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, hidden)
        self.proj = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.gelu(self.fc(self.norm(x))))


class Block(nn.Module):
    """Self-attention, optional cross-attention to a context, MLP; all residual and pre-norm."""

    def __init__(self, config: LAQConfig, causal: bool = False, cross: bool = False) -> None:
        super().__init__()
        c = config
        self.attn = Attention(c.dim, c.heads, c.dim_head, causal=causal)
        self.cross = Attention(c.dim, c.heads, c.dim_head, cross=True) if cross else None
        self.mlp = MLP(c.dim, c.mlp_ratio)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        x = x + self.attn(x)
        if self.cross is not None:
            x = x + self.cross(x, context)
        return x + self.mlp(x)


class Transformer(nn.Module):
    def __init__(self, config: LAQConfig, depth: int, causal: bool = False, cross: bool = False) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(config, causal=causal, cross=cross) for _ in range(depth))
        self.norm = nn.LayerNorm(config.dim)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        for block in self.blocks:
            x = block(x, context)
        return self.norm(x)


class PatchEmbed(nn.Module):
    """(B, H, W, C) frames in [0, 1] -> (B, N, D) tokens: LayerNorm -> Linear -> LayerNorm."""

    def __init__(self, config: LAQConfig) -> None:
        super().__init__()
        self.p, self.g = config.patch_size, config.grid_size
        self.net = nn.Sequential(
            nn.LayerNorm(config.patch_dim), nn.Linear(config.patch_dim, config.dim), nn.LayerNorm(config.dim)
        )

    def forward(self, frames: Tensor) -> Tensor:
        B, C = frames.shape[0], frames.shape[-1]
        x = frames.reshape(B, self.g, self.p, self.g, self.p, C)  # (B, gh, p1, gw, p2, C)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, self.g * self.g, self.p * self.p * C)  # (B, N, p*p*C)
        return self.net(x)  # (B, N, D)


def unpatchify(patches: Tensor, grid: int, patch: int) -> Tensor:
    """(B, N, p*p*C) -> (B, H, W, C); the inverse of PatchEmbed's rearrangement."""
    B = patches.shape[0]
    x = patches.reshape(B, grid, grid, patch, patch, -1)  # (B, gh, gw, p1, p2, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(B, grid * patch, grid * patch, -1)  # (B, H, W, C)


# ----------------------------------------------------------------------------- the model


@dataclass
class LAQOutput:
    recon: Tensor  # (B, H, W, 3) predicted x_{t+H}, float, not clamped
    codes: Tensor  # (B, L) int64 latent action codes
    loss: Tensor  # () pixel MSE against x_{t+H}
    quantized: Tensor  # (B, L, quant_dim) NSVQ output (noisy in training, codebook rows in eval)
    latent: Tensor  # (B, L, quant_dim) last - first, before quantisation
    usage: Tensor  # (L, K) int64 code counts per position in this batch


class LAQ(nn.Module):
    def __init__(self, config: LAQConfig) -> None:
        super().__init__()
        self.config = c = config
        self.patch_embed = PatchEmbed(c)  # shared by both frames
        self.pos_emb = nn.Parameter(torch.zeros(1, c.num_patches, c.dim))  # encoder, spatial
        self.spatial = Transformer(c, c.spatial_depth)
        self.temporal = Transformer(c, c.temporal_depth, causal=True)
        self.nsvq = NSVQ(c)
        self.dec_pos_emb = nn.Parameter(torch.zeros(1, c.num_patches, c.dim))  # decoder queries
        self.action_pos_emb = nn.Parameter(torch.zeros(1, c.latent_seq_len, c.dim))  # which action token
        self.decoder = Transformer(c, c.decoder_depth, cross=True)
        self.to_pixels = nn.Linear(c.dim, c.patch_dim)
        self.apply(self._init_weights)
        for p in (self.pos_emb, self.dec_pos_emb, self.action_pos_emb):
            nn.init.normal_(p, std=0.02)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ input handling
    def _to_unit(self, frames: Tensor) -> Tensor:
        """uint8 [0, 255] or float [0, 1] (..., H, W, 3) -> float [0, 1], shape checked."""
        c = self.config
        expected = (c.image_size, c.image_size, c.channels)
        if tuple(frames.shape[-3:]) != expected:
            raise ValueError(f"LAQ expects frames (..., H, W, C) with (H, W, C) = {expected}, "
                             f"got {tuple(frames.shape)}")
        dtype = self.to_pixels.weight.dtype
        if frames.dtype == torch.uint8:
            return frames.to(dtype) / 255.0
        if frames.is_floating_point():
            return frames.to(dtype)
        raise TypeError(f"LAQ frames must be uint8 or floating point, got {frames.dtype}")

    # ------------------------------------------------------------------ encoder
    def embed(self, x: Tensor) -> Tensor:
        """Patch embedding of single frames in [0, 1]: (B, H, W, C) -> (B, N, D), no position."""
        return self.patch_embed(x)

    def encode(self, x_t: Tensor, x_tH: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Frames in [0, 1] -> (x_t patch embeddings, first-frame tokens, last-frame tokens)."""
        B, N, D = x_t.shape[0], self.config.num_patches, self.config.dim
        emb_t = self.embed(x_t)  # (B, N, D)
        tokens = torch.stack((emb_t, self.embed(x_tH)), dim=1) + self.pos_emb.unsqueeze(1)  # (B, 2, N, D)
        tokens = self.spatial(tokens.reshape(B * 2, N, D))  # (B*2, N, D) attention within a frame
        tokens = tokens.reshape(B, 2, N, D).transpose(1, 2).reshape(B * N, 2, D)  # (B*N, 2, D)
        tokens = self.temporal(tokens)  # (B*N, 2, D) causal attention across time
        tokens = tokens.reshape(B, N, 2, D)  # (B, N, 2, D)
        return emb_t, tokens[:, :, 0], tokens[:, :, 1]  # (B, N, D) each

    # ------------------------------------------------------------------ decoder (the world model)
    def decode_tokens(self, emb_t: Tensor, action_tokens: Tensor) -> Tensor:
        """x_t patch embeddings (B, N, D) + action tokens (B, L, D) -> predicted x_{t+H} (B, H, W, C)."""
        queries = emb_t.detach() + self.dec_pos_emb  # (B, N, D) stop-gradient into the patch embedding
        context = action_tokens + self.action_pos_emb  # (B, L, D)
        x = self.decoder(queries, context)  # (B, N, D)
        patches = self.to_pixels(x)  # (B, N, p*p*C)
        return unpatchify(patches, self.config.grid_size, self.config.patch_size)  # (B, H, W, C)

    # ------------------------------------------------------------------ training forward
    def forward(self, frames: Tensor) -> LAQOutput:
        """frames: (B, 2, H, W, 3) pairs (x_t, x_{t+H}). Returns reconstruction, codes and MSE loss."""
        if frames.dim() != 5 or frames.shape[1] != 2:
            raise ValueError(f"LAQ.forward expects frame pairs (B, 2, H, W, 3), got {tuple(frames.shape)}")
        frames = self._to_unit(frames)
        x_t, x_tH = frames[:, 0], frames[:, 1]  # (B, H, W, C) each
        emb_t, first, last = self.encode(x_t, x_tH)
        q = self.nsvq(first, last)
        recon = self.decode_tokens(emb_t, q.tokens)  # (B, H, W, C)
        loss = F.mse_loss(recon.float(), x_tH.float())
        return LAQOutput(recon, q.codes, loss, q.quantized, q.latent, q.usage)

    # ------------------------------------------------------------------ inference API
    def encode_codes(self, x_t: Tensor, x_tH: Tensor) -> Tensor:
        """Hard latent action codes (B, L) int64 of the transition x_t -> x_tH, (B, H, W, 3) each."""
        emb_t, first, last = self.encode(self._to_unit(x_t), self._to_unit(x_tH))
        del emb_t
        latent = self.nsvq.encode_frame(last) - self.nsvq.encode_frame(first)  # (B, L, Q)
        return self.nsvq.nearest(latent)

    def decode(self, x_t: Tensor, codes: Tensor) -> Tensor:
        """World model: x_t (B, H, W, 3) + codes (B, L) -> predicted x_{t+H} in [0, 1] (B, H, W, 3)."""
        x_t = self._to_unit(x_t)
        if codes.shape != (x_t.shape[0], self.config.latent_seq_len):
            raise ValueError(f"codes must be (B, L) = ({x_t.shape[0]}, {self.config.latent_seq_len}), "
                             f"got {tuple(codes.shape)}")
        recon = self.decode_tokens(self.embed(x_t), self.nsvq.embed_codes(codes.long()))
        return recon.clamp(0.0, 1.0)

    def decode_sequence(self, x_t: Tensor, codes: Sequence[Tensor]) -> Tensor:
        """Autoregressive rollout: each prediction is the next step's x_t. Returns (B, T, H, W, 3)."""
        frames, frame = [], x_t
        for step_codes in codes:
            frame = self.decode(frame, step_codes)
            frames.append(frame)
        return torch.stack(frames, dim=1)

    # ------------------------------------------------------------------ checkpoints
    def save(self, directory: str | os.PathLike, extra: dict[str, Any] | None = None) -> None:
        from lapa.checkpoint import save_checkpoint

        save_checkpoint(directory, self, {"model_type": "laq", "laq": self.config.to_dict()}, extra)

    @classmethod
    def from_checkpoint(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> LAQ:
        from lapa.checkpoint import CheckpointError, load_checkpoint, load_state_strict

        doc, state = load_checkpoint(directory)
        if doc.get("model_type") != "laq" or "laq" not in doc:
            kind = doc.get("model_type")
            raise CheckpointError(f"{directory}: not an LAQ checkpoint (model_type={kind!r})")
        try:
            config = LAQConfig.from_dict(doc["laq"])
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{directory}/config.json: bad LAQ config ({err})") from err
        model = cls(config)
        load_state_strict(model, state, source=str(directory))
        return model.to(map_location).eval()
