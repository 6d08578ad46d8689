"""`lapa_sim`: franky-sim with the tabletop scene, its camera, episode resets and task success.

Starts franky-sim's libfranka server on a free 127.x.y.z address (through
`lapa.sim.franky_sim_link.SimLink`, without a client of its own: the policy node's franky
backend is *the* client, exactly as with a real robot) and announces the address on
`/lapa_sim/robot_ip` (latched). Then:

  out  <image_topic> (/camera/image_raw)  sensor_msgs/Image     the scene camera at camera_hz (rgb8)
  out  <namespace>/camera_info (/camera/camera_info)  sensor_msgs/CameraInfo   its exact intrinsics
                                                                (calibration.sim_camera), with every image
  out  <wrist_image_topic> (/wrist_camera/image_raw)  sensor_msgs/Image   the hand camera, with
                                                                publish_wrist_camera (same stamps)
  out  /lapa_sim/robot_ip                 std_msgs/String       latched: where the policy node connects
  out  /lapa_sim/task_status              std_msgs/String       JSON: instruction, task, success, episode,
                                                                seed, sim time, real-time factor
  out  /lapa_sim/success                  std_msgs/Bool         success of the current instruction
  out  /lapa_sim/scene                    std_msgs/String       JSON: block poses, TCP pose, gripper width
                                                                (privileged state: the scripted expert's input)
  in   <instruction_topic>                std_msgs/String       the task to score (parse_instruction)
  srv  /lapa_sim/reset                    std_srvs/Trigger      blocks to the placement of parameter `seed`
                                                                (set it first with set_parameters); the arm
                                                                is moved by /lapa/home on the policy node
  srv  /lapa_sim/reflex                   std_srvs/Trigger      fault injection: the running motion ends as a
                                                                reflex ends it (kReflexAborted to the client)
  srv  /lapa_sim/drop_connection          std_srvs/Trigger      fault injection: close the client's robot and
                                                                gripper connections (a lost link)

Parameter `camera_fault` (settable at run time, for `lapa bench faults`): "" a healthy camera;
"freeze" the last image message is published again as it was (same pixels, same stamp); "silent"
nothing is published; "backwards" fresh images whose stamps jump backwards (0.5 s before the last
healthy one, and further back with each frame).

Rendering runs in its own thread (MuJoCo's GL context belongs to one thread) from a snapshot of
the physics state, so it never holds up the 1 kHz simulation for long.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time

from lapa.sim.scene import SceneConfig
from lapa.sim.tasks import EpisodeStart, is_success
from lapa.vocabulary import parse_instruction
from lapa_ros.parameters import declare_parameters

NODE_NAME = "lapa_sim"

PARAMETERS: dict[str, tuple[object, str]] = {
    "image_topic": ("/camera/image_raw", "where the scene camera is published"),
    "instruction_topic": ("/lapa/instruction", "instructions to score"),
    "publish_camera": (True, "render and publish the scene camera (false: another camera node publishes)"),
    "image_size": (128, "scene camera image side in pixels"),
    "publish_wrist_camera": (False, "also render and publish the hand camera (same size, rate and stamps)"),
    "wrist_image_topic": ("/wrist_camera/image_raw", "where the hand camera is published"),
    "camera_hz": (30.0, "scene camera rate"),
    "seed": (0, "block placement of the next /lapa_sim/reset (and of the start)"),
    "status_hz": (10.0, "rate of /lapa_sim/task_status, /lapa_sim/success and /lapa_sim/scene"),
    "camera_fault": ("", "fault injection: '' | freeze | silent | backwards (see the module docstring)"),
}
CAMERA_FAULTS = ("", "freeze", "silent", "backwards")


class SimNode:
    def __init__(self, args: list[str] | None = None) -> None:
        from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
        from rclpy.node import Node
        from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_sensor_data
        from sensor_msgs.msg import CameraInfo, Image
        from std_msgs.msg import Bool, String
        from std_srvs.srv import Trigger

        from calibration.sim_camera import sim_scene_calibration
        from lapa.sim.franky_sim_link import SimLink
        from lapa_ros.camera_node import camera_info_topic

        logging.getLogger("franky_sim").setLevel(logging.WARNING)  # it logs every protocol message

        self.node = node = Node(NODE_NAME)
        p = self.params = declare_parameters(node, PARAMETERS)
        self.log = node.get_logger()
        self._String, self._Bool = String, Bool
        self.config = SceneConfig(image_size=int(p["image_size"]), wrist_camera=bool(p["publish_wrist_camera"]))
        t0 = time.monotonic()
        self.link = SimLink(self.config)
        m = self.link.model
        self._lock = threading.Lock()
        self.task = None
        self.instruction = ""
        self.start: EpisodeStart | None = None
        self.episode = 0
        self.seed = int(p["seed"])
        self._rtf = (time.monotonic(), self.link.time_s, 1.0)
        self._place_blocks(self.seed)
        self.log.info(f"franky-sim serving the FR3 at {self.link.hostname} (started in "
                      f"{time.monotonic() - t0:.1f} s)")

        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.pub_ip = node.create_publisher(String, "/lapa_sim/robot_ip", latched)
        self.pub_ip.publish(String(data=self.link.hostname))
        self.pub_image = node.create_publisher(Image, p["image_topic"], qos_profile_sensor_data)
        self.pub_info = node.create_publisher(CameraInfo, camera_info_topic(p["image_topic"]), qos_profile_sensor_data)
        self.pub_wrist = (node.create_publisher(Image, p["wrist_image_topic"], qos_profile_sensor_data)
                          if p["publish_wrist_camera"] else None)
        self.camera_info = sim_scene_calibration(self.config, model=m).intrinsics.to_camera_info_dict()
        self.pub_status = node.create_publisher(String, "/lapa_sim/task_status", 10)
        self.pub_success = node.create_publisher(Bool, "/lapa_sim/success", 10)
        self.pub_scene = node.create_publisher(String, "/lapa_sim/scene", 10)
        group = MutuallyExclusiveCallbackGroup()
        node.create_subscription(String, p["instruction_topic"], self._on_instruction, 10, callback_group=group)
        node.create_service(Trigger, "/lapa_sim/reset", self._srv_reset, callback_group=group)
        node.create_service(Trigger, "/lapa_sim/reflex", self._srv_reflex, callback_group=group)
        node.create_service(Trigger, "/lapa_sim/drop_connection", self._srv_drop_connection, callback_group=group)
        node.create_timer(1.0 / max(0.1, p["status_hz"]), self._publish_status, callback_group=group)
        self._closing = threading.Event()
        self.frames_published = 0
        self._camera = threading.Thread(target=self._camera_loop, name="lapa-sim-camera", daemon=True)
        if p["publish_camera"]:
            self._camera.start()

    # ------------------------------------------------------------------ scene
    def _place_blocks(self, seed: int) -> None:
        self.link.place_blocks(seed)
        with self._lock:
            self.seed = seed
            self.episode += 1
            self.start = EpisodeStart(self.link.view().block_positions())

    def _scene_dict(self, view) -> dict:
        """Block poses (xyz + quaternion wxyz), TCP pose and gripper width: the expert's input."""
        s = view.robot_state()
        data, index = view.data, view.index
        return {"tcp_pos_m": s.ee_pos_m.tolist(), "tcp_rpy_rad": s.ee_rpy_rad.tolist(),
                "gripper_width_m": s.gripper_width_m,
                "blocks": {c: data.qpos[a:a + 7].tolist() for c, a in index.block_qpos.items()}}

    # ------------------------------------------------------------------ camera thread
    def _camera_loop(self) -> None:
        from lapa.sim.rendering import SceneRenderer
        from lapa_ros.images import camera_info_msg, rgb_to_image

        renderer = SceneRenderer(self.link.model, self.config)
        period = 1.0 / max(0.1, float(self.params["camera_hz"]))
        next_t = time.monotonic()
        last_msg, last_wrist, last_good_stamp, back_s = None, None, 0.0, 0.0
        try:
            while not self._closing.is_set():
                fault = self.node.get_parameter("camera_fault").value
                if fault not in ("", "backwards"):
                    back_s = 0.0
                    if fault == "freeze" and last_msg is not None:
                        self.pub_image.publish(last_msg)  # the same message: same pixels, same stamp
                        if last_wrist is not None:
                            self.pub_wrist.publish(last_wrist)
                    next_t += period
                    self._closing.wait(max(0.0, next_t - time.monotonic()))
                    continue
                stamp = time.time()
                if fault == "backwards":
                    back_s += 0.5 if back_s == 0.0 else period
                    stamp = last_good_stamp - back_s
                else:
                    back_s, last_good_stamp = 0.0, stamp
                data = self.link.observe(camera_ready=True)
                msg = rgb_to_image(renderer.render(data, "scene"), stamp, "scene_camera")
                self.pub_image.publish(msg)
                last_msg = msg
                if self.pub_wrist is not None:  # the same instant as the scene image
                    last_wrist = rgb_to_image(renderer.render(data, "wrist"), stamp, "wrist_camera")
                    self.pub_wrist.publish(last_wrist)
                self.pub_info.publish(camera_info_msg(self.camera_info, msg.header))
                self.frames_published += 1
                next_t += period
                delay = next_t - time.monotonic()
                if delay < -period:  # fell behind (a busy machine): restart the schedule
                    next_t = time.monotonic()
                self._closing.wait(max(0.0, delay))
        except Exception as e:  # noqa: BLE001 - the node reports it; the image goes stale and the robot stops
            if self.node.context.ok() and not self._closing.is_set():
                self.log.error(f"scene camera stopped: {e}")
        finally:
            renderer.close()

    # ------------------------------------------------------------------ ROS callbacks
    def _on_instruction(self, msg) -> None:
        text = msg.data.strip()
        task = parse_instruction(text)
        with self._lock:
            self.instruction = text
            self.task = task
        view = self.link.view()
        with self._lock:
            self.start = EpisodeStart(view.block_positions())
        if task is None:
            self.log.info(f"instruction {text!r} names no task of the suite: not scored")

    def _srv_reset(self, _req, resp):
        seed = int(self.node.get_parameter("seed").value)
        try:
            self._place_blocks(seed)
        except Exception as e:  # noqa: BLE001 - answered, not raised
            resp.success, resp.message = False, f"reset failed: {e}"
            return resp
        with self._lock:
            self.task, self.instruction = None, ""
        resp.success = True
        resp.message = json.dumps({"seed": seed, "episode": self.episode})
        return resp

    def _srv_reflex(self, _req, resp):
        try:
            aborted = self.link.abort_motion_by_reflex()
        except Exception as e:  # noqa: BLE001 - answered, not raised
            resp.success, resp.message = False, f"reflex failed: {e}"
            return resp
        resp.success = aborted
        resp.message = "motion aborted by a reflex" if aborted else "no motion was running"
        return resp

    def _srv_drop_connection(self, _req, resp):
        try:
            self.link.drop_client()
        except Exception as e:  # noqa: BLE001 - answered, not raised
            resp.success, resp.message = False, f"dropping the connection failed: {e}"
            return resp
        resp.success, resp.message = True, "client connections closed"
        return resp

    def _publish_status(self) -> None:
        view = self.link.view()
        with self._lock:
            task, start, instruction = self.task, self.start, self.instruction
        success = bool(task is not None and start is not None and is_success(task, view, start))
        now, sim_t = time.monotonic(), self.link.time_s
        t0, s0, rtf = self._rtf
        if now - t0 > 1.0:
            rtf = (sim_t - s0) / (now - t0)
            self._rtf = (now, sim_t, rtf)
        status = {"instruction": instruction, "task": task.name if task else None, "success": success,
                  "episode": self.episode, "seed": self.seed, "sim_time_s": round(sim_t, 3),
                  "realtime_factor": round(rtf, 3), "frames": self.frames_published,
                  "robot_ip": self.link.hostname}
        self.pub_status.publish(self._String(data=json.dumps(status)))
        self.pub_success.publish(self._Bool(data=success))
        scene = self._scene_dict(view)
        scene.update(episode=self.episode, seed=self.seed, sim_time_s=sim_t, stamp_s=time.time())
        self.pub_scene.publish(self._String(data=json.dumps(scene)))

    def close(self) -> None:
        self._closing.set()
        if self._camera.is_alive():
            self._camera.join(5.0)
        self.link.close()
        self.node.destroy_node()


def main(argv: list[str] | None = None) -> int:
    from lapa_ros.ros_main import run_node

    return run_node(SimNode, argv, threads=2)


if __name__ == "__main__":
    sys.exit(main())
