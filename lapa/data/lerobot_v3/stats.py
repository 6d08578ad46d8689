"""The per-feature statistics of meta/stats.json and of each episode row, as lerobot computes them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lapa.data.lerobot_v3.layout import QUANTILES


def channel_histograms(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (3, 256) int64 pixel-value counts per channel.

    Histograms give exact image statistics (min, max, mean, std, quantiles) and add up across
    episodes, so dataset-level stats are exact without keeping the frames.
    """
    return np.stack([np.bincount(frames[..., c].reshape(-1), minlength=256) for c in range(3)])


def histogram_stats(hist: np.ndarray, count: int) -> dict[str, np.ndarray]:
    """Per-channel stats in [0, 1], each shaped (3, 1, 1) like lerobot's; `count` is frames."""
    values = np.arange(256, dtype=np.float64) / 255.0
    out: dict[str, list[float]] = {k: [] for k in ("min", "max", "mean", "std", *QUANTILES)}
    for h in hist:  # (256,)
        n = h.sum()
        nonzero = np.flatnonzero(h)
        mean = float((h * values).sum() / n)
        out["min"].append(values[nonzero[0]])
        out["max"].append(values[nonzero[-1]])
        out["mean"].append(mean)
        out["std"].append(math.sqrt(max(float((h * (values - mean) ** 2).sum() / n), 0.0)))
        cdf = np.cumsum(h)
        for name, q in QUANTILES.items():
            # numpy's default ("linear") quantile, evaluated on the histogram
            pos = q * (n - 1)
            lo_rank, frac = int(math.floor(pos)), pos - math.floor(pos)
            lo = values[np.searchsorted(cdf, lo_rank, side="right")]
            hi = values[np.searchsorted(cdf, min(lo_rank + 1, n - 1), side="right")]
            out[name].append(lo + frac * (hi - lo))
    stats = {k: np.asarray(v, dtype=np.float64).reshape(3, 1, 1) for k, v in out.items()}
    stats["count"] = np.asarray([count], dtype=np.int64)
    return stats


def array_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """Stats over rows of x (N,) or (N, D), each (D,) float64 (D = 1 for scalars)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    stats = {
        "min": x.min(axis=0),
        "max": x.max(axis=0),
        "mean": x.mean(axis=0),
        "std": x.std(axis=0),
        "count": np.asarray([len(x)], dtype=np.int64),
    }
    qs = np.quantile(x, list(QUANTILES.values()), axis=0)  # (5, D)
    stats.update({name: qs[i] for i, name in enumerate(QUANTILES)})
    return stats


STAT_ORDER = ("min", "max", "mean", "std", "count", *QUANTILES)


def stats_to_json(stats: dict[str, np.ndarray]) -> dict[str, Any]:
    return {k: stats[k].tolist() for k in STAT_ORDER}
