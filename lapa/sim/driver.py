"""The one driver interface of the simulated tabletop, and what its two drivers share.

`FastDriver` (in-process MuJoCo, faster than real time) and `FrankyDriver` (franky-sim's libfranka
server and the real franky client, real time) both offer `Driver`: the episode environment, the
recorder, the evaluation and the benchmarks take either.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from lapa.action import RobotState
from lapa.geometry import matrix_to_rpy
from lapa.sim.rendering import SceneRenderer
from lapa.sim.scene import SceneConfig


class Driver(Protocol):
    config: SceneConfig
    control_hz: float

    @property
    def renderer(self) -> SceneRenderer | None: ...

    def reset(self, seed: int) -> None:
        """Robot home with the gripper open, blocks at the placement of `seed`."""

    def apply_action(self, action) -> None:
        """Execute one 7-D delta end-effector action over one control period."""

    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]: ...

    def gripper_width_m(self) -> float: ...

    def robot_state(self) -> RobotState: ...

    def block_pose(self, colour: str) -> tuple[np.ndarray, np.ndarray]: ...

    def block_positions(self) -> dict[str, np.ndarray]: ...

    def render(self, camera: str = "scene") -> np.ndarray: ...

    def close(self) -> None: ...


class DriverBase:
    """The parts of `Driver` that follow from the others: the robot state, block positions, `with`."""

    config: SceneConfig

    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def gripper_width_m(self) -> float:
        raise NotImplementedError

    def block_pose(self, colour: str) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def robot_state(self) -> RobotState:
        pos, R = self.tcp_pose()
        return RobotState(ee_pos_m=pos, ee_rpy_rad=matrix_to_rpy(R), gripper_width_m=self.gripper_width_m())

    def block_positions(self) -> dict[str, np.ndarray]:
        return {c: self.block_pose(c)[0] for c in self.config.colours}

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
