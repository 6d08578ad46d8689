"""In-process MuJoCo stepping of the tabletop scene with a Cartesian delta-EE controller.

Faster than real time and deterministic for a seed: used to record datasets and to evaluate
policies in batch. Each `apply_action` runs one control period (1 / control_hz seconds):
the target pose is the measured TCP pose moved by the action's delta (as franky's relative
Cartesian motions do), damped-least-squares IK gives a joint target, and the FR3's joint
position servos track a smooth ramp to it with gravity compensation.
"""

from __future__ import annotations

import mujoco
import numpy as np

from lapa.action import gripper_is_open, validate_action
from lapa.franka import HOME_GRIPPER_WIDTH_M, HOME_JOINT_POS_RAD
from lapa.geometry import rotation_error, rpy_to_matrix
from lapa.sim.driver import DriverBase
from lapa.sim.rendering import SceneRenderer
from lapa.sim.scene import ROBOT_PREFIX, SceneConfig, sample_block_poses, scene_xml
from lapa.sim.scene_index import ARM_JOINTS, SceneIndex

HAND_CTRL_OPEN = 255.0  # the hand actuator maps 0..255 to 0..0.08 m opening
HAND_CTRL_CLOSED = 0.0
IK_ITERATIONS = 30
IK_DAMPING = 1e-3
RAMP_FRACTION = 0.6  # the joint target ramp ends at 60% of the control period
SERVO_STIFFNESS_SCALE = 12.0  # franky-sim's servo gains track too slowly for 10-30 Hz deltas
HAND_STIFFNESS_N_PER_M = 1500.0  # fingers: ~30 N squeeze on a 4 cm block, like a Franka grasp
HAND_DAMPING_N_S_PER_M = 40.0


class FastDriver(DriverBase):
    """The scene compiled once; `reset(seed)` re-places blocks and robot in microseconds."""

    def __init__(self, config: SceneConfig | None = None, control_hz: float = 10.0,
                 physics_dt_s: float = 0.002, render: bool = True) -> None:
        if control_hz <= 0 or control_hz > 1000:
            raise ValueError(f"control_hz must be within (0, 1000], got {control_hz}")
        self.config = config or SceneConfig()
        self.control_hz = float(control_hz)
        self.model = mujoco.MjModel.from_xml_string(scene_xml(self.config))
        self.model.opt.timestep = physics_dt_s
        self.data = mujoco.MjData(self.model)
        self._ik_data = mujoco.MjData(self.model)
        self.substeps = max(1, round(1.0 / (self.control_hz * physics_dt_s)))

        m = self.model
        self.index = SceneIndex.of(m, self.config.colours)
        self._arm_qpos, self._arm_dof, self._tcp_site = self.index.arm_qpos, self.index.arm_dof, self.index.tcp_site
        self._arm_ctrl = np.array([m.actuator(name).id for name in ARM_JOINTS])  # each joint's servo
        self._hand_ctrl = m.actuator(f"{ROBOT_PREFIX}hand").id
        self._joint_lo = m.jnt_range[[m.joint(name).id for name in ARM_JOINTS], 0]
        self._joint_hi = m.jnt_range[[m.joint(name).id for name in ARM_JOINTS], 1]

        self._tune_servos()
        self.renderer = SceneRenderer(self.model, self.config) if render else None
        self.time_s = 0.0
        self.reset(seed=0)

    def _tune_servos(self) -> None:
        """Stiffer joint servos (damping stays implicit, so it is stable) and a firmer hand."""
        m = self.model
        for act in self._arm_ctrl:
            kp, kv = m.actuator_gainprm[act, 0], -m.actuator_biasprm[act, 2]
            kp *= SERVO_STIFFNESS_SCALE
            kv *= np.sqrt(SERVO_STIFFNESS_SCALE)
            m.actuator_gainprm[act, 0] = kp
            m.actuator_biasprm[act, 1:3] = (-kp, -kv)
        h = self._hand_ctrl
        m.actuator_gainprm[h, 0] = HAND_STIFFNESS_N_PER_M * (HOME_GRIPPER_WIDTH_M / 2) / HAND_CTRL_OPEN
        m.actuator_biasprm[h, 1:3] = (-HAND_STIFFNESS_N_PER_M, -HAND_DAMPING_N_S_PER_M)
        m.actuator_forcerange[h] = (-60.0, 60.0)
        m.actuator_forcelimited[h] = 1

    # ------------------------------------------------------------------ episode control
    def reset(self, seed: int) -> None:
        """Robot to its home pose with the gripper open, blocks to seeded positions."""
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[self._arm_qpos] = HOME_JOINT_POS_RAD
        self.data.qpos[self.index.finger_qpos] = HOME_GRIPPER_WIDTH_M / 2
        self.data.ctrl[self._arm_ctrl] = HOME_JOINT_POS_RAD
        self.data.ctrl[self._hand_ctrl] = HAND_CTRL_OPEN
        self.index.place_blocks(self.data, sample_block_poses(self.config, np.random.default_rng(seed)))
        mujoco.mj_forward(self.model, self.data)
        self._gripper_open = True
        self._q_cmd = np.array(HOME_JOINT_POS_RAD)
        self.time_s = 0.0
        # Let the blocks settle on the table and the servos take hold.
        self._run_substeps(self.data.qpos[self._arm_qpos].copy(), self.data.qpos[self._arm_qpos].copy(), 25)

    def apply_action(self, action) -> None:
        """Execute one 7-D delta end-effector action over one control period.

        The delta applies to the commanded pose (as libfranka's relative motions do), so servo
        lag never accumulates into drift.
        """
        a = validate_action(action)
        pos, R = self._commanded_tcp_pose()
        target_pos = pos + a[:3]
        target_R = rpy_to_matrix(a[3:6]) @ R
        q_start = self._q_cmd.copy()
        q_goal = self._solve_ik(target_pos, target_R, q_start)
        self._q_cmd = q_goal
        self._gripper_open = gripper_is_open(a[6])
        self.data.ctrl[self._hand_ctrl] = HAND_CTRL_OPEN if self._gripper_open else HAND_CTRL_CLOSED
        self._run_substeps(q_start, q_goal, self.substeps)
        self.time_s += 1.0 / self.control_hz

    def _run_substeps(self, q_start: np.ndarray, q_goal: np.ndarray, n: int) -> None:
        ramp_steps = max(1, int(RAMP_FRACTION * n))
        for k in range(n):
            s = min(1.0, (k + 1) / ramp_steps)
            s = s * s * (3.0 - 2.0 * s)  # smoothstep: zero velocity at both ends
            self.data.ctrl[self._arm_ctrl] = q_start + s * (q_goal - q_start)
            # Gravity and Coriolis compensation, as the real FR3 controller does.
            self.data.qfrc_applied[self._arm_dof] = self.data.qfrc_bias[self._arm_dof]
            mujoco.mj_step(self.model, self.data)

    def _commanded_tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        d = self._ik_data
        d.qpos[:] = self.data.qpos
        d.qpos[self._arm_qpos] = self._q_cmd
        mujoco.mj_kinematics(self.model, d)
        return d.site_xpos[self._tcp_site].copy(), d.site_xmat[self._tcp_site].reshape(3, 3).copy()

    def _solve_ik(self, target_pos: np.ndarray, target_R: np.ndarray, q_init: np.ndarray) -> np.ndarray:
        """Damped least squares on a scratch copy of the state; returns joint targets (7,)."""
        d = self._ik_data
        d.qpos[:] = self.data.qpos
        q = q_init.copy()
        jacp = np.zeros((3, self.model.nv))
        jacr = np.zeros((3, self.model.nv))
        for _ in range(IK_ITERATIONS):
            d.qpos[self._arm_qpos] = q
            mujoco.mj_kinematics(self.model, d)
            mujoco.mj_comPos(self.model, d)
            pos = d.site_xpos[self._tcp_site]
            R = d.site_xmat[self._tcp_site].reshape(3, 3)
            err = np.concatenate([target_pos - pos, rotation_error(target_R, R)])  # (6,)
            if np.linalg.norm(err[:3]) < 1e-5 and np.linalg.norm(err[3:]) < 1e-4:
                break
            mujoco.mj_jacSite(self.model, d, jacp, jacr, self._tcp_site)
            J = np.vstack([jacp, jacr])[:, self._arm_dof]  # (6, 7)
            dq = J.T @ np.linalg.solve(J @ J.T + IK_DAMPING * np.eye(6), err)
            q = np.clip(q + dq, self._joint_lo, self._joint_hi)
        return q

    # ------------------------------------------------------------------ observation
    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """TCP position (3,) and rotation (3, 3) in the base frame."""
        return self.index.tcp_pose(self.data)

    def gripper_width_m(self) -> float:
        return self.index.gripper_width_m(self.data)

    def block_pose(self, colour: str) -> tuple[np.ndarray, np.ndarray]:
        """Block centre (3,) in metres and rotation matrix (3, 3)."""
        return self.index.block_pose(self.data, colour)

    def render(self, camera: str = "scene") -> np.ndarray:
        """uint8 (H, W, 3) RGB image from a named camera."""
        if self.renderer is None:
            raise RuntimeError("this driver was created with render=False")
        return self.renderer.render(self.data, camera)

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()
            self.renderer = None

