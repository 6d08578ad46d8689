"""VLA training sets that stream their frames from disk, and batches prepared by DataLoader workers.

`streaming_action_set` builds the same `ActionSet` as `ActionSet.from_lerobot`, but reads only the
parquet side of each episode (task, actions, states: a few floats a frame) and leaves the frames
in the videos: `LazyClipFrames` decodes an episode when one of its samples is drawn.
`streaming_latent_set` does the same for stage 2's `LatentSet` over a label file (videos of a
Something-Something-v2 tree included). The clip lists come from the cached clip index
(lapa/data/clip_index.py), so 200k videos are listed once.

`StepLoader` runs the stage's `batch(step)` (draw the step's global batch from its own RNG, keep
this rank's slices, augment) in `workers` DataLoader processes, several steps ahead: decoding
overlaps training, and the batch of a step is still a function of the seed and the step alone,
so resume stays exact.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lapa.action import STATE_DIM
from lapa.data.frame_pairs import ClipCatalog
from lapa.data.lazy_frames import LazyClipFrames
from lapa.errors import UserError
from lapa.laq.labels import read_labels
from lapa.policy.datasets import ActionSet, ClipFrames, LatentSet


def streaming_clips(keys: Sequence[tuple[str, int]], image_size: int,
                    lengths: Mapping[tuple[str, int], int] | None = None,
                    index_cache: bool | str | os.PathLike | None = True) -> ClipFrames:
    """ClipFrames of the clips `keys` ((dataset root, clip index), as `load_clips` takes them) whose frames
    decode on demand. LeRobot episodes bring their length, task, actions and states from the parquet
    files; a video folder's clip needs its length (frames used) in `lengths`, since only decoding tells."""
    roots = list(dict.fromkeys(root for root, _ in keys))
    catalog = ClipCatalog(roots, index_cache=index_cache)
    first: dict[str, int] = {}  # position of each root's first clip in catalog.refs
    for position, ref in enumerate(catalog.refs):
        first.setdefault(ref.source, position)
    positions, n_frames, instructions, actions, states = [], [], [], [], []
    for root, index in keys:
        position = first[str(root)] + index
        ref = catalog.refs[position] if position < len(catalog.refs) else None
        if ref is None or ref.source != str(root) or ref.index != index:
            raise UserError(f"{root} has no clip {index}")
        if ref.kind == "lerobot":
            labels = catalog.episode_labels(ref)
            T, text = len(labels.timestamps), labels.task
            acts = None if labels.actions is None else np.asarray(labels.actions, np.float32)
            st = None if labels.states is None else np.asarray(labels.states, np.float32)
        else:
            if lengths is None or (root, index) not in lengths:
                raise UserError(f"{root} clip {index}: a video clip's length is known only after decoding it")
            T, text, acts, st = int(lengths[(root, index)]), ref.instruction, None, None
        positions.append(position)
        n_frames.append(T)
        instructions.append(text)
        actions.append(acts)
        states.append(st)
    offsets = np.concatenate([[0], np.cumsum(n_frames)]).astype(np.int64)  # (C + 1,)
    frames = LazyClipFrames(catalog, positions, offsets, image_size)
    all_states = None
    if all(s is not None and s.shape == (n, STATE_DIM) for s, n in zip(states, n_frames, strict=True)):
        all_states = np.concatenate(states)  # (F, 8)
    return ClipFrames(frames, offsets, instructions, [(str(r), i) for r, i in keys], actions,  # type: ignore[arg-type]
                      all_states)


def streaming_action_set(roots: Sequence[str | os.PathLike], image_size: int, chunk_size: int, encoder: Any,
                         paraphrase: bool | str = False,
                         index_cache: bool | str | os.PathLike | None = True) -> ActionSet:
    """`ActionSet.from_lerobot` with frames left on disk until a batch needs them."""
    catalog = ClipCatalog([str(r) for r in roots], index_cache=index_cache)
    keys = [(ref.source, ref.index) for ref in catalog.refs]
    clips = streaming_clips(keys, image_size, index_cache=index_cache)
    missing = [k for k, a in zip(clips.keys, clips.actions, strict=True) if a is None]
    if missing:
        raise UserError(f"{missing[0][0]} has no actions: a LeRobot dataset with actions is needed")
    return ActionSet(clips, clips.actions, chunk_size, encoder, paraphrase=paraphrase)  # type: ignore[arg-type]


def streaming_latent_set(labels_path: str | os.PathLike, image_size: int, encoder: Any,
                         index_cache: bool | str | os.PathLike | None = True) -> LatentSet:
    """`LatentSet` whose frames stay in the videos (Something-Something-v2 scale): a labelled clip's
    length is taken from the label file (its last labelled frame + gap), so nothing is decoded up front."""
    labels = read_labels(labels_path)
    lengths: dict[tuple[str, int], int] = {}
    for src, clip, t, gap in zip(labels.sources.tolist(), labels.clip_index.tolist(), labels.frame_index.tolist(),
                                 labels.gap.tolist(), strict=True):
        lengths[(src, clip)] = max(lengths.get((src, clip), 0), int(t) + int(gap) + 1)

    def load(keys: Sequence[tuple[str, int]], size: int, progress: bool = False) -> ClipFrames:
        return streaming_clips(keys, size, lengths, index_cache)

    return LatentSet(labels_path, image_size, encoder, load=load)


class _Steps(Dataset):
    def __init__(self, make: Callable[[int], Any]) -> None:
        self.make = make

    def __getitem__(self, step: int) -> tuple[int, Any]:
        return step, self.make(step)


class StepLoader:
    """`make(step)` for steps start, start+1, ... computed by `workers` processes ahead of the training."""

    def __init__(self, make: Callable[[int], Any], start: int, stop: int, workers: int, prefetch: int = 4) -> None:
        self.loader = DataLoader(_Steps(make), batch_size=None, sampler=range(start, stop), num_workers=workers,
                                 prefetch_factor=prefetch, persistent_workers=False,
                                 collate_fn=_identity, worker_init_fn=_one_thread)
        self._it: Iterator[tuple[int, Any]] | None = None

    def get(self, step: int) -> Any:
        if self._it is None:
            self._it = iter(self.loader)
        got, value = next(self._it)
        if got != step:
            raise RuntimeError(f"the step loader is at step {got}, the training at {step}")
        return value


def _identity(x: Any) -> Any:
    return x


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # the worker's augmentation must not compete with the training threads
