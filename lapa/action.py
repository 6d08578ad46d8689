"""The standard action and proprio-state vectors (docs/design.md, conventions).

Action float32[7]: [dx, dy, dz] metres and [droll, dpitch, dyaw] radians in the robot base frame
(R_next = R_delta @ R_now), then the gripper target (1.0 open, 0.0 closed).
State float32[8]: EE xyz (m), EE roll/pitch/yaw (rad), then the gripper opening as its two finger
positions (m, each half the width when symmetric; the width is their sum), as LIBERO and
robosuite report it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ACTION_DIM = 7
STATE_DIM = 8
ACTION_NAMES = ("dx_m", "dy_m", "dz_m", "droll_rad", "dpitch_rad", "dyaw_rad", "gripper")
STATE_NAMES = ("x_m", "y_m", "z_m", "roll_rad", "pitch_rad", "yaw_rad", "finger_left_m", "finger_right_m")
GRIPPER_OPEN = 1.0
GRIPPER_CLOSED = 0.0


def validate_action(action) -> np.ndarray:
    """Return the action as float64 (7,), or raise ValueError saying what is wrong with it."""
    a = np.asarray(action, dtype=np.float64)
    if a.shape != (ACTION_DIM,):
        raise ValueError(f"action must have shape ({ACTION_DIM},), got {a.shape}")
    if not np.all(np.isfinite(a)):
        bad = [ACTION_NAMES[i] for i in np.flatnonzero(~np.isfinite(a))]
        raise ValueError(f"action has non-finite values in {bad}")
    return a


def gripper_is_open(command: float) -> bool:
    return command >= 0.5


def fake_state(batch: int = 1, seed: int | None = 0, dim: int = STATE_DIM) -> np.ndarray:
    """Random plausible proprio states, float32 (batch, dim) in STATE_NAMES order (warm-up, export parity).

    A gripper over a tabletop: xyz in [0.3, 0.7] x [-0.2, 0.2] x [0.02, 0.3] m, roll/pitch/yaw within
    0.3 rad of pointing down (pi, 0, 0), wrapped to [-pi, pi) (so roll sits on both sides of +-pi),
    gripper width in [0, 0.08] m split evenly over the two fingers. Random, never zeros: a parity
    check on a constant state would not exercise the state path. `dim` a multiple of 8: a state
    history (lapa/state_history.py), the past states a few centimetres from the current one.
    """
    if dim <= 0 or dim % STATE_DIM:
        raise ValueError(f"dim must be a positive multiple of {STATE_DIM}, got {dim}")
    rng = np.random.default_rng(seed)
    xyz = rng.uniform((0.3, -0.2, 0.02), (0.7, 0.2, 0.3), (batch, 3))
    rpy = np.array([np.pi, 0.0, 0.0]) + rng.uniform(-0.3, 0.3, (batch, 3))
    rpy = (rpy + np.pi) % (2 * np.pi) - np.pi
    half = rng.uniform(0.0, 0.08, (batch, 1)) / 2
    now = np.concatenate([xyz, rpy, half, half], axis=1)  # (batch, 8)
    past = [now + np.pad(rng.uniform(-0.05, 0.05, (batch, 3)), ((0, 0), (0, 5))) for _ in range(dim // STATE_DIM - 1)]
    return np.concatenate([now, *past], axis=1).astype(np.float32)


@dataclass(frozen=True)
class RobotState:
    """End-effector pose in the base frame and gripper opening."""

    ee_pos_m: np.ndarray  # (3,)
    ee_rpy_rad: np.ndarray  # (3,)
    gripper_width_m: float

    def as_vector(self) -> np.ndarray:
        """float32[8] in STATE_NAMES order."""
        half = self.gripper_width_m / 2
        return np.concatenate([self.ee_pos_m, self.ee_rpy_rad, [half, half]]).astype(np.float32)

    @classmethod
    def from_vector(cls, v: np.ndarray) -> RobotState:
        v = np.asarray(v, dtype=np.float64)
        if v.shape != (STATE_DIM,):
            raise ValueError(f"state must have shape ({STATE_DIM},), got {v.shape}")
        return cls(v[:3].copy(), v[3:6].copy(), float(v[6] + v[7]))
