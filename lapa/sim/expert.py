"""Scripted experts: waypoint plans from privileged block poses, emitted as delta-EE actions.

Each expert plans once at the start of an episode, then walks its waypoints with bounded
per-step motion (like a teleoperator at 0.2 m/s), so its actions look like what a policy
should produce at the same control rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lapa.action import GRIPPER_CLOSED, GRIPPER_OPEN
from lapa.geometry import matrix_to_rpy, wrap_angle
from lapa.sim.scene import BLOCK_HALF_SIZE_M
from lapa.sim.tasks import SceneView
from lapa.vocabulary import DIRECTIONS, TaskInstance

MAX_STEP_M = 0.02  # per control step at 10 Hz
MAX_YAW_STEP_RAD = 0.15
HOVER_Z_M = 0.12
GRASP_Z_M = 0.018
CARRY_Z_M = 0.15
PUSH_Z_M = 0.022
PUSH_STANDOFF_M = 0.065
PUSH_TRAVEL_M = 0.12


@dataclass
class Waypoint:
    pos: np.ndarray  # (3,) TCP target, metres, base frame
    yaw: float | None  # TCP yaw target (radians); None keeps the current yaw
    gripper: float
    tolerance_m: float = 0.006
    hold_steps: int = 0  # extra steps to wait once reached (gripper closing, release)
    stop: bool = False  # come to rest here even when passing through via points (the end of a push)


def block_yaw(R: np.ndarray) -> float:
    """Yaw of a cube, folded into [-pi/4, pi/4): a cube looks the same every 90 degrees."""
    yaw = float(matrix_to_rpy(R)[2])
    return float((yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4)


class ScriptedExpert:
    """Plans at construction from the scene; `act(view)` returns the next float32[7] action."""

    def __init__(self, task: TaskInstance, view: SceneView, rng: np.random.Generator | None = None,
                 noise_m: float = 0.0, pass_through: bool = False) -> None:
        self.task = task
        self.rng = rng or np.random.default_rng(0)
        self.noise_m = noise_m
        # Move through intermediate waypoints at full speed instead of slowing to a stop at each.
        # Stopping at a waypoint gives the demonstrations near-zero actions there, then a jump to the
        # next leg: a regression policy learns a fixed point and stalls at the waypoint.
        self.pass_through = pass_through
        self.plan = self._plan(view)
        self._index = 0
        self._held = 0

    @property
    def done(self) -> bool:
        return self._index >= len(self.plan)

    def distance_to_target_m(self, view: SceneView) -> float:
        """How far the TCP is from the waypoint it is heading to; 0 while it holds there or once done."""
        if self.done or self._held > 0:
            return 0.0
        return float(np.linalg.norm(self.plan[self._index].pos - view.robot_state().ee_pos_m))

    def _grasp_yaw(self, view: SceneView, colour: str) -> float:
        home_yaw = float(matrix_to_rpy(self._tcp_R(view))[2])
        _, R = view.block_pose(colour)
        # The fingers close along the TCP's y axis; align them with the cube's faces.
        offset = wrap_angle(block_yaw(R) - home_yaw)
        offset = (offset + np.pi / 4) % (np.pi / 2) - np.pi / 4
        return float(home_yaw + offset)

    @staticmethod
    def _tcp_R(view: SceneView) -> np.ndarray:
        from lapa.geometry import rpy_to_matrix

        return rpy_to_matrix(view.robot_state().ee_rpy_rad)

    def _plan(self, view: SceneView) -> list[Waypoint]:
        t = self.task
        pos, _ = view.block_pose(t.colour)
        above = lambda p, z: np.array([p[0], p[1], z])  # noqa: E731
        if t.family == "reach":
            return [Waypoint(above(pos, HOVER_Z_M), None, GRIPPER_OPEN),
                    Waypoint(above(pos, pos[2] + BLOCK_HALF_SIZE_M + 0.03), None, GRIPPER_OPEN, hold_steps=1)]
        if t.family == "push":
            u = np.append(DIRECTIONS[t.direction], 0.0)
            start = pos - u * PUSH_STANDOFF_M
            end = pos + u * PUSH_TRAVEL_M
            return [Waypoint(above(start, HOVER_Z_M), None, GRIPPER_CLOSED),
                    Waypoint(above(start, PUSH_Z_M), None, GRIPPER_CLOSED),
                    Waypoint(above(end, PUSH_Z_M), None, GRIPPER_CLOSED, stop=True),
                    Waypoint(above(end, HOVER_Z_M), None, GRIPPER_CLOSED)]
        yaw = self._grasp_yaw(view, t.colour)
        grasp = [Waypoint(above(pos, HOVER_Z_M), yaw, GRIPPER_OPEN),
                 Waypoint(above(pos, GRASP_Z_M), yaw, GRIPPER_OPEN, tolerance_m=0.004),
                 Waypoint(above(pos, GRASP_Z_M), yaw, GRIPPER_CLOSED, hold_steps=4),
                 Waypoint(above(pos, CARRY_Z_M), yaw, GRIPPER_CLOSED)]
        if t.family == "pick":
            return grasp
        if t.family == "put":
            below, _ = view.block_pose(t.target)
            place_z = below[2] + 2 * BLOCK_HALF_SIZE_M + 0.004
            return grasp + [Waypoint(above(below, CARRY_Z_M), yaw, GRIPPER_CLOSED),
                            Waypoint(above(below, place_z), yaw, GRIPPER_CLOSED, tolerance_m=0.004),
                            Waypoint(above(below, place_z), yaw, GRIPPER_OPEN, hold_steps=3),
                            Waypoint(above(below, CARRY_Z_M), yaw, GRIPPER_OPEN)]
        raise AssertionError(f"no expert for {t.family}")

    def act(self, view: SceneView) -> np.ndarray:
        """Next action float32[7]; zeros with the last gripper command once the plan is done."""
        state = view.robot_state()
        if self.done:
            last = self.plan[-1].gripper if self.plan else GRIPPER_OPEN
            return np.array([0, 0, 0, 0, 0, 0, last], dtype=np.float32)
        cursor, budget = state.ee_pos_m, MAX_STEP_M  # where this step's path has got to; length left
        while self.pass_through and self._passes_through(self._index, state):
            leg = float(np.linalg.norm(self.plan[self._index].pos - cursor))
            if leg > budget:
                break
            cursor, budget = self.plan[self._index].pos, budget - leg
            self._index += 1
            self._held = 0
        wp = self.plan[self._index]
        ahead = wp.pos - cursor
        ahead_m = float(np.linalg.norm(ahead))
        step = (cursor - state.ee_pos_m) + (ahead if ahead_m <= budget else ahead * (budget / ahead_m))
        delta = wp.pos - state.ee_pos_m
        dist = float(np.linalg.norm(delta))
        if self.noise_m > 0:
            step = step + self.rng.normal(0.0, self.noise_m, 3)
        dyaw = 0.0
        if wp.yaw is not None:
            dyaw = float(np.clip(wrap_angle(wp.yaw - state.ee_rpy_rad[2]), -MAX_YAW_STEP_RAD, MAX_YAW_STEP_RAD))
        reached = dist <= wp.tolerance_m and (wp.yaw is None or abs(wrap_angle(wp.yaw - state.ee_rpy_rad[2])) < 0.05)
        if reached:
            if self._held >= wp.hold_steps:
                self._index += 1
                self._held = 0
            else:
                self._held += 1
        return np.array([*step, 0.0, 0.0, dyaw, wp.gripper], dtype=np.float32)

    def _passes_through(self, index: int, state) -> bool:
        """Waypoint `index` is a via point: no hold or stop, not the last, the gripper unchanged after it,
        its yaw already reached."""
        if index + 1 >= len(self.plan):
            return False
        wp = self.plan[index]
        if wp.hold_steps or wp.stop or self.plan[index + 1].gripper != wp.gripper:
            return False
        return wp.yaw is None or abs(wrap_angle(wp.yaw - state.ee_rpy_rad[2])) < 0.05
