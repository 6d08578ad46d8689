"""A policy-server backend that runs the scripted expert: the demo's stand-in for a trained model.

`lapa-server --backend lapa_ros.expert_policy:make_policy` serves it. The expert plans from
privileged simulator state (block poses), which it reads from lapa_sim's `/lapa_sim/scene` topic
through a small rclpy node in a background thread of the server process; the robot state comes
with every request (`state`), as it would for a model. Everything else is the real loop: camera
image -> policy node -> server -> chunk -> safety filter -> franky -> franky-sim.

It plans again whenever the instruction or lapa_sim's episode changes. An instruction that names
no task, or a request before any scene arrived (the server's warm-up), gets a hold action.
"""

from __future__ import annotations

import atexit
import json
import threading
import time
from typing import Any

import numpy as np

from lapa.action import RobotState
from lapa.geometry import quat_wxyz_to_matrix
from lapa.policy_protocol import check_observation
from lapa.sim.expert import ScriptedExpert
from lapa.vocabulary import parse_instruction

SCENE_TOPIC = "/lapa_sim/scene"
IMAGE_SIZE = (64, 64)


class _SceneView:
    def __init__(self, scene: dict, state: RobotState) -> None:
        self._scene, self._state = scene, state

    def robot_state(self) -> RobotState:
        return self._state

    def block_pose(self, colour: str) -> tuple[np.ndarray, np.ndarray]:
        v = np.asarray(self._scene["blocks"][colour], float)
        return v[:3], quat_wxyz_to_matrix(v[3:7])


class ExpertPolicy:
    backend = "scripted-expert"

    def __init__(self, control_hz: float = 10.0) -> None:
        self.control_hz = control_hz
        self._scene: dict | None = None
        self._lock = threading.Lock()
        self._expert: ScriptedExpert | None = None
        self._key: tuple | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name="expert-scene", daemon=True)
        self._thread.start()
        atexit.register(self.close)  # the server never calls close(); a live rclpy thread at exit aborts

    @property
    def metadata(self) -> dict[str, Any]:
        return {"image_size": list(IMAGE_SIZE), "chunk_size": 1, "action_dim": 7, "control_hz": self.control_hz,
                "model_hash": "scripted-expert", "backend": self.backend}

    def _spin(self) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from std_msgs.msg import String

        context = Context()
        rclpy.init(context=context, signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
        node = rclpy.create_node("lapa_expert_policy", context=context)
        node.create_subscription(String, SCENE_TOPIC, self._on_scene, 10)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        try:
            while not self._stop.is_set() and context.ok():
                executor.spin_once(timeout_sec=0.1)
        finally:
            node.destroy_node()
            context.try_shutdown()

    def _on_scene(self, msg) -> None:
        scene = json.loads(msg.data)
        with self._lock:
            self._scene = scene

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        _image, instruction, state = check_observation(obs, IMAGE_SIZE)
        hold = np.array([[0, 0, 0, 0, 0, 0, 1.0]], np.float32)
        task = parse_instruction(instruction)
        with self._lock:
            scene = self._scene
        if task is None or scene is None or state is None:
            return {"actions": hold, "model_ms": 1e3 * (time.perf_counter() - t0)}
        view = _SceneView(scene, RobotState.from_vector(state))
        key = (instruction, scene.get("episode"))
        if key != self._key:
            self._key = key
            self._expert = ScriptedExpert(task, view)
        action = self._expert.act(view)
        return {"actions": action[None, :].astype(np.float32), "model_ms": 1e3 * (time.perf_counter() - t0)}

    def reset(self) -> None:
        self._key = None

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(2.0)


def make_policy(model_dir: str | None = None, threads: int | None = None) -> ExpertPolicy:
    """The server-side factory (`--backend lapa_ros.expert_policy:make_policy`); model_dir is unused."""
    return ExpertPolicy()
