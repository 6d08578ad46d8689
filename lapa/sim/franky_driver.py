"""The tabletop driven the way a real Franka is: franky-sim's libfranka server plus the `franky` client.

`FrankyDriver` starts franky-sim's `SimulationServer` on the tabletop scene (physics at 1 kHz in a
background thread, served on a 127.x.y.z loopback address, see `hostname`) and drives it with the
real `franky.Robot` / `franky.Gripper` over the network protocol: the code path a physical FR3
sees. It offers the `FastDriver` interface; `apply_action` returns once per control period.

Motion type: each action becomes one asynchronous `CartesianVelocityMotion` (twist = delta /
period, held for one period), as on the real robot; `lapa.franka` has the measurements that
chose it.

What franky-sim does that the driver works around (the server side, `SimLink`, has its own list in
lapa/sim/franky_sim_link.py):
- With 2 cores and other work, its Python 1 kHz loop runs at 0.4-0.9x real time, and franky times
  motions by its clock. `apply_action` therefore waits one control period of *simulated* time (the
  sim never runs faster than real time, so never less than the wall-clock period): a step is the
  same motion whatever the machine load.
- A franky call that blocks while holding the GIL starves the simulator thread (Python): a gripper
  command issued while another is in flight deadlocks the process (`Gripper.stop` too). Gripper
  commands are issued only once the previous one has finished, so a reset right after closing
  waits for the close (fingers move at most 0.05 m/s each there: ~0.9 s of sim time per stroke).
- Rendering (`mujoco.Renderer`) holds the GIL, so the simulator thread pauses while a frame is
  drawn (10-30 ms at 128x128; the very first frame up to 1.5 s, so the driver draws it at start-up:
  libfranka aborts a motion after 1 s without state).
"""

from __future__ import annotations

import logging
import time
import weakref

import numpy as np

from lapa.action import gripper_is_open, validate_action
from lapa.franka import command_gripper, connect_franky, franky_errors, halt, home_motion, velocity_motion
from lapa.sim.driver import DriverBase
from lapa.sim.franky_sim_link import SimLink
from lapa.sim.rendering import SceneRenderer
from lapa.sim.scene import SceneConfig

logger = logging.getLogger(__name__)

RESET_MOTION_TIMEOUT_S = 30.0  # wall clock, for the joint motion home
GRIPPER_TIMEOUT_S = 3.0  # simulated time for one gripper command (a full stroke takes ~0.9 s)
GRIPPER_WALL_TIMEOUT_S = 120.0  # wall clock: only a stalled simulator takes this long


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


class FrankyDriver(DriverBase):
    """franky-sim server + franky client on loopback, real time; the `Driver` interface."""

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
        self._link.place_blocks(seed)
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
        return self._link.index.tcp_pose(self._link.observe())

    def gripper_width_m(self) -> float:
        return float(self.gripper.width)

    def block_pose(self, colour: str) -> tuple[np.ndarray, np.ndarray]:
        """Block centre (3,) in metres and rotation matrix (3, 3)."""
        return self._link.view().block_pose(colour)

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
