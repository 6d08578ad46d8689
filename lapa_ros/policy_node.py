"""`lapa_policy`: camera + instruction -> policy server -> safety filter -> robot, at control rate.

Topics (defaults; the names are parameters):
  in   /camera/image_raw             sensor_msgs/Image            newest kept, older ones dropped
  in   /camera/image_raw/compressed  sensor_msgs/CompressedImage  JPEG/PNG, passed to the server as is
  in   /lapa/instruction             std_msgs/String              a task; "stop"/"cancel" stops
  in   /lapa_sim/robot_ip            std_msgs/String (latched)    franky-sim's address when robot_ip == "sim"
  out  /lapa/action                  geometry_msgs/TwistStamped   executed step as a twist: delta / period
                                                                  (m/s, rad/s, frame `base`)
  out  /lapa/gripper                 std_msgs/Float32             executed gripper target (1 open, 0 closed)
  out  /lapa/latency_ms              std_msgs/Float32             camera-to-command latency (ms) of each
                                                                  command sent on a server reply
  out  /lapa/status                  std_msgs/String              JSON: state, reason, rates, latencies, pose
  out  /lapa/step                    std_msgs/String              JSON of each executed command: wall stamp,
                                                                  action float[7], the robot state float[8]
                                                                  it was applied from, instruction, latency
  out  <image_topic>                 sensor_msgs/Image            only with robot_backend=sim (its camera)
  in   <wrist_image_topic>           sensor_msgs/Image            the hand camera (models with cameras [scene, wrist])
Services (std_srvs/Trigger):
  /lapa/start            clear a latched fault (emergency stop, error) and run; starts from the current pose
  /lapa/stop             stop moving (decelerate, hold); a new instruction or /lapa/start resumes
  /lapa/emergency_stop   stop now and latch: nothing moves until /lapa/start
  /lapa/home             stop, then move to the home pose with the gripper open (blocking, seconds)

The control logic (tick, execute, hold, fault, the services' states) is `ControlCore`
(lapa_ros/control_core.py), which knows nothing of ROS; this node declares the parameters, builds
the safety filter, chunk executor, inference worker and robot backend, and wires topics, services
and the control clock to the core.

Threads: the ROS executor (MultiThreadedExecutor) runs sensor callbacks, services and the status
timer in separate callback groups; the control clock is a thread of its own (absolute deadlines),
the network runs in `InferenceWorker`'s thread, franky's state is read by the backend's thread. A tick asks
for a chunk when the current one is used up; the reply's first action is executed as soon as it
arrives (so the command follows the image by the model's latency, not by a whole period), later
actions of a chunk on later ticks. Every executed action went through `SafetyFilter`.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import numpy as np

from lapa.chunking import CHUNK_MODES, DEFAULT_ENSEMBLE_DECAY, ChunkExecutor
from lapa.realtime import check_priority, make_thread_realtime
from lapa_ros.backends import BACKENDS
from lapa_ros.control_core import ControlCore, CoreSettings
from lapa_ros.inference import FrameBuffer, InferenceWorker
from lapa_ros.parameters import declare_parameters
from lapa_ros.safety import SafetyFilter, SafetyLimits

NODE_NAME = "lapa_policy"
SIM_ROBOT_IP = "sim"  # robot_ip value: take the address lapa_sim announces
ROBOT_IP_TOPIC = "/lapa_sim/robot_ip"
STEP_TOPIC = "/lapa/step"  # one JSON record per executed command (the console's plots and recordings)

# name: (default, description). Types follow the defaults.
PARAMETERS: dict[str, tuple[object, str]] = {
    "server_url": ("ws://127.0.0.1:8000", "policy server URL: ws://host:port (WebSocket) or http://host:port"),
    "api_key": ("", "policy server API key (empty: $LAPA_API_KEY, or none)"),
    "server_timeout_s": (0.5, "a request without a reply after this long fails; the robot stops"),
    "control_hz": (0.0, "control rate in Hz; 0 = the model's control_hz from the server's metadata"),
    "image_topic": ("/camera/image_raw", "sensor_msgs/Image input (rgb8, bgr8, rgba8, bgra8, mono8)"),
    "compressed_image_topic": ("", "sensor_msgs/CompressedImage input (JPEG/PNG); empty: <image_topic>/compressed"),
    "wrist_image_topic": ("", "sensor_msgs/Image of the hand camera, for a model with cameras [scene, wrist] "
                              "(its /v1/metadata); empty: none"),
    "instruction_topic": ("/lapa/instruction", "std_msgs/String task instructions"),
    "robot_backend": ("franky", "franky (a Franka or franky-sim through franky) | sim (in-process fast simulator)"),
    "robot_ip": (SIM_ROBOT_IP, "the Franka's address; 'sim' = the address lapa_sim announces on /lapa_sim/robot_ip"),
    "connect_timeout_s": (10.0, "give up connecting to the robot after this long"),
    "relative_dynamics_factor": (0.5, "franky's velocity/acceleration/jerk scaling in (0, 1]"),
    "max_step_translation_m": (0.03, "largest translation of one control step (metres)"),
    "max_step_rotation_rad": (0.2, "largest rotation of one control step (radians, axis-angle)"),
    "workspace_min_m": ([0.25, -0.35, 0.005], "workspace box lower corner x, y, z in the base frame (metres)"),
    "workspace_max_m": ([0.80, 0.35, 0.45], "workspace box upper corner x, y, z in the base frame (metres)"),
    "gripper_close_below": (0.3, "gripper hysteresis: close when the command falls below this"),
    "gripper_open_above": (0.7, "gripper hysteresis: open when the command rises above this"),
    "max_image_age_s": (0.5, "stale-image timeout: older camera input stops the robot"),
    "max_action_age_s": (0.6, "an action computed from an image older than this is not executed"),
    "max_server_age_s": (1.0, "no sign of life from the server for this long stops the robot"),
    "max_robot_state_age_s": (0.5, "a measured robot state older than this stops the robot"),
    "chunk_mode": ("first_n", "how a chunk is executed: first_n | ensemble (temporal ensembling)"),
    "chunk_n": (1, "first_n: actions executed from each chunk before asking again (1 = every tick)"),
    "ensemble_decay": (DEFAULT_ENSEMBLE_DECAY, "ensemble: weight exp(-decay * ticks since the prediction)"),
    # 0: the first frame after the tick. With the camera a multiple of the control rate their phase
    # is fixed for a whole run, and a frame taken from before the tick waited for it (up to this long).
    "image_sync_s": (0.0, "a tick waits for a camera frame received at most this long before it"),
    "max_image_wait_s": (0.05, "... but no longer than this after the tick (then takes the newest)"),
    "control_rt_priority": (0, "1..99: run the control thread and the inference thread (which executes each "
                               "reply's first action) SCHED_FIFO at this priority (needs CAP_SYS_NICE; "
                               "0 = normal scheduling)"),
    "autostart": (True, "a new instruction starts the loop (an emergency stop still needs /lapa/start)"),
    "status_hz": (2.0, "rate of /lapa/status"),
    "frame_id": ("base", "frame of /lapa/action"),
    "sim_image_size": (64, "robot_backend=sim: camera image side in pixels"),
    "sim_seed": (0, "robot_backend=sim: block placement seed (also used by /lapa/home)"),
    "sim_publish_camera": (True, "robot_backend=sim: publish the simulator's camera on image_topic"),
    "stats_file": ("", "if set, write raw timing samples (JSON) here on shutdown"),
}


class PolicyNode:
    """Holds the rclpy node; `spin()` runs it on a MultiThreadedExecutor until shutdown."""

    def __init__(self, args: list[str] | None = None) -> None:
        from geometry_msgs.msg import TwistStamped
        from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
        from rclpy.node import Node
        from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_sensor_data
        from sensor_msgs.msg import CompressedImage, Image
        from std_msgs.msg import Float32, String
        from std_srvs.srv import Trigger

        self._msgs = {"TwistStamped": TwistStamped, "Float32": Float32, "String": String, "Image": Image}
        self.node = node = Node(NODE_NAME)
        p = declare_parameters(node, PARAMETERS)
        self.params = p
        self.log = node.get_logger()
        if p["robot_backend"] not in BACKENDS:
            raise ValueError(f"robot_backend must be one of {BACKENDS}, got {p['robot_backend']!r}")
        check_priority(int(p["control_rt_priority"]))  # before the threads that use it start
        if p["chunk_mode"] not in CHUNK_MODES:
            raise ValueError(f"chunk_mode must be one of {CHUNK_MODES}, got {p['chunk_mode']!r}")
        safety = SafetyFilter(SafetyLimits(
            max_step_translation_m=p["max_step_translation_m"], max_step_rotation_rad=p["max_step_rotation_rad"],
            workspace_min_m=tuple(p["workspace_min_m"]), workspace_max_m=tuple(p["workspace_max_m"]),
            gripper_close_below=p["gripper_close_below"], gripper_open_above=p["gripper_open_above"],
            max_image_age_s=p["max_image_age_s"], max_action_age_s=p["max_action_age_s"],
            max_server_age_s=p["max_server_age_s"]))
        chunks = ChunkExecutor(p["chunk_mode"], int(p["chunk_n"]), float(p["ensemble_decay"]))
        self.frames = FrameBuffer()
        self.wrist_frames = FrameBuffer() if p["wrist_image_topic"] else None
        self.core = ControlCore(safety, chunks, self.frames, log=self.log, on_command=self._publish_action,
                                settings=CoreSettings(max_robot_state_age_s=p["max_robot_state_age_s"],
                                                      autostart=p["autostart"]), wrist_frames=self.wrist_frames)
        self._robot_ip: str | None = None if p["robot_ip"] == SIM_ROBOT_IP else p["robot_ip"]
        self.control_hz: float | None = p["control_hz"] or None
        self._closing = False

        # ROS interfaces
        sensors = MutuallyExclusiveCallbackGroup()
        services = MutuallyExclusiveCallbackGroup()  # start, home: one at a time
        stopping = ReentrantCallbackGroup()  # stop, emergency stop: never wait behind a move home
        status = MutuallyExclusiveCallbackGroup()
        node.create_subscription(Image, p["image_topic"], self._on_image, qos_profile_sensor_data,
                                 callback_group=sensors)
        compressed = p["compressed_image_topic"] or p["image_topic"].rstrip("/") + "/compressed"
        node.create_subscription(CompressedImage, compressed, self._on_compressed, qos_profile_sensor_data,
                                 callback_group=sensors)
        if p["wrist_image_topic"]:
            node.create_subscription(Image, p["wrist_image_topic"], self._on_wrist_image, qos_profile_sensor_data,
                                     callback_group=sensors)
        node.create_subscription(String, p["instruction_topic"], self._on_instruction, 10, callback_group=sensors)
        if self._robot_ip is None and p["robot_backend"] == "franky":
            latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
            node.create_subscription(String, ROBOT_IP_TOPIC, self._on_robot_ip, latched, callback_group=sensors)
        self.pub_action = node.create_publisher(TwistStamped, "/lapa/action", 10)
        self.pub_gripper = node.create_publisher(Float32, "/lapa/gripper", 10)
        self.pub_latency = node.create_publisher(Float32, "/lapa/latency_ms", 10)
        self.pub_status = node.create_publisher(String, "/lapa/status", 10)
        self.pub_step = node.create_publisher(String, STEP_TOPIC, 50)
        self.pub_camera = (node.create_publisher(Image, p["image_topic"], qos_profile_sensor_data)
                           if p["robot_backend"] == "sim" and p["sim_publish_camera"] else None)
        node.create_service(Trigger, "/lapa/start", self._service(self.core.start), callback_group=services)
        node.create_service(Trigger, "/lapa/stop", self._service(self.core.stop_service), callback_group=stopping)
        node.create_service(Trigger, "/lapa/emergency_stop", self._service(self.core.emergency_stop),
                            callback_group=stopping)
        node.create_service(Trigger, "/lapa/home", self._service(self.core.home), callback_group=services)
        self._control_thread = threading.Thread(target=self._control_loop, name="lapa-control", daemon=True)
        self._wake = threading.Event()
        node.create_timer(1.0 / max(0.1, p["status_hz"]), self._publish_status, callback_group=status)

        api_key = p["api_key"] or os.environ.get("LAPA_API_KEY") or None
        self.worker = InferenceWorker(p["server_url"], self.frames, self.core.on_result, self.core.on_server_error,
                                      api_key=api_key, timeout_s=p["server_timeout_s"],
                                      image_sync_s=p["image_sync_s"], max_image_wait_s=p["max_image_wait_s"],
                                      wrist_frames=self.wrist_frames, rt_priority=int(p["control_rt_priority"]))
        self.core.worker = self.worker
        self.worker.start()
        self._setup_thread = threading.Thread(target=self._setup, name="lapa-setup", daemon=True)
        self._setup_thread.start()

    # ------------------------------------------------------------------ setup (its own thread)
    def _setup(self) -> None:
        """Wait for the control rate (parameter or server metadata) and the robot address; connect."""
        p = self.params
        while self.control_hz is None and not self._closing:
            meta = self.worker.metadata
            if meta and meta.get("control_hz"):
                self.control_hz = float(meta["control_hz"])
                break
            self.core.set_waiting(f"waiting for the policy server at {p['server_url']}")
            time.sleep(0.05)
        while p["robot_backend"] == "franky" and self._robot_ip is None and not self._closing:
            self.core.set_waiting(f"waiting for lapa_sim to announce the robot address on {ROBOT_IP_TOPIC}")
            time.sleep(0.05)
        if self._closing:
            return
        try:
            if p["robot_backend"] == "franky":
                from lapa_ros.backends.franky_backend import FrankyBackend

                self.core.set_waiting(f"connecting to the robot at {self._robot_ip}")
                backend = FrankyBackend(self._robot_ip, self.control_hz, p["connect_timeout_s"],
                                        p["relative_dynamics_factor"])
            else:
                from lapa_ros.backends.sim_backend import SimBackend

                backend = SimBackend(self.control_hz, int(p["sim_image_size"]), int(p["sim_seed"]),
                                     on_image=self._publish_sim_image if self.pub_camera else None)
            backend.connect()
        except Exception as e:  # noqa: BLE001 - reported on /lapa/status, never a crash loop
            self.core.fault(f"robot backend {p['robot_backend']} failed to connect: {e}")
            self.log.error(self.core.reason)
            return
        self.core.attach_backend(backend, self.control_hz)
        self.log.info(f"robot backend {backend.name} connected; control at {self.control_hz:g} Hz")
        self._control_thread.start()

    def _control_loop(self) -> None:
        """The control clock: a thread of its own on absolute deadlines. (An rclpy timer is
        dispatched by the executor's Python wait loop, shared with every callback: several ms of
        extra jitter on a busy machine.)"""
        period = 1.0 / self.control_hz
        priority = int(self.params["control_rt_priority"])
        refused = make_thread_realtime(priority)
        if refused:
            self.log.warning(f"control thread stays at normal priority: {refused}")
        elif priority:
            self.log.info(f"control thread: SCHED_FIFO priority {priority}")
        next_t = time.monotonic()
        while not self._closing:
            try:
                self.core.tick()
            except Exception as e:  # noqa: BLE001 - any error stops the robot and is reported
                self.core.fault(f"control loop error: {type(e).__name__}: {e}")
            next_t += period
            delay = next_t - time.monotonic()
            if delay < -period:  # overran by more than a period: skip the missed ticks
                next_t = time.monotonic()
                delay = 0.0
            self._wake.wait(max(0.0, delay))

    def _on_robot_ip(self, msg) -> None:
        if self._robot_ip is None and msg.data:
            self._robot_ip = msg.data
            self.log.info(f"robot address from lapa_sim: {msg.data}")

    # ------------------------------------------------------------------ inputs
    def _on_image(self, msg, put=None) -> None:
        from lapa_ros.images import image_to_rgb, stamp_seconds

        try:
            image = image_to_rgb(msg)
        except ValueError as e:
            self.log.warning(f"dropping an image: {e}", throttle_duration_sec=5.0)
            return
        (put or self.core.put_frame)(image, stamp_seconds(msg.header))

    def _on_wrist_image(self, msg) -> None:
        self._on_image(msg, self.core.put_wrist_frame)

    def _on_compressed(self, msg) -> None:
        from lapa_ros.images import compressed_format_ok, stamp_seconds

        if not compressed_format_ok(msg.format):
            self.log.warning(f"dropping a {msg.format!r} CompressedImage: JPEG or PNG only",
                             throttle_duration_sec=5.0)
            return
        self.core.put_frame(bytes(msg.data), stamp_seconds(msg.header))

    def _on_instruction(self, msg) -> None:
        self.core.on_instruction(msg.data)

    @staticmethod
    def _service(handler):
        """A std_srvs/Trigger callback around a core service `() -> (success, message)`."""

        def callback(_req, resp):
            resp.success, resp.message = handler()
            return resp

        return callback

    # ------------------------------------------------------------------ outputs
    def _publish_action(self, action: np.ndarray, latency_ms: float | None) -> None:
        from lapa.geometry import rotation_error, rpy_to_matrix
        from lapa_ros.images import set_stamp

        msg = self._msgs["TwistStamped"]()
        set_stamp(msg.header, time.time())
        msg.header.frame_id = self.params["frame_id"]
        v = action[:3] * self.control_hz
        w = rotation_error(rpy_to_matrix(action[3:6]), np.eye(3)) * self.control_hz
        msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = (float(x) for x in v)
        msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z = (float(x) for x in w)
        self.pub_action.publish(msg)
        self.pub_gripper.publish(self._msgs["Float32"](data=float(action[6])))
        if latency_ms is not None:
            self.pub_latency.publish(self._msgs["Float32"](data=float(latency_ms)))
        self.pub_step.publish(self._msgs["String"](data=json.dumps(self._step_record(action, latency_ms))))

    def _step_record(self, action: np.ndarray, latency_ms: float | None) -> dict:
        """What /lapa/step carries: the executed action and the measured state it was applied from."""
        state = self.core.robot_state
        return {"stamp_s": time.time(), "action": [round(float(x), 6) for x in action],
                "state": None if state is None else [round(float(x), 6) for x in state.as_vector()],
                "instruction": self.core.instruction, "latency_ms": latency_ms, "control_hz": self.control_hz}

    def _publish_sim_image(self, image: np.ndarray, stamp_s: float) -> None:
        from lapa_ros.images import rgb_to_image

        self.pub_camera.publish(rgb_to_image(image, stamp_s, "scene_camera"))

    def status(self) -> dict:
        meta = self.worker.metadata or {}
        return {
            **self.core.status(), "backend": self.params["robot_backend"], "robot_ip": self._robot_ip,
            "frames_rejected": self.frames.rejected,  # stamps that did not advance (frozen camera, clock jumps)
            "server": {"url": self.params["server_url"], "connected": self.worker.connected,
                       "model_hash": meta.get("model_hash"), "backend": meta.get("backend"),
                       "error": self.worker.last_error},
        }

    def _publish_status(self) -> None:
        self.pub_status.publish(self._msgs["String"](data=json.dumps(self.status())))

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._control_thread.is_alive():
            self._control_thread.join(2.0)
        if self.params["stats_file"]:
            try:
                self.core.write_stats(self.params["stats_file"], self.status())
            except OSError as e:
                self.log.warning(f"could not write {self.params['stats_file']}: {e}")
        self.worker.close()
        backend = self.core.detach_backend()
        if backend is not None:
            try:
                backend.close()
            except Exception as e:  # noqa: BLE001 - shutting down anyway
                self.log.warning(f"closing the robot backend: {e}")
        self.node.destroy_node()


def main(argv: list[str] | None = None) -> int:
    from lapa_ros.ros_main import run_node

    # A thread waking for its control tick waits for the GIL up to the switch interval (5 ms by
    # default) while another thread runs Python: 1 ms keeps the tick on time.
    sys.setswitchinterval(0.001)
    return run_node(PolicyNode, argv, threads=4)


if __name__ == "__main__":
    sys.exit(main())
