"""In-memory training sets for the VLA: latent pretraining, action (pre)training, finetuning.

Every set decodes its frames once, at the model's image size (64x64 RGB is 12 KiB a frame, so
tens of thousands of frames fit easily), embeds each distinct instruction once with the text
encoder, and then draws batches with a numpy Generator the caller seeds per step, so a resumed
run draws exactly the batches the uninterrupted run would have drawn.

- `LatentSet`  (stage 2, LAPA):  image x_t, instruction, the LAQ codes of (x_t, x_{t+H}).
- `ActionSet`  (stage 3 and the ActionVLA / VPT pretraining): image x_t, instruction, the action
  chunk a_t .. a_{t+K-1}, padded past the episode end with the last action and masked out.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from lapa.action import ACTION_DIM, STATE_DIM
from lapa.data.frame_pairs import ClipCatalog, resize_frames
from lapa.errors import UserError
from lapa.laq.labels import read_labels
from lapa.policy.action_tokenizer import ActionTokenizer
from lapa.state_history import history_rows

log = logging.getLogger(__name__)

PSEUDO_FORMAT = "lapa-pseudo-actions/1"


# ----------------------------------------------------------------------------- building blocks


@dataclass
class Batch:
    images: torch.Tensor  # (B, S, S, 3) uint8 ((B, V, S, S, 3) with V > 1 cameras); float in [0, 1] once augmented
    text: torch.Tensor  # (B, D) float32 instruction embeddings
    codes: torch.Tensor | None = None  # (B, L) int64 latent targets
    bins: torch.Tensor | None = None  # (B, K, 7) int64 action tokens
    mask: torch.Tensor | None = None  # (B, K) bool: False past the episode end
    actions: torch.Tensor | None = None  # (B, K, 7) float32 true chunk (targets of an l1 head, error metrics)
    states: torch.Tensor | None = None  # (B, 8 * (1 + H)) float32 proprio at x_t [+ history] (None: no states)
    goals: torch.Tensor | None = None  # (B, 3) float32 EE xyz at the goal frame (goal_aux; ActionSet.goal_target)

    def __len__(self) -> int:
        return int(self.images.shape[0])


class InstructionTable:
    """Distinct instructions -> row of a (U, D) embedding matrix, encoded in one pass."""

    def __init__(self, instructions: Sequence[str], encoder: Any) -> None:
        self.texts = sorted(set(instructions))
        if not self.texts:
            raise UserError("no instructions to embed")
        if any(not t.strip() for t in self.texts):
            raise UserError("empty instruction in the training data (every clip needs a caption)")
        self.index = {t: i for i, t in enumerate(self.texts)}
        self.embeddings = encoder.encode(self.texts).float()  # (U, D)

    def ids(self, instructions: Sequence[str]) -> np.ndarray:
        return np.array([self.index[t] for t in instructions], dtype=np.int64)  # (N,)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])


@dataclass
class ClipFrames:
    """Frames of many clips concatenated: clip c owns rows offsets[c] .. offsets[c+1]-1."""

    frames: np.ndarray  # (F, S, S, 3) uint8
    offsets: np.ndarray  # (C + 1,) int64
    instructions: list[str]  # (C,)
    keys: list[tuple[str, int]]  # (C,) (dataset root, clip index in ClipCatalog([root]).refs)
    actions: list[np.ndarray | None]  # (C,) (T_c, 7) float32 when the source has actions
    states: np.ndarray | None = None  # (F, 8) float32, row-aligned with frames; None unless every clip has states
    more_cameras: tuple[np.ndarray, ...] = ()  # per camera after the first: (F, S, S, 3) uint8, row-aligned

    def length(self, c: int) -> int:
        return int(self.offsets[c + 1] - self.offsets[c])

    def images(self, rows: np.ndarray) -> torch.Tensor:
        """uint8 (B, S, S, 3) for one camera, (B, V, S, S, 3) for V > 1."""
        if not self.more_cameras:
            return torch.from_numpy(self.frames[rows])
        return torch.from_numpy(np.stack([self.frames[rows], *(c[rows] for c in self.more_cameras)], axis=1))


def load_clips(keys: Sequence[tuple[str, int]], image_size: int, progress: bool = False,
               cameras: Sequence[str] = ("scene",)) -> ClipFrames:
    """Decode the given (root, clip index) clips once, resized to image_size. Order is kept. The
    first camera is each clip's own video; more `cameras` are read from LeRobot episodes by name."""
    from tqdm import tqdm

    catalogs: dict[str, ClipCatalog] = {}
    frames, lengths, instructions, actions, states = [], [], [], [], []
    more: list[list[np.ndarray]] = [[] for _ in cameras[1:]]
    for root, index in tqdm(keys, desc="decoding clips", unit="clip", disable=not progress):
        if root not in catalogs:
            catalogs[root] = ClipCatalog([root])
        refs = catalogs[root].refs
        if not 0 <= index < len(refs):
            raise UserError(f"{root} has {len(refs)} clips; clip {index} does not exist")
        clip = catalogs[root].read(refs[index])
        frames.append(resize_frames(clip.frames, image_size))
        for camera, out in zip(cameras[1:], more, strict=True):
            extra = catalogs[root].read_camera(refs[index], camera)
            if len(extra) != len(clip.frames):
                raise UserError(f"{root} episode {index}: {len(extra)} {camera} frames, "
                                f"{len(clip.frames)} scene frames")
            out.append(resize_frames(extra, image_size))
        lengths.append(len(clip.frames))
        instructions.append(clip.ref.instruction)
        actions.append(None if clip.actions is None else np.asarray(clip.actions, np.float32))
        states.append(None if clip.states is None else np.asarray(clip.states, np.float32))
    if not frames:
        raise UserError("no clips to load")
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    all_states = None
    if all(s is not None and s.shape == (len(f), STATE_DIM) for s, f in zip(states, frames, strict=True)):
        all_states = np.concatenate(states)  # (F, 8)
    return ClipFrames(np.concatenate(frames), offsets, instructions, list(keys), actions, all_states,
                      tuple(np.concatenate(m) for m in more))


def all_clip_keys(roots: Sequence[str | os.PathLike]) -> list[tuple[str, int]]:
    """(root, index) of every clip of these datasets (LeRobot v3 or video folders)."""
    keys = []
    for root in roots:
        keys += [(str(root), i) for i in range(len(ClipCatalog([root]).refs))]
    return keys


def augment_images(images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Light augmentation as the LAPA/OpenVLA finetuning recipe: random resized crop + colour jitter.

    uint8 (B, S, S, 3) -> float (B, S, S, 3) in [0, 1]. The crop keeps between 90% and 100% of
    the area (square, random position) and is resized back; brightness and contrast are scaled
    by factors in [0.8, 1.2]. The full frame (scale 1) lies inside the training distribution, so
    inference uses the uncropped image and the serving path needs no matching centre crop.
    """
    B = images.shape[0]
    x = images.permute(0, 3, 1, 2).float() / 255.0  # (B, 3, S, S)
    scale = np.sqrt(rng.uniform(0.9, 1.0, B))  # side fraction kept, (B,)
    shift = (1.0 - scale) * rng.uniform(-1.0, 1.0, (2, B))  # crop centre offset in [-1, 1] coords
    theta = np.zeros((B, 2, 3), np.float32)
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    theta[:, 0, 2], theta[:, 1, 2] = shift[0], shift[1]
    grid = F.affine_grid(torch.from_numpy(theta), list(x.shape), align_corners=False)  # (B, S, S, 2)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    brightness = torch.from_numpy(rng.uniform(0.8, 1.2, (B, 1, 1, 1)).astype(np.float32))
    contrast = torch.from_numpy(rng.uniform(0.8, 1.2, (B, 1, 1, 1)).astype(np.float32))
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    x = ((x - mean) * contrast + mean) * brightness
    return x.clamp(0.0, 1.0).permute(0, 2, 3, 1).contiguous()  # (B, S, S, 3)


def shift_images(images: torch.Tensor, rng: np.random.Generator, pad: int = 4) -> torch.Tensor:
    """DrQ / Diffusion Policy random shift: pad by `pad` pixels (edge replicate), crop back at a
    random offset. uint8 (B, S, S, 3) -> float (B, S, S, 3) in [0, 1]; integer shifts, no blur."""
    B, S = images.shape[0], images.shape[1]
    x = images.permute(0, 3, 1, 2).float() / 255.0  # (B, 3, S, S)
    x = F.pad(x, (pad, pad, pad, pad), mode="replicate")  # (B, 3, S + 2p, S + 2p)
    dy, dx = rng.integers(0, 2 * pad + 1, (2, B))
    out = torch.stack([x[b, :, dy[b]:dy[b] + S, dx[b]:dx[b] + S] for b in range(B)])  # (B, 3, S, S)
    return out.permute(0, 2, 3, 1).contiguous()  # (B, S, S, 3)


AUGMENTATIONS = ("crop", "shift")


def apply_augmentation(images: torch.Tensor, rng: np.random.Generator, augment: bool | str) -> torch.Tensor:
    """augment False: unchanged; True or "crop": augment_images; "shift": shift_images. Images of
    several cameras (B, V, S, S, 3) are augmented independently."""
    if augment is False or augment is None:
        return images
    if images.dim() == 5:
        B, V = images.shape[:2]
        return apply_augmentation(images.flatten(0, 1), rng, augment).unflatten(0, (B, V))
    if augment is True or augment == "crop":
        return augment_images(images, rng)
    if augment == "shift":
        return shift_images(images, rng)
    raise ValueError(f"augment must be False, True or one of {AUGMENTATIONS}, got {augment!r}")


# ----------------------------------------------------------------------------- latent pretraining


class LatentSet:
    """LAPA stage 2 samples from a label file: (x_t at the VLA size, instruction, LAQ codes)."""

    def __init__(self, labels_path: str | os.PathLike, image_size: int, encoder: Any,
                 progress: bool = False, load: Any = None) -> None:
        """`load(keys, image_size, progress)` -> ClipFrames: `load_clips` (all frames decoded now) by default."""
        labels = read_labels(labels_path)
        self.meta = labels.meta
        self.path = Path(labels_path)
        keys = list(dict.fromkeys(zip(labels.sources.tolist(), labels.clip_index.tolist(), strict=True)))
        self.clips = (load or load_clips)(keys, image_size, progress=progress)
        clip_of = {k: c for c, k in enumerate(keys)}
        rows_clip = np.array([clip_of[k] for k in zip(labels.sources.tolist(), labels.clip_index.tolist(),
                                                       strict=True)], dtype=np.int64)  # (N,)
        lengths = np.diff(self.clips.offsets)[rows_clip]  # (N,)
        if np.any(labels.frame_index + labels.gap >= lengths) or np.any(labels.frame_index < 0):
            raise UserError(f"{labels_path}: frame indices beyond their clips (labels from another dataset?)")
        self.frame_rows = self.clips.offsets[rows_clip] + labels.frame_index  # (N,) row into clips.frames
        self.table = InstructionTable(labels.instructions.tolist(), encoder)
        self.text_ids = self.table.ids(labels.instructions.tolist())  # (N,)
        self.codes = torch.from_numpy(labels.codes.astype(np.int64))  # (N, L)
        self.latent_seq_len = int(self.codes.shape[1])
        self.codebook_size = int(labels.meta["codebook_size"])
        self.sources = sorted({k[0] for k in keys})

    def __len__(self) -> int:
        return len(self.codes)

    def sample(self, rng: np.random.Generator, batch_size: int, augment: bool | str = False) -> Batch:
        idx = rng.integers(0, len(self), batch_size)  # (B,)
        images = torch.from_numpy(self.clips.frames[self.frame_rows[idx]])  # (B, S, S, 3) uint8
        images = apply_augmentation(images, rng, augment)
        return Batch(images, self.table.embeddings[self.text_ids[idx]], codes=self.codes[idx])


# ----------------------------------------------------------------------------- action chunks


def drop_words(text: torch.Tensor, tokens: int, p: float, rng: np.random.Generator) -> torch.Tensor:
    """Word dropout on the token form: each real token row of (B, tokens * dim) becomes padding (zeros)
    with probability `p`, never every row of a sample, so the policy cannot lean on any one word and
    an unfamiliar word costs less (word dropout, as in Iyyer et al. 2015, on features)."""
    feats = text.reshape(text.shape[0], tokens, -1)  # (B, N, dim)
    real = (feats.abs().sum(dim=-1) > 0).numpy()  # (B, N)
    drop = real & (rng.random(real.shape) < p)  # (B, N)
    drop[(real & ~drop).sum(axis=1) == 0] = False  # a sample keeps at least one word
    kept = torch.from_numpy(~drop).to(feats.dtype).unsqueeze(-1)  # (B, N, 1)
    return (feats * kept).reshape(text.shape)


def jitter_words(text: torch.Tensor, tokens: int, scale: float, rng: np.random.Generator) -> torch.Tensor:
    """Feature noise on the token form: each real token row of (B, tokens * dim) gets Gaussian noise of
    about `scale` times its own norm (padding rows stay zero). An unfamiliar sentence moves every
    contextual token feature a little (cosine ~0.9-0.96 for a colour word of a held-out wording,
    against ~0.98 between training wordings); the noise shows the policy such moves in training."""
    feats = text.reshape(text.shape[0], tokens, -1)  # (B, N, dim)
    norms = feats.norm(dim=-1, keepdim=True)  # (B, N, 1); 0 on padding rows
    noise = torch.from_numpy(rng.standard_normal(feats.shape).astype(np.float32)).to(feats.dtype)  # (B, N, dim)
    return (feats + noise * norms * (scale / math.sqrt(feats.shape[-1]))).reshape(text.shape)


def is_hold(action: np.ndarray) -> bool:
    """The recorder's synthetic last action (lapa.sim.env.run_episode): no motion at all, only a gripper."""
    return bool(np.all(np.asarray(action)[:ACTION_DIM - 1] == 0.0))


class ActionSet:
    """Every step t of every episode: (x_t, instruction, actions t..t+K-1 with a validity mask).

    The recorder ends each episode with a synthetic "hold" action (exactly zero motion) after the
    final frame; with `drop_final_hold` that step is neither a sample nor a chunk target. Kept, it
    puts a point mass at exactly 0 into every motion dimension: quantile bins give it its own bin,
    and per-dimension argmax decoding of an uncertain model picks that spike, so the arm freezes.

    `bins` are filled by `set_tokenizer` (fit it on `all_actions()` for the stage's data).
    """

    def __init__(self, clips: ClipFrames, actions: Sequence[np.ndarray], chunk_size: int, encoder: Any,
                 drop_final_hold: bool = True, paraphrase: bool | str = False) -> None:
        if len(actions) != len(clips.instructions):
            raise ValueError(f"{len(actions)} action arrays for {len(clips.instructions)} clips")
        self.clips = clips
        self.chunk_size = chunk_size
        K = chunk_size
        rows, chunks, masks, kept, clip_ids = [], [], [], [], []
        for c, acts in enumerate(actions):
            T = clips.length(c)
            acts = np.asarray(acts, np.float32)
            if acts.shape != (T, ACTION_DIM):
                raise UserError(f"clip {clips.keys[c]}: actions {acts.shape} do not match its {T} frames")
            if not np.all(np.isfinite(acts)):
                raise UserError(f"clip {clips.keys[c]}: non-finite actions")
            n = T - 1 if drop_final_hold and T > 1 and is_hold(acts[-1]) else T  # real actions
            padded = np.concatenate([acts[:n], np.repeat(acts[n - 1:n], K - 1, axis=0)])  # (n + K - 1, 7)
            window = np.lib.stride_tricks.sliding_window_view(padded, (K, ACTION_DIM))[:, 0]  # (n, K, 7)
            chunks.append(window.copy())
            masks.append(np.arange(n)[:, None] + np.arange(K)[None, :] < n)  # (n, K)
            rows.append(clips.offsets[c] + np.arange(n))
            kept.append(acts[:n])
            clip_ids.append(np.full(n, c))
        self.frame_rows = np.concatenate(rows)  # (N,)
        # the goal frame of every sample, whose EE position is the goal_aux target: the episode's last
        # frame ("final"), or the next gripper event ("keyframe", use_keyframe_goals)
        self.goal_rows = clips.offsets[np.concatenate(clip_ids) + 1] - 1  # (N,)
        self.goal_target = "final"
        self.chunks = np.concatenate(chunks).astype(np.float32)  # (N, K, 7)
        self.masks = torch.from_numpy(np.concatenate(masks))  # (N, K) bool
        self.actions = kept  # per clip (n_c, 7): what the tokenizer is fitted on
        self.sample_clip = np.concatenate(clip_ids)  # (N,) the clip of each sample
        broad = paraphrase == "broad"
        wordings = [_wordings(text, broad) if paraphrase else [text] for text in clips.instructions]  # per clip
        self.table = InstructionTable([w for ws in wordings for w in ws], encoder)
        self.text_ids = self.table.ids(clips.instructions)[self.sample_clip]  # (N,) the recorded wording
        width = max(len(ws) for ws in wordings)
        self.wording_ids = np.stack([np.resize(self.table.ids(ws), width) for ws in wordings])  # (C, W)
        self.paraphrase = paraphrase
        self.state_lags: tuple[int, ...] = ()  # the model's state history (lapa/state_history.py)
        self.bins: torch.Tensor | None = None
        self.tokenizer: ActionTokenizer | None = None
        self.sample_cdf: np.ndarray | None = None  # (N,) set by set_mixture; None: every sample equally likely
        self.word_dropout: tuple[int, float] | None = None  # (text tokens N, drop probability): drop_words
        self.word_noise: tuple[int, float] | None = None  # (text tokens N, noise scale): jitter_words

    def set_mixture(self, weights: dict[str, float]) -> None:
        """Draw each dataset's samples with its share of `weights` (root -> weight, as Octo's dataset
        sampling weights), uniformly within a dataset; without it, every sample is equally likely, so
        a dataset's share is its size."""
        if set(weights) != set(self.sources):
            raise UserError(f"mixture weights name {sorted(weights)}, the data holds {self.sources}")
        if not all(np.isfinite(w) and w > 0 for w in weights.values()):
            raise UserError(f"mixture weights must be finite and > 0, got {weights}")
        roots = self._sample_roots()  # (N,)
        probs = np.zeros(len(self), np.float64)  # (N,)
        for root, w in weights.items():
            mine = roots == root
            probs[mine] = w / mine.sum()
        cdf = np.cumsum(probs)
        self.sample_cdf = cdf / cdf[-1]

    def share_of(self, root: str) -> float:
        """The fraction of drawn samples that come from dataset `root`."""
        mine = self._sample_roots() == root  # (N,)
        if self.sample_cdf is None:
            return float(mine.mean())
        probs = np.diff(self.sample_cdf, prepend=0.0)
        return float(probs[mine].sum())

    def _sample_roots(self) -> np.ndarray:
        """(N,) the dataset root of every sample."""
        return np.array([k[0] for k in self.clips.keys])[self.sample_clip]

    def use_keyframe_goals(self) -> None:
        """goal_aux targets the next keyframe: the EE position where the gripper command next flips
        (the grasp, then the release), the episode's last frame after the last flip. Before a pick's or
        a put's grasp, the goal is the block to lift, not where the episode ends (C2F-ARM's and
        PerAct's next key pose, as an auxiliary target)."""
        rows = []
        for c, acts in enumerate(self.actions):  # (n_c, 7) per clip, in sample order
            start, last = self.clips.offsets[c], self.clips.offsets[c + 1] - 1
            closed = acts[:, 6] < 0.5  # (n_c,) gripper commands: >= 0.5 is open
            flips = np.flatnonzero(closed[1:] != closed[:-1]) + 1  # frames whose command differs from the last
            nxt = np.searchsorted(flips, np.arange(len(acts)), side="right")  # (n_c,) the first flip after each frame
            goal = np.full(len(acts), last, dtype=np.int64)  # (n_c,)
            ahead = nxt < len(flips)
            goal[ahead] = start + flips[nxt[ahead]]
            rows.append(goal)
        self.goal_rows = np.concatenate(rows).astype(np.int64)  # (N,)
        self.goal_target = "keyframe"

    # -- constructors
    @classmethod
    def from_lerobot(cls, roots: Sequence[str | os.PathLike], image_size: int, chunk_size: int, encoder: Any,
                     progress: bool = False, paraphrase: bool | str = False,
                     cameras: Sequence[str] = ("scene",)) -> ActionSet:
        """Episodes with their recorded actions (LeRobot v3 datasets), images of these cameras."""
        clips = load_clips(all_clip_keys(roots), image_size, progress=progress, cameras=cameras)
        missing = [k for k, a in zip(clips.keys, clips.actions, strict=True) if a is None]
        if missing:
            raise UserError(f"{missing[0][0]} has no actions: a LeRobot dataset with actions is needed")
        return cls(clips, clips.actions, chunk_size, encoder, paraphrase=paraphrase)  # type: ignore[arg-type]

    @classmethod
    def from_pseudo_labels(cls, path: str | os.PathLike, image_size: int, chunk_size: int, encoder: Any,
                           progress: bool = False) -> ActionSet:
        """Clips with actions inferred by an inverse dynamics model (VPT), see `write_pseudo_actions`."""
        keys, actions = read_pseudo_actions(path)
        clips = load_clips(keys, image_size, progress=progress)
        return cls(clips, actions, chunk_size, encoder)

    # -- tokens
    def all_actions(self) -> np.ndarray:
        return np.concatenate(self.actions)  # (N, 7)

    def set_tokenizer(self, tokenizer: ActionTokenizer) -> None:
        self.tokenizer = tokenizer
        self.bins = torch.from_numpy(tokenizer.encode(self.chunks))  # (N, K, 7)

    @property
    def sources(self) -> list[str]:
        return sorted({k[0] for k in self.clips.keys})

    def __len__(self) -> int:
        return len(self.frame_rows)

    def sample(self, rng: np.random.Generator, batch_size: int, augment: bool | str = False) -> Batch:
        if self.sample_cdf is None:
            idx = rng.integers(0, len(self), batch_size)  # (B,)
        else:
            idx = np.minimum(np.searchsorted(self.sample_cdf, rng.random(batch_size), side="right"), len(self) - 1)
        batch = self.batch(idx)
        batch.images = apply_augmentation(batch.images, rng, augment)
        if self.paraphrase:  # instruction augmentation: any training wording of the sample's task
            pick = rng.integers(0, self.wording_ids.shape[1], batch_size)  # (B,)
            batch.text = self.table.embeddings[self.wording_ids[self.sample_clip[idx], pick]]
        if self.word_noise is not None:
            batch.text = jitter_words(batch.text, *self.word_noise, rng)
        if self.word_dropout is not None:
            batch.text = drop_words(batch.text, *self.word_dropout, rng)
        return batch

    def batch(self, idx: np.ndarray) -> Batch:
        """The samples `idx` (B,) in order, unaugmented."""
        if self.bins is None:
            raise RuntimeError("call set_tokenizer(tokenizer) before sampling action batches")
        rows = self.frame_rows[idx]  # (B,)
        images = self.clips.images(rows)  # (B, S, S, 3) uint8, (B, V, S, S, 3) with more cameras
        states = goals = None
        if self.clips.states is not None:
            starts = self.clips.offsets[self.sample_clip[idx]]  # (B,) each sample's episode start
            past = history_rows(rows, starts, self.state_lags)  # (B, 1 + H) [now, lag 1, ...]
            states = torch.from_numpy(self.clips.states[past].reshape(len(idx), -1))  # (B, 8 * (1 + H))
            goals = torch.from_numpy(self.clips.states[self.goal_rows[idx], :3])  # (B, 3)
        return Batch(images, self.table.embeddings[self.text_ids[idx]], bins=self.bins[idx],
                     mask=self.masks[idx], actions=torch.from_numpy(self.chunks[idx]), states=states,
                     goals=goals)


def _wordings(instruction: str, broad: bool = False) -> list[str]:
    """The recorded instruction first, then every other training wording of the task it names
    (lapa.vocabulary: training and augmentation templates, with `broad` its broad augmentation; never
    the held-out paraphrases). An instruction that names no task of the suite keeps only itself."""
    from lapa.sim.tasks import parse_instruction

    task = parse_instruction(instruction)
    if task is None:
        return [instruction]
    return [instruction] + [w for w in task.wordings(broad) if w != instruction]


# ----------------------------------------------------------------------------- pseudo-action files


def write_pseudo_actions(path: str | os.PathLike, keys: Sequence[tuple[str, int]], actions: Sequence[np.ndarray],
                         meta: dict[str, Any]) -> Path:
    """A parquet table, one row per frame: source, clip_index, frame_index, action[7]."""
    src, clip, frame, flat = [], [], [], []
    for (root, index), acts in zip(keys, actions, strict=True):
        T = len(acts)
        src += [root] * T
        clip += [index] * T
        frame += list(range(T))
        flat.append(np.asarray(acts, np.float32).reshape(-1))
    table = pa.table({
        "source": pa.array(src, pa.string()),
        "clip_index": pa.array(clip, pa.int64()),
        "frame_index": pa.array(frame, pa.int64()),
        "action": pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate(flat), pa.float32()), ACTION_DIM),
    }).replace_schema_metadata({"lapa": json.dumps({"format": PSEUDO_FORMAT, **meta})})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path


def read_pseudo_actions(path: str | os.PathLike) -> tuple[list[tuple[str, int]], list[np.ndarray]]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"pseudo-action file {path} does not exist")
    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(b"lapa", b"{}"))
    if meta.get("format") != PSEUDO_FORMAT:
        raise UserError(f"{path} is not a pseudo-action file (format {meta.get('format')!r})")
    src = table.column("source").to_pylist()
    clip = table.column("clip_index").to_numpy()
    frame = table.column("frame_index").to_numpy()
    acts = np.asarray(table.column("action").combine_chunks().flatten()).reshape(-1, ACTION_DIM)
    keys: list[tuple[str, int]] = []
    out: list[np.ndarray] = []
    start = 0
    for i in range(1, len(src) + 1):
        if i == len(src) or (src[i], clip[i]) != (src[start], clip[start]):
            if not np.array_equal(frame[start:i], np.arange(i - start)):
                raise UserError(f"{path}: clip {src[start]} #{clip[start]} has gaps in its frame indices")
            keys.append((src[start], int(clip[start])))
            out.append(acts[start:i].astype(np.float32))
            start = i
    return keys, out
