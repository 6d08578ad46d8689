"""VLA: the vision-language-action policy of LAPA stages 2 and 3. Read top-down.

    image uint8 (B, H, W, 3) --/255, [-1, 1]--> image encoder --> + pos --> patches (B, N, D)
        encoder "patch": patchify, Linear (ViT)
        encoder "conv":  strided 3x3 convs, the instruction FiLM-ed into every layer (as OFT+ and
                         FiLM-ed ResNets do: the instruction decides early which block matters)
    instruction embedding (B, 384), precomputed and cached --LayerNorm, Linear--> text (B, 1, D)
        token form (config.text_tokens N): token features (B, N * 384); their masked mean, L2-normed,
        is the sentence vector above (FiLM, text token), and each real token --LayerNorm, Linear,
        + position--> a word token (B, N, D) (padding: a learned pad token), so the trunk sees word order
    proprio state (B, 8) (state_dim = 8) --features, Linear--> state (B, 1, D); absent (latent
        pretraining, a caller without state): a learned "no state" token instead
        with a state history (config.state_history, H lags): (B, 8 * (1 + H)), the displacements
        since each lag --Linear--> added to the state token
    head-specific learnable queries                                            --> queries (B, Q, D)
    trunk: pre-norm transformer over [text, words, state, patches, queries], final LayerNorm
    head: Linear on the query outputs
        latent_head (stage 2): Q = latent_seq_len queries  -> logits (B, L, latent_codebook_size)
        action_head "bins" (stage 3): Q = K * 7 queries    -> logits (B, K, 7, num_bins)
        action_head "l1"   (stage 3): Q = K queries        -> normalised actions (B, K, 7), trained
                         with L1 (OpenVLA-OFT's continuous head); un-normalised with the tokenizer's
                         1st/99th percentiles, so the same config.json describes both heads

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

from lapa.action import STATE_DIM
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

    def forward(self, x: Tensor, blocked: Tensor, rows_from: int = 0) -> Tensor:
        """x (B, S, D) -> the attention outputs of rows rows_from.. (B, R, D), R = S - rows_from: every
        row is a key and a value, only the kept rows are queries."""
        B, S, D = x.shape  # (B, S, D)
        if rows_from == 0:
            qkv = self.qkv(x).reshape(B, S, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, h, S, dh)
            q, k, v = qkv[0], qkv[1], qkv[2]  # (B, h, S, dh) each
        else:
            R = S - rows_from
            q = F.linear(x[:, rows_from:], self.qkv.weight[:D])  # (B, R, D)
            q = q.reshape(B, R, self.heads, self.head_dim).transpose(1, 2)  # (B, h, R, dh)
            kv = F.linear(x, self.qkv.weight[D:]).reshape(B, S, 2, self.heads, self.head_dim)  # (B, S, 2, h, dh)
            kv = kv.permute(2, 0, 3, 1, 4)  # (2, B, h, S, dh)
            k, v = kv[0], kv[1]
            blocked = blocked[rows_from:]  # (R, S)
        # (B, h, R, S) fp32: under bf16 autocast the products are bf16, the mask and softmax stay fp32
        scores = (q @ k.transpose(-2, -1)).float() / math.sqrt(self.head_dim)
        scores = scores.masked_fill(blocked, _NEG)  # blocked: (R, S) bool, True = may not attend
        attn = scores.softmax(dim=-1).to(v.dtype)  # every row keeps >= 1 key: finite
        out = (attn @ v).transpose(1, 2).reshape(B, S - rows_from, D)  # (B, R, D)
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

    def forward(self, x: Tensor, blocked: Tensor, rows_from: int = 0) -> Tensor:
        """(B, S, D) -> (B, S - rows_from, D): the outputs of rows rows_from.. only (all of them attend
        over all S rows), so a last block whose prefix rows are never read skips their queries and MLP."""
        x = x[:, rows_from:] + self.attn(self.norm1(x), blocked, rows_from)  # (B, R, D)
        return x + self.mlp(self.norm2(x))  # (B, R, D)


# ----------------------------------------------------------------------------- image encoders


class FiLM(nn.Module):
    """Feature-wise affine modulation by the instruction: x * (1 + gamma(t)) + beta(t), identity at init.
    With `pooled` (config.text_pool), the pooled instruction vectors add their own term to gamma and beta."""

    def __init__(self, text_dim: int, channels: int, pooled_dim: int = 0) -> None:
        super().__init__()
        self.proj = nn.Linear(text_dim, 2 * channels)
        self.pool_proj = nn.Linear(pooled_dim, 2 * channels) if pooled_dim else None

    def reset_to_identity(self) -> None:
        for proj in (self.proj, self.pool_proj):
            if proj is not None:
                nn.init.zeros_(proj.weight)
                nn.init.zeros_(proj.bias)

    def forward(self, x: Tensor, text: Tensor, pooled: Tensor | None = None) -> Tensor:
        film = self.proj(text)  # (B, 2C)
        if self.pool_proj is not None:
            film = film + self.pool_proj(pooled)  # (B, 2C)
        gamma, beta = film.chunk(2, dim=-1)  # (B, C) each
        return x * (1.0 + gamma[:, :, None, None]) + beta[:, :, None, None]  # (B, C, H, W)


class WordPool(nn.Module):
    """Learned queries attending over the instruction's token features (B, N, text_dim) -> (B, P * text_dim).

    Each query learns which word to read, by the word's role in the sentence (contextual features:
    "yellow" in "put the yellow block on ..." differs from "... on the yellow block"), so the conv
    encoder's FiLM can be told the block to lift and the block to put it on apart."""

    def __init__(self, text_dim: int, queries: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(text_dim)
        self.queries = nn.Parameter(torch.randn(queries, text_dim) * 0.02)  # (P, text_dim)

    def forward(self, feats: Tensor, real: Tensor) -> Tensor:
        keys = self.norm(feats)  # (B, N, T)
        scores = torch.einsum("pt,bnt->bpn", self.queries, keys).float() / math.sqrt(keys.shape[-1])  # (B, P, N)
        scores = scores + (1.0 - real.transpose(1, 2).float()) * -1e9  # padding never read
        pooled = scores.softmax(dim=-1).to(keys.dtype) @ keys  # (B, P, T)
        return pooled.flatten(1)  # (B, P * T)


class ConvEncoder(nn.Module):
    """image (B, 3, S, S) in [-1, 1] + instruction (B, text_dim) -> tokens (B, (S / patch)^2, D).

    A stride-2 3x3 conv per halving (log2(patch_size) of them, plus one stride-1 conv at the first
    resolution), each followed by GroupNorm, FiLM (when `film`) and ReLU; a 1x1 conv maps to D.
    """

    def __init__(self, config: VLAConfig) -> None:
        super().__init__()
        halvings = int(math.log2(config.patch_size))
        widths = [min(config.dim, 32 * 2**i) for i in range(halvings)]
        layers: list[tuple[int, int, int]] = [(3, widths[0], 2), (widths[0], widths[0], 1)]
        layers += [(widths[i - 1], widths[i], 2) for i in range(1, halvings)]
        self.convs = nn.ModuleList(nn.Conv2d(i, o, 3, stride=s, padding=1) for i, o, s in layers)
        self.norms = nn.ModuleList(nn.GroupNorm(min(8, o), o) for _, o, _ in layers)
        pooled_dim = config.text_pool * config.text_dim
        self.films = (nn.ModuleList(FiLM(config.text_dim, o, pooled_dim) for _, o, _ in layers)
                      if config.film else None)
        self.out = nn.Conv2d(widths[-1], config.dim, 1)
        # keypoints: read from the output of layer 2 (stride 4)
        self.keypoint_layer = 2 if config.keypoints else None
        self.keypoints = SpatialSoftmax(widths[1], config.keypoints, config.dim) if config.keypoints else None

    def forward(self, x: Tensor, text: Tensor, pooled: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """-> (patch tokens (B, g*g, D), keypoint token (B, 1, D) or None). `pooled` (B, P * text_dim):
        the WordPool vectors, with config.text_pool."""
        keypoint_token = None
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            x = norm(conv(x))  # (B, C_i, H_i, W_i)
            if self.films is not None:
                x = self.films[i](x, text, pooled)
            x = F.relu(x)
            if i == self.keypoint_layer:
                keypoint_token = self.keypoints(x)  # (B, 1, D)
        x = self.out(x)  # (B, D, g, g)
        return x.flatten(2).transpose(1, 2), keypoint_token  # (B, g*g, D)


class SpatialSoftmax(nn.Module):
    """Feature map (B, C, H, W) -> K expected image coordinates in [-1, 1] (robomimic's spatial softmax)
    -> one token (B, 1, D). A learned temperature sharpens the softmax as training goes."""

    def __init__(self, channels: int, num_keypoints: int, dim: int) -> None:
        super().__init__()
        self.to_maps = nn.Conv2d(channels, num_keypoints, 1)
        self.log_temperature = nn.Parameter(torch.zeros(()))
        self.proj = nn.Linear(2 * num_keypoints, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, _, H, W = x.shape
        maps = self.to_maps(x).flatten(2)  # (B, K, H*W)
        attn = (maps / self.log_temperature.exp()).softmax(dim=-1)  # (B, K, H*W)
        ys = torch.linspace(-1.0, 1.0, H, device=x.device, dtype=x.dtype)
        xs = torch.linspace(-1.0, 1.0, W, device=x.device, dtype=x.dtype)
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(H * W, 2)  # (H*W, 2) as (x, y)
        points = attn @ grid  # (B, K, 2)
        return self.proj(points.flatten(1)).unsqueeze(1)  # (B, 1, D)


# ----------------------------------------------------------------------------- proprio state

STATE_FEATURES = 10  # xyz (3), sin and cos of roll, pitch, yaw (6), finger opening (1)
_WORKSPACE_CENTRE_M = (0.5, 0.0, 0.15)
_WORKSPACE_SCALE_M = 0.15
_GRIPPER_HALF_WIDTH_M = 0.04


def goal_features(xyz: Tensor) -> Tensor:
    """EE positions (B, 3) in metres -> the scaled xyz that state_features uses (B, 3)."""
    centre = torch.tensor(_WORKSPACE_CENTRE_M, dtype=xyz.dtype, device=xyz.device)
    return (xyz - centre) / _WORKSPACE_SCALE_M


def state_features(state: Tensor) -> Tensor:
    """(B, 8) [EE xyz m, EE rpy rad, finger_left m, finger_right m] -> (B, 10) features of order 1.

    Fixed (not fitted) scaling, so no statistics travel with the checkpoint, and angles as sin/cos:
    a gripper pointing down has roll near +-pi, where the raw angle jumps by 2 pi.
    """
    xyz = goal_features(state[:, 0:3])  # (B, 3)
    rpy = state[:, 3:6]  # (B, 3)
    width = state[:, 6:7] / _GRIPPER_HALF_WIDTH_M - 1.0  # (B, 1) from one finger (half the width): -1 closed, +1 open
    return torch.cat([xyz, torch.sin(rpy), torch.cos(rpy), width], dim=1)  # (B, 10)


HISTORY_SCALE_M = 0.1  # EE displacement scale of the history features


def history_features(state: Tensor, lags: int) -> Tensor:
    """(B, 8 * (1 + H)) [now, lag 1, ...] (lapa/state_history.py) -> (B, 4 * H): per lag, the EE
    displacement since then (xyz, of order 1 over a push) and the change of the finger opening."""
    B = state.shape[0]
    states = state.reshape(B, 1 + lags, -1)  # (B, 1 + H, 8)
    now, past = states[:, :1], states[:, 1:]  # (B, 1, 8), (B, H, 8)
    moved = (now[..., 0:3] - past[..., 0:3]) / HISTORY_SCALE_M  # (B, H, 3)
    fingers = (now[..., 6:7] - past[..., 6:7]) / _GRIPPER_HALF_WIDTH_M  # (B, H, 1)
    return torch.cat([moved, fingers], dim=2).reshape(B, 4 * lags)  # (B, 4H)


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
        return bin_lookup(self.bin_centers, bins)


class RegressionHead(nn.Module):
    """Stage 3, continuous: K queries (one per chunk step) -> 7 normalised values each, L1-trained.

    Normalisation (from the fitted ActionTokenizer's statistics): each motion dimension maps its
    [q01, q99] to [-1, 1]; the gripper target 0/1 maps to -1/+1. Predictions are clipped to
    [-1, 1] before un-normalising, so a decoded action never leaves the range the expert used.
    `decode(bins)` and `nearest_bins(actions)` keep the token view of the bins head for callers
    that report tokens.
    """

    autoregressive = False

    def __init__(self, config: VLAConfig, tokenizer: ActionTokenizer | None = None) -> None:
        super().__init__()
        K, A, nb, D = config.chunk_size, config.action_dim, config.num_bins, config.dim
        self.chunk_size, self.action_dim, self.num_bins = K, A, nb
        self.step_emb = nn.Parameter(torch.randn(1, K, D) * 0.02)  # (1, K, D)
        self.proj = nn.Linear(D, A)
        # goal_aux: one more query, read out as the episode's final EE xyz (state_features scaling)
        self.goal_query = nn.Parameter(torch.randn(1, 1, D) * 0.02) if config.goal_aux else None  # (1, 1, D)
        self.goal_proj = nn.Linear(D, 3) if config.goal_aux else None
        self.register_buffer("bin_centers", torch.zeros(A, nb), persistent=False)  # (7, nb)
        self.register_buffer("action_mid", torch.zeros(A), persistent=False)  # (7,)
        self.register_buffer("action_half", torch.ones(A), persistent=False)  # (7,)
        self.has_bin_centers = False
        if tokenizer is not None:
            self.set_tokenizer(tokenizer)

    def set_tokenizer(self, tokenizer: ActionTokenizer) -> None:
        mid, half = regression_scale(tokenizer)
        self.action_mid.copy_(torch.from_numpy(mid))
        self.action_half.copy_(torch.from_numpy(half))
        self.bin_centers.copy_(torch.from_numpy(tokenizer.bin_centers()))
        self.has_bin_centers = True

    def query_tokens(self, batch: int, bins: Tensor | None) -> Tensor:
        if bins is not None:
            raise ValueError("the l1 action head takes no previous bins")
        q = self.step_emb.expand(batch, -1, -1)  # (B, K, D)
        if self.goal_query is not None:
            q = torch.cat([q, self.goal_query.expand(batch, -1, -1)], dim=1)  # (B, K + 1, D)
        return q

    def logits(self, h: Tensor) -> Tensor:
        """Normalised actions (B, K, 7) (not logits; the name keeps one head interface)."""
        return self.proj(h[:, :self.chunk_size])  # (B, K, 7)

    def goal(self, h: Tensor) -> Tensor:
        """goal_aux: predicted final EE position (B, 3), scaled as `goal_features`."""
        if self.goal_proj is None:
            raise RuntimeError("this head has no goal query (goal_aux false)")
        return self.goal_proj(h[:, self.chunk_size])  # (B, 3)

    def normalize(self, actions: Tensor) -> Tensor:
        return ((actions - self.action_mid) / self.action_half).clamp(-1.0, 1.0)  # (B, K, 7)

    def to_actions(self, normalized: Tensor) -> Tensor:
        return normalized.clamp(-1.0, 1.0) * self.action_half + self.action_mid  # (B, K, 7) robot units

    def nearest_bins(self, actions: Tensor) -> Tensor:
        """The token of each action value: its nearest bin centre. (B, K, 7) -> int64 (B, K, 7)."""
        return (actions.unsqueeze(-1) - self.bin_centers).abs().argmin(dim=-1)  # (B, K, 7)

    def decode(self, bins: Tensor) -> Tensor:
        return bin_lookup(self.bin_centers, bins)


def bin_lookup(bin_centers: Tensor, bins: Tensor) -> Tensor:
    """Each token's value: centres (A, nb) and int64 bins (B, K, A) -> float32 (B, K, A)."""
    table = bin_centers.expand(*bins.shape[:-1], -1, -1)  # (B, K, A, nb)
    return table.gather(-1, bins.unsqueeze(-1)).squeeze(-1)  # (B, K, A)


def regression_scale(tokenizer: ActionTokenizer) -> tuple[np.ndarray, np.ndarray]:
    """(mid, half) float32 (7,) each: the l1 head's normalisation from the tokenizer's q01 / q99."""
    if not tokenizer.stats:
        raise ValueError("the action tokenizer has no statistics (q01/q99): refit it")
    q01 = np.asarray(tokenizer.stats["q01"], np.float64)
    q99 = np.asarray(tokenizer.stats["q99"], np.float64)
    mid, half = (q99 + q01) / 2.0, np.maximum((q99 - q01) / 2.0, 1e-6)
    mid[-1], half[-1] = 0.5, 0.5  # gripper: 0 closed / 1 open -> -1 / +1
    return mid.astype(np.float32), half.astype(np.float32)


# ----------------------------------------------------------------------------- the model


class VLA(nn.Module):
    def __init__(self, config: VLAConfig, tokenizer: ActionTokenizer | None = None) -> None:
        super().__init__()
        self.config = config
        D = config.dim
        # trunk: kept when the latent head is swapped for the action head
        self.patch_embed = nn.Linear(config.patch_dim, D) if config.encoder == "patch" else None
        self.conv_encoder = ConvEncoder(config) if config.encoder == "conv" else None
        self.pos_emb = nn.Parameter(torch.randn(1, config.num_patches, D) * 0.02)  # (1, N, D)
        # one embedding per camera added to its patches and keypoints (only with more than one camera)
        V = config.num_cameras
        self.camera_emb = nn.Parameter(torch.randn(V, 1, D) * 0.02) if V > 1 else None  # (V, 1, D)
        self.text_norm = nn.LayerNorm(config.text_dim)  # unit-norm sentence vectors -> unit variance
        self.text_proj = nn.Linear(config.text_dim, D)
        T = config.text_tokens
        self.word_norm = nn.LayerNorm(config.text_dim) if T else None
        self.word_proj = nn.Linear(config.text_dim, D) if T else None
        self.word_pos = nn.Parameter(torch.randn(1, T, D) * 0.02) if T else None  # (1, N, D)
        self.word_pad = nn.Parameter(torch.randn(1, 1, D) * 0.02) if T else None  # (1, 1, D)
        self.word_pool = WordPool(config.text_dim, config.text_pool) if config.text_pool else None
        self.sentence_noise = 0.0  # training only, set by the trainer (_noisy_sentence); not a parameter
        self.state_proj = nn.Linear(STATE_FEATURES, D) if config.state_dim else None
        self.no_state = nn.Parameter(torch.randn(1, 1, D) * 0.02) if config.state_dim else None  # (1, 1, D)
        # the state history joins the state token (zero-initialised: a model given a history starts
        # as the same model without one)
        H = len(config.state_history)
        self.history_proj = nn.Linear(4 * H, D) if H else None
        self.blocks = nn.ModuleList(Block(D, config.heads, config.mlp_ratio) for _ in range(config.depth))
        self.norm = nn.LayerNorm(D)
        # heads: the config's head; an action model may keep a latent head beside it (config.latent_head)
        self.latent_head: LatentHead | None = None
        self.action_head: ActionHead | RegressionHead | None = None
        if config.head == "latent" or config.latent_head:
            self.latent_head = LatentHead(config)
        if config.head == "action":
            self.action_head = _new_action_head(config, tokenizer)
        self.apply(_init_weights)
        for module in self.modules():
            if isinstance(module, FiLM):
                module.reset_to_identity()
        if self.history_proj is not None:
            nn.init.zeros_(self.history_proj.weight)
            nn.init.zeros_(self.history_proj.bias)
        self.register_buffer("attn_blocked", _attention_mask(config), persistent=False)  # (S, S)
        if config.head == "action" and config.latent_head:  # the latent head's own pass: (P + L, P + L)
            self.register_buffer("latent_blocked", _attention_mask(config.replace(head="latent", latent_head=False)),
                                 persistent=False)

    # ------------------------------------------------------------------ trunk
    def embed_prefix(self, images: Tensor, text_emb: Tensor, state: Tensor | None = None) -> Tensor:
        """uint8 (B, H, W, 3) images (or floats in [0, 1]; (B, V, H, W, 3) for a model with V > 1
        cameras, in config.cameras order) + (B, text_input_dim) [+ (B, 8) state]
        -> prefix (B, P, D): [text, words (if text_tokens), state (if state_dim), keypoints per camera
        (if any), patches per camera]."""
        c = self.config
        H = W = c.image_size
        V = c.num_cameras
        shape = (H, W, 3) if V == 1 else (V, H, W, 3)
        if images.dim() != 1 + len(shape) or tuple(images.shape[1:]) != shape:
            raise ValueError(f"images must be (B, {', '.join(map(str, shape))}), got {tuple(images.shape)}")
        if text_emb.dim() != 2 or text_emb.shape[1] != c.text_input_dim:
            raise ValueError(f"text_emb must be (B, {c.text_input_dim}), got {tuple(text_emb.shape)}")
        B = images.shape[0]
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()  # (B[, V], H, W, 3) in [0, 1]
        x = (x - 0.5) / 0.5  # [-1, 1]
        sentence, words, pooled = self._instruction(text_emb.float())  # (B, text_dim), (B, N, D), (B, P * text_dim)
        text_n = self.text_norm(sentence)  # (B, text_dim)
        if V > 1:  # every camera through the same encoder, with its instruction
            x = x.reshape(B * V, H, W, 3)
            text_images = text_n.repeat_interleave(V, dim=0)  # (B * V, text_dim)
            pooled = pooled.repeat_interleave(V, dim=0) if pooled is not None else None  # (B * V, P * text_dim)
        else:
            text_images = text_n
        keypoint_token = None
        if self.conv_encoder is not None:
            patches, keypoint_token = self.conv_encoder(x.permute(0, 3, 1, 2), text_images,
                                                        pooled)  # (BV, N, D), (BV, 1, D)
        else:
            g, p = c.grid_size, c.patch_size
            x = x.reshape(-1, g, p, g, p, 3).permute(0, 1, 3, 2, 4, 5)  # (BV, g, g, p, p, 3)
            x = x.reshape(-1, g * g, p * p * 3)  # (BV, N, p*p*3)
            patches = self.patch_embed(x)  # (BV, N, D)
        patches = patches + self.pos_emb  # (BV, N, D)
        if self.camera_emb is not None:
            N, D = patches.shape[1], patches.shape[2]
            patches = (patches.reshape(B, V, N, D) + self.camera_emb).reshape(B, V * N, D)  # (B, V*N, D)
            if keypoint_token is not None:
                keypoint_token = keypoint_token.reshape(B, V, D) + self.camera_emb[:, 0]  # (B, V, D)
        tokens = [self.text_proj(text_n).unsqueeze(1)]  # [(B, 1, D)]
        if words is not None:
            tokens.append(words)  # (B, N, D)
        if self.state_proj is None:
            if state is not None:
                raise ValueError("this VLA has no state input (state_dim 0)")
        elif state is None:
            tokens.append(self.no_state.expand(images.shape[0], -1, -1))  # (B, 1, D)
        else:
            if state.dim() != 2 or state.shape != (images.shape[0], c.state_input_dim):
                raise ValueError(f"state must be (B, {c.state_input_dim}), got {tuple(state.shape)}")
            state = state.float()
            token = self.state_proj(state_features(state[:, :STATE_DIM]))  # (B, D)
            if self.history_proj is not None:
                token = token + self.history_proj(history_features(state, len(c.state_history)))  # (B, D)
            tokens.append(token.unsqueeze(1))  # (B, 1, D)
        if keypoint_token is not None:
            tokens.append(keypoint_token)  # (B, V, D)
        return torch.cat([*tokens, patches], dim=1)  # (B, P, D)

    def _instruction(self, text_emb: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(B, text_input_dim) -> the sentence vector (B, text_dim) and, in the token form, word tokens
        (B, N, D) and (with text_pool P) the WordPool vectors (B, P * text_dim).

        The sentence vector of token features is their mean over real (nonzero) rows, L2-normalised:
        exactly the sentence encoder's output, so a trunk pretrained on sentence vectors keeps its input."""
        N = self.config.text_tokens
        if not N:
            return self._noisy_sentence(text_emb), None, None
        feats = text_emb.reshape(text_emb.shape[0], N, self.config.text_dim)  # (B, N, text_dim)
        real = (feats.abs().sum(dim=-1, keepdim=True) > 0).to(feats.dtype)  # (B, N, 1) 1 = token, 0 = padding
        mean = feats.sum(dim=1) / real.sum(dim=1).clamp(min=1.0)  # (B, text_dim)
        sentence = F.normalize(self._noisy_sentence(mean), p=2.0, dim=-1, eps=1e-12)  # (B, text_dim)
        words = self.word_proj(self.word_norm(feats)) + self.word_pos  # (B, N, D)
        words = real * words + (1.0 - real) * self.word_pad  # (B, N, D)
        pooled = self.word_pool(feats, real) if self.word_pool is not None else None  # (B, P * text_dim)
        return sentence, words, pooled

    def _noisy_sentence(self, sentence: Tensor) -> Tensor:
        """Sentence noise, in training only: Gaussian noise of `sentence_noise` times the vector's norm.

        A wording the policy never saw moves the sentence vector far: for put, cosine 0.60-0.76 to the
        nearest training wording, while another colour in the same wording gives 0.90. The FiLM path
        then shifts the image features and grasps land centimetres off. Noise of that size teaches
        the policy to take the colours from the word tokens and only a coarse cue from the sentence.
        """
        if not (self.training and self.sentence_noise > 0):
            return sentence
        noise = torch.randn_like(sentence)  # (B, text_dim)
        scale = sentence.norm(dim=-1, keepdim=True) * (self.sentence_noise / math.sqrt(sentence.shape[-1]))
        return sentence + noise * scale

    def run_trunk(self, prefix: Tensor, queries: Tensor, blocked: Tensor | None = None) -> Tensor:
        """prefix (B, P, D) + queries (B, Q, D) -> normalised query outputs (B, Q, D). `blocked` (S, S):
        the attention mask, by default the config head's."""
        x = torch.cat([prefix, queries], dim=1)  # (B, S, D), S = P + Q
        blocked = self.attn_blocked if blocked is None else blocked
        for block in self.blocks[:-1]:
            x = block(x, blocked)
        # the last block: the prefix rows' outputs are never read (only the queries'), so only the
        # query rows are computed; the prefix still gives every key and value (exact, ~15% fewer FLOPs)
        return self.norm(self.blocks[-1](x, blocked, rows_from=prefix.shape[1]))  # (B, Q, D)

    def trunk_state_dict(self) -> dict[str, Tensor]:
        """Parameters shared by both stages (everything but the heads)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(("latent_head.", "action_head."))}

    # ------------------------------------------------------------------ forward: logits of the head
    def forward(self, images: Tensor, text_emb: Tensor, bins: Tensor | None = None,
                state: Tensor | None = None) -> Tensor:
        """Latent head: (B, L, codebook) logits. Bins action head: (B, K, 7, num_bins) logits.
        L1 action head: normalised actions (B, K, 7).

        `bins` (B, K, 7) int64 only for an autoregressive action head: the target tokens (teacher
        forcing; token t sees tokens < t), or during generation the tokens decoded so far.
        `state` (B, 8) proprio, for a model with state_dim 8 (None: the "no state" token).
        """
        if self.config.head == "latent":
            if bins is not None:
                raise ValueError("the latent head takes no bins")
            prefix = self.embed_prefix(images, text_emb, state)  # (B, P, D)
            return self.latent_head.logits(self.run_trunk(prefix, self.latent_head.query_tokens(prefix.shape[0])))
        return self._action_head().logits(self._action_trunk(images, text_emb, state, bins))  # (B, K, A, nb)

    def action_outputs(self, images: Tensor, text_emb: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """L1 head with goal_aux: (normalised actions (B, K, 7), predicted final EE xyz (B, 3)) of one pass."""
        head = self._action_head()
        if not isinstance(head, RegressionHead) or head.goal_proj is None:
            raise RuntimeError("action_outputs needs an l1 action head with goal_aux")
        h = self._action_trunk(images, text_emb, state, None)  # (B, K + 1, D)
        return head.logits(h), head.goal(h)

    def _action_trunk(self, images: Tensor, text_emb: Tensor, state: Tensor | None, bins: Tensor | None) -> Tensor:
        """The action head's query outputs (B, Q, D)."""
        prefix = self.embed_prefix(images, text_emb, state)  # (B, P, D)
        return self.run_trunk(prefix, self._action_head().query_tokens(prefix.shape[0], bins))

    def latent_logits(self, images: Tensor, text_emb: Tensor) -> Tensor:
        """(B, L, C) latent code logits: the latent model's, or the latent head an action model keeps
        (config.latent_head) on the same trunk. No state: latent actions are learned from videos."""
        if self.latent_head is None:
            raise RuntimeError("this VLA has an action head and no latent head (config.latent_head false)")
        if self.config.head == "latent":
            return self(images, text_emb)  # (B, L, C)
        prefix = self.embed_prefix(images, text_emb)  # (B, P, D), the "no state" token in the state slot
        h = self.run_trunk(prefix, self.latent_head.query_tokens(prefix.shape[0]), self.latent_blocked)
        return self.latent_head.logits(h)  # (B, L, C)

    def predict_latents(self, images: Tensor, text_emb: Tensor) -> Tensor:
        """Argmax latent action codes (B, L) int64."""
        with torch.no_grad():
            return self.latent_logits(images, text_emb).argmax(dim=-1)

    # ------------------------------------------------------------------ action decoding
    def predict_actions(
        self, images: Tensor, text_emb: Tensor, decoder: str | None = None, state: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Greedy decoding -> (bins int64 (B, K, 7), actions float32 (B, K, 7)).

        decoder None uses the config's mode. "parallel": one forward pass (parallel models only).
        "autoregressive": the KV-free step-by-step loop (bins models; see the module docstring).
        An l1 model regresses the chunk in one pass; its bins are the nearest bin centres.
        """
        head = self._action_head()
        if not head.has_bin_centers:
            raise RuntimeError("the action head has no bin table: pass the fitted ActionTokenizer")
        decoder = decoder or self.config.decoder
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        with torch.no_grad():
            if isinstance(head, RegressionHead):
                if decoder != "parallel":
                    raise ValueError("an l1 action head regresses the chunk in one pass: decoder must be 'parallel'")
                actions = head.to_actions(self(images, text_emb, state=state))  # (B, K, 7)
                return head.nearest_bins(actions), actions
            if decoder == "parallel":
                if head.autoregressive:
                    raise ValueError("an autoregressive model cannot decode in one pass: use "
                                     "decoder='autoregressive' (or forward(..., bins) for teacher forcing)")
                bins = self(images, text_emb, state=state).argmax(dim=-1)  # (B, K, A)
            else:
                bins = self.generate(images, text_emb, state)  # (B, K, A)
            return bins, head.decode(bins)

    def generate(self, images: Tensor, text_emb: Tensor, state: Tensor | None = None) -> Tensor:
        """Greedy token-by-token decoding without a KV cache: K*7 full passes, pass t fixes token t."""
        head = self._action_head()
        K, A, nb = head.chunk_size, head.action_dim, head.num_bins
        B = images.shape[0]
        bins = torch.zeros(B, K * A, dtype=torch.long, device=images.device)  # (B, T) future slots unused
        for t in range(K * A):  # a fixed count, not data-dependent
            prev = bins.reshape(B, K, A) if head.autoregressive else None
            logits = self(images, text_emb, prev, state).reshape(B, K * A, nb)  # (B, T, nb)
            bins = bins.clone()
            bins[:, t] = logits[:, t].argmax(dim=-1)
        return bins.reshape(B, K, A)  # (B, K, A)

    def _action_head(self) -> ActionHead | RegressionHead:
        if self.action_head is None:
            raise RuntimeError("this VLA has a latent head: call replace_head_for_actions(tokenizer) first")
        return self.action_head

    # ------------------------------------------------------------------ stage 2 -> stage 3
    def replace_head_for_actions(
        self, tokenizer: ActionTokenizer, chunk_size: int | None = None, decoder: str | None = None,
        action_output: str | None = None, goal_aux: bool | None = None,
    ) -> VLA:
        """Drop the latent head, add a fresh action head (trunk untouched). Returns self."""
        config = self.config.replace(
            head="action",
            chunk_size=self.config.chunk_size if chunk_size is None else chunk_size,
            num_bins=tokenizer.num_bins,
            decoder=decoder or self.config.decoder,
            action_output=action_output or self.config.action_output,
            goal_aux=self.config.goal_aux if goal_aux is None else goal_aux,
        )
        ref = self.pos_emb
        head = _new_action_head(config, tokenizer)
        head.apply(_init_weights)
        self.latent_head = None
        self.action_head = head.to(device=ref.device, dtype=ref.dtype)
        self.attn_blocked = _attention_mask(config).to(ref.device)
        self.config = config
        return self

    def with_latent_head(self, source: VLA | None = None) -> VLA:
        """This action model with a latent head beside its action head (a new VLA; self is unchanged):
        `source`'s latent head (a stage-2 model predicting the same codes) or a fresh one. Acting is
        untouched: the action pass never sees the latent queries. The caller sets the tokenizer again."""
        if self.config.head != "action":
            raise ValueError("with_latent_head adds a latent head to an action model")
        model = VLA(self.config.replace(latent_head=True))
        state = {**model.state_dict(), **self.state_dict()}
        if source is not None:
            if source.latent_head is None:
                raise ValueError("the source model has no latent head")
            sc = source.config
            if (sc.dim, sc.latent_seq_len, sc.latent_codebook_size) != (
                    self.config.dim, self.config.latent_seq_len, self.config.latent_codebook_size):
                raise ValueError(f"the source's latent head ({sc.latent_seq_len} codes of {sc.latent_codebook_size}, "
                                 f"dim {sc.dim}) does not fit this model (dim {self.config.dim})")
            state.update({f"latent_head.{k}": v for k, v in source.latent_head.state_dict().items()})
        model.load_state_dict(state)
        return model

    def with_state_history(self, lags: tuple[int, ...]) -> VLA:
        """The same model taking a state history with these lags (a new VLA; self is unchanged). Its
        history projection starts at zero, so until trained it acts exactly as this model. An
        action model's tokenizer is set again by the caller (`set_action_tokenizer`)."""
        model = VLA(self.config.replace(state_history=tuple(lags)))
        fresh = model.state_dict()
        own = self.state_dict()
        model.load_state_dict({k: fresh[k] if k.startswith("history_proj.") else own[k] for k in fresh})
        return model

    def with_text_tokens(self, tokens: int, pool: int = 0) -> VLA:
        """The same model taking the token form of the instruction with `tokens` tokens and `pool`
        WordPool queries (a new VLA; self is unchanged). Its sentence path is the same; the word tokens
        are new and the pooled FiLM term starts at zero. An action model's tokenizer is set again by
        the caller (`set_action_tokenizer`)."""
        return self._rebuilt(self.config.replace(text_tokens=tokens, text_pool=pool))

    def with_cameras(self, cameras: tuple[str, ...]) -> VLA:
        """The same model seeing these cameras (a new VLA; self is unchanged): the encoder, position
        embedding and trunk are shared by every camera, the camera embedding is new. An action
        model's tokenizer is set again by the caller (`set_action_tokenizer`)."""
        return self._rebuilt(self.config.replace(cameras=tuple(cameras)))

    def _rebuilt(self, config: VLAConfig) -> VLA:
        """A new VLA of `config` holding this model's parameters wherever the name and shape match."""
        model = VLA(config)
        fresh = model.state_dict()
        own = self.state_dict()
        model.load_state_dict({k: own[k] if k in own and own[k].shape == fresh[k].shape else fresh[k]
                               for k in fresh})
        return model

    def set_action_tokenizer(self, tokenizer: ActionTokenizer) -> None:
        head = self._action_head()
        if isinstance(head, RegressionHead):
            head.set_tokenizer(tokenizer)
        else:
            head.set_bin_centers(_centers(tokenizer, self.config))

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


# ----------------------------------------------------------------------------- losses


def l1_action_loss(predicted: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean absolute error of normalised actions (B, K, 7); `mask` (B, K) drops padded chunk steps."""
    per_value = (predicted.float() - target.float()).abs()  # (B, K, A)
    if mask is None:
        return per_value.mean()
    weights = mask.to(per_value.dtype).unsqueeze(-1).expand_as(per_value)  # (B, K, A)
    return (per_value * weights).sum() / weights.sum().clamp(min=1.0)


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


def _new_action_head(config: VLAConfig, tokenizer: ActionTokenizer | None) -> ActionHead | RegressionHead:
    if config.action_output == "l1":
        if tokenizer is not None and tokenizer.num_bins != config.num_bins:
            raise ValueError(f"tokenizer has {tokenizer.num_bins} bins, the config {config.num_bins}")
        return RegressionHead(config, tokenizer)
    return ActionHead(config, _centers(tokenizer, config))


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
