"""Where the tabletop's parts live in a compiled scene (`lapa/sim/scene.py`): the TCP site, the arm and
finger joints, the blocks' free joints; and the reads and writes every simulator user makes with them
(block placement, block and TCP poses, gripper width). Shared by the fast driver, the franky-sim
driver and lapa_sim.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lapa.action import RobotState
from lapa.geometry import matrix_to_rpy, quat_wxyz_to_matrix
from lapa.sim.scene import ROBOT_PREFIX, block_joint_name

TCP_SITE = "tcp"
ARM_JOINTS = tuple(f"{ROBOT_PREFIX}fr3_joint{i}" for i in range(1, 8))
FINGER_JOINTS = tuple(f"{ROBOT_PREFIX}finger_joint{i}" for i in (1, 2))

BlockPoses = dict[str, tuple[np.ndarray, float]]  # colour -> (xyz position m, yaw rad), `sample_block_poses`


@dataclass(frozen=True)
class SceneIndex:
    """Addresses in one compiled `MjModel` of the scene (qpos / dof indices, the site id)."""

    tcp_site: int
    arm_qpos: np.ndarray  # (7,)
    arm_dof: np.ndarray  # (7,)
    finger_qpos: np.ndarray  # (2,)
    block_qpos: dict[str, int]  # colour -> first qpos of its free joint (xyz, then quaternion wxyz)
    block_dof: dict[str, int]  # colour -> first dof of its free joint (6 velocities)

    @classmethod
    def of(cls, model, colours: tuple[str, ...]) -> SceneIndex:
        def qpos(name: str) -> int:
            return int(model.jnt_qposadr[model.joint(name).id])

        def dof(name: str) -> int:
            return int(model.jnt_dofadr[model.joint(name).id])

        return cls(
            tcp_site=int(model.site(TCP_SITE).id),
            arm_qpos=np.array([qpos(j) for j in ARM_JOINTS]),
            arm_dof=np.array([dof(j) for j in ARM_JOINTS]),
            finger_qpos=np.array([qpos(j) for j in FINGER_JOINTS]),
            block_qpos={c: qpos(block_joint_name(c)) for c in colours},
            block_dof={c: dof(block_joint_name(c)) for c in colours},
        )

    # ------------------------------------------------------------------ writes
    def place_blocks(self, data, poses: BlockPoses) -> None:
        """Put each block at its position, turned by its yaw about z, at rest."""
        for colour, (pos, yaw) in poses.items():
            adr, dof = self.block_qpos[colour], self.block_dof[colour]
            data.qpos[adr:adr + 3] = pos
            data.qpos[adr + 3:adr + 7] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]
            data.qvel[dof:dof + 6] = 0.0

    # ------------------------------------------------------------------ reads (data after kinematics)
    def block_pose(self, data, colour: str) -> tuple[np.ndarray, np.ndarray]:
        """Block centre (3,) in metres and rotation matrix (3, 3)."""
        if colour not in self.block_qpos:
            raise KeyError(f"unknown block colour {colour!r}; scene has {list(self.block_qpos)}")
        adr = self.block_qpos[colour]
        return data.qpos[adr:adr + 3].copy(), quat_wxyz_to_matrix(data.qpos[adr + 3:adr + 7])

    def block_positions(self, data) -> dict[str, np.ndarray]:
        return {c: self.block_pose(data, c)[0] for c in self.block_qpos}

    def tcp_pose(self, data) -> tuple[np.ndarray, np.ndarray]:
        """TCP position (3,) and rotation (3, 3) in the base frame."""
        return data.site_xpos[self.tcp_site].copy(), data.site_xmat[self.tcp_site].reshape(3, 3).copy()

    def gripper_width_m(self, data) -> float:
        return float(np.sum(data.qpos[self.finger_qpos]))

    def robot_state(self, data) -> RobotState:
        pos, R = self.tcp_pose(data)
        return RobotState(ee_pos_m=pos, ee_rpy_rad=matrix_to_rpy(R), gripper_width_m=self.gripper_width_m(data))


class SnapshotView:
    """`SceneView` (lapa/sim/tasks.py) over one `MjData` snapshot: what success checks read."""

    def __init__(self, index: SceneIndex, data) -> None:
        self.index, self.data = index, data

    def robot_state(self) -> RobotState:
        return self.index.robot_state(self.data)

    def block_pose(self, colour: str) -> tuple[np.ndarray, np.ndarray]:
        return self.index.block_pose(self.data, colour)

    def block_positions(self) -> dict[str, np.ndarray]:
        return self.index.block_positions(self.data)
