"""What one fault run measured, from the records of `bench.fault_stack.Trace` (plain numpy).

Times are the bench's monotonic clock (when a scene or command was sent); the TCP's own motion is judged on franky-sim's
simulated clock (`sim_t`), which runs slower than real time on a busy machine.
"""

from __future__ import annotations

import numpy as np

REST_SPEED_M_S = 0.005  # the arm is at rest once the TCP stays slower than this
MOVING_SPEED_M_S = 0.01  # the arm counts as moving at the fault above this


def _arrays(tcp: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not tcp:
        return np.zeros(0), np.zeros(0), np.zeros((0, 3))
    t = np.asarray([r[0] for r in tcp])
    sim = np.asarray([r[1] for r in tcp])
    pos = np.stack([r[2] for r in tcp])  # (N, 3)
    return t, sim, pos


def speeds(sim: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """TCP speed between consecutive samples (m/s of simulated time); (N-1,)."""
    dt = np.diff(sim)
    d = np.linalg.norm(np.diff(pos, axis=0), axis=1)
    return np.where(dt > 1e-6, d / np.maximum(dt, 1e-6), 0.0)


def speed_at(tcp: list, t_s: float, span_s: float = 0.15, max_span_s: float = 0.5) -> float | None:
    """Mean TCP speed over the samples in [t_s - span_s, t_s]; where a busy machine left fewer than
    two there, over the last two samples before t_s if they lie within max_span_s."""
    t, sim, pos = _arrays(tcp)
    idx = np.flatnonzero((t >= t_s - span_s) & (t <= t_s))
    if len(idx) < 2:
        idx = np.flatnonzero((t >= t_s - max_span_s) & (t <= t_s))[-2:]
    if len(idx) < 2 or sim[idx[-1]] - sim[idx[0]] <= 0:
        return None
    return float(np.linalg.norm(pos[idx[-1]] - pos[idx[0]]) / (sim[idx[-1]] - sim[idx[0]]))


def rest_time(tcp: list, t_from: float, t_to: float) -> float | None:
    """The time after which the TCP stays at rest until t_to; None if it never settles."""
    t, sim, pos = _arrays(tcp)
    idx = np.flatnonzero((t >= t_from) & (t <= t_to))
    if len(idx) < 3:
        return None
    v = speeds(sim[idx], pos[idx])  # v[k]: between samples k and k+1
    moving = np.flatnonzero(v >= REST_SPEED_M_S)
    if len(moving) == 0:
        return float(t[idx[0]])
    k = int(moving[-1]) + 1  # the first sample after the last motion
    if k >= len(idx) - 1:
        return None  # still moving at the end of the window
    return float(t[idx[k]])


def travel(tcp: list, t_from: float, t_to: float) -> float:
    """Path length of the TCP between two times (m)."""
    t, _, pos = _arrays(tcp)
    idx = np.flatnonzero((t >= t_from) & (t <= t_to))
    if len(idx) < 2:
        return 0.0
    return float(np.linalg.norm(np.diff(pos[idx], axis=0), axis=1).sum())


def max_period_displacement(tcp: list, period_s: float) -> float:
    """Largest TCP displacement over any one control period of simulated time (m): between each
    sample and the first one at least a period later, scaled to exactly one period."""
    _, sim, pos = _arrays(tcp)
    if len(sim) < 2:
        return 0.0
    best = 0.0
    j = 0
    for i in range(len(sim)):
        while j < len(sim) - 1 and sim[j] < sim[i] + period_s - 1e-6:
            j += 1
        span = sim[j] - sim[i]
        if span > 1.5 * period_s or span < period_s - 1e-6:  # a gap in the samples, or the end
            continue
        best = max(best, float(np.linalg.norm(pos[j] - pos[i])) * period_s / span)
    return best


def max_commanded_step(steps: list) -> float:
    """Largest translation of an executed command (m)."""
    return max((float(np.linalg.norm(a[:3])) for _, a in steps), default=0.0)


def commands_between(steps: list, t0: float, t1: float) -> int:
    return sum(1 for t, _ in steps if t0 < t <= t1)


def latched_state(statuses: list, t0: float, t1: float) -> dict | None:
    """The last /lapa/status received in [t0, t1]."""
    inside = [s for t, s in statuses if t0 <= t <= t1]
    return inside[-1] if inside else None


def status_matches(status: dict | None, states: tuple[str, ...], reason: str | None) -> bool:
    if status is None or status.get("state") not in states:
        return False
    return reason is None or reason.lower() in str(status.get("reason", "")).lower()


def percentile(values: list, q: float) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(np.percentile(values, q)), 5) if values else None
