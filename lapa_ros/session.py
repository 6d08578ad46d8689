"""The whole loop in processes, driven from Python: what `lapa demo` and `lapa bench loop` run.

`LoopSession` starts the policy server, lapa_sim (franky-sim + scene camera) and lapa_policy
(franky backend) through `Bringup` on a private ROS domain, plus a small client node in this
process that records the camera, gives instructions and scores episodes via lapa_sim's success
topic. `close()` stops every process it started, whatever happened.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lapa.vocabulary import FAMILIES, parse_instruction
from lapa_ros.bringup import Bringup
from lapa_ros.launch_plan import (
    DEFAULT_SERVER_BACKEND,
    EXPERT_MODEL,
    LaunchPlan,
    NodeSpec,
    ProcessSpec,
    execution_parameters,
)
from lapa_ros.ros_env import apply_ros_env, private_domain_id


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class EpisodeResult:
    instruction: str
    task: str | None
    seed: int
    success: bool
    duration_s: float
    source: str = "typed"
    frames: int = 0
    error: str | None = None


@dataclass
class SessionConfig:
    out_dir: Path
    model: str = EXPERT_MODEL  # a checkpoint directory, or "expert"
    server_backend: str = DEFAULT_SERVER_BACKEND  # for a checkpoint (the expert has its own)
    control_hz: float = 0.0  # 0: the model's
    camera_hz: float = 30.0
    image_size: int = 128
    server_threads: int = 1
    server_rt_priority: int = 0  # SCHED_FIFO for the server's event loop and model (lapa/realtime.py)
    record_every: int = 2  # keep every n-th camera frame for the video
    policy_params: dict = field(default_factory=dict)
    domain_id: int | None = None
    console_port: int | None = None  # also start lapa_console (the operator's page) on this port
    console_params: dict = field(default_factory=dict)
    server_intent: str | None = None  # the policy server also serves the intent preview from this directory



def call_trigger(client, service: str, timeout_s: float):
    """A std_srvs/Trigger call through an rclpy client whose node another thread spins -> the
    response; TimeoutError when the service is missing or silent for `timeout_s`."""
    from std_srvs.srv import Trigger

    if not client.wait_for_service(timeout_sec=timeout_s):
        raise TimeoutError(f"{service} is not available")
    future = client.call_async(Trigger.Request())
    deadline = time.monotonic() + timeout_s
    while not future.done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{service} did not answer within {timeout_s:g} s")
        time.sleep(0.005)
    return future.result()

class LoopSession:
    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        self.out_dir = Path(config.out_dir)
        self.port = free_port()
        self.domain_id = config.domain_id if config.domain_id is not None else private_domain_id()
        self.stats_file = self.out_dir / "policy_stats.json"
        self.bringup: Bringup | None = None
        self.frames: list[tuple[float, np.ndarray]] = []
        self.recording = False
        self.policy_status: dict | None = None
        self.policy_status_time = 0.0
        self.sim_status: dict | None = None
        self._frame_count = 0
        self._lock = threading.Lock()
        self._context = None
        self._spin_thread: threading.Thread | None = None
        self.startup_s: float | None = None

    # ------------------------------------------------------------------ processes
    def plan(self) -> LaunchPlan:
        c = self.config
        if c.model == EXPERT_MODEL:
            server_args = ("--backend", "lapa_ros.expert_policy:make_policy")
        else:
            server_args = ("--model", str(c.model), "--backend", c.server_backend)
        if c.server_intent:
            server_args += ("--intent", str(c.server_intent))
        server = ProcessSpec("lapa_server", "lapa-server", "policy_server.app",
                             (*server_args, "--host", "127.0.0.1", "--port", str(self.port), "--threads",
                              str(c.server_threads), "--rt-priority", str(c.server_rt_priority), "--log-level",
                              "warning"))
        sim = NodeSpec("lapa_sim", "lapa_sim_node", "lapa_ros.sim_node", {
            "image_size": c.image_size, "camera_hz": c.camera_hz})
        policy = NodeSpec("lapa_policy", "lapa_policy_node", "lapa_ros.policy_node", {
            "server_url": f"ws://127.0.0.1:{self.port}", "robot_backend": "franky", "robot_ip": "sim",
            "control_hz": float(c.control_hz), "stats_file": str(self.stats_file), "status_hz": 10.0,
            **execution_parameters(str(c.model)), **c.policy_params})
        nodes = (sim, policy)
        if c.console_port is not None:
            nodes += (NodeSpec("lapa_console", "lapa_console", "lapa_ros.console.node", {
                "host": "127.0.0.1", "port": int(c.console_port), "server_url": f"ws://127.0.0.1:{self.port}",
                "record_dir": str(self.out_dir / "recordings"), **c.console_params}),)
        return LaunchPlan((server,), nodes)

    def start(self, timeout_s: float = 180.0) -> float:
        """Start everything; return once the robot is connected. Raises with the logs on failure."""
        t0 = time.monotonic()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.stats_file.exists():
            self.stats_file.unlink()
        env = apply_ros_env(self.domain_id)
        env["OMP_NUM_THREADS"] = str(self.config.server_threads)
        self.bringup = Bringup(self.plan(), env, log_dir=self.out_dir / "logs").start()
        self._start_client()
        while True:
            dead = self.bringup.dead()
            if dead:
                name = next(iter(dead))
                raise RuntimeError(f"{name} exited with {dead[name]} while starting:\n{self.bringup.log_tail(name)}")
            s = self.policy_status
            if s and s.get("state") == "fault":
                raise RuntimeError(f"lapa_policy failed to start: {s.get('reason')}")
            if s and s.get("state") in ("idle", "stopped", "running") and self.sim_status:
                break
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"the loop was not ready after {timeout_s:g} s; last status: {s}")
            time.sleep(0.1)
        self.startup_s = time.monotonic() - t0
        return self.startup_s

    def _start_client(self) -> None:
        import rclpy
        from rcl_interfaces.srv import SetParameters
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image
        from std_msgs.msg import String
        from std_srvs.srv import Trigger

        self._context = Context()
        rclpy.init(context=self._context, signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
        node = self.node = rclpy.create_node("lapa_session", context=self._context)
        node.create_subscription(String, "/lapa/status", self._on_policy_status, 10)
        node.create_subscription(String, "/lapa_sim/task_status", self._on_sim_status, 10)
        node.create_subscription(Image, "/camera/image_raw", self._on_image, qos_profile_sensor_data)
        self.pub_instruction = node.create_publisher(String, "/lapa/instruction", 10)
        self._String = String
        self._clients = {name: node.create_client(Trigger, name) for name in
                         ("/lapa/start", "/lapa/stop", "/lapa/emergency_stop", "/lapa/home", "/lapa_sim/reset")}
        self._set_params = node.create_client(SetParameters, "/lapa_sim/set_parameters")
        self._executor = SingleThreadedExecutor(context=self._context)  # callbacks only store what they hear
        self._executor.add_node(node)
        self._spin_thread = threading.Thread(target=self._spin, name="lapa-session-spin", daemon=True)
        self._spin_thread.start()

    def _spin(self) -> None:
        try:
            while self._context.ok():
                self._executor.spin_once(timeout_sec=0.1)
        except Exception:  # noqa: BLE001 - the context was shut down under us
            pass

    def _on_policy_status(self, msg) -> None:
        self.policy_status = json.loads(msg.data)
        self.policy_status_time = time.monotonic()

    def _on_sim_status(self, msg) -> None:
        self.sim_status = json.loads(msg.data)

    def _on_image(self, msg) -> None:
        if not self.recording:
            return
        self._frame_count += 1
        if self._frame_count % self.config.record_every:
            return
        from lapa_ros.images import image_to_rgb

        with self._lock:
            self.frames.append((time.time(), image_to_rgb(msg)))

    # ------------------------------------------------------------------ commands
    def call(self, service: str, timeout_s: float = 30.0) -> str:
        result = call_trigger(self._clients[service], service, timeout_s)
        if not result.success:
            raise RuntimeError(f"{service} failed: {result.message}")
        return result.message

    def set_seed(self, seed: int) -> None:
        from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
        from rcl_interfaces.srv import SetParameters

        if not self._set_params.wait_for_service(timeout_sec=10.0):
            raise TimeoutError("/lapa_sim/set_parameters is not available")
        req = SetParameters.Request(parameters=[Parameter(name="seed", value=ParameterValue(
            type=ParameterType.PARAMETER_INTEGER, integer_value=int(seed)))])
        future = self._set_params.call_async(req)
        deadline = time.monotonic() + 10.0
        while not future.done():
            if time.monotonic() > deadline:
                raise TimeoutError("setting lapa_sim's seed timed out")
            time.sleep(0.01)
        if not future.result().results[0].successful:
            raise RuntimeError(f"lapa_sim refused seed {seed}: {future.result().results[0].reason}")

    def say(self, text: str) -> None:
        """The same message `lapa say` publishes."""
        deadline = time.monotonic() + 5.0
        while self.pub_instruction.get_subscription_count() < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # lapa_policy and lapa_sim
        self.pub_instruction.publish(self._String(data=text))

    def run_episode(self, instruction: str, seed: int, sim_timeout_s: float | None = None,
                    source: str = "typed", wall_timeout_s: float = 180.0) -> EpisodeResult:
        """Stop, home, reset the blocks to `seed`, give the instruction, wait for success or timeout.

        The time limit is in simulated seconds (2x the task's step budget at 10 Hz): franky-sim runs
        slower than real time on a loaded machine, and the robot only moves as fast as its clock.
        """
        task = parse_instruction(instruction)
        if sim_timeout_s is None:
            steps = FAMILIES[task.family].max_steps if task else 60
            sim_timeout_s = 2.0 * steps / 10.0
        self.call("/lapa/stop")
        try:
            self.call("/lapa/home", timeout_s=120.0)
        except RuntimeError:  # e.g. the robot connection was lost: /lapa/start recovers (reconnects)
            self.call("/lapa/start", timeout_s=60.0)
            self.call("/lapa/stop")
            self.call("/lapa/home", timeout_s=120.0)
        self.set_seed(seed)
        self.call("/lapa_sim/reset")
        time.sleep(0.3)  # the reset's scene reaches subscribers (the expert plans from it)
        self.call("/lapa/start")
        n0 = len(self.frames)
        self.recording = True
        t0 = time.monotonic()
        sim_t0 = (self.sim_status or {}).get("sim_time_s", 0.0)
        self.say(instruction)
        success = False
        while time.monotonic() - t0 < wall_timeout_s:
            s = self.sim_status or {}
            if s.get("instruction") == instruction and s.get("success"):
                success = True
                time.sleep(0.5)  # show the result in the video
                break
            if s.get("sim_time_s", 0.0) - sim_t0 > sim_timeout_s:
                break
            p = self.policy_status or {}
            if self.policy_status_time > t0 + 0.3 and p.get("state") == "fault":
                break
            time.sleep(0.05)
        duration = time.monotonic() - t0
        self.recording = False
        self.call("/lapa/stop")
        return EpisodeResult(instruction, task.name if task else None, seed, success, duration, source,
                             len(self.frames) - n0)

    # ------------------------------------------------------------------ results
    def policy_stats(self) -> dict | None:
        """lapa_policy's raw timing samples (written when it shuts down: call after close())."""
        if not self.stats_file.exists():
            return None
        return json.loads(self.stats_file.read_text())

    def close(self) -> dict[str, int]:
        codes: dict[str, int] = {}
        if self.bringup is not None:
            codes = self.bringup.stop()
            self.bringup = None
        if self._context is not None:
            self._context.try_shutdown()
            if self._spin_thread is not None:
                self._spin_thread.join(2.0)
            self._context = None
        return codes

    def __enter__(self) -> LoopSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _paired_p50(stats: dict, whole: str, part: str) -> float | None:
    """p50 of whole - part over the replies that have both (a reply's own difference, not of p50s)."""
    a, b = np.asarray(stats.get(whole, [])), np.asarray(stats.get(part, []))
    n = min(len(a), len(b))
    return round(float(np.percentile(a[-n:] - b[-n:], 50)), 3) if n else None


def summarize_stats(stats: dict, control_hz: float) -> dict:
    """Control-rate and latency numbers from lapa_policy's samples."""
    ticks = np.diff(np.asarray(stats.get("tick_mono_s", []))) * 1e3
    ticks = ticks[5:]  # the timer's first periods overlap start-up
    period_ms = 1e3 / control_hz
    lat = np.asarray(stats.get("latency_ms", []))
    cmds = np.diff(np.asarray(stats.get("command_mono_s", []))) * 1e3
    model = np.asarray(stats.get("model_ms", []))

    def pct(a: np.ndarray, q: float) -> float | None:
        return round(float(np.percentile(a, q)), 3) if len(a) else None

    return {
        "control_hz": control_hz,
        "ticks": int(len(ticks)),
        "achieved_hz": round(float(1e3 / ticks.mean()), 3) if len(ticks) else None,
        "jitter_p50_ms": pct(np.abs(ticks - period_ms), 50),
        "jitter_p99_ms": pct(np.abs(ticks - period_ms), 99),
        "jitter_max_ms": round(float(np.abs(ticks - period_ms).max()), 3) if len(ticks) else None,
        "commands": int(len(cmds) + 1) if len(stats.get("command_mono_s", [])) else 0,
        "command_interval_p50_ms": pct(cmds, 50),
        "latency_p50_ms": pct(lat, 50),
        "latency_p90_ms": pct(lat, 90),
        "latency_p99_ms": pct(lat, 99),
        "model_p50_ms": pct(model, 50),
        # where the latency goes (p50): camera frame capture -> received by lapa_policy (rendering
        # and DDS), received -> request sent, request -> reply (client, server, model)
        "camera_to_node_p50_ms": pct(np.asarray(stats.get("camera_ms", [])), 50),
        "frame_wait_p50_ms": pct(np.asarray(stats.get("frame_wait_ms", [])), 50),
        "round_trip_p50_ms": pct(np.asarray(stats.get("round_trip_ms", [])), 50),
        # the round trip's parts: the server's own time beside the model (parse, hand-off, reply) and
        # the client and transport (round trip - server time)
        "server_p50_ms": pct(np.asarray(stats.get("server_ms", [])), 50),
        "server_overhead_p50_ms": _paired_p50(stats, "server_ms", "model_ms"),
        "transport_p50_ms": _paired_p50(stats, "round_trip_ms", "server_ms"),
        # reply in hand -> command sent (chunk, safety filter, robot call), and the robot call alone
        "reply_to_command_p50_ms": pct(np.asarray(stats.get("reply_to_command_ms", [])), 50),
        "robot_call_p50_ms": pct(np.asarray(stats.get("robot_call_ms", [])), 50),
        "latency_samples": int(len(lat)),
        # the stack's own part: the frame's arrival at lapa_policy -> the command handed to franky
        # (frame wait for the tick, request, server, model, reply, safety filter, franky call)
        "node_to_command_p50_ms": pct(np.asarray(stats.get("node_to_command_ms", [])), 50),
        "node_to_command_p99_ms": pct(np.asarray(stats.get("node_to_command_ms", [])), 99),
    }
