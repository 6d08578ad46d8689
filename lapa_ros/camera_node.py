"""`lapa_camera`: an OpenCV camera (device index, stream URL or video file) -> sensor_msgs/Image.

  out  <image_topic> (/camera/image_raw)  sensor_msgs/Image  rgb8 at rate_hz (the newest frame)
  out  <image_topic's namespace>/camera_info  sensor_msgs/CameraInfo  with every image, when
       camera_info_url names a calibration (camera_info_manager YAML, `lapa calibration`)
  out  /lapa_camera/status                std_msgs/String    JSON: ok, source, frames, error

A missing or failing camera is never a crash loop: the node stays up, reports the error on its
status topic (and in its log, throttled), and tries to open the source again every `retry_s`.
Frames are read in a helper thread (a read blocks until the camera delivers) and the newest one
is published at `rate_hz`, stamped with the time it was read.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import numpy as np

from lapa_ros.parameters import declare_parameters

NODE_NAME = "lapa_camera"

PARAMETERS: dict[str, tuple[object, str]] = {
    "source": ("0", "camera: a device index (0), a stream URL (rtsp://, http://) or a video file path"),
    "image_topic": ("/camera/image_raw", "where frames are published"),
    "rate_hz": (30.0, "publishing rate"),
    "width": (0, "resize frames to this width (0: as captured)"),
    "height": (0, "resize frames to this height (0: as captured)"),
    "loop": (True, "video files: start again at the end"),
    "retry_s": (2.0, "seconds between attempts to open a missing camera"),
    "frame_id": ("camera", "header frame_id"),
    "camera_info_url": ("", "intrinsics as camera_info_manager YAML (file:///path.yaml or a path); empty: no "
                            "camera_info. Scaled to the published image size if that differs"),
}


def camera_info_topic(image_topic: str) -> str:
    """The ROS convention: camera_info beside the image topic (/camera/image_raw -> /camera/camera_info)."""
    namespace = image_topic.rsplit("/", 1)[0] if "/" in image_topic else ""
    return f"{namespace}/camera_info"


def load_camera_info(url: str):
    """CameraIntrinsics from a camera_info_manager URL (file://) or path; CalibrationError if malformed."""
    from calibration.intrinsics import load_intrinsics

    path = url[len("file://"):] if url.startswith("file://") else url
    return load_intrinsics(path)


def open_capture(source: str):
    """cv2.VideoCapture for a device index, URL or file; raises OSError when it cannot be opened."""
    import cv2

    target: int | str = int(source) if source.strip().isdigit() else source
    cap = cv2.VideoCapture(target)
    if not cap.isOpened():
        cap.release()
        raise OSError(f"cannot open camera source {source!r}")
    return cap


class FrameGrabber:
    """Reads frames in a thread; `latest()` is the newest (RGB, capture time) or None."""

    def __init__(self, source: str, loop: bool = True, retry_s: float = 2.0,
                 size: tuple[int, int] | None = None) -> None:
        self.source, self.loop, self.retry_s, self.size = source, loop, retry_s, size
        self.error: str | None = None
        self.frames = 0
        self._lock = threading.Lock()
        self._latest: tuple[np.ndarray, float] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="camera-grabber", daemon=True)

    def start(self) -> FrameGrabber:
        self._thread.start()
        return self

    def latest(self) -> tuple[np.ndarray, float] | None:
        with self._lock:
            return self._latest

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        import cv2

        while not self._stop.is_set():
            try:
                cap = open_capture(self.source)
            except OSError as e:
                self.error = str(e)
                self._stop.wait(self.retry_s)
                continue
            self.error = None
            fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
            is_file = not self.source.strip().isdigit() and "://" not in self.source
            try:
                while not self._stop.is_set():
                    ok, bgr = cap.read()
                    if not ok:
                        if is_file and self.loop and self.frames:
                            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                            continue
                        self.error = f"camera source {self.source!r} stopped delivering frames"
                        break
                    stamp = time.time()
                    if self.size:
                        bgr = cv2.resize(bgr, self.size, interpolation=cv2.INTER_AREA)
                    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
                    with self._lock:
                        self._latest = (rgb, stamp)
                    self.frames += 1
                    if is_file:  # a file reads as fast as it decodes: play it at its own rate
                        self._stop.wait(1.0 / min(max(fps, 1.0), 120.0))
            finally:
                cap.release()
            self._stop.wait(self.retry_s)


class CameraNode:
    def __init__(self, args: list[str] | None = None) -> None:
        from rclpy.node import Node
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        self.node = node = Node(NODE_NAME)
        p = self.params = declare_parameters(node, PARAMETERS)
        self.log = node.get_logger()
        self._String = String
        size = (int(p["width"]), int(p["height"])) if p["width"] and p["height"] else None
        self.grabber = FrameGrabber(str(p["source"]), bool(p["loop"]), float(p["retry_s"]), size).start()
        self.pub_image = node.create_publisher(Image, p["image_topic"], qos_profile_sensor_data)
        self.intrinsics = load_camera_info(str(p["camera_info_url"])) if p["camera_info_url"] else None
        self.pub_info = None
        if self.intrinsics is not None:
            from sensor_msgs.msg import CameraInfo

            self.pub_info = node.create_publisher(CameraInfo, camera_info_topic(p["image_topic"]),
                                                  qos_profile_sensor_data)
        self.pub_status = node.create_publisher(String, "/lapa_camera/status", 10)
        self._last_stamp = 0.0
        self.published = 0
        node.create_timer(1.0 / max(0.1, float(p["rate_hz"])), self._publish)
        node.create_timer(1.0, self._status)

    def _publish(self) -> None:
        from lapa_ros.images import camera_info_msg, rgb_to_image

        latest = self.grabber.latest()
        if latest is None or latest[1] == self._last_stamp:
            return  # nothing new: never republish an old frame as if it were fresh
        image, stamp = latest
        self._last_stamp = stamp
        msg = rgb_to_image(image, stamp, self.params["frame_id"])
        self.pub_image.publish(msg)
        if self.pub_info is not None:
            self.pub_info.publish(camera_info_msg(self._intrinsics_for(msg.width, msg.height), msg.header))
        self.published += 1

    def _intrinsics_for(self, width: int, height: int) -> dict:
        if (self.intrinsics.width, self.intrinsics.height) != (width, height):
            self.log.warning(f"calibration is {self.intrinsics.width}x{self.intrinsics.height}, images are "
                             f"{width}x{height}: publishing scaled intrinsics", once=True)
            return self.intrinsics.resized(width, height).to_camera_info_dict()
        return self.intrinsics.to_camera_info_dict()

    def _status(self) -> None:
        error = self.grabber.error
        if error:
            self.log.error(f"{error}; retrying every {self.params['retry_s']:g} s", throttle_duration_sec=10.0)
        status = {"ok": error is None and self.grabber.frames > 0, "source": self.params["source"],
                  "frames": self.grabber.frames, "published": self.published, "error": error}
        self.pub_status.publish(self._String(data=json.dumps(status)))

    def close(self) -> None:
        self.grabber.close()
        self.node.destroy_node()


def main(argv: list[str] | None = None) -> int:
    from lapa_ros.ros_main import run_node

    return run_node(CameraNode, argv, threads=1)


if __name__ == "__main__":
    sys.exit(main())
