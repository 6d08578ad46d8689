"""Frame pairs (x_t, x_{t+H}) from action-free video sets and LeRobot v3 datasets, for LAQ.

The gap H is given in seconds (the paper uses about 0.6 s) and converted with each clip's own
fps. Training streams shuffled pairs from a few worker processes; each worker decodes a clip
once and draws several pairs from it. Unreadable clips are skipped with a warning and
counted, so a corrupt file never ends a long run.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from lapa.data import clip_index as index_cache_io
from lapa.data.lerobot_v3 import EpisodeData, LeRobotV3Dataset
from lapa.data.video_folder import VideoFolder
from lapa.data.video_io import VideoReadError
from lapa.distributed import worker_shard
from lapa.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipRef:
    """One video clip: where it comes from and how to read it."""

    source: str  # dataset root
    kind: str  # "lerobot" | "videos"
    index: int  # episode index or clip index
    instruction: str


@dataclass
class Clip:
    ref: ClipRef
    frames: np.ndarray  # (T, H, W, 3) uint8
    fps: float
    actions: np.ndarray | None  # (T, 7) float32 for LeRobot episodes
    states: np.ndarray | None = None  # (T, 8) float32 proprio for LeRobot episodes that have it


def is_lerobot_dataset(root: Path) -> bool:
    return (root / "meta" / "info.json").is_file()


def dataset_image_size(root: str | Path) -> int | None:
    """Frame side of a recorded dataset (LeRobot info.json, or the recorder's metadata)."""
    root = Path(root)
    info = root / "meta" / "info.json"
    if info.is_file():
        for feature in json.loads(info.read_text()).get("features", {}).values():
            if feature.get("dtype") == "video":
                return int(feature["shape"][0])
    rec = root / "recording.json"
    if rec.is_file():
        return int(json.loads(rec.read_text()).get("image_size", 0)) or None
    return None


class ClipCatalog:
    """All clips of one or more dataset roots (LeRobot v3 or video folders), readable by ref.

    With `index_cache` (True: the default cache folder, or a folder) each root's listing is read from
    its cached clip index when that is still valid and cached after listing otherwise
    (lapa/data/clip_index.py); `index_digest` names the listing, so ranks can check they agree.
    """

    def __init__(self, roots: Sequence[str | Path], index_cache: bool | str | Path | None = None) -> None:
        if not roots:
            raise UserError("no dataset given")
        cache_dir = index_cache_io.default_cache_dir() if index_cache is True else (
            Path(index_cache) if index_cache else None)
        self.refs: list[ClipRef] = []
        self._lerobot: dict[str, LeRobotV3Dataset] = {}
        self._videos: dict[str, VideoFolder] = {}
        self.from_cache: list[bool] = []  # per root: was its listing read from the cache
        entries = []
        for root in map(Path, roots):
            if not root.exists():
                raise UserError(f"dataset {root} does not exist")
            key = str(root)
            cached = index_cache_io.load_cached(cache_dir, root) if cache_dir is not None else None
            if is_lerobot_dataset(root):
                ds = LeRobotV3Dataset(root)
                self._lerobot[key] = ds
                entry = {"kind": "lerobot", "episodes": ds.num_episodes}
                for i in range(ds.num_episodes):
                    self.refs.append(ClipRef(key, "lerobot", i, ""))
            else:
                if cached is not None and cached.get("kind") == "videos":
                    folder = VideoFolder.from_clips(root, cached["clips"], cached.get("missing", 0))
                else:
                    cached = None
                    folder = VideoFolder(root)
                self._videos[key] = folder
                listing = folder.listing()
                entry = {"kind": "videos", "clips": listing, "missing": folder.missing}
                self.refs.extend(ClipRef(key, "videos", i, instruction) for i, (_, instruction) in enumerate(listing))
            if cache_dir is not None and cached is None:
                index_cache_io.store(cache_dir, root, entry)
            self.from_cache.append(cached is not None)
            entries.append(entry)  # JSON writes tuples as lists: a cached and a fresh listing hash alike
        if not self.refs:
            raise UserError(f"no clips found in {', '.join(map(str, roots))}")
        self.index_digest = index_cache_io.entry_digest(entries)

    def __len__(self) -> int:
        return len(self.refs)

    def episode_labels(self, ref: ClipRef) -> EpisodeData:
        """A LeRobot episode's task, actions and states without decoding its video (UserError for a video folder)."""
        if ref.kind != "lerobot":
            raise UserError(f"{ref.source} is a video folder: it has no episode actions (a LeRobot dataset is needed)")
        return self._lerobot[ref.source].episode_labels(ref.index)

    def read_camera(self, ref: ClipRef, camera: str) -> np.ndarray:
        """The frames (T, H, W, 3) of one more camera of a LeRobot episode (observation.images.<camera>)."""
        if ref.kind != "lerobot":
            raise UserError(f"{ref.source} is a video folder: it has one camera, not {camera!r}")
        ds = self._lerobot[ref.source]
        key = f"observation.images.{camera}"
        if key not in ds.video_keys:
            raise UserError(f"{ref.source} has no {camera} camera ({key}); it has {ds.video_keys}")
        return ds.episode(ref.index, key).frames

    def read(self, ref: ClipRef) -> Clip:
        """Decode a clip; raises VideoReadError (or DatasetError) when it cannot be read."""
        if ref.kind == "lerobot":
            ep = self._lerobot[ref.source].episode(ref.index)
            return Clip(ClipRef(ref.source, ref.kind, ref.index, ep.task), ep.frames, ep.fps, ep.actions, ep.states)
        frames, fps = self._videos[ref.source].read(ref.index)
        return Clip(ref, frames, fps, None)


def gap_frames(gap_s: float, fps: float) -> int:
    """The frame offset H for a gap in seconds at this clip's fps (at least one frame)."""
    if gap_s <= 0:
        raise ValueError(f"the frame gap must be positive, got {gap_s} s")
    return max(1, int(round(gap_s * fps)))


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, size, size, 3) uint8 (area interpolation when shrinking)."""
    if frames.shape[1] == size and frames.shape[2] == size:
        return frames
    interp = cv2.INTER_AREA if frames.shape[1] > size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, (size, size), interpolation=interp) for f in frames])


def pair_indices(num_frames: int, gap: int) -> np.ndarray:
    """Start indices t with a valid partner t + gap."""
    return np.arange(max(0, num_frames - gap))


class FramePairStream(IterableDataset):
    """An endless shuffled stream of uint8 frame pairs (2, S, S, 3), read from disk one clip at a time.

    Every epoch deals one shared permutation of the clips round-robin over all shards (each
    DataLoader worker of each rank is one shard, see `worker_shard`), so ranks and workers read
    disjoint clips, deterministically for a seed. A shard decodes a clip, and yields
    `pairs_per_clip` random pairs from it. With `augment`, pairs get the same random resized
    crop (scale 0.9) and brightness jitter on both frames, so the motion between them is kept.
    """

    def __init__(self, catalog: ClipCatalog, image_size: int, gap_s: float = 0.6, pairs_per_clip: int = 8,
                 seed: int = 0, augment: bool = False, rank: int = 0, world_size: int = 1) -> None:
        self.catalog = catalog
        self.image_size = image_size
        self.gap_s = gap_s
        self.pairs_per_clip = pairs_per_clip
        self.seed = seed
        self.augment = augment
        self.rank, self.world_size = rank, world_size
        self.skipped = 0

    def shard_order(self, epoch: int, shard: int, shards: int) -> np.ndarray:
        """Clip positions shard `shard` of `shards` reads in `epoch`."""
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.catalog))  # (C,) same everywhere
        order = perm[shard::shards]
        return order if len(order) else perm[shard % len(perm):][:1]  # fewer clips than shards

    def __iter__(self) -> Iterator[np.ndarray]:
        shard, shards = worker_shard(self.rank, self.world_size)
        rng = np.random.default_rng([self.seed, shard, 1])  # pair picks and augmentation of this shard
        epoch = 0
        while True:
            yielded = 0
            for i in self.shard_order(epoch, shard, shards):
                ref = self.catalog.refs[int(i)]
                try:
                    clip = self.catalog.read(ref)
                except (VideoReadError, UserError, OSError) as err:
                    self.skipped += 1
                    log.warning("skipping unreadable clip %s #%d (%d skipped so far): %s",
                                ref.source, ref.index, self.skipped, err)
                    continue
                gap = gap_frames(self.gap_s, clip.fps)
                starts = pair_indices(len(clip.frames), gap)
                if len(starts) == 0:
                    continue
                frames = resize_frames(clip.frames, self.image_size)
                for t in rng.choice(starts, size=min(self.pairs_per_clip, len(starts)), replace=False):
                    pair = np.stack([frames[t], frames[t + gap]])  # (2, S, S, 3)
                    yield augment_pair(pair, rng) if self.augment else pair
                    yielded += 1
            if yielded == 0:
                raise UserError("no readable clip is long enough for the requested frame gap")
            epoch += 1


def augment_pair(pair: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Same random resized crop (90% area) and brightness jitter for both frames of a pair."""
    s = pair.shape[1]
    c = int(round(s * math.sqrt(0.9)))
    y, x = rng.integers(0, s - c + 1, size=2)
    crop = pair[:, y:y + c, x:x + c]
    out = np.stack([cv2.resize(f, (s, s), interpolation=cv2.INTER_LINEAR) for f in crop])
    gain = rng.uniform(0.9, 1.1)
    return np.clip(out.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def pair_batches(catalog: ClipCatalog, image_size: int, batch_size: int, gap_s: float = 0.6,
                 workers: int = 2, seed: int = 0, augment: bool = False, rank: int = 0,
                 world_size: int = 1) -> Iterator[torch.Tensor]:
    """Endless batches of uint8 frame pairs (B, 2, S, S, 3) from `workers` processes; under torchrun
    each rank passes its rank and the world size and streams its own shard of the clips."""
    stream = FramePairStream(catalog, image_size, gap_s=gap_s, seed=seed, augment=augment, rank=rank,
                             world_size=world_size)
    loader = DataLoader(stream, batch_size=batch_size, num_workers=workers,
                        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)
    yield from loader


@dataclass
class PairRecord:
    """One frame pair of a dataset, in order: for labelling and evaluation."""

    ref: ClipRef
    clip_index: int  # position of `ref` in the catalog
    instruction: str
    t: int
    gap: int
    pair: np.ndarray  # (2, S, S, 3) uint8
    action_sum: np.ndarray | None  # (7,) sum of actions t..t+gap-1 (LeRobot only)


def iter_pairs(catalog: ClipCatalog, image_size: int, gap_s: float = 0.6, stride: int = 1,
               counter: dict | None = None) -> Iterator[PairRecord]:
    """Every pair (t, t+H) of every clip in catalog order, with the true motion when known."""
    for clip_index, ref in enumerate(catalog.refs):
        try:
            clip = catalog.read(ref)
        except (VideoReadError, UserError, OSError) as err:
            if counter is not None:
                counter["skipped"] = counter.get("skipped", 0) + 1
            log.warning("skipping unreadable clip %s #%d: %s", ref.source, ref.index, err)
            continue
        gap = gap_frames(gap_s, clip.fps)
        frames = resize_frames(clip.frames, image_size)
        for t in pair_indices(len(frames), gap)[::stride]:
            action_sum = None
            if clip.actions is not None:
                action_sum = clip.actions[t:t + gap].sum(axis=0).astype(np.float32)
            yield PairRecord(ref, clip_index, clip.ref.instruction, int(t), gap,
                             np.stack([frames[t], frames[t + gap]]), action_sum)
