"""Actions <-> discrete tokens for the action head, as in LAPA's finetuning stage.

Continuous dimensions (dx, dy, dz, droll, dpitch, dyaw): per-dimension *quantile* bins fitted on
the finetuning actions, so every bin holds about the same share of the data and the resolution
goes where the actions are. The edges are the quantiles at levels linspace(clip, 1 - clip,
num_bins + 1) with clip = 1%: the outer 1% on each side falls into the end bins, so a rare outlier
can neither stretch an end bin nor decode to a large action. A token decodes to its bin's
midpoint; any value inside [q01, q99] round-trips within half its bin's width. Repeated values
(e.g. a dimension that is always 0) give zero-width bins that decode exactly.

Gripper (last dimension, an absolute target, 1.0 open / 0.0 closed): binary, written with the
same vocabulary so that every action token has `num_bins` classes: closed -> bin 0, open ->
bin num_bins - 1 (encode thresholds at 0.5). Decoding splits the vocabulary in halves: bins
< num_bins / 2 -> 0.0, the rest -> 1.0, so an argmax over all bins always decodes to 0 or 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lapa.action import ACTION_DIM, ACTION_NAMES

GRIPPER_INDEX = ACTION_DIM - 1
NUM_CONTINUOUS = ACTION_DIM - 1


class ActionTokenizer:
    """Fit with `fit(actions)` (or `ActionTokenizer.fit_new`), then `encode` / `decode`."""

    def __init__(self, num_bins: int = 256, clip_quantile: float = 0.01) -> None:
        if not isinstance(num_bins, int) or num_bins < 2 or num_bins % 2:
            raise ValueError(f"num_bins must be an even int >= 2, got {num_bins!r}")
        if not 0.0 <= clip_quantile < 0.5:
            raise ValueError(f"clip_quantile must be in [0, 0.5), got {clip_quantile}")
        self.num_bins = num_bins
        self.clip_quantile = float(clip_quantile)
        self.edges: np.ndarray | None = None  # (6, num_bins + 1) float64, non-decreasing per row
        self.stats: dict[str, list[float]] = {}  # per-dim q01 / q99 / min / max / mean / std, 7 each
        self.num_samples = 0

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit_new(cls, actions: np.ndarray, num_bins: int = 256, clip_quantile: float = 0.01) -> ActionTokenizer:
        return cls(num_bins, clip_quantile).fit(actions)

    def fit(self, actions: np.ndarray) -> ActionTokenizer:
        """Fit the bins on finetuning actions (N, 7) (or (..., 7), flattened). Returns self."""
        a = np.asarray(actions, dtype=np.float64)
        if a.ndim < 1 or a.shape[-1] != ACTION_DIM:
            raise ValueError(f"actions must have shape (N, {ACTION_DIM}), got {a.shape}")
        a = a.reshape(-1, ACTION_DIM)  # (N, 7)
        if a.shape[0] < 2:
            raise ValueError(f"need at least 2 actions to fit the bins, got {a.shape[0]}")
        if not np.all(np.isfinite(a)):
            raise ValueError("actions contain non-finite values")
        levels = np.linspace(self.clip_quantile, 1.0 - self.clip_quantile, self.num_bins + 1)
        edges = np.quantile(a[:, :NUM_CONTINUOUS], levels, axis=0).T  # (6, num_bins + 1)
        self.edges = np.maximum.accumulate(edges, axis=1)  # guard against float round-off
        self.stats = {
            "q01": np.quantile(a, 0.01, axis=0).tolist(),
            "q99": np.quantile(a, 0.99, axis=0).tolist(),
            "min": a.min(axis=0).tolist(),
            "max": a.max(axis=0).tolist(),
            "mean": a.mean(axis=0).tolist(),
            "std": a.std(axis=0).tolist(),
        }
        self.num_samples = int(a.shape[0])
        return self

    @property
    def is_fitted(self) -> bool:
        return self.edges is not None

    def _require_fitted(self) -> np.ndarray:
        if self.edges is None:
            raise RuntimeError("ActionTokenizer is not fitted: call fit(actions) first")
        return self.edges

    # ------------------------------------------------------------------ derived tables
    def bin_centers(self) -> np.ndarray:
        """(7, num_bins) float32: the value each token of each dimension decodes to."""
        edges = self._require_fitted()
        centers = np.empty((ACTION_DIM, self.num_bins), dtype=np.float64)
        centers[:NUM_CONTINUOUS] = 0.5 * (edges[:, :-1] + edges[:, 1:])  # (6, num_bins)
        centers[GRIPPER_INDEX] = (np.arange(self.num_bins) >= self.num_bins // 2).astype(np.float64)
        return centers.astype(np.float32)

    def bin_widths(self) -> np.ndarray:
        """(6, num_bins) widths of the continuous dimensions' bins."""
        edges = self._require_fitted()
        return np.diff(edges, axis=1)

    # ------------------------------------------------------------------ encode / decode
    def encode(self, actions: np.ndarray) -> np.ndarray:
        """Actions (..., 7) -> int64 bins (..., 7) in [0, num_bins)."""
        edges = self._require_fitted()
        a = np.asarray(actions, dtype=np.float64)
        if a.ndim < 1 or a.shape[-1] != ACTION_DIM:
            raise ValueError(f"actions must have shape (..., {ACTION_DIM}), got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError("actions contain non-finite values")
        bins = np.empty(a.shape, dtype=np.int64)
        for d in range(NUM_CONTINUOUS):
            # bin i holds [edges[i], edges[i+1]); below / above the range -> the end bins
            right = np.searchsorted(edges[d, 1:-1], a[..., d], side="right")
            left = np.searchsorted(edges[d, 1:-1], a[..., d], side="left")
            # a value repeated in the data owns a run of zero-width bins [x, x]: take the middle one,
            # so it decodes exactly (e.g. dz == 0 while the arm moves in the plane)
            bins[..., d] = np.where(right - left >= 2, (left + right) // 2, right)
        bins[..., GRIPPER_INDEX] = np.where(a[..., GRIPPER_INDEX] >= 0.5, self.num_bins - 1, 0)
        return bins

    def decode(self, bins: np.ndarray) -> np.ndarray:
        """int bins (..., 7) -> float32 actions (..., 7); each token decodes to its bin's midpoint."""
        b = np.asarray(bins)
        if b.ndim < 1 or b.shape[-1] != ACTION_DIM or not np.issubdtype(b.dtype, np.integer):
            raise ValueError(f"bins must be integers of shape (..., {ACTION_DIM}), got {b.dtype} {b.shape}")
        if b.size and (b.min() < 0 or b.max() >= self.num_bins):
            raise ValueError(f"bins must lie in [0, {self.num_bins}), got [{b.min()}, {b.max()}]")
        centers = self.bin_centers()  # (7, num_bins)
        return centers[np.arange(ACTION_DIM), b]  # (..., 7) float32

    # ------------------------------------------------------------------ serialisation (config.json)
    def to_dict(self) -> dict[str, Any]:
        edges = self._require_fitted()
        return {
            "type": "quantile_bins",
            "num_bins": self.num_bins,
            "clip_quantile": self.clip_quantile,
            "gripper": "binary: closed -> bin 0, open -> bin num_bins-1; decode bin >= num_bins/2 -> 1.0",
            "dims": list(ACTION_NAMES),
            "num_samples": self.num_samples,
            "edges": {ACTION_NAMES[d]: edges[d].tolist() for d in range(NUM_CONTINUOUS)},
            "stats": {k: list(v) for k, v in self.stats.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ActionTokenizer:
        try:
            if data.get("type") != "quantile_bins":
                raise ValueError(f"unknown action tokenizer type {data.get('type')!r}")
            tok = cls(int(data["num_bins"]), float(data["clip_quantile"]))
            edges = np.array([data["edges"][name] for name in ACTION_NAMES[:NUM_CONTINUOUS]], dtype=np.float64)
            stats = {k: [float(x) for x in v] for k, v in data.get("stats", {}).items()}
            num_samples = int(data.get("num_samples", 0))
        except (KeyError, TypeError) as err:
            raise ValueError(f"malformed action tokenizer: {err!r}") from err
        if edges.shape != (NUM_CONTINUOUS, tok.num_bins + 1):
            raise ValueError(f"action tokenizer edges must be {NUM_CONTINUOUS} x {tok.num_bins + 1}, "
                             f"got {edges.shape}")
        if not np.all(np.isfinite(edges)) or np.any(np.diff(edges, axis=1) < 0):
            raise ValueError("action tokenizer edges must be finite and non-decreasing")
        tok.edges, tok.stats, tok.num_samples = edges, stats, num_samples
        return tok

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ActionTokenizer):
            return NotImplemented
        return self.to_dict() == other.to_dict() if self.is_fitted and other.is_fitted else self is other

    def __repr__(self) -> str:
        state = f"fitted on {self.num_samples}" if self.is_fitted else "unfitted"
        return f"ActionTokenizer(num_bins={self.num_bins}, {state})"
