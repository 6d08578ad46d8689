"""From the policy's action chunks (K actions per call) to one action per control tick.

Two ways to execute a chunk (the `chunk_mode` parameter of the ROS policy node, and `lapa eval
--chunk-mode`, so the evaluation in simulation executes chunks the way the robot does):

- `first_n`: execute the first n actions of the newest chunk, one per tick; a tick the newest
  chunk does not cover asks for a new one. n = 1 is plain closed-loop control (one model call
  per tick); a larger n calls the model less often and reacts later.
- `ensemble`: temporal ensembling (ACT): ask every tick; the action for a tick is the weighted
  mean of what every chunk covering that tick predicted for it, with weight
  exp(-decay * (ticks since that chunk's request)), so fresher predictions count more
  (ACT's own exp(-m i) with i = 0 the oldest favours older ones; with decay = 0 both are the
  plain mean). Smoother motion, one model call per tick.

A chunk is requested at a tick and its action i belongs to the i-th tick after that one (action 0
is executed as soon as the reply arrives). A reply that arrives during a later tick skips the
actions of the ticks already gone (latency compensation); in `first_n` its n ticks then count from
the tick it arrived in, so a model slower than one period still drives the arm.
Thread-safe: the inference thread adds chunks while the control thread takes actions.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from lapa.action import ACTION_DIM

CHUNK_MODES = ("first_n", "ensemble")
DEFAULT_ENSEMBLE_DECAY = 0.5
MAX_LIVE_CHUNKS = 16


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
    start_tick: int  # the tick it was requested at: action i is for tick start_tick + i
    chunk_id: int
    first_tick: int  # the first tick it may run (its arrival)


class ChunkExecutor:
    def __init__(self, mode: str = "first_n", n: int = 1, ensemble_decay: float = DEFAULT_ENSEMBLE_DECAY) -> None:
        if mode not in CHUNK_MODES:
            raise ValueError(f"chunk_mode must be one of {CHUNK_MODES}, got {mode!r}")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n (actions executed per chunk) must be an int >= 1, got {n!r}")
        if not (math.isfinite(ensemble_decay) and ensemble_decay >= 0):
            raise ValueError(f"ensemble_decay must be >= 0, got {ensemble_decay!r}")
        self.mode, self.n, self.decay = mode, n, float(ensemble_decay)
        self._lock = threading.Lock()
        self._chunks: list[_Chunk] = []
        self._next_id = 0

    def clear(self) -> None:
        """Forget every chunk (on a stop: resuming starts from fresh predictions)."""
        with self._lock:
            self._chunks.clear()

    def add_chunk(self, actions, obs_time_s: float, start_tick: int, arrival_tick: int | None = None) -> int:
        """Add a (K, 7) chunk requested at start_tick from an image taken at obs_time_s, arriving during
        arrival_tick (default: start_tick); returns its id."""
        a = np.asarray(actions, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != ACTION_DIM or a.shape[0] < 1:
            raise ValueError(f"a chunk must have shape (K, {ACTION_DIM}) with K >= 1, got {a.shape}")
        with self._lock:
            first = int(start_tick) if arrival_tick is None else max(int(start_tick), int(arrival_tick))
            chunk = _Chunk(a, float(obs_time_s), int(start_tick), self._next_id, first)
            self._next_id += 1
            if self.mode == "first_n":
                if not self._chunks or chunk.start_tick >= self._chunks[0].start_tick:
                    self._chunks = [chunk]
            else:
                self._chunks.append(chunk)
                del self._chunks[:-MAX_LIVE_CHUNKS]  # one request per tick never needs more
            return chunk.chunk_id

    def _end(self, c: _Chunk) -> int:
        """One past the last tick the chunk covers."""
        end = c.start_tick + len(c.actions)
        return min(end, c.first_tick + self.n) if self.mode == "first_n" else end

    def _covers(self, c: _Chunk, tick: int) -> bool:
        return c.first_tick <= tick < self._end(c)

    def action_for(self, tick: int) -> TickAction | None:
        """The action for this tick, or None when no chunk covers it."""
        with self._lock:
            self._chunks = [c for c in self._chunks if tick < self._end(c)]
            live = [c for c in self._chunks if self._covers(c, tick)]
            if not live:
                return None
            newest = max(live, key=lambda c: (c.start_tick, c.chunk_id))
            if self.mode == "first_n":
                i = tick - newest.start_tick
                return TickAction(newest.actions[i].copy(), newest.obs_time_s, newest.chunk_id, i)
            ages = np.array([tick - c.start_tick for c in live])  # ticks since each chunk's request
            weights = np.exp(-self.decay * ages)
            stacked = np.stack([c.actions[tick - c.start_tick] for c in live])  # (C, 7)
            mean = (weights[:, None] * stacked).sum(0) / weights.sum()
            return TickAction(mean, newest.obs_time_s, newest.chunk_id, tick - newest.start_tick)

    @property
    def waits_for_reply(self) -> bool:
        """Whether a tick's action waits for the chunk requested in that tick. Ensemble: yes, every
        action averages in the newest prediction (as ACT does, and as `lapa eval` steps); executing
        the older chunks at once would act on an image one control period older. first_n: a chunk
        that covers the tick runs at once."""
        return self.mode == "ensemble"

    def needs_request(self, tick: int) -> bool:
        """Whether this tick asks the model for a new chunk."""
        if self.mode == "ensemble":
            return True
        with self._lock:
            return not any(self._covers(c, tick) for c in self._chunks)
