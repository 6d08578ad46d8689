"""The stack `lapa bench faults` injects faults into, and what it records of it.

`FaultStack` is a `LoopSession` (policy server, lapa_sim with franky-sim and its camera, lapa_policy
with the franky backend, real processes on a private ROS domain) whose server runs
`bench.fault_policy` (the expert, or `--model` through onnxruntime, misbehaving on demand through a
mode file), whose lapa_sim publishes the scene at 50 Hz (the arm's ground truth: TCP position and
simulated time), and which can kill, freeze, resume and restart its processes one by one.

`Trace` keeps, on the bench's clock (time.monotonic): the TCP positions from /lapa_sim/scene and every
executed command from /lapa/step at the time they were sent (their wall stamps), every /lapa/status at
receipt.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

from bench.fault_policy import MODE_FILE_ENV, MODEL_ENV
from lapa_ros.bringup import node_command, process_command, write_params
from lapa_ros.launch_plan import EXPERT_MODEL, LaunchPlan
from lapa_ros.session import LoopSession, SessionConfig, call_trigger

SCENE_HZ = 50.0
FAULT_BACKEND = "bench.fault_policy:make_policy"


class Trace:
    """What the bench hears from the stack, with receipt times (monotonic)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.tcp: list[tuple[float, float, np.ndarray]] = []  # (t, sim time s, xyz m)
        self.steps: list[tuple[float, np.ndarray]] = []  # (t sent by lapa_policy, executed action (7,))
        self.status: list[tuple[float, dict]] = []

    @staticmethod
    def _sent(record: dict) -> float:
        """When a message was sent (its wall stamp on this clock), not when it got here: a loaded
        machine delays a message by more than a control period now and then."""
        now = time.monotonic()
        if "stamp_s" not in record:
            return now
        return min(float(record["stamp_s"]) - (time.time() - now), now)

    def on_scene(self, msg) -> None:
        scene = json.loads(msg.data)
        with self._lock:
            self.tcp.append((self._sent(scene), float(scene["sim_time_s"]), np.asarray(scene["tcp_pos_m"], float)))

    def on_step(self, msg) -> None:
        record = json.loads(msg.data)
        with self._lock:
            self.steps.append((self._sent(record), np.asarray(record["action"], float)))

    def on_status(self, msg) -> None:
        with self._lock:
            self.status.append((time.monotonic(), json.loads(msg.data)))

    def window(self, t0: float, t1: float) -> dict:
        """Copies of the records received in [t0, t1]."""
        with self._lock:
            return {"tcp": [r for r in self.tcp if t0 <= r[0] <= t1],
                    "steps": [r for r in self.steps if t0 <= r[0] <= t1],
                    "status": [r for r in self.status if t0 <= r[0] <= t1]}

    def prune(self, before: float) -> None:
        with self._lock:
            self.tcp = [r for r in self.tcp if r[0] >= before]
            self.steps = [r for r in self.steps if r[0] >= before]
            self.status = [r for r in self.status if r[0] >= before]


class FaultStack(LoopSession):
    def __init__(self, out_dir: Path, model: str = EXPERT_MODEL, camera_hz: float = 15.0,
                 image_size: int = 64, policy_params: dict | None = None) -> None:
        super().__init__(SessionConfig(out_dir=out_dir, model=model, camera_hz=camera_hz, image_size=image_size,
                                       control_hz=10.0, record_every=10 ** 9, policy_params=policy_params or {}))
        self.mode_file = Path(out_dir) / "fault_mode.txt"
        self.trace = Trace()
        self.commands: dict[str, list[str]] = {}
        self._params_dir = Path(out_dir) / "params"

    # ------------------------------------------------------------------ processes
    def plan(self) -> LaunchPlan:
        base = super().plan()
        server = dataclasses.replace(base.processes[0], arguments=(
            "--backend", FAULT_BACKEND, "--host", "127.0.0.1", "--port", str(self.port), "--threads", "1",
            "--log-level", "warning"))
        nodes = tuple(dataclasses.replace(n, parameters={**n.parameters, "status_hz": SCENE_HZ})
                      if n.name == "lapa_sim" else n for n in base.nodes)
        return LaunchPlan((server,), nodes)

    def start(self, timeout_s: float = 180.0) -> float:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.set_mode("")
        os.environ[MODE_FILE_ENV] = str(self.mode_file)  # inherited by the server
        if self.config.model != EXPERT_MODEL:
            os.environ[MODEL_ENV] = str(self.config.model)
        started = super().start(timeout_s)
        from std_msgs.msg import String

        self.node.create_subscription(String, "/lapa_sim/scene", self.trace.on_scene, 50)
        self.node.create_subscription(String, "/lapa/step", self.trace.on_step, 50)
        self.node.create_subscription(String, "/lapa/status", self.trace.on_status, 50)
        from std_srvs.srv import Trigger

        for name in ("/lapa_sim/reflex", "/lapa_sim/drop_connection"):
            self._clients[name] = self.node.create_client(Trigger, name)
        self._params_dir.mkdir(parents=True, exist_ok=True)
        the_plan = self.plan()
        self.commands = {p.name: process_command(p) for p in the_plan.processes}
        self.commands.update({n.name: node_command(n, write_params(n, self._params_dir)) for n in the_plan.nodes})
        return started

    def proc(self, name: str) -> subprocess.Popen:
        return self.bringup.procs[name]

    def signal(self, name: str, sig: int) -> None:
        proc = self.proc(name)
        if proc.poll() is None:
            os.killpg(proc.pid, sig)

    def kill(self, name: str) -> None:
        self.signal(name, signal.SIGKILL)
        self.proc(name).wait(10.0)

    def terminate(self, name: str) -> None:
        """A graceful stop (SIGTERM for the server, SIGINT for a node), SIGKILL after 10 s."""
        self.signal(name, signal.SIGTERM if name == "lapa_server" else signal.SIGINT)
        try:
            self.proc(name).wait(10.0)
        except subprocess.TimeoutExpired:
            self.kill(name)

    def restart(self, name: str) -> None:
        """Start `name` again (after it was killed or stopped) with the command it started with."""
        if self.proc(name).poll() is None:
            self.terminate(name)
        self.bringup.start_one(name, self.commands[name])

    def alive(self, name: str) -> bool:
        return self.proc(name).poll() is None

    # ------------------------------------------------------------------ fault switches
    def set_mode(self, mode: str) -> None:
        tmp = self.mode_file.with_suffix(".tmp")
        tmp.write_text(mode)
        tmp.replace(self.mode_file)  # the server never reads half a mode

    def set_camera_fault(self, mode: str) -> None:
        self.set_sim_parameter("camera_fault", mode)

    def set_sim_parameter(self, name: str, value: str) -> None:
        from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
        from rcl_interfaces.srv import SetParameters

        if not self._set_params.wait_for_service(timeout_sec=10.0):
            raise TimeoutError("/lapa_sim/set_parameters is not available")
        req = SetParameters.Request(parameters=[Parameter(name=name, value=ParameterValue(
            type=ParameterType.PARAMETER_STRING, string_value=value))])
        future = self._set_params.call_async(req)
        deadline = time.monotonic() + 10.0
        while not future.done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"setting lapa_sim's {name} timed out")
            time.sleep(0.005)
        if not future.result().results[0].successful:
            raise RuntimeError(f"lapa_sim refused {name}={value!r}: {future.result().results[0].reason}")

    def trigger(self, service: str, timeout_s: float = 30.0) -> tuple[bool, str]:
        """A Trigger call that reports refusal instead of raising."""
        result = call_trigger(self._clients[service], service, timeout_s)
        return bool(result.success), result.message

    # ------------------------------------------------------------------ waiting
    def wait_sim_restarted(self, after: float, timeout_s: float = 120.0) -> None:
        """A restarted lapa_sim: its first task status after `after` (it announces its new address)."""
        self.sim_status = None
        deadline = time.monotonic() + timeout_s
        while self.sim_status is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"lapa_sim did not come back within {timeout_s:g} s")
            time.sleep(0.05)

    def wait_status(self, predicate, timeout_s: float, after: float | None = None) -> dict | None:
        """The first /lapa/status (received after `after`) satisfying predicate, or None on timeout."""
        deadline = time.monotonic() + timeout_s
        after = time.monotonic() if after is None else after
        while time.monotonic() < deadline:
            s = self.policy_status
            if s is not None and self.policy_status_time > after and predicate(s):
                return s
            time.sleep(0.02)
        return None
