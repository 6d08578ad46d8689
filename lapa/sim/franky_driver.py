"""The tabletop driven the way a real Franka is: franky-sim's libfranka server plus the `franky` client.

`FrankyDriver` starts franky-sim's `SimulationServer` on the tabletop scene (physics at 1 kHz in a
background thread, served on a 127.x.y.z loopback address, see `hostname`) and drives it with the
real `franky.Robot` / `franky.Gripper` over the network protocol: the code path a physical FR3
sees. It offers the `FastDriver` interface; `apply_action` returns once per control period.

Motion type: each action becomes one asynchronous `CartesianVelocityMotion` (twist = delta /
period, held for one period), as on the real robot; `lapa.franka` has the measurements that
chose it.

What franky-sim does that the driver works around:
- `O_T_EE` (hence `robot.current_cartesian_state`) is reported as the *desired* pose: pinocchio
  returns frame placements by reference and the desired-pose computation overwrites the measured
  one. The driver makes the simulated robot's kinematics return a copy, so the client reads the
  measured pose (it then agrees with the scene's `tcp` site to < 0.5 mm).
- With 2 cores and other work, its Python 1 kHz loop runs at 0.4-0.9x real time, and franky times
  motions by its clock. `apply_action` therefore waits one control period of *simulated* time (the
  sim never runs faster than real time, so never less than the wall-clock period): a step is the
  same motion whatever the machine load.
- It steps on whether or not the client has answered the last state, so a client starved of CPU
  for a few ms has its last velocity held meanwhile (at load 9 on 2 cores: 6-16% of steps without
  a fresh command, gaps up to 12 ms, a 2 cm step landing 2.4 mm long). The driver's server waits,
  during motions, up to 10 ms for the client's reply before each step (`_lockstep_server`): at
  load 9, 0.1% of steps without a fresh command and lone-step errors back to their idle values;
  at load 17, 2%. (It reaches into franky-sim's private UDP socket; without it, stock behaviour.)
- A franky call that blocks while holding the GIL starves the simulator thread (Python): a gripper
  command issued while another is in flight deadlocks the process (`Gripper.stop` too). Gripper
  commands are issued only once the previous one has finished, so a reset right after closing
  waits for the close (fingers move at most 0.05 m/s each there: ~0.9 s of sim time per stroke).
- Rendering (`mujoco.Renderer`) holds the GIL, so the simulator thread pauses while a frame is
  drawn (10-30 ms at 128x128; the very first frame up to 1.5 s, so the driver draws it at start-up:
  libfranka aborts a motion after 1 s without state).
- One client per port: another process (e.g. a ROS node) can connect to `hostname` once this
  driver's own client has disconnected.
"""

from __future__ import annotations

import logging
import queue
import select
import threading
import time
import weakref
from collections.abc import Callable

import mujoco
import numpy as np

from lapa.action import RobotState, gripper_is_open, validate_action
from lapa.franka import command_gripper, connect_franky, franky_errors, halt, home_motion, velocity_motion
from lapa.geometry import matrix_to_rpy, quat_wxyz_to_matrix
from lapa.sim.rendering import SceneRenderer
from lapa.sim.scene import (
    SceneConfig,
    block_joint_name,
    build_simulator,
    sample_block_poses,
)

logger = logging.getLogger(__name__)

SETTLE_S = 0.3  # simulated time for the blocks to come to rest after reset
RESET_MOTION_TIMEOUT_S = 30.0  # wall clock, for the joint motion home
GRIPPER_TIMEOUT_S = 3.0  # simulated time for one gripper command (a full stroke takes ~0.9 s)
GRIPPER_WALL_TIMEOUT_S = 120.0  # wall clock: only a stalled simulator takes this long
SIM_STALL_TIMEOUT_S = 5.0  # wall clock without simulated time advancing -> the server is dead
LOCKSTEP_REPLY_TIMEOUT_S = 0.01  # longest a physics step waits for the client's command


def _patch_simulated_robot(sim_robot) -> None:
    """Make franky-sim report the measured EE pose as O_T_EE (see the module docstring)."""
    kinematics = sim_robot.kinematics
    sim_robot.kinematics = lambda q: kinematics(q).copy()  # instance attribute shadows the method


def _lockstep_server(sim, reply_timeout_s: float = LOCKSTEP_REPLY_TIMEOUT_S):
    """franky-sim's `SimulationServer`, made to wait for the client's reply while a motion runs.

    Stock franky-sim steps on at 1 kHz whether or not the client has answered the last state; a
    client starved of CPU for a few ms (2 cores, other load) then has its last velocity held that
    long: 2 mm at 0.2 m/s per 10 ms. A real FCI would abort the motion instead. Here each step
    first waits (up to `reply_timeout_s`, then steps on regardless) until the client's command
    is readable, so simulated motion depends much less on how busy the machine is.
    """
    from franky_sim import SimulationServer

    class LockstepServer(SimulationServer):
        waits = 0  # steps that waited for the client, and of those, ones that gave up
        timeouts = 0

        def run_once(self, realtime: bool | float = True) -> None:
            for rs in self.robot_servers:
                # franky-sim keeps the UDP socket private; without it, behave like stock franky-sim.
                sock = getattr(rs, "_FrankaServer__udp_socket", None)
                if rs.current_motion_id and sock is not None:
                    ready, _, _ = select.select([sock], [], [], 0)
                    if not ready:
                        self.waits += 1
                        ready, _, _ = select.select([sock], [], [], reply_timeout_s)
                        self.timeouts += not ready
            super().run_once(realtime)

    return LockstepServer(sim)


class SimLink:
    """The simulator side: server thread, a job queue run inside it, and a state snapshot.

    franky-sim has no lock: its thread steps the physics continuously. Writes (block placement)
    run as jobs in its pre-step callback; reads copy a snapshot taken in its post-step callback
    into a private `MjData`, so they never see a half-updated step.
    """

    def __init__(self, config: SceneConfig) -> None:
        self.closed = False
        self.sim = build_simulator(config)
        self.sim.init()
        self.server = _lockstep_server(self.sim)
        try:
            self.server.init()  # binds a free 127.x.y.z:1337/1338, compiles the model
            self.model: mujoco.MjModel = self.sim.model
            self.robot = self.sim.robots[0]
            _patch_simulated_robot(self.robot)
            self.hostname: str = self.robot.hostname

            self._jobs: queue.SimpleQueue = queue.SimpleQueue()
            self._lock = threading.Lock()
            self._qpos = self.sim.data.qpos.copy()
            self._time_s = float(self.sim.data.time)
            self.mirror = mujoco.MjData(self.model)
            self._wake = threading.Event()  # set by the simulator thread when its clock passes _wake_at_s
            self._wake_at_s = float("inf")
            self.sim.register_pre_step_callback(self._run_jobs)
            self.sim.register_post_step_callback(self._snapshot)
            self.server.run_async()
        except BaseException:
            self.close()
            raise

    def _run_jobs(self, sim) -> None:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            job()

    def _snapshot(self, sim) -> None:
        with self._lock:
            self._qpos[:] = sim.data.qpos
            self._time_s = float(sim.data.time)
        if self._time_s >= self._wake_at_s:
            self._wake.set()

    @property
    def time_s(self) -> float:
        return self._time_s

    def call(self, fn: Callable[[mujoco.MjData], None], timeout_s: float = 5.0) -> None:
        """Run fn(data) inside the simulator thread between two physics steps; wait for it."""
        done = threading.Event()
        error: list[BaseException] = []

        def job() -> None:
            try:
                fn(self.sim.data)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                error.append(e)
            finally:
                done.set()

        self._jobs.put(job)
        if not done.wait(timeout_s):
            raise RuntimeError(f"franky-sim did not step within {timeout_s:g} s; is its thread alive?")
        if error:
            raise error[0]

    def wait_until(self, sim_time_s: float) -> None:
        """Block until the simulated clock reaches sim_time_s (woken by the simulator thread).

        Raises if the clock stops advancing altogether for `SIM_STALL_TIMEOUT_S` of wall time.
        """
        last_s, last_wall_s = self.time_s, time.monotonic()
        while self.time_s < sim_time_s:
            self._wake_at_s = sim_time_s
            self._wake.clear()
            if self.time_s >= sim_time_s:  # reached between the check and clear()
                break
            if self._wake.wait(0.25):
                continue
            if self.time_s != last_s:
                last_s, last_wall_s = self.time_s, time.monotonic()
            elif time.monotonic() - last_wall_s > SIM_STALL_TIMEOUT_S:
                raise RuntimeError(f"franky-sim's clock stopped at {self.time_s:.3f} s; is its thread alive?")

    def observe(self, camera_ready: bool = False) -> mujoco.MjData:
        """The mirror `MjData` with positions from the latest completed step."""
        with self._lock:
            self.mirror.qpos[:] = self._qpos
            self.mirror.time = self._time_s
        mujoco.mj_kinematics(self.model, self.mirror)
        if camera_ready:
            mujoco.mj_comPos(self.model, self.mirror)
            mujoco.mj_camlight(self.model, self.mirror)
        return self.mirror

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.server.cleanup()  # stops and joins the physics thread, closes the listening sockets
        if not self.sim.is_cleaned_up:
            self.sim.cleanup()


_ABANDONED: list = []  # unfinished gripper futures kept alive at close (see _Session.close)


class _Session:
    """Everything that must be torn down, in order; owned by the driver, closed by close() or GC."""

    def __init__(self) -> None:
        self.link: SimLink | None = None
        self.robot = None
        self.gripper = None
        self.gripper_future = None
        self.renderer: SceneRenderer | None = None

    def close(self) -> None:
        robot, gripper, future = self.robot, self.gripper, self.gripper_future
        self.robot = self.gripper = self.gripper_future = None
        if robot is not None:
            try:
                halt(robot)
            except Exception as e:  # noqa: BLE001 - closing anyway
                logger.warning("stopping the robot on close: %s", e)
        if future is not None and not future.wait(GRIPPER_TIMEOUT_S):
            # Destroying an unfinished franky future blocks until it finishes; keep it alive instead.
            logger.warning("a gripper command is still running at close; leaving it behind")
            _ABANDONED.append(future)
        del robot, gripper  # disconnects the clients while the server still answers
        if self.renderer is not None:
            self.renderer.close()
            self.renderer = None
        if self.link is not None:
            self.link.close()
            self.link = None


class FrankyDriver:
    """franky-sim server + franky client on loopback, real time; the `FastDriver` interface."""

    def __init__(self, config: SceneConfig | None = None, control_hz: float = 10.0, render: bool = True,
                 connect_timeout_s: float = 10.0, relative_dynamics_factor: float = 0.5) -> None:
        if not 0 < control_hz <= 100:
            raise ValueError(f"control_hz must be within (0, 100], got {control_hz}")
        if not 0 < relative_dynamics_factor <= 1:
            raise ValueError(f"relative_dynamics_factor must be in (0, 1], got {relative_dynamics_factor}")
        self.config = config or SceneConfig()
        self.control_hz = float(control_hz)
        self.period_s = 1.0 / self.control_hz
        self._session = _Session()
        self._finalizer = weakref.finalize(self, self._session.close)
        self._gripper_open: bool | None = None  # last command sent; None = unknown
        self._gripper_wanted = True
        self._deadline_s = 0.0
        self.timings_s: dict[str, float] = {}  # wall-clock seconds of each start-up stage
        try:
            t0 = time.monotonic()
            self._session.link = link = SimLink(self.config)
            t1 = time.monotonic()
            self._session.robot, self._session.gripper = connect_franky(
                link.hostname, connect_timeout_s, relative_dynamics_factor)
            t2 = time.monotonic()
            if render:
                self._session.renderer = SceneRenderer(link.model, self.config)
                # The first frame (GL context, mesh upload) holds the GIL for up to ~1.5 s under
                # load, freezing the simulator thread; libfranka drops a running motion after 1 s
                # without state. Take that hit now, while nothing moves.
                for camera in self.renderer.cameras:
                    self.render(camera)
            m = link.model
            joints = {c: m.joint(block_joint_name(c)).id for c in self.config.colours}
            self._tcp_site = m.site("tcp").id
            self._block_qpos = {c: int(m.jnt_qposadr[j]) for c, j in joints.items()}
            self._block_dof = {c: int(m.jnt_dofadr[j]) for c, j in joints.items()}
            self.reset(seed=0)
            self.timings_s = {"server_start": t1 - t0, "connect": t2 - t1,
                              "first_reset": time.monotonic() - t2}
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ plumbing
    @property
    def hostname(self) -> str:
        """The loopback address franky-sim serves this robot on (ports 1337 robot, 1338 gripper)."""
        return self._link.hostname

    @property
    def robot(self):
        """The connected `franky.Robot`."""
        if self._session.robot is None:
            raise RuntimeError("this FrankyDriver is closed")
        return self._session.robot

    @property
    def gripper(self):
        if self._session.gripper is None:
            raise RuntimeError("this FrankyDriver is closed")
        return self._session.gripper

    @property
    def renderer(self) -> SceneRenderer | None:
        return self._session.renderer

    @property
    def _link(self) -> SimLink:
        if self._session.link is None:
            raise RuntimeError("this FrankyDriver is closed")
        return self._session.link

    @property
    def sim_time_s(self) -> float:
        """franky-sim's clock (advances at up to real time)."""
        return self._link.time_s

    def _fail(self, what: str, error: BaseException) -> RuntimeError:
        """Stop the robot and turn a franky exception into a RuntimeError that says what failed."""
        try:
            self.robot.stop()
        except Exception as e:  # noqa: BLE001 - the original error matters more
            logger.warning("stopping after an error failed too: %s", e)
        try:
            self.robot.join_motion(5.0)  # collects the stopped motion's own "preempted" error
        except Exception as e:  # noqa: BLE001 - expected after a stop
            logger.debug("motion ended by the stop: %s", e)
        return RuntimeError(f"franky {what} failed: {type(error).__name__}: {error}")

    def _check_motion(self) -> None:
        """Raise the error of the last asynchronous motion, if it ended with one.

        (franky 2.0's `poll_motion` returns True once the motion has *finished*, despite its
        docstring; only its exception is used here, `is_in_control` says whether one runs.)
        """
        try:
            self.robot.poll_motion()
        except franky_errors() as e:
            raise self._fail("motion", e) from e

    # ------------------------------------------------------------------ gripper
    def _service_gripper(self) -> None:
        """Send the wanted open/closed command once the previous command has finished.

        Never issue a command while another is in flight: that call blocks holding the GIL and
        the simulator thread (Python) can then never finish the first one.
        """
        s = self._session
        if s.gripper_future is not None:
            if not s.gripper_future.wait(0):
                return
            try:
                s.gripper_future.get()
            except franky_errors() as e:
                s.gripper_future = None
                raise self._fail("gripper command", e) from e
            s.gripper_future = None
        if self._gripper_wanted == self._gripper_open:
            return
        s.gripper_future = command_gripper(self.gripper, self._gripper_wanted)
        self._gripper_open = self._gripper_wanted

    def _wait_gripper(self, timeout_s: float = GRIPPER_TIMEOUT_S) -> None:
        """Wait for the gripper, timed in simulated seconds: a loaded machine slows the sim down."""
        sim_deadline = self.sim_time_s + timeout_s
        wall_deadline = time.monotonic() + GRIPPER_WALL_TIMEOUT_S
        while True:
            self._service_gripper()
            if self._session.gripper_future is None and self._gripper_open == self._gripper_wanted:
                return
            if self.sim_time_s > sim_deadline or time.monotonic() > wall_deadline:
                raise RuntimeError(f"the gripper did not finish within {timeout_s:g} s of simulated time")
            self._session.gripper_future.wait(0.05)

    # ------------------------------------------------------------------ episode control
    def reset(self, seed: int) -> None:
        """Stop, move home with a joint motion while the gripper opens, re-place the blocks, settle."""
        self.stop()
        self._gripper_wanted = True
        self._service_gripper()  # opens now, or once a command still in flight has finished
        try:
            self.robot.move(home_motion(), asynchronous=True)
            self._wait_gripper()
            if not self.robot.join_motion(RESET_MOTION_TIMEOUT_S):
                raise RuntimeError(f"the move home did not finish within {RESET_MOTION_TIMEOUT_S:g} s")
        except franky_errors() as e:
            raise self._fail("move home", e) from e
        poses = sample_block_poses(self.config, np.random.default_rng(seed))

        def place_blocks(data: mujoco.MjData) -> None:
            for colour, (pos, yaw) in poses.items():
                adr, dof = self._block_qpos[colour], self._block_dof[colour]
                data.qpos[adr:adr + 3] = pos
                data.qpos[adr + 3:adr + 7] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]
                data.qvel[dof:dof + 6] = 0.0

        self._link.call(place_blocks)
        self._link.wait_until(self._link.time_s + SETTLE_S)
        self._deadline_s = self._link.time_s

    def apply_action(self, action) -> None:
        """Command one 7-D delta-EE action and return when its control period has elapsed.

        The arm moves by the delta from where it is (position in the base frame; R_next =
        R_delta @ R_now) at constant velocity over one period; the gripper target is sent when it
        changes from open to closed or back.
        """
        a = validate_action(action)
        self._check_motion()
        link = self._link
        motion = velocity_motion(a, self.period_s)
        try:
            self.robot.move(motion, asynchronous=True)  # preempts the previous step's motion seamlessly
        except franky_errors() as e:
            raise self._fail("velocity motion", e) from e
        self._gripper_wanted = gripper_is_open(a[6])
        self._service_gripper()

        # Pace on the simulated clock (see the module docstring). franky-sim never runs faster than
        # real time, so neither does this loop. After an overrun, start a fresh schedule.
        self._deadline_s = max(self._deadline_s + self.period_s, link.time_s)
        while link.time_s < self._deadline_s:
            self._service_gripper()
            link.wait_until(min(self._deadline_s, link.time_s + 0.01))
        self._check_motion()

    def settle(self, duration_s: float = 0.3) -> None:
        """Wait for the running motion to end, then let `duration_s` of simulated time pass."""
        try:
            self.robot.join_motion(RESET_MOTION_TIMEOUT_S)
        except franky_errors() as e:
            raise self._fail("motion", e) from e
        self._link.wait_until(self._link.time_s + duration_s)
        self._deadline_s = self._link.time_s

    def stop(self) -> None:
        """Bring the arm to rest now, decelerating within its limits (no jump), and hold there."""
        try:
            halt(self.robot)
        except franky_errors() as e:
            raise self._fail("stop", e) from e
        if self.robot.has_errors:
            self.robot.recover_from_errors()
        self._deadline_s = self._link.time_s

    # ------------------------------------------------------------------ observation
    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """Measured TCP position (3,) and rotation (3, 3) in the base frame, as the robot reports it."""
        pose = np.asarray(self.robot.current_cartesian_state.pose.end_effector_pose.matrix)
        return pose[:3, 3].copy(), pose[:3, :3].copy()

    def sim_tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """The `tcp` site in the simulator (privileged ground truth, for checks)."""
        d = self._link.observe()
        return d.site_xpos[self._tcp_site].copy(), d.site_xmat[self._tcp_site].reshape(3, 3).copy()

    def gripper_width_m(self) -> float:
        return float(self.gripper.width)

    def robot_state(self) -> RobotState:
        pos, R = self.tcp_pose()
        return RobotState(ee_pos_m=pos, ee_rpy_rad=matrix_to_rpy(R), gripper_width_m=self.gripper_width_m())

    def block_pose(self, colour: str) -> tuple[np.ndarray, np.ndarray]:
        """Block centre (3,) in metres and rotation matrix (3, 3)."""
        if colour not in self._block_qpos:
            raise KeyError(f"unknown block colour {colour!r}; scene has {list(self._block_qpos)}")
        d = self._link.observe()
        adr = self._block_qpos[colour]
        return d.qpos[adr:adr + 3].copy(), quat_wxyz_to_matrix(d.qpos[adr + 3:adr + 7])

    def block_positions(self) -> dict[str, np.ndarray]:
        return {c: self.block_pose(c)[0] for c in self.config.colours}

    def render(self, camera: str = "scene") -> np.ndarray:
        """uint8 (H, W, 3) RGB image from a named camera."""
        if self.renderer is None:
            raise RuntimeError("this driver was created with render=False")
        return self.renderer.render(self._link.observe(camera_ready=True), camera)

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Disconnect the client, stop the server and the renderer. Idempotent."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def __enter__(self) -> FrankyDriver:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
