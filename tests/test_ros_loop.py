"""The policy node as a real ROS 2 process (sim backend) against a real policy server with a tiny model.

Images and an instruction in -> the simulated robot moves; a stale image gives no motion; a killed
server stops the robot within one control period; the emergency stop latches until /lapa/start.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from policy_fakes import ServerProcess
from ros_helpers import NodeProcess, RosProbe, make_tiny_checkpoint, wait_for

pytest.importorskip("rclpy")
pytest.importorskip("torch")

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]
CONTROL_HZ = 10.0
PERIOD_S = 1.0 / CONTROL_HZ


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("vla") / "policy", control_hz=CONTROL_HZ)


def start_server(tmp_path, checkpoint) -> ServerProcess:
    srv = ServerProcess(tmp_path / "server.log", backend="torch",
                        args=["--model", str(checkpoint), "--threads", "1"])
    try:
        return srv.start(timeout_s=120)
    except BaseException:
        srv.stop()
        raise


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoint):
    srv = start_server(tmp_path_factory.mktemp("server"), checkpoint)
    yield srv
    srv.stop()


@pytest.fixture
def probe():
    p = RosProbe()
    yield p
    p.close()


@pytest.fixture
def start_policy(tmp_path):
    started: list[NodeProcess] = []

    def start(server_url: str, **params) -> NodeProcess:
        defaults = {"robot_backend": "sim", "server_url": server_url, "sim_image_size": 32, "status_hz": 10.0,
                    "max_server_age_s": 0.5}
        node = NodeProcess("lapa_ros.policy_node", tmp_path / f"policy{len(started)}.log", {**defaults, **params})
        started.append(node.start())
        return node

    yield start
    for node in started:
        node.stop()


def wait_state(probe: RosProbe, node: NodeProcess, predicate, timeout_s: float, what: str) -> dict:
    def check():
        if not node.alive():
            raise RuntimeError(f"lapa_policy exited:\n{node.log()[-3000:]}")
        s = probe.latest("/lapa/status")
        return s if s and predicate(s) else None

    try:
        return wait_for(check, timeout_s, what)
    except TimeoutError as e:
        raise TimeoutError(f"{e}; last status {probe.latest('/lapa/status')}\n{node.log()[-3000:]}") from None


def ee(probe: RosProbe) -> np.ndarray:
    return np.asarray(probe.latest("/lapa/status")["ee_pos_m"])


def commands(probe: RosProbe) -> int:
    return probe.latest("/lapa/status")["counts"]["commands"]


def test_images_and_an_instruction_move_the_sim_robot(server, probe, start_policy):
    from geometry_msgs.msg import TwistStamped
    from std_msgs.msg import Float32

    probe.record_status()
    actions = probe.record(TwistStamped, "/lapa/action")
    latencies = probe.record(Float32, "/lapa/latency_ms", convert=lambda m: m.data)
    node = start_policy(server.ws_url)
    idle = wait_state(probe, node, lambda s: s["state"] == "idle", 120, "the node to be ready")
    assert idle["control_hz"] == CONTROL_HZ  # from the server's metadata
    assert idle["server"]["connected"] and idle["server"]["backend"] == "torch"
    home = ee(probe)
    probe.say("pick up the red block")
    s = wait_state(probe, node, lambda s: s["counts"]["commands"] >= 15, 60, "15 executed commands")
    assert s["state"] == "running" and s["instruction"] == "pick up the red block"
    assert np.linalg.norm(np.asarray(s["ee_pos_m"]) - home) > 2e-3  # the random tiny model moves the arm
    assert len(actions) >= 10 and actions[-1][1].header.frame_id == "base"
    assert len(latencies) >= 10 and all(0 < lat < 1000 for _, lat in latencies)
    assert 7.0 < s["achieved_hz"] < 13.0


def test_a_stale_image_gives_no_motion(server, probe, start_policy):
    from sensor_msgs.msg import Image

    from lapa_ros.images import rgb_to_image

    probe.record_status()
    node = start_policy(server.ws_url, sim_publish_camera=False, max_image_age_s=0.3)
    wait_state(probe, node, lambda s: s["state"] == "idle", 120, "the node to be ready")
    probe.say("push the blue block left")
    s = wait_state(probe, node, lambda s: s["state"] == "holding", 10, "holding without images")
    assert s["reason"] == "no image yet" and s["counts"]["commands"] == 0

    pub = probe.publisher(Image, "/camera/image_raw")
    rng = np.random.default_rng(0)
    t_end = time.monotonic() + 2.0
    while time.monotonic() < t_end:  # a live camera: the arm moves
        pub.publish(rgb_to_image(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8), time.time()))
        time.sleep(0.05)
    moving = wait_state(probe, node, lambda s: s["counts"]["commands"] >= 5, 10, "commands from live images")
    # the camera stops: within the image age limit and a period the node holds, and nothing moves
    s = wait_state(probe, node, lambda s: s["state"] == "holding" and "stale image" in s["reason"], 3,
                   "holding on a stale image")
    n = commands(probe)
    time.sleep(0.5)  # the last step's servo motion settles (about 1 mm near the top of the box)
    pos = ee(probe)
    time.sleep(1.0)
    assert commands(probe) == n
    assert np.linalg.norm(ee(probe) - pos) < 5e-4
    assert s["counts"]["commands"] >= moving["counts"]["commands"]


def test_a_killed_server_stops_the_robot_within_one_control_period(tmp_path, checkpoint, probe, start_policy):
    from geometry_msgs.msg import TwistStamped

    from lapa_ros.images import stamp_seconds

    own = start_server(tmp_path, checkpoint)
    try:
        probe.record_status()
        actions = probe.record(TwistStamped, "/lapa/action", convert=lambda m: stamp_seconds(m.header))
        node = start_policy(own.ws_url)
        wait_state(probe, node, lambda s: s["state"] == "idle", 120, "the node to be ready")
        probe.say("lift the green block")
        wait_state(probe, node, lambda s: s["counts"]["commands"] >= 10, 60, "10 commands")
        t_kill = time.time()
        own.kill()
    finally:
        own.stop()
    s = wait_state(probe, node, lambda s: s["state"] == "holding", 5, "holding after the kill")
    assert "policy server" in s["reason"] and not s["server"]["connected"]
    time.sleep(0.5)
    last_command = max(t for _, t in actions)
    assert last_command <= t_kill + PERIOD_S, f"a command {last_command - t_kill:.3f} s after the kill"
    n, pos = commands(probe), ee(probe)
    time.sleep(0.5)
    assert commands(probe) == n and np.linalg.norm(ee(probe) - pos) < 5e-4


def test_emergency_stop_latches_until_start(server, probe, start_policy):
    probe.record_status()
    node = start_policy(server.ws_url)
    wait_state(probe, node, lambda s: s["state"] == "idle", 120, "the node to be ready")
    probe.say("reach the yellow block")
    wait_state(probe, node, lambda s: s["counts"]["commands"] >= 5, 60, "5 commands")
    ok, message = probe.trigger("/lapa/emergency_stop")
    assert ok and "latched" in message
    s = wait_state(probe, node, lambda s: s["state"] == "fault", 3, "the fault state")
    assert "emergency stop" in s["reason"] and not s["running"]
    n = commands(probe)
    probe.say("reach the green block")  # a new instruction does not clear an emergency stop
    time.sleep(1.0)
    assert commands(probe) == n and probe.latest("/lapa/status")["state"] == "fault"
    ok, message = probe.trigger("/lapa/start")
    assert ok and "emergency stop" in message
    wait_state(probe, node, lambda s: s["counts"]["commands"] >= n + 5, 30, "commands after /lapa/start")
    ok, _ = probe.trigger("/lapa/stop")
    assert ok
    s = wait_state(probe, node, lambda s: s["state"] == "stopped", 3, "stopped")
    n = commands(probe)
    time.sleep(0.5)
    assert commands(probe) == n


def test_compressed_images_drive_the_loop(server, probe, start_policy):
    import cv2
    from sensor_msgs.msg import CompressedImage

    from lapa_ros.images import set_stamp

    probe.record_status()
    node = start_policy(server.ws_url, sim_publish_camera=False)
    wait_state(probe, node, lambda s: s["state"] == "idle", 120, "the node to be ready")
    probe.say("grab the blue block")
    pub = probe.publisher(CompressedImage, "/camera/image_raw/compressed")
    rng = np.random.default_rng(1)
    ok, jpeg = cv2.imencode(".jpg", rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    assert ok
    t_end = time.monotonic() + 3.0
    while time.monotonic() < t_end:
        msg = CompressedImage(format="jpeg", data=jpeg.tobytes())
        set_stamp(msg.header, time.time())
        pub.publish(msg)
        time.sleep(0.05)
    s = wait_state(probe, node, lambda s: s["counts"]["commands"] >= 5, 10, "commands from JPEG frames")
    assert s["counts"]["images"] >= 10


def test_a_model_with_a_wrist_camera_moves_only_on_fresh_hand_images(tmp_path_factory, probe, start_policy):
    from sensor_msgs.msg import Image

    from lapa_ros.images import rgb_to_image

    checkpoint = make_tiny_checkpoint(tmp_path_factory.mktemp("wrist") / "policy", control_hz=CONTROL_HZ,
                                      cameras=("scene", "wrist"))
    server = start_server(tmp_path_factory.mktemp("wrist_server"), checkpoint)
    try:
        probe.record_status()
        node = start_policy(server.ws_url, wrist_image_topic="/wrist_camera/image_raw", max_image_age_s=0.3)
        wait_state(probe, node, lambda s: s["state"] == "idle", 120, "the node to be ready")
        probe.say("pick up the red block")
        s = wait_state(probe, node, lambda s: s["state"] == "holding" and "hand camera" in s["reason"], 10,
                       "holding without hand images")
        assert s["counts"]["commands"] == 0

        pub = probe.publisher(Image, "/wrist_camera/image_raw")
        rng = np.random.default_rng(1)
        t_end = time.monotonic() + 2.0
        while time.monotonic() < t_end:  # a live hand camera: the model gets both images, the arm moves
            pub.publish(rgb_to_image(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), time.time()))
            time.sleep(0.05)
        wait_state(probe, node, lambda s: s["counts"]["commands"] >= 5, 10, "commands with both cameras")
        s = wait_state(probe, node, lambda s: s["state"] == "holding" and "stale wrist image" in s["reason"], 3,
                       "holding on a stale hand image")
        n = commands(probe)
        time.sleep(1.0)
        assert commands(probe) == n
    finally:
        server.stop()
