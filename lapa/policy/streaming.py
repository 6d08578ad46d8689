"""Action training sets that stream their frames from disk, and batches prepared by DataLoader workers.

`streaming_action_set` builds the same `ActionSet` as `ActionSet.from_lerobot`, but reads only the
parquet side of each episode (task, actions, states: a few floats a frame) and leaves the frames
in the videos: `LazyClipFrames` decodes an episode when one of its samples is drawn. The clip list
comes from the cached clip index (lapa/data/clip_index.py), so 200k episodes are listed once.

`StepLoader` runs the stage's `batch(step)` (draw the step's global batch from its own RNG, keep
this rank's slices, augment) in `workers` DataLoader processes, several steps ahead: decoding
overlaps training, and the batch of a step is still a function of the seed and the step alone,
so resume stays exact.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lapa.data.frame_pairs import ClipCatalog
from lapa.data.lazy_frames import LazyClipFrames
from lapa.errors import UserError
from lapa.policy.datasets import ActionSet, ClipFrames


def streaming_clips(roots: Sequence[str | os.PathLike], image_size: int,
                    index_cache: bool | str | os.PathLike | None = True) -> ClipFrames:
    """Every episode of these LeRobot v3 datasets as ClipFrames whose frames decode on demand."""
    catalog = ClipCatalog([str(r) for r in roots], index_cache=index_cache)
    lengths, instructions, keys, actions, states = [], [], [], [], []
    for ref in catalog.refs:
        labels = catalog.episode_labels(ref)
        if labels.actions is None:
            raise UserError(f"{ref.source} has no actions: a LeRobot dataset with actions is needed")
        lengths.append(len(labels.timestamps))
        instructions.append(labels.task)
        keys.append((ref.source, ref.index))  # an episode's position in its own dataset
        actions.append(np.asarray(labels.actions, np.float32))
        states.append(None if labels.states is None else np.asarray(labels.states, np.float32))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # (C + 1,)
    frames = LazyClipFrames(catalog, range(len(catalog.refs)), offsets, image_size)
    all_states = None
    if all(s is not None and s.shape == (n, 8) for s, n in zip(states, lengths, strict=True)):
        all_states = np.concatenate(states)  # (F, 8)
    return ClipFrames(frames, offsets, instructions, keys, actions, all_states)  # type: ignore[arg-type]


def streaming_action_set(roots: Sequence[str | os.PathLike], image_size: int, chunk_size: int, encoder: Any,
                         paraphrase: bool | str = False,
                         index_cache: bool | str | os.PathLike | None = True) -> ActionSet:
    """`ActionSet.from_lerobot` with frames left on disk until a batch needs them."""
    clips = streaming_clips(roots, image_size, index_cache)
    return ActionSet(clips, clips.actions, chunk_size, encoder, paraphrase=paraphrase)  # type: ignore[arg-type]


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
