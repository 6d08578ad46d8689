"""VLA: the vision-language-action policy of LAPA stages 2 and 3. Read top-down.

    image uint8 (B, H, W, 3) --/255, [-1, 1], patchify, Linear, + pos--> patches (B, N, D)
    instruction embedding (B, 384), precomputed and cached --LayerNorm, Linear--> text (B, 1, D)
    head-specific learnable queries                                            --> queries (B, Q, D)
    trunk: pre-norm transformer over [text, patches, queries] (B, 1 + N + Q, D), final LayerNorm
    head: Linear on the query outputs -> logits
        latent_head (stage 2): Q = latent_seq_len queries  -> (B, L, latent_codebook_size)
        action_head (stage 3): Q = K * 7 queries            -> (B, K, 7, num_bins)

Attention mask: the prefix [text, patches] attends only to itself (it never sees the queries, so
its features do not depend on the head or on previously decoded tokens); the queries see the whole
prefix and, among themselves, what the decoder mode allows. Attention is explicit matmuls with the
scores and softmax in float32, so a reduced-precision (fp16 TensorRT) build keeps fp32 scores; no
data-dependent Python control flow, so `torch.onnx.export(..., dynamo=True)` with a dynamic batch.

Action decoders. A model has ONE action decoding mode, fixed in its config (`decoder`), because
the two modes are different networks, not two ways to run one network:
- `parallel` (default, as OpenVLA-OFT): the K*7 action queries are plain learned embeddings
  (chunk step + action dimension) with bidirectional attention among them; one forward pass
  gives every token's logits, and no token depends on another token's *decoded value*.
- `autoregressive` (as the LAPA reference): query t also gets an embedding of the bin decoded at
  token t-1 (a BOS embedding at t = 0; the embedding table is per action dimension), and the
  attention among action queries is causal. Training is teacher-forced: `forward(..., bins)`
  with the target bins, shifted right inside. Generation is a KV-free greedy loop: K*7 full
  forward passes, pass t fixing token t. Correct and simple; speed is secondary.

What "the decoders agree under argmax" means here, honestly:
- autoregressive model: the step-by-step greedy loop and ONE teacher-forced pass fed with the
  loop's own output give the same argmax at every token. This holds exactly because the causal
  mask makes token t's logits depend only on tokens < t, which are identical in both runs.
- parallel model: `predict_actions(decoder="autoregressive")` runs the same greedy loop (one
  token per full pass); it must equal the one-pass argmax. This is true by construction (the
  parallel model has no input for decoded tokens), and the test guards that construction.
A parallel model's logits are never fed to an autoregressive loop as if it had been trained to
condition on previous tokens, and an autoregressive model refuses `decoder="parallel"`.
The latent head is always parallel (4 bidirectional queries), which suits a 4-token latent.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lapa.policy.action_tokenizer import ActionTokenizer
from lapa.policy.config import DECODERS, VLAConfig

_NEG = torch.finfo(torch.float32).min  # masked attention score (fp32 scores, see above)

# ----------------------------------------------------------------------------- building blocks


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, blocked: Tensor) -> Tensor:
        B, S, D = x.shape  # (B, S, D)
        qkv = self.qkv(x).reshape(B, S, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, h, S, dh)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, h, S, dh) each
        scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, h, S, S) fp32
        scores = scores.masked_fill(blocked, _NEG)  # blocked: (S, S) bool, True = may not attend
        attn = scores.softmax(dim=-1).to(v.dtype)  # every row keeps >= 1 key: finite
        out = (attn @ v).transpose(1, 2).reshape(B, S, D)  # (B, S, D)
        return self.proj(out)


class MLP(nn.Module):
    def __init__(self, dim: int, ratio: float) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.fc = nn.Linear(dim, hidden)
        self.proj = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, x: Tensor, blocked: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), blocked)  # (B, S, D)
        return x + self.mlp(self.norm2(x))  # (B, S, D)


# ----------------------------------------------------------------------------- heads


class LatentHead(nn.Module):
    """Stage 2: latent_seq_len bidirectional queries -> LAQ code logits."""

    def __init__(self, config: VLAConfig) -> None:
        super().__init__()
        self.num_tokens = config.latent_seq_len
        self.queries = nn.Parameter(torch.randn(config.latent_seq_len, config.dim) * 0.02)  # (L, D)
        self.proj = nn.Linear(config.dim, config.latent_codebook_size)

    def query_tokens(self, batch: int) -> Tensor:
        return self.queries.unsqueeze(0).expand(batch, -1, -1)  # (B, L, D)

    def logits(self, h: Tensor) -> Tensor:
        return self.proj(h)  # (B, L, C)


class ActionHead(nn.Module):
    """Stage 3: K*7 action queries -> per-token bin logits; decodes bins through the tokenizer's table."""

    def __init__(self, config: VLAConfig, bin_centers: Tensor | None = None) -> None:
        super().__init__()
        K, A, nb, D = config.chunk_size, config.action_dim, config.num_bins, config.dim
        self.chunk_size, self.action_dim, self.num_bins = K, A, nb
        self.autoregressive = config.decoder == "autoregressive"
        self.step_emb = nn.Parameter(torch.randn(K, 1, D) * 0.02)  # (K, 1, D) which action of the chunk
        self.dim_emb = nn.Parameter(torch.randn(1, A, D) * 0.02)  # (1, A, D) which action dimension
        if self.autoregressive:
            # previous token's (dimension, bin) -> embedding; index A*nb is BOS for token 0
            self.prev_emb = nn.Embedding(A * nb + 1, D)
            offsets = (torch.arange(K * A) % A) * nb  # (T,) dimension offset of each token
            self.register_buffer("prev_offset", offsets, persistent=False)
        self.proj = nn.Linear(D, nb)
        centers = torch.zeros(A, nb) if bin_centers is None else torch.as_tensor(bin_centers, dtype=torch.float32)
        if centers.shape != (A, nb):
            raise ValueError(f"bin_centers must be ({A}, {nb}), got {tuple(centers.shape)}")
        self.register_buffer("bin_centers", centers.clone(), persistent=False)  # lives in config.json
        self.has_bin_centers = bin_centers is not None

    def set_bin_centers(self, bin_centers: np.ndarray | Tensor) -> None:
        centers = torch.as_tensor(bin_centers, dtype=torch.float32)
        if centers.shape != self.bin_centers.shape:
            raise ValueError(f"bin_centers must be {tuple(self.bin_centers.shape)}, got {tuple(centers.shape)}")
        self.bin_centers.copy_(centers)
        self.has_bin_centers = True

    def query_tokens(self, batch: int, bins: Tensor | None) -> Tensor:
        K, A = self.chunk_size, self.action_dim
        q = (self.step_emb + self.dim_emb).reshape(1, K * A, -1)  # (1, T, D), T = K*A
        q = q.expand(batch, -1, -1)  # (B, T, D)
        if not self.autoregressive:
            if bins is not None:
                raise ValueError("a parallel action head takes no previous bins")
            return q
        if bins is None:
            raise ValueError("an autoregressive action head needs bins (B, K, 7): targets for teacher "
                             "forcing, or the tokens decoded so far")
        flat = bins.reshape(batch, K * A)  # (B, T)
        prev = flat[:, :-1] + self.prev_offset[:-1]  # (B, T-1): token t-1's (dim, bin) index, for t >= 1
        bos = torch.full_like(flat[:, :1], A * self.num_bins)  # (B, 1)
        return q + self.prev_emb(torch.cat([bos, prev], dim=1))  # (B, T, D)

    def logits(self, h: Tensor) -> Tensor:
        return self.proj(h).reshape(h.shape[0], self.chunk_size, self.action_dim, self.num_bins)  # (B, K, A, nb)

    def decode(self, bins: Tensor) -> Tensor:
        """int64 bins (B, K, A) -> float32 actions (B, K, A): each bin's centre (ActionTokenizer)."""
        table = self.bin_centers.expand(*bins.shape[:-1], -1, -1)  # (B, K, A, nb)
        return table.gather(-1, bins.unsqueeze(-1)).squeeze(-1)  # (B, K, A)


# ----------------------------------------------------------------------------- the model


class VLA(nn.Module):
    def __init__(self, config: VLAConfig, tokenizer: ActionTokenizer | None = None) -> None:
        super().__init__()
        self.config = config
        D = config.dim
        # trunk: kept when the latent head is swapped for the action head
        self.patch_embed = nn.Linear(config.patch_dim, D)
        self.pos_emb = nn.Parameter(torch.randn(1, config.num_patches, D) * 0.02)  # (1, N, D)
        self.text_norm = nn.LayerNorm(config.text_dim)  # unit-norm sentence vectors -> unit variance
        self.text_proj = nn.Linear(config.text_dim, D)
        self.blocks = nn.ModuleList(Block(D, config.heads, config.mlp_ratio) for _ in range(config.depth))
        self.norm = nn.LayerNorm(D)
        # heads: exactly one of them exists
        self.latent_head: LatentHead | None = None
        self.action_head: ActionHead | None = None
        if config.head == "latent":
            self.latent_head = LatentHead(config)
        else:
            self.action_head = ActionHead(config, _centers(tokenizer, config))
        self.apply(_init_weights)
        self.register_buffer("attn_blocked", _attention_mask(config), persistent=False)  # (S, S)

    # ------------------------------------------------------------------ trunk
    def embed_prefix(self, images: Tensor, text_emb: Tensor) -> Tensor:
        """uint8 (B, H, W, 3) images (or floats in [0, 1]) + (B, text_dim) -> prefix (B, 1 + N, D)."""
        c = self.config
        H = W = c.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (H, W, 3):
            raise ValueError(f"images must be (B, {H}, {W}, 3), got {tuple(images.shape)}")
        if text_emb.dim() != 2 or text_emb.shape[1] != c.text_dim:
            raise ValueError(f"text_emb must be (B, {c.text_dim}), got {tuple(text_emb.shape)}")
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()  # (B, H, W, 3) in [0, 1]
        x = (x - 0.5) / 0.5  # [-1, 1]
        g, p = c.grid_size, c.patch_size
        x = x.reshape(-1, g, p, g, p, 3).permute(0, 1, 3, 2, 4, 5)  # (B, g, g, p, p, 3)
        x = x.reshape(-1, g * g, p * p * 3)  # (B, N, p*p*3)
        patches = self.patch_embed(x) + self.pos_emb  # (B, N, D)
        text = self.text_proj(self.text_norm(text_emb.float())).unsqueeze(1)  # (B, 1, D)
        return torch.cat([text, patches], dim=1)  # (B, 1 + N, D)

    def run_trunk(self, prefix: Tensor, queries: Tensor) -> Tensor:
        """prefix (B, P, D) + queries (B, Q, D) -> normalised query outputs (B, Q, D)."""
        x = torch.cat([prefix, queries], dim=1)  # (B, S, D), S = P + Q
        for block in self.blocks:
            x = block(x, self.attn_blocked)
        return self.norm(x[:, prefix.shape[1]:])  # (B, Q, D)

    def trunk_state_dict(self) -> dict[str, Tensor]:
        """Parameters shared by both stages (everything but the heads)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(("latent_head.", "action_head."))}

    # ------------------------------------------------------------------ forward: logits of the head
    def forward(self, images: Tensor, text_emb: Tensor, bins: Tensor | None = None) -> Tensor:
        """Latent head: (B, L, codebook) logits. Action head: (B, K, 7, num_bins) logits.

        `bins` (B, K, 7) int64 only for an autoregressive action head: the target tokens (teacher
        forcing; token t sees tokens < t), or during generation the tokens decoded so far.
        """
        prefix = self.embed_prefix(images, text_emb)  # (B, P, D)
        B = prefix.shape[0]
        if self.latent_head is not None:
            if bins is not None:
                raise ValueError("the latent head takes no bins")
            return self.latent_head.logits(self.run_trunk(prefix, self.latent_head.query_tokens(B)))
        head = self._action_head()
        return head.logits(self.run_trunk(prefix, head.query_tokens(B, bins)))  # (B, K, A, nb)

    def latent_logits(self, images: Tensor, text_emb: Tensor) -> Tensor:
        if self.latent_head is None:
            raise RuntimeError("this VLA has an action head, not a latent head")
        return self(images, text_emb)  # (B, L, C)

    def predict_latents(self, images: Tensor, text_emb: Tensor) -> Tensor:
        """Argmax latent action codes (B, L) int64."""
        with torch.no_grad():
            return self.latent_logits(images, text_emb).argmax(dim=-1)

    # ------------------------------------------------------------------ action decoding
    def predict_actions(
        self, images: Tensor, text_emb: Tensor, decoder: str | None = None
    ) -> tuple[Tensor, Tensor]:
        """Greedy decoding -> (bins int64 (B, K, 7), actions float32 (B, K, 7)).

        decoder None uses the config's mode. "parallel": one forward pass (parallel models only).
        "autoregressive": the KV-free step-by-step loop (any action model; see the module docstring).
        """
        head = self._action_head()
        if not head.has_bin_centers:
            raise RuntimeError("the action head has no bin table: pass the fitted ActionTokenizer")
        decoder = decoder or self.config.decoder
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        with torch.no_grad():
            if decoder == "parallel":
                if head.autoregressive:
                    raise ValueError("an autoregressive model cannot decode in one pass: use "
                                     "decoder='autoregressive' (or forward(..., bins) for teacher forcing)")
                bins = self(images, text_emb).argmax(dim=-1)  # (B, K, A)
            else:
                bins = self.generate(images, text_emb)  # (B, K, A)
            return bins, head.decode(bins)

    def generate(self, images: Tensor, text_emb: Tensor) -> Tensor:
        """Greedy token-by-token decoding without a KV cache: K*7 full passes, pass t fixes token t."""
        head = self._action_head()
        K, A, nb = head.chunk_size, head.action_dim, head.num_bins
        B = images.shape[0]
        bins = torch.zeros(B, K * A, dtype=torch.long, device=images.device)  # (B, T) future slots unused
        for t in range(K * A):  # a fixed count, not data-dependent
            prev = bins.reshape(B, K, A) if head.autoregressive else None
            logits = self(images, text_emb, prev).reshape(B, K * A, nb)  # (B, T, nb)
            bins = bins.clone()
            bins[:, t] = logits[:, t].argmax(dim=-1)
        return bins.reshape(B, K, A)  # (B, K, A)

    def _action_head(self) -> ActionHead:
        if self.action_head is None:
            raise RuntimeError("this VLA has a latent head: call replace_head_for_actions(tokenizer) first")
        return self.action_head

    # ------------------------------------------------------------------ stage 2 -> stage 3
    def replace_head_for_actions(
        self, tokenizer: ActionTokenizer, chunk_size: int | None = None, decoder: str | None = None
    ) -> VLA:
        """Drop the latent head, add a fresh action head (trunk untouched). Returns self."""
        config = self.config.replace(
            head="action",
            chunk_size=self.config.chunk_size if chunk_size is None else chunk_size,
            num_bins=tokenizer.num_bins,
            decoder=decoder or self.config.decoder,
        )
        ref = self.pos_emb
        head = ActionHead(config, _centers(tokenizer, config))
        head.apply(_init_weights)
        self.latent_head = None
        self.action_head = head.to(device=ref.device, dtype=ref.dtype)
        self.attn_blocked = _attention_mask(config).to(ref.device)
        self.config = config
        return self

    def set_action_tokenizer(self, tokenizer: ActionTokenizer) -> None:
        self._action_head().set_bin_centers(_centers(tokenizer, self.config))

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


# ----------------------------------------------------------------------------- losses


def latent_loss(logits: Tensor, codes: Tensor) -> Tensor:
    """Cross-entropy of latent code logits (B, L, C) against LAQ codes (B, L)."""
    return F.cross_entropy(logits.float().flatten(0, -2), codes.long().flatten())


def action_loss(logits: Tensor, bins: Tensor, mask: Tensor | None = None) -> Tensor:
    """Cross-entropy of action logits (B, K, A, nb) against bins (B, K, A).

    `mask` (B, K) bool, optional: False drops a chunk step (e.g. past the end of an episode).
    """
    nb = logits.shape[-1]
    per_token = F.cross_entropy(logits.float().reshape(-1, nb), bins.long().reshape(-1), reduction="none")
    per_token = per_token.reshape(bins.shape)  # (B, K, A)
    if mask is None:
        return per_token.mean()
    weights = mask.to(per_token.dtype).unsqueeze(-1).expand_as(per_token)  # (B, K, A)
    return (per_token * weights).sum() / weights.sum().clamp(min=1.0)


# ----------------------------------------------------------------------------- helpers


def _attention_mask(config: VLAConfig) -> Tensor:
    """(S, S) bool, True = blocked. Prefix sees only the prefix; queries see the prefix and each other
    (all of them, or causally for an autoregressive action head)."""
    P, Q = config.prefix_len, config.num_queries
    blocked = torch.zeros(P + Q, P + Q, dtype=torch.bool)
    blocked[:P, P:] = True
    if config.head == "action" and config.decoder == "autoregressive":
        blocked[P:, P:] = torch.ones(Q, Q, dtype=torch.bool).triu(1)
    return blocked


def _centers(tokenizer: ActionTokenizer | None, config: VLAConfig) -> Tensor | None:
    if tokenizer is None:
        return None
    if tokenizer.num_bins != config.num_bins:
        raise ValueError(f"tokenizer has {tokenizer.num_bins} bins, the config {config.num_bins}")
    return torch.from_numpy(tokenizer.bin_centers())  # (7, nb)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
