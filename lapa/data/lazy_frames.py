"""Frames of many clips as one array-like indexed by row, decoded from disk when a row is asked for.

`LazyClipFrames[rows]` behaves like `frames[rows]` on the (F, S, S, 3) uint8 array an in-memory
training set holds (clip c owns rows offsets[c] .. offsets[c+1]-1), but keeps only the newest
`cache_clips` decoded clips: a corpus of any size trains in the memory of a few clips per
DataLoader worker. A clip that cannot be decoded gives black frames, once logged and counted in
`skipped`, so one corrupt file never stops a long run.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import numpy as np

from lapa.data.frame_pairs import ClipCatalog, resize_frames
from lapa.data.video_io import VideoReadError
from lapa.errors import UserError

log = logging.getLogger(__name__)


class LazyClipFrames:
    def __init__(self, catalog: ClipCatalog, clip_positions: Sequence[int], offsets: np.ndarray, image_size: int,
                 cache_clips: int = 16) -> None:
        """`clip_positions[c]`: clip c's position in `catalog.refs`; `offsets` (C + 1,) its rows."""
        self.catalog = catalog
        self.positions = list(clip_positions)
        self.offsets = np.asarray(offsets, np.int64)
        self.image_size = image_size
        self.cache_clips = cache_clips
        self.skipped = 0  # clips that could not be decoded (this process)
        self._bad: set[int] = set()
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._only: np.ndarray | None = None

    @contextlib.contextmanager
    def only(self, wanted: np.ndarray) -> Iterator[None]:
        """Within the block, a lookup of len(wanted) rows decodes only the positions where `wanted` (bool) is
        True and gives black frames elsewhere: a rank that draws the global batch of a step but trains on
        its own slices decodes only those."""
        self._only = np.asarray(wanted, bool)
        try:
            yield
        finally:
            self._only = None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return int(self.offsets[-1]), self.image_size, self.image_size, 3

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def clip(self, c: int) -> np.ndarray:
        """Clip c's frames (T_c, S, S, 3) uint8, from the cache or decoded now."""
        if c in self._cache:
            self._cache.move_to_end(c)
            return self._cache[c]
        T = int(self.offsets[c + 1] - self.offsets[c])
        frames = None
        if c not in self._bad:
            ref = self.catalog.refs[self.positions[c]]
            try:
                decoded = resize_frames(self.catalog.read(ref).frames, self.image_size)
                if len(decoded) >= T:
                    frames = decoded[:T]
                else:
                    raise VideoReadError(f"{len(decoded)} frames decoded, the index says {T}")
            except (VideoReadError, UserError, OSError) as err:
                self._bad.add(c)
                self.skipped += 1
                log.warning("skipping unreadable clip %s #%d (black frames; %d skipped so far): %s",
                            ref.source, ref.index, self.skipped, err)
        if frames is None:
            frames = np.zeros((T, self.image_size, self.image_size, 3), np.uint8)
        self._cache[c] = frames
        if len(self._cache) > self.cache_clips:
            self._cache.popitem(last=False)
        return frames

    def __getitem__(self, rows: np.ndarray | int) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        flat = rows.reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= len(self)):
            raise IndexError(f"rows outside 0..{len(self) - 1}")
        clips = np.searchsorted(self.offsets, flat, side="right") - 1  # (N,) clip of each row
        out = np.zeros((flat.size, self.image_size, self.image_size, 3), np.uint8)  # (N, S, S, 3)
        wanted = self._only if self._only is not None and len(self._only) == flat.size else np.ones(flat.size, bool)
        for c in np.unique(clips[wanted]):  # each clip decoded once per call
            here = (clips == c) & wanted
            out[here] = self.clip(int(c))[flat[here] - self.offsets[c]]
        return out.reshape(*rows.shape, self.image_size, self.image_size, 3)
