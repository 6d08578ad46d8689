"""From the policy's action chunks (K actions per call) to one action per control tick.

Two ways to execute a chunk (the `chunk_mode` parameter of the policy node):

- `first_n`: execute the first n actions of the newest chunk, one per tick, then ask for a new
  chunk (the node asks as soon as the last one is taken, so a reply arriving within one period
  leaves no gap). n = 1 is plain closed-loop control; a larger n queries the model less often.
- `ensemble`: temporal ensembling (ACT): ask every tick; the action for a tick is the weighted
  mean of what every chunk still covering that tick predicted for it, with weight
  exp(-decay * (ticks since that chunk arrived)), so fresher predictions count more
  (ACT's own exp(-m i) with i = 0 the oldest favours older ones; with decay = 0 both are the
  plain mean). It smooths the motion at the price of one model call per tick.

Ticks are counted by `next_action()` calls; a chunk added between two ticks starts at the next.
Thread-safe: the inference thread adds chunks while the control thread takes actions.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from lapa.action import ACTION_DIM

CHUNK_MODES = ("first_n", "ensemble")


@dataclass(frozen=True)
class TickAction:
    action: np.ndarray  # float64 (7,)
    obs_time_s: float  # when the newest contributing chunk's observation (image) was taken
    chunk_id: int  # the newest contributing chunk
    index: int  # position of the action in that chunk


@dataclass
class _Chunk:
    actions: np.ndarray  # (K, 7)
    obs_time_s: float
    start_tick: int
    chunk_id: int


class ChunkExecutor:
    def __init__(self, mode: str = "first_n", n: int = 1, ensemble_decay: float = 0.5) -> None:
        if mode not in CHUNK_MODES:
            raise ValueError(f"chunk_mode must be one of {CHUNK_MODES}, got {mode!r}")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n (actions executed per chunk) must be an int >= 1, got {n!r}")
        if not (math.isfinite(ensemble_decay) and ensemble_decay >= 0):
            raise ValueError(f"ensemble_decay must be >= 0, got {ensemble_decay!r}")
        self.mode, self.n, self.decay = mode, n, float(ensemble_decay)
        self._lock = threading.Lock()
        self._chunks: list[_Chunk] = []
        self._tick = 0
        self._next_id = 0

    def clear(self) -> None:
        """Forget every chunk (on a stop: resuming starts from fresh predictions)."""
        with self._lock:
            self._chunks.clear()

    def add_chunk(self, actions, obs_time_s: float) -> int:
        """Add a (K, 7) chunk predicted from an observation taken at obs_time_s; returns its id."""
        a = np.asarray(actions, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != ACTION_DIM or a.shape[0] < 1:
            raise ValueError(f"a chunk must have shape (K, {ACTION_DIM}) with K >= 1, got {a.shape}")
        with self._lock:
            chunk = _Chunk(a, float(obs_time_s), self._tick, self._next_id)
            self._next_id += 1
            if self.mode == "first_n":
                self._chunks = [chunk]
            else:
                self._chunks.append(chunk)
            return chunk.chunk_id

    def next_action(self) -> TickAction | None:
        """The action for this tick (None: nothing to execute) and advance the tick."""
        with self._lock:
            t = self._tick
            self._tick += 1
            if self.mode == "first_n":
                if not self._chunks:
                    return None
                c = self._chunks[0]
                i = t - c.start_tick
                if i >= min(self.n, len(c.actions)):
                    self._chunks.clear()
                    return None
                return TickAction(c.actions[i].copy(), c.obs_time_s, c.chunk_id, i)
            self._chunks = [c for c in self._chunks if t - c.start_tick < len(c.actions)]
            if not self._chunks:
                return None
            ages = np.array([t - c.start_tick for c in self._chunks])  # ticks since each chunk arrived
            weights = np.exp(-self.decay * ages)
            stacked = np.stack([c.actions[t - c.start_tick] for c in self._chunks])  # (C, 7)
            mean = (weights[:, None] * stacked).sum(0) / weights.sum()
            newest = max(self._chunks, key=lambda c: c.start_tick)
            return TickAction(mean, newest.obs_time_s, newest.chunk_id, t - newest.start_tick)

    def remaining(self) -> int:
        """Actions left for the coming ticks from the newest chunk (what `first_n` would still run)."""
        with self._lock:
            if not self._chunks:
                return 0
            c = self._chunks[-1]
            limit = min(self.n, len(c.actions)) if self.mode == "first_n" else len(c.actions)
            return max(0, limit - (self._tick - c.start_tick))

    def wants_request(self) -> bool:
        """Whether the node should ask for a new chunk now (after taking this tick's action)."""
        return self.mode == "ensemble" or self.remaining() == 0
