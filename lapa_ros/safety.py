"""The safety filter between the policy and the robot (plain Python, no ROS).

Every control tick the policy node hands it the candidate action, the measured robot state and
the ages of its inputs; it returns the action to execute or a stop with a reason:

1. Freshness: the newest camera image, the action (the age of the image it was computed from)
   and the last word from the policy server must be younger than their limits. A stale input is
   a *hold*: nothing is sent and the arm decelerates to rest; motion resumes by itself once
   fresh inputs arrive, from wherever the arm then is (actions are deltas from the measured pose).
2. Validity: a non-finite or misshapen action is a *fault*: it latches. So do robot errors and
   the emergency stop (`latch`). Only `release()` (the node's start service) clears a fault.
3. Clamps: the translation and rotation of one step are scaled down to their per-step limits
   (so no step can jump), the end effector's target is kept inside the workspace box (an arm
   already outside may only move back towards it: the filter never adds motion of its own),
   and the gripper command goes through a hysteresis (open above `gripper_open_above`, closed
   below `gripper_close_below`, otherwise it keeps its last state), so a policy hovering around
   0.5 cannot chatter the fingers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lapa.action import ACTION_DIM, GRIPPER_CLOSED, GRIPPER_OPEN, RobotState
from lapa.geometry import axis_angle_to_matrix, matrix_to_rpy, rotation_error, rpy_to_matrix

# Verdict kinds
OK = "ok"
HOLD = "hold"  # stale input: send nothing this tick, resume by itself
FAULT = "fault"  # latched until release()


@dataclass(frozen=True)
class SafetyLimits:
    """Limits of the filter. Units in the names; the box is in the robot base frame."""

    max_step_translation_m: float = 0.03  # per control step (0.3 m/s at 10 Hz)
    max_step_rotation_rad: float = 0.2  # per control step, axis-angle magnitude
    workspace_min_m: tuple[float, float, float] = (0.25, -0.35, 0.005)
    workspace_max_m: tuple[float, float, float] = (0.80, 0.35, 0.45)
    gripper_close_below: float = 0.3
    gripper_open_above: float = 0.7
    max_image_age_s: float = 0.5
    max_action_age_s: float = 0.6
    max_server_age_s: float = 1.0

    def __post_init__(self) -> None:
        for name in ("max_step_translation_m", "max_step_rotation_rad", "max_image_age_s", "max_action_age_s",
                     "max_server_age_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        lo, hi = np.asarray(self.workspace_min_m, float), np.asarray(self.workspace_max_m, float)
        if lo.shape != (3,) or hi.shape != (3,) or not np.all(np.isfinite(lo)) or not np.all(np.isfinite(hi)):
            raise ValueError("workspace_min_m and workspace_max_m must be three finite numbers each")
        if np.any(lo >= hi):
            raise ValueError(f"workspace_min_m {tuple(lo)} must be below workspace_max_m {tuple(hi)} on every axis")
        if not 0.0 <= self.gripper_close_below <= self.gripper_open_above <= 1.0:
            raise ValueError("need 0 <= gripper_close_below <= gripper_open_above <= 1, got "
                             f"{self.gripper_close_below}, {self.gripper_open_above}")


@dataclass(frozen=True)
class Verdict:
    """What to do this tick. `action` is float64 (7,) when kind == OK, else None."""

    kind: str
    reason: str
    action: np.ndarray | None = None
    clamped: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.kind == OK


class SafetyFilter:
    """Stateful (gripper hysteresis, latched fault); one per robot. Not thread-safe: one caller."""

    def __init__(self, limits: SafetyLimits | None = None) -> None:
        self.limits = limits or SafetyLimits()
        self._lo = np.asarray(self.limits.workspace_min_m, float)
        self._hi = np.asarray(self.limits.workspace_max_m, float)
        self._gripper_open: bool | None = None  # None: take the first command as it is
        self.fault: str | None = None

    # ------------------------------------------------------------------ latching
    def latch(self, reason: str) -> None:
        """Latch a fault (error, emergency stop): every tick stops until release()."""
        if self.fault is None:
            self.fault = reason

    def release(self, gripper_open: bool | None = None) -> None:
        """Clear the fault; the gripper hysteresis restarts from the measured opening if given."""
        self.fault = None
        self._gripper_open = gripper_open

    # ------------------------------------------------------------------ the filter
    def check_freshness(self, now_s: float, image_time_s: float | None, action_time_s: float | None,
                        server_time_s: float | None) -> str | None:
        """The first stale input, as a reason string, or None when everything is fresh.

        Times are on one monotonic clock; None means "never received".
        """
        lim = self.limits
        for name, t, limit in (("image", image_time_s, lim.max_image_age_s),
                               ("server", server_time_s, lim.max_server_age_s),
                               ("action", action_time_s, lim.max_action_age_s)):
            if t is None or not math.isfinite(t):
                return f"no {name} yet"
            age = now_s - t
            if age > limit:
                return f"stale {name}: {1e3 * age:.0f} ms old (limit {1e3 * limit:.0f} ms)"
        return None

    def filter(self, action, state: RobotState, now_s: float, image_time_s: float | None,
               action_time_s: float | None, server_time_s: float | None) -> Verdict:
        """The action to execute now, or why not."""
        if self.fault is not None:
            return Verdict(FAULT, self.fault)
        stale = self.check_freshness(now_s, image_time_s, action_time_s, server_time_s)
        if stale is not None:
            return Verdict(HOLD, stale)
        try:
            a = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError) as e:
            self.latch(f"invalid action: {e}")
            return Verdict(FAULT, self.fault)
        if a.shape != (ACTION_DIM,):
            self.latch(f"invalid action: shape {a.shape}, expected ({ACTION_DIM},)")
            return Verdict(FAULT, self.fault)
        if not np.all(np.isfinite(a)):
            self.latch(f"invalid action: non-finite values at {np.flatnonzero(~np.isfinite(a)).tolist()}")
            return Verdict(FAULT, self.fault)
        pos = np.asarray(state.ee_pos_m, float)
        if pos.shape != (3,) or not np.all(np.isfinite(pos)):
            self.latch("invalid robot state: end-effector position is not three finite numbers")
            return Verdict(FAULT, self.fault)

        clamped: list[str] = []
        delta = self._clamp_translation(a[:3], clamped)
        delta = self._keep_in_workspace(pos, delta, clamped)
        drpy = self._clamp_rotation(a[3:6], clamped)
        gripper = self._gripper(a[6])
        out = np.concatenate([delta, drpy, [gripper]])
        return Verdict(OK, "clamped: " + ", ".join(clamped) if clamped else "ok", out, tuple(clamped))

    # ------------------------------------------------------------------ pieces
    def _clamp_translation(self, d: np.ndarray, clamped: list[str]) -> np.ndarray:
        norm = float(np.linalg.norm(d))
        limit = self.limits.max_step_translation_m
        if norm > limit:
            clamped.append("translation")
            return d * (limit / norm)
        return d.copy()

    def _keep_in_workspace(self, pos: np.ndarray, d: np.ndarray, clamped: list[str]) -> np.ndarray:
        # An axis already outside the box keeps its current coordinate as its bound: it may move
        # back in, never further out, and the filter never moves it by itself.
        lo = np.minimum(self._lo, pos)
        hi = np.maximum(self._hi, pos)
        target = np.clip(pos + d, lo, hi)
        out = target - pos
        if np.any(np.abs(out - d) > 1e-12):
            clamped.append("workspace")
        return out

    def _clamp_rotation(self, drpy: np.ndarray, clamped: list[str]) -> np.ndarray:
        w = rotation_error(rpy_to_matrix(drpy), np.eye(3))  # base-frame axis-angle of R_delta
        angle = float(np.linalg.norm(w))
        limit = self.limits.max_step_rotation_rad
        if angle > limit:
            clamped.append("rotation")
            return matrix_to_rpy(axis_angle_to_matrix(w * (limit / angle)))
        return drpy.copy()

    def _gripper(self, command: float) -> float:
        lim = self.limits
        if self._gripper_open is None:
            self._gripper_open = bool(command >= 0.5)
        elif self._gripper_open and command < lim.gripper_close_below:
            self._gripper_open = False
        elif not self._gripper_open and command > lim.gripper_open_above:
            self._gripper_open = True
        return GRIPPER_OPEN if self._gripper_open else GRIPPER_CLOSED
