"""`lapa say "pick up the red block"`: a typed instruction for the robot (std_msgs/String).

    lapa say "pick up the red block"      publish once on /lapa/instruction and exit
    lapa say --interactive                a console: each line is an instruction; the words
                                          start, stop, estop, home, status, quit act directly

Uses ROS_DOMAIN_ID (42 if unset, as `lapa bringup`) and localhost discovery. Waits until the
policy node subscribes (up to --wait seconds) so that the instruction is not lost.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from lapa.errors import UserError

DEFAULT_TOPIC = "/lapa/instruction"
CONSOLE_HELP = ("type an instruction (e.g. 'pick up the red block'), or: start | stop | estop | home | "
                "status | quit")


class Speaker:
    """A small rclpy node that publishes instructions and calls the policy node's services."""

    def __init__(self, topic: str = DEFAULT_TOPIC, domain_id: int | None = None) -> None:
        from lapa_ros.ros_env import apply_ros_env

        apply_ros_env(domain_id)
        import rclpy
        from rclpy.context import Context
        from std_msgs.msg import String

        self._rclpy = rclpy
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("lapa_say", context=self.context)
        self._String = String
        self.pub = self.node.create_publisher(String, topic, 10)
        self.topic = topic
        self.status: dict | None = None
        self.node.create_subscription(String, "/lapa/status", self._on_status, 10)

    def _on_status(self, msg) -> None:
        try:
            self.status = json.loads(msg.data)
        except ValueError:
            pass

    def spin_for(self, seconds: float) -> None:
        from rclpy.executors import SingleThreadedExecutor

        executor = SingleThreadedExecutor(context=self.context)
        executor.add_node(self.node)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            executor.spin_once(timeout_sec=max(0.0, min(0.05, deadline - time.monotonic())))
        executor.remove_node(self.node)

    def wait_for_listener(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.pub.get_subscription_count() == 0:
            if time.monotonic() > deadline:
                return False
            self.spin_for(0.05)
        return True

    def say(self, text: str, wait_s: float = 3.0) -> bool:
        """Publish one instruction; False when nobody was listening within wait_s (published anyway)."""
        heard = self.wait_for_listener(wait_s)
        self.pub.publish(self._String(data=text))
        self.spin_for(0.2)  # let the middleware deliver it before a caller exits
        return heard

    def call(self, service: str, timeout_s: float = 30.0) -> tuple[bool, str]:
        """Call a std_srvs/Trigger service (e.g. /lapa/start) and wait for the answer."""
        from std_srvs.srv import Trigger

        client = self.node.create_client(Trigger, service)
        try:
            deadline = time.monotonic() + timeout_s
            while not client.service_is_ready():
                if time.monotonic() > deadline:
                    return False, f"{service} is not available (is lapa bringup running, same ROS_DOMAIN_ID?)"
                self.spin_for(0.05)
            future = client.call_async(Trigger.Request())
            while not future.done():
                if time.monotonic() > deadline:
                    return False, f"{service} did not answer within {timeout_s:g} s"
                self.spin_for(0.02)
            result = future.result()
            return bool(result.success), result.message
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        self.node.destroy_node()
        self.context.try_shutdown()


def format_status(s: dict | None) -> str:
    if not s:
        return "no status from lapa_policy yet"
    parts = [f"{s.get('state')}: {s.get('reason')}"]
    if s.get("achieved_hz"):
        parts.append(f"{s['achieved_hz']:.1f} Hz")
    if s.get("latency_p50_ms") is not None:
        parts.append(f"latency p50 {s['latency_p50_ms']:.0f} ms")
    return " | ".join(parts)


def console(speaker: Speaker, stdin=sys.stdin, stdout=sys.stdout) -> int:
    commands = {"start": "/lapa/start", "stop": "/lapa/stop", "estop": "/lapa/emergency_stop",
                "home": "/lapa/home"}
    print(CONSOLE_HELP, file=stdout)
    while True:
        print("lapa> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:
            return 0
        text = " ".join(line.strip().split())
        if not text:
            continue
        word = text.lower()
        if word in ("quit", "exit"):
            return 0
        if word == "status":
            speaker.spin_for(0.6)
            print(format_status(speaker.status), file=stdout)
        elif word in commands:
            ok, message = speaker.call(commands[word])
            print(("ok: " if ok else "failed: ") + message, file=stdout)
        else:
            heard = speaker.say(text)
            print(f"sent {text!r}" + ("" if heard else " (no policy node is listening yet)"), file=stdout)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("say", help="give the robot a typed instruction (ROS topic /lapa/instruction)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", nargs="*", help="the instruction, e.g. pick up the red block")
    p.add_argument("-i", "--interactive", action="store_true", help="console mode: one instruction per line")
    p.add_argument("--topic", default=DEFAULT_TOPIC)
    p.add_argument("--domain-id", type=int, help="ROS_DOMAIN_ID (default: $ROS_DOMAIN_ID or 42)")
    p.add_argument("--wait", type=float, default=3.0, help="seconds to wait for a listener (default: %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    text = " ".join(args.text).strip()
    if not text and not args.interactive:
        raise UserError('say what? e.g. lapa say "pick up the red block", or lapa say --interactive')
    speaker = Speaker(args.topic, args.domain_id)
    try:
        if args.interactive:
            return console(speaker)
        heard = speaker.say(text, args.wait)
        print(f"sent {text!r} on {args.topic}" + ("" if heard else
              f" (nobody subscribed within {args.wait:g} s: is lapa bringup running with the same ROS_DOMAIN_ID?)"))
        return 0 if heard else 1
    finally:
        speaker.close()
