"""How the simulator scores a task: success checks and task progress on the tabletop.

The task vocabulary (families, instructions, suites, parsing) is `lapa.vocabulary`; its names are
imported here too, so `lapa.sim.tasks` offers the whole suite to the simulator's users.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from lapa.action import RobotState
from lapa.sim.scene import BLOCK_HALF_SIZE_M
from lapa.vocabulary import (  # noqa: F401 - the suite's vocabulary, for the simulator's users
    AUGMENT_FRAMES,
    AUGMENT_NOUNS,
    BLOCK_COLOURS,
    DIRECTIONS,
    FAMILIES,
    SUITES,
    TaskFamily,
    TaskInstance,
    get_suite,
    parse_instruction,
    sample_instance,
)


class SceneView(Protocol):
    """What success checks and experts read from a driver (privileged simulator state)."""

    def robot_state(self) -> RobotState: ...
    def block_pose(self, colour: str) -> tuple[np.ndarray, np.ndarray]: ...


# ---------------------------------------------------------------------- success checks
REACH_RADIUS_M = 0.03
REACH_MAX_HEIGHT_ABOVE_TOP_M = 0.05
PUSH_MIN_DISPLACEMENT_M = 0.06
PUSH_MAX_SIDEWAYS_M = 0.04
PICK_MIN_HEIGHT_M = 0.08
STACK_MAX_OFFSET_M = 0.025


@dataclass(frozen=True)
class EpisodeStart:
    """What success checks compare against: the blocks where the episode began."""

    block_positions: dict[str, np.ndarray]


def is_success(task: TaskInstance, view: SceneView, start: EpisodeStart) -> bool:
    pos, _ = view.block_pose(task.colour)
    if task.family == "reach":
        tcp = view.robot_state().ee_pos_m
        top = pos[2] + BLOCK_HALF_SIZE_M
        return bool(np.linalg.norm(tcp[:2] - pos[:2]) < REACH_RADIUS_M
                    and tcp[2] - top < REACH_MAX_HEIGHT_ABOVE_TOP_M)
    if task.family == "pick":
        return bool(pos[2] >= PICK_MIN_HEIGHT_M)
    progress = task_progress(task, view, start)
    if task.family == "push":
        on_table = pos[2] < BLOCK_HALF_SIZE_M + 0.01
        return (progress["along_m"] >= PUSH_MIN_DISPLACEMENT_M and progress["sideways_m"] <= PUSH_MAX_SIDEWAYS_M
                and on_table)
    if task.family == "put":
        released = progress["gripper_width_m"] > 2 * BLOCK_HALF_SIZE_M + 0.005
        return bool(progress["stack_offset_m"] < STACK_MAX_OFFSET_M
                    and abs(progress["stack_height_error_m"]) < 0.012 and released)
    raise AssertionError(f"no success check for {task.family}")


def task_progress(task: TaskInstance, view: SceneView, start: EpisodeStart) -> dict[str, float]:
    """How far an episode got on its task's own terms (what `is_success` thresholds), for failure analysis:
    push: block travel along the direction and sideways; pick: block lift above the table;
    put: the block's offset from the target's top in the plane and in height, and the gripper width."""
    pos, _ = view.block_pose(task.colour)
    if task.family == "push":
        u = DIRECTIONS[task.direction]
        moved = pos[:2] - start.block_positions[task.colour][:2]
        return {"along_m": float(moved @ u), "sideways_m": abs(float(moved @ np.array([-u[1], u[0]])))}
    if task.family == "pick":
        return {"lift_m": float(pos[2] - BLOCK_HALF_SIZE_M)}
    if task.family == "put":
        below, _ = view.block_pose(task.target)
        return {"stack_offset_m": float(np.linalg.norm(pos[:2] - below[:2])),
                "stack_height_error_m": float(pos[2] - below[2] - 2 * BLOCK_HALF_SIZE_M),
                "gripper_width_m": float(view.robot_state().gripper_width_m)}
    return {}
