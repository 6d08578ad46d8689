"""Helpers for tests with real ROS 2 processes on loopback (private ROS_DOMAIN_ID from conftest.py).

`NodeProcess` runs `python -m <module> --ros-args -p ...` and always stops it; `RosProbe` is an
rclpy node in the test process (its own context and executor thread) that publishes, records
what it hears and calls services.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS_DIR = Path(__file__).resolve().parent


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.02):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


def ros_param(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ",".join(ros_param(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)  # quoted: "0" stays a string
    return repr(value)


class NodeProcess:
    def __init__(self, module: str, log_path: Path, params: dict | None = None, env: dict | None = None) -> None:
        self.cmd = [sys.executable, "-m", module, "--ros-args"]
        for k, v in (params or {}).items():
            self.cmd += ["-p", f"{k}:={ros_param(v)}"]
        self.log_path = log_path
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), str(REPO_ROOT)]),
                    "OMP_NUM_THREADS": "1", **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self) -> NodeProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.cmd, cwd=REPO_ROOT, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        for sig, wait_s in ((signal.SIGINT, timeout_s), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait_s)
            except subprocess.TimeoutExpired:
                pass
        if getattr(self, "_log", None):
            self._log.close()
        return self.proc.returncode


class RosProbe:
    """An rclpy node in the test process: publishers, recorded subscriptions, Trigger calls."""

    def __init__(self, name: str = "lapa_test_probe") -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self.context = Context()
        rclpy.init(context=self.context, signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
        self.node = rclpy.create_node(name, context=self.context)
        self.records: dict[str, list] = {}
        self._lock = threading.Lock()
        self._executor = SingleThreadedExecutor(context=self.context)  # the callbacks only record
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            while self.context.ok():
                self._executor.spin_once(timeout_sec=0.05)
        except Exception:  # noqa: BLE001 - shut down under us
            pass

    def record(self, msg_type, topic: str, qos=10, convert: Callable | None = None) -> list:
        """Keep (receipt wall time, message or convert(message)) of everything on topic."""
        out: list = []
        self.records[topic] = out

        def cb(msg) -> None:
            item = convert(msg) if convert else msg
            with self._lock:
                out.append((time.time(), item))

        self.node.create_subscription(msg_type, topic, cb, qos)
        return out

    def record_status(self, topic: str = "/lapa/status") -> list:
        from std_msgs.msg import String

        return self.record(String, topic, convert=lambda m: json.loads(m.data))

    def latest(self, topic: str):
        items = self.records.get(topic) or []
        return items[-1][1] if items else None

    def publisher(self, msg_type, topic: str, qos=10):
        return self.node.create_publisher(msg_type, topic, qos)

    def say(self, text: str, topic: str = "/lapa/instruction", listeners: int = 1) -> None:
        from std_msgs.msg import String

        pub = self.publisher(String, topic)
        wait_for(lambda: pub.get_subscription_count() >= listeners, 20, f"a subscriber on {topic}")
        pub.publish(String(data=text))

    def trigger(self, service: str, timeout_s: float = 20.0) -> tuple[bool, str]:
        from std_srvs.srv import Trigger

        client = self.node.create_client(Trigger, service)
        try:
            if not client.wait_for_service(timeout_sec=timeout_s):
                raise TimeoutError(f"{service} not available")
            future = client.call_async(Trigger.Request())
            wait_for(future.done, timeout_s, f"the answer of {service}")
            result = future.result()
            return bool(result.success), result.message
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        self.context.try_shutdown()
        self._thread.join(2.0)


def make_tiny_checkpoint(path: Path, image_size: int = 32, chunk_size: int = 3, control_hz: float = 10.0,
                         cameras: tuple[str, ...] = ("scene",)) -> Path:
    """A tiny random action VLA of the shipped model's preset (`tabletop`: FiLM conv stem, keypoints, proprio
    state, l1 head), so the loop tests exercise the state the node sends with every request."""
    import torch

    from lapa.policy.action_tokenizer import ActionTokenizer
    from lapa.policy.checkpoint_io import save_vla
    from lapa.policy.config import VLAConfig
    from lapa.policy.model import VLA

    rng = np.random.default_rng(0)
    actions = rng.normal(0, 0.01, (300, 7))
    actions[:, 6] = rng.random(300) < 0.5
    tokenizer = ActionTokenizer.fit_new(actions)
    torch.manual_seed(0)
    config = VLAConfig.preset("tabletop", image_size=image_size, patch_size=8, dim=64, depth=2, heads=2,
                              keypoints=8, chunk_size=chunk_size, control_hz=control_hz, num_bins=256,
                              cameras=cameras)
    model = VLA(config).replace_head_for_actions(tokenizer)
    save_vla(path, model.eval(), model.config, tokenizer)
    return path
