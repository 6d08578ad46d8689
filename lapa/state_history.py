"""Proprio state history: the current state followed by the states some control ticks ago.

A model with `state_history` lags (ticks at the control rate, e.g. (3, 6, 12)) takes one flat state
vector of 8 * (1 + len(lags)) floats: [state now, state `lags[0]` ticks ago, ...], each in
lapa/action.py STATE_NAMES order. Before the episode has that many ticks, the oldest state it has
(its first) stands in, as the training data does at an episode's start.

Why: one image does not show everything a task needs. Once a pushed block moves with the gripper,
no single frame shows where the push started, so a policy has to guess when to stop; where the
arm was a second ago tells it.

Training data (`history_rows`), the closed-loop evaluation and the ROS node (`StateHistory`) build
the vector with these two functions, so all three agree on its layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lapa.action import STATE_DIM

MAX_LAG_TICKS = 100
MAX_LAGS = 16
MAX_STATE_FLOATS = STATE_DIM * (1 + MAX_LAGS)  # the longest state vector a request may carry


def check_lags(lags: Sequence[int]) -> tuple[int, ...]:
    """Validated lags: at most MAX_LAGS strictly increasing ints in 1..MAX_LAG_TICKS (ValueError otherwise)."""
    lags = tuple(lags)
    if len(lags) > MAX_LAGS:
        raise ValueError(f"at most {MAX_LAGS} state history lags, got {len(lags)}")
    if not all(isinstance(lag, int) and not isinstance(lag, bool) and 1 <= lag <= MAX_LAG_TICKS for lag in lags):
        raise ValueError(f"state history lags must be ints in 1..{MAX_LAG_TICKS}, got {lags!r}")
    if any(b <= a for a, b in zip(lags, lags[1:], strict=False)):
        raise ValueError(f"state history lags must be strictly increasing, got {lags!r}")
    return lags


def state_input_dim(lags: Sequence[int]) -> int:
    """Floats in the flat state vector of a model with these lags."""
    return STATE_DIM * (1 + len(lags))


def history_rows(rows: np.ndarray, episode_start: np.ndarray, lags: Sequence[int]) -> np.ndarray:
    """Frame rows (B,) and their episodes' first rows (B,) -> rows of [now, lag 1, ...] (B, 1 + H),
    clamped to the episode's first frame."""
    back = np.asarray((0, *lags), np.int64)  # (1 + H,)
    return np.maximum(rows[:, None] - back[None, :], episode_start[:, None])  # (B, 1 + H)


class StateHistory:
    """The states of the current episode, tick by tick; `push` returns the flat model input."""

    def __init__(self, lags: Sequence[int]) -> None:
        self.lags = check_lags(lags)
        self._states: list[np.ndarray] = []  # (8,) each, oldest first, at most max(lags) + 1

    def reset(self) -> None:
        """A new episode (or instruction): forget the past states."""
        self._states.clear()

    def push(self, state: np.ndarray) -> np.ndarray:
        """Record this tick's state (8,) -> float32 (8 * (1 + H),) [now, lag 1, ...]."""
        state = np.asarray(state, np.float32)
        if state.shape != (STATE_DIM,):
            raise ValueError(f"state must be ({STATE_DIM},), got {state.shape}")
        self._states.append(state)
        keep = (self.lags[-1] if self.lags else 0) + 1
        del self._states[:-keep]
        newest = len(self._states) - 1
        picked = [self._states[max(newest - lag, 0)] for lag in (0, *self.lags)]
        return np.concatenate(picked).astype(np.float32)
