"""`lapa_console`: the operator console's ROS 2 node and its web server.

  in   <image_topic> (/camera/image_raw)   sensor_msgs/Image   the live view and the recorded frames
  in   /lapa/status                       std_msgs/String     the policy node's state (JSON)
  in   /lapa/step                         std_msgs/String     each executed command (JSON): plots, recording
  out  <instruction_topic> (/lapa/instruction)  std_msgs/String  typed and spoken commands from the page
  call /lapa/start, /lapa/stop, /lapa/emergency_stop, /lapa/home   std_srvs/Trigger

The web server (uvicorn, app.py) runs in a thread of its own; it binds 127.0.0.1 unless an API key
is set (`api_key` or $LAPA_API_KEY), the policy server's rule. The policy's input size comes from
the policy server's /v1/metadata. The console only asks: every safety decision stays with
`lapa_policy`; a console that dies or loses the robot leaves the robot to the policy node's own
checks, and the page shows `offline` when no status arrives.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import urllib.request
from pathlib import Path

from lapa_ros.console.app import create_app
from lapa_ros.console.intent import ServerIntent
from lapa_ros.console.recorder import EpisodeRecorder
from lapa_ros.console.speech import BrowserSpeech
from lapa_ros.console.telemetry import Telemetry
from lapa_ros.parameters import declare_parameters
from policy_server.security import check_bind, resolve_api_key

NODE_NAME = "lapa_console"
SERVICES = {"start": "/lapa/start", "stop": "/lapa/stop", "estop": "/lapa/emergency_stop", "home": "/lapa/home"}

# name: (default, description). Types follow the defaults.
PARAMETERS: dict[str, tuple[object, str]] = {
    "host": ("127.0.0.1", "address the web page is served on; anything but loopback needs an API key"),
    "port": (8080, "port of the web page"),
    "api_key": ("", "API key for the page's API and live stream (empty: $LAPA_API_KEY, or none)"),
    "server_url": ("ws://127.0.0.1:8000", "the policy server (its /v1/metadata gives the policy's input size)"),
    "image_topic": ("/camera/image_raw", "sensor_msgs/Image: the camera the policy sees"),
    "instruction_topic": ("/lapa/instruction", "std_msgs/String: where typed and spoken commands go"),
    "record_dir": ("recordings", "LeRobot v3 episodes recorded from the page go under this directory"),
    "service_timeout_s": (5.0, "a start/stop/e-stop call without an answer after this long fails (home: 120 s)"),
    "confirm_before_motion": (False, "the page asks for a confirmation (after the intent preview, when the "
                                     "served model has one) before a new instruction is sent"),
}


def http_base(url: str) -> str:
    """ws://host:port[/...] or http://host:port -> http://host:port."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "ws", url
    host = rest.split("/", 1)[0]
    return ("https" if scheme in ("wss", "https") else "http") + "://" + host


class ConsoleNode:
    """Holds the rclpy node and the web server thread; `close()` stops both."""

    def __init__(self, args: list[str] | None = None) -> None:
        from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
        from rclpy.node import Node
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image
        from std_msgs.msg import String
        from std_srvs.srv import Trigger

        self.node = node = Node(NODE_NAME)
        p = self.params = declare_parameters(node, PARAMETERS)
        self.log = node.get_logger()
        self.api_key = resolve_api_key(p["api_key"] or None)
        check_bind(p["host"], self.api_key)  # raises InsecureBindError: the node does not start

        self.telemetry = Telemetry()
        self.recorder = EpisodeRecorder(Path(p["record_dir"]).expanduser())
        self._policy_hw: tuple[int, int] | None = None
        self._String, self._Trigger = String, Trigger
        self._closing = threading.Event()

        sensors = MutuallyExclusiveCallbackGroup()
        calls = ReentrantCallbackGroup()
        node.create_subscription(Image, p["image_topic"], self._on_image, qos_profile_sensor_data,
                                 callback_group=sensors)
        node.create_subscription(String, "/lapa/status", self._on_status, 10, callback_group=sensors)
        node.create_subscription(String, "/lapa/step", self._on_step, 50, callback_group=sensors)
        self.pub_instruction = node.create_publisher(String, p["instruction_topic"], 10)
        self.clients = {name: node.create_client(Trigger, service, callback_group=calls)
                        for name, service in SERVICES.items()}

        server_key = os.environ.get("LAPA_API_KEY") or None  # the policy server's key, as lapa_policy reads it
        self.intent = ServerIntent(http_base(p["server_url"]), server_key)
        self.speech = BrowserSpeech()
        threading.Thread(target=self._warm_speech, name="lapa-console-speech", daemon=True).start()
        self.app = create_app(self, self.telemetry, self.recorder, speech=self.speech, intent=self.intent,
                              api_key=self.api_key, confirm_before_motion=bool(p["confirm_before_motion"]))
        self._metadata_thread = threading.Thread(target=self._fetch_metadata, name="lapa-console-meta", daemon=True)
        self._metadata_thread.start()
        self._server = None
        self._server_thread = threading.Thread(target=self._serve, name="lapa-console-web", daemon=True)
        self._server_thread.start()

    # ------------------------------------------------------------------ web server
    def _serve(self) -> None:
        import uvicorn

        p = self.params
        config = uvicorn.Config(self.app, host=p["host"], port=int(p["port"]), log_level="warning",
                                ws_per_message_deflate=False, lifespan="off", timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self.log.info(f"operator console on http://{p['host']}:{p['port']}/"
                      + (" (API key required)" if self.api_key else ""))
        try:
            self._server.run()
            error = None if self._closing.is_set() else "it stopped"
        except (Exception, SystemExit) as e:  # noqa: BLE001 - e.g. the port is taken (uvicorn exits)
            error = f"{type(e).__name__}: {e}"
        if error is not None and not self._closing.is_set():
            # A console without its page is no console: end the node (lapa bringup then stops everything,
            # and the policy node's own checks keep the robot safe meanwhile).
            self.log.error(f"the console's web server on {p['host']}:{p['port']} failed ({error}); shutting down")
            os.kill(os.getpid(), signal.SIGTERM)

    def _warm_speech(self) -> None:
        """Build the recogniser now, so the first push-to-talk answers at once."""
        try:
            self.speech.recognizer()
        except Exception as e:  # noqa: BLE001 - push-to-talk answers 503 with this reason; the rest works
            self.log.warning(str(e))

    def _fetch_metadata(self) -> None:
        url = http_base(self.params["server_url"]) + "/v1/metadata"
        headers = {"X-API-Key": os.environ["LAPA_API_KEY"]} if os.environ.get("LAPA_API_KEY") else {}
        while not self._closing.is_set():
            try:
                with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=2.0) as r:
                    meta = json.loads(r.read())
                size = meta.get("image_size")
                if isinstance(size, list) and len(size) == 2:
                    self._policy_hw = (int(size[0]), int(size[1]))
                    self.recorder.image_hw = self._policy_hw
                if meta.get("control_hz"):
                    self.recorder.fps = float(meta["control_hz"])
                if isinstance(meta.get("intent"), dict):
                    self.intent.metadata = meta["intent"]
                    self.log.info(f"intent preview served: {meta['intent']}")
                return
            except (OSError, ValueError):
                self._closing.wait(1.0)

    # ------------------------------------------------------------------ RobotLink (called from the web server)
    def policy_image_hw(self) -> tuple[int, int] | None:
        return self._policy_hw

    def say(self, text: str) -> None:
        self.pub_instruction.publish(self._String(data=text))

    def command(self, name: str) -> tuple[bool, str]:
        client = self.clients[name]
        timeout_s = 120.0 if name == "home" else float(self.params["service_timeout_s"])
        if not client.service_is_ready() and not client.wait_for_service(timeout_sec=min(timeout_s, 2.0)):
            return False, f"{SERVICES[name]} is not available: is lapa_policy running on this ROS domain?"
        done = threading.Event()
        future = client.call_async(self._Trigger.Request())
        future.add_done_callback(lambda _f: done.set())
        if not done.wait(timeout_s):
            future.cancel()
            return False, f"{SERVICES[name]} did not answer within {timeout_s:g} s"
        result = future.result()
        return bool(result.success), result.message

    # ------------------------------------------------------------------ ROS inputs
    def _on_image(self, msg) -> None:
        from lapa_ros.images import image_to_rgb

        try:
            self.telemetry.put_frame(image_to_rgb(msg))
        except ValueError as e:
            self.log.warning(f"dropping an image: {e}", throttle_duration_sec=5.0)

    def _on_status(self, msg) -> None:
        try:
            status = json.loads(msg.data)
        except ValueError:
            return
        if isinstance(status, dict):
            self.telemetry.put_status(status)

    def _on_step(self, msg) -> None:
        try:
            step = self.telemetry.put_step(json.loads(msg.data))
        except (ValueError, TypeError, AttributeError) as e:
            self.log.warning(f"dropping a malformed /lapa/step record: {e}", throttle_duration_sec=5.0)
            return
        if self.recorder.recording:
            _, frame = self.telemetry.newest_frame()
            self.recorder.add_step(frame, step.state, step.action, step.instruction)

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        self._closing.set()
        self.recorder.stop()
        self.recorder.wait(30.0)
        if self._server is not None:
            self._server.should_exit = True
        self._server_thread.join(5.0)
        self.node.destroy_node()


def main(argv: list[str] | None = None) -> int:
    from lapa_ros.ros_main import run_node

    return run_node(ConsoleNode, argv, threads=4)


if __name__ == "__main__":
    sys.exit(main())
