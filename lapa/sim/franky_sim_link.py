"""franky-sim's libfranka server on the tabletop scene, run in this process: `SimLink`.

franky-sim (`SimulationServer`) steps the physics at 1 kHz in a background thread and serves one
FR3 on a 127.x.y.z loopback address (ports 1337 robot, 1338 gripper). `SimLink` starts it, runs
writes (block placement) inside its thread between two steps, keeps a snapshot of the state for
reads, and waits on the simulated clock. The franky-sim driver (lapa/sim/franky_driver.py) and
lapa_sim (lapa_ros/sim_node.py) use it; the client is franky, in the driver or the policy node.

What franky-sim does that the link works around:
- `O_T_EE` (hence `robot.current_cartesian_state`) is reported as the *desired* pose: pinocchio
  returns frame placements by reference and the desired-pose computation overwrites the measured
  one. The link makes the simulated robot's kinematics return a copy, so the client reads the
  measured pose (it then agrees with the scene's `tcp` site to < 0.5 mm).
- It steps on whether or not the client has answered the last state, so a client starved of CPU
  for a few ms has its last velocity held meanwhile (at load 9 on 2 cores: 6-16% of steps without
  a fresh command, gaps up to 12 ms, a 2 cm step landing 2.4 mm long). The link's server waits,
  during motions, up to 10 ms for the client's reply before each step (`_lockstep_server`): at
  load 9, 0.1% of steps without a fresh command and lone-step errors back to their idle values;
  at load 17, 2%. (It reaches into franky-sim's private UDP socket; without it, stock behaviour.)
- One client per port: another process (e.g. a ROS node) can connect to `hostname` once the
  current client has disconnected.
"""

from __future__ import annotations

import queue
import select
import threading
import time
from collections.abc import Callable

import mujoco
import numpy as np

from lapa.sim.scene import SceneConfig, build_simulator, sample_block_poses
from lapa.sim.scene_index import SceneIndex, SnapshotView

SETTLE_S = 0.3  # simulated time for the blocks to come to rest after they are placed
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
            self.config = config
            self.index = SceneIndex.of(self.model, config.colours)
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

    def view(self) -> SnapshotView:
        """Block and TCP poses of the latest completed step (privileged state: success checks)."""
        return SnapshotView(self.index, self.observe())

    def place_blocks(self, seed: int, settle_s: float = SETTLE_S) -> None:
        """Put the blocks at the placement of `seed` (between two steps), then let them settle."""
        poses = sample_block_poses(self.config, np.random.default_rng(seed))
        self.call(lambda data: self.index.place_blocks(data, poses))
        self.wait_until(self.time_s + settle_s)

    # ------------------------------------------------------------------ robot faults (lapa bench faults)
    def abort_motion_by_reflex(self) -> bool:
        """End the running motion as a real FCI's reflex does: the arm holds where it is and the
        client's motion ends with `kReflexAborted` (franky raises a ControlException). False when no
        motion was running."""
        from franky_sim.franka_robot_protocol import MoveStatus, RobotCommand
        from franky_sim.franka_server import BaseCommand

        aborted: list[bool] = []

        def job(_data) -> None:
            rs = self.server.robot_servers[0]
            motion_id = rs.current_motion_id
            aborted.append(bool(motion_id))
            if motion_id and rs._tcp_socket is not None:
                rs.stop_motion(send_preemption_signal=False)
                BaseCommand.send_response(rs._tcp_socket, RobotCommand.kMove, motion_id, MoveStatus.kReflexAborted)
                rs.reset_current_motion_id()

        self.call(job)
        return bool(aborted and aborted[0])

    def drop_client(self) -> None:
        """Close the client's TCP and UDP connections (a pulled cable, a robot power cycle): the arm
        holds where it is; the server accepts a new client."""
        def job(_data) -> None:
            rs = self.server.robot_servers[0]
            rs.reset_state()
            if rs.gripper_server is not None:
                rs.gripper_server.reset_state()

        self.call(job)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.server.cleanup()  # stops and joins the physics thread, closes the listening sockets
        if not self.sim.is_cleaned_up:
            self.sim.cleanup()
