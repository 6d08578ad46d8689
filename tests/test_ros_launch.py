"""The launch plan (shared by franka.launch.py and `lapa bringup`), the launch file itself against
stand-ins of `launch`/`launch_ros` (not installable here), bringup's processes, and the camera node."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from ros_helpers import REPO_ROOT, NodeProcess, RosProbe, wait_for

from lapa_ros import launch_plan
from lapa_ros.bringup import Bringup, node_command, parse_launch_arguments, write_params
from lapa_ros.launch_plan import LAUNCH_ARGUMENTS, LaunchPlanError, plan


def names(p):
    return [n.name for n in p.nodes], [x.name for x in p.processes]


def test_default_plan_is_the_simulated_franka_with_a_server():
    p = plan()
    nodes, procs = names(p)
    assert nodes == ["lapa_sim", "lapa_policy"] and procs == ["lapa_server"]
    policy = p.nodes[1].parameters
    assert policy["robot_backend"] == "franky" and policy["robot_ip"] == "sim"
    assert policy["server_url"] == "ws://127.0.0.1:8000" and policy["control_hz"] == 0.0
    server = p.processes[0]
    assert server.executable == "lapa-server" and server.module == "policy_server.app"
    assert ("--port", "8000") == server.arguments[server.arguments.index("--port"):][:2]
    assert server.arguments[server.arguments.index("--host") + 1] == "127.0.0.1"
    if "--model" in server.arguments:  # a checkpoint: served by ONNX Runtime int8, exported once and cached
        assert server.arguments[server.arguments.index("--backend") + 1] == "onnxruntime-int8"
    assert server.arguments[server.arguments.index("--rt-priority") + 1] == "0"  # real-time off by default
    rt_plan = plan({"server_rt_priority": "40"}).processes[0].arguments
    assert rt_plan[rt_plan.index("--rt-priority") + 1] == "40"
    torch_plan = plan({"server_backend": "torch", "model": "/m"}).processes[0].arguments
    assert torch_plan[torch_plan.index("--backend") + 1] == "torch"


def test_the_shipped_model_runs_with_its_measured_chunk_execution(monkeypatch, tmp_path):
    from lapa_ros.launch_plan import DEFAULT_MODEL_DIR, DEFAULT_MODEL_EXECUTION, execution_parameters

    if DEFAULT_MODEL_DIR.joinpath("config.json").is_file():
        assert plan().nodes[1].parameters["chunk_mode"] == DEFAULT_MODEL_EXECUTION["chunk_mode"] == "ensemble"
    other = plan({"model": str(tmp_path)}).nodes[1].parameters
    assert "chunk_mode" not in other and "ensemble_decay" not in other, "other models keep the node's default"
    assert execution_parameters("expert") == {} and execution_parameters(str(DEFAULT_MODEL_DIR) + "/") != {}


def test_the_real_robot_needs_an_address_and_a_camera():
    with pytest.raises(LaunchPlanError, match="robot_ip"):
        plan({"sim": "false"})
    with pytest.raises(LaunchPlanError, match="camera:=sim"):
        plan({"sim": "false", "robot_ip": "172.16.0.2", "model": "/m"})
    p = plan({"sim": "false", "robot_ip": "172.16.0.2", "camera": "0", "model": "/models/x"})
    nodes, _ = names(p)
    assert nodes == ["lapa_camera", "lapa_policy"]
    assert p.nodes[0].parameters["source"] == "0"
    assert p.nodes[1].parameters["robot_ip"] == "172.16.0.2"
    assert "/models/x" in p.processes[0].arguments


def test_a_model_with_a_wrist_camera_gets_the_hand_camera(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps({"vla": {"cameras": ["scene", "wrist"]}}))
    sim_plan = plan({"model": str(tmp_path)})
    sim_node, policy = sim_plan.nodes[0].parameters, sim_plan.nodes[1].parameters
    assert sim_node["publish_wrist_camera"] and policy["wrist_image_topic"] == sim_node["wrist_image_topic"]
    assert not plan({"model": "expert"}).nodes[0].parameters["publish_wrist_camera"]
    real = {"sim": "false", "robot_ip": "172.16.0.2", "camera": "0", "model": str(tmp_path)}
    with pytest.raises(LaunchPlanError, match="wrist_camera"):
        plan(real)
    p = plan({**real, "wrist_camera": "2"})
    wrist = {n.name: n.parameters for n in p.nodes}["lapa_wrist_camera"]
    assert wrist["source"] == "2" and wrist["image_topic"] == p.nodes[-1].parameters["wrist_image_topic"]


def test_expert_fallback_only_in_simulation(monkeypatch, tmp_path):
    monkeypatch.setattr(launch_plan, "DEFAULT_MODEL_DIR", tmp_path / "missing")
    p = plan()
    assert "lapa_ros.expert_policy:make_policy" in p.processes[0].arguments
    assert any("scripted expert" in n for n in p.notes)
    with pytest.raises(LaunchPlanError, match="model"):
        plan({"sim": "false", "robot_ip": "10.0.0.2", "camera": "0"})
    with pytest.raises(LaunchPlanError, match="sim:=true"):
        plan({"sim": "false", "robot_ip": "10.0.0.2", "camera": "0", "model": "expert"})
    (tmp_path / "found").mkdir()
    (tmp_path / "found" / "config.json").write_text("{}")
    monkeypatch.setattr(launch_plan, "DEFAULT_MODEL_DIR", tmp_path / "found")
    assert str(tmp_path / "found") in plan().processes[0].arguments


def test_options_server_speech_camera_and_bad_values():
    p = plan({"start_server": "false", "speech": "true", "wav_files": "a.wav, b.wav", "camera": "video.mp4",
              "control_hz": "30", "params_file": "config/lapa_ros.yaml"})
    nodes, procs = names(p)
    assert procs == [] and nodes == ["lapa_sim", "lapa_camera", "lapa_policy", "lapa_speech"]
    assert p.nodes[0].parameters["publish_camera"] is False  # another camera publishes
    assert p.nodes[3].parameters["wav_files"] == ["a.wav", "b.wav"]
    assert p.nodes[3].executable == "lapa_speech"
    assert p.nodes[2].parameters["control_hz"] == 30.0
    assert all(n.params_files == ("config/lapa_ros.yaml",) for n in p.nodes)
    for bad in ({"sim": "maybe"}, {"control_hz": "fast"}, {"control_hz": "-1"}, {"nope": "1"},
                {"server_backend": "tf", "model": "/m"}):
        with pytest.raises(LaunchPlanError):
            plan(bad)
    assert "lapa_speech" not in names(plan())[0]


def test_bringup_commands_and_parameter_files(tmp_path):
    p = plan({"model": "expert"})
    spec = p.nodes[1]
    path = write_params(spec, tmp_path)
    doc = json.loads(path.read_text())  # JSON is YAML: strings stay quoted ("0" stays a string)
    assert doc == {"lapa_policy": {"ros__parameters": spec.parameters}}
    cmd = node_command(spec, path)
    assert cmd[1:4] == ["-m", "lapa_ros.policy_node", "--ros-args"] and cmd[-2:] == ["--params-file", str(path)]
    assert "__node:=lapa_policy" in cmd
    assert parse_launch_arguments(["sim:=false", "robot_ip:=1.2.3.4"]) == {"sim": "false", "robot_ip": "1.2.3.4"}
    b = Bringup(p, env={})
    cmds = dict(b.commands())
    assert set(cmds) == {"lapa_server", "lapa_sim", "lapa_policy"}
    assert cmds["lapa_server"][1:3] == ["-m", "policy_server.app"]
    b.stop()


class _Recorder:
    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs


def _stub_launch_modules(monkeypatch, values: dict[str, str]) -> None:
    """Minimal stand-ins for launch / launch_ros: record what the launch file builds."""
    launch = types.ModuleType("launch")
    actions = types.ModuleType("launch.actions")
    subs = types.ModuleType("launch.substitutions")
    launch_ros = types.ModuleType("launch_ros")
    ros_actions = types.ModuleType("launch_ros.actions")

    class LaunchDescription(_Recorder):
        pass

    class LaunchConfiguration:
        def __init__(self, name: str) -> None:
            self.name = name

        def perform(self, context) -> str:
            return context[self.name]

    for name in ("DeclareLaunchArgument", "ExecuteProcess", "LogInfo", "OpaqueFunction"):
        setattr(actions, name, type(name, (_Recorder,), {}))
    launch.LaunchDescription = LaunchDescription
    subs.LaunchConfiguration = LaunchConfiguration
    ros_actions.Node = type("Node", (_Recorder,), {})
    for mod in (launch, actions, subs, launch_ros, ros_actions):
        monkeypatch.setitem(sys.modules, mod.__name__, mod)


def _load_launch_file():
    path = REPO_ROOT / "launch" / "franka.launch.py"
    spec = importlib.util.spec_from_file_location("franka_launch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_launch_file_declares_every_argument_and_builds_the_plan(monkeypatch):
    _stub_launch_modules(monkeypatch, {})
    module = _load_launch_file()
    ld = module.generate_launch_description()
    entities = ld.args[0]
    declared = {e.args[0]: e.kwargs["default_value"] for e in entities if type(e).__name__ == "DeclareLaunchArgument"}
    assert declared == {k: v for k, (v, _) in LAUNCH_ARGUMENTS.items()}
    opaque = entities[-1]
    context = {**{k: v for k, (v, _) in LAUNCH_ARGUMENTS.items()}, "model": "expert"}
    built = opaque.kwargs["function"](context)
    nodes = [a for a in built if type(a).__name__ == "Node"]
    procs = [a for a in built if type(a).__name__ == "ExecuteProcess"]
    assert [n.kwargs["executable"] for n in nodes] == ["lapa_sim_node", "lapa_policy_node"]
    assert all(n.kwargs["package"] == "lapa_ros" for n in nodes)
    assert nodes[1].kwargs["name"] == "lapa_policy" and nodes[1].kwargs["parameters"][-1]["robot_ip"] == "sim"
    assert procs[0].kwargs["cmd"][0] == "lapa-server"
    context.update(sim="false", robot_ip="172.16.0.2", camera="2", model="/m")
    built = opaque.kwargs["function"](context)
    assert [a.kwargs["executable"] for a in built if type(a).__name__ == "Node"] == [
        "lapa_camera_node", "lapa_policy_node"]


def test_console_scripts_exist_for_every_planned_node():
    setup_py = (REPO_ROOT / "setup.py").read_text()
    p = plan({"speech": "true", "camera": "0", "model": "expert"})
    for n in p.nodes:
        assert f'"{n.executable} = {n.module}:main"' in setup_py
        assert importlib.util.find_spec(n.module) is not None


def test_camera_info_sits_beside_the_image_topic():
    from lapa_ros.camera_node import camera_info_topic

    assert camera_info_topic("/camera/image_raw") == "/camera/camera_info"
    assert camera_info_topic("/robot/wrist/image") == "/robot/wrist/camera_info"
    assert camera_info_topic("image") == "/camera_info"


@pytest.mark.timeout(90)
def test_camera_node_refuses_a_malformed_calibration(tmp_path):
    bad = tmp_path / "camera.yaml"
    bad.write_text("image_width: 64\nimage_height: [oops\n")
    node = NodeProcess("lapa_ros.camera_node", tmp_path / "camera.log",
                       {"source": str(tmp_path / "none.mp4"), "camera_info_url": f"file://{bad}"}).start()
    try:
        wait_for(lambda: not node.alive(), 60, "the node to exit")
        assert "not valid YAML" in node.log()
    finally:
        node.stop()


@pytest.mark.timeout(90)
def test_camera_node_reports_a_missing_camera_and_keeps_running(tmp_path):
    probe = RosProbe("camera_probe")
    node = NodeProcess("lapa_ros.camera_node", tmp_path / "camera.log",
                       {"source": str(tmp_path / "no_such_video.mp4"), "retry_s": 0.5}).start()
    try:
        probe.record_status("/lapa_camera/status")
        s = wait_for(lambda: (probe.latest("/lapa_camera/status") or {}).get("error") and
                     probe.latest("/lapa_camera/status"), 60, "a camera status with the error")
        assert not s["ok"] and "cannot open camera source" in s["error"]
        wait_for(lambda: len(probe.records["/lapa_camera/status"]) >= 3, 10, "more status messages")
        assert node.alive()
    finally:
        node.stop()
        probe.close()


@pytest.mark.timeout(90)
def test_camera_node_publishes_a_video_file(tmp_path):
    import cv2
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image

    from calibration.intrinsics import CameraIntrinsics, save_intrinsics
    from lapa_ros.images import image_to_rgb, stamp_seconds

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30, (64, 48))
    for i in range(30):
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[:, :, 2] = 200  # red in BGR
        frame[:, i:i + 4, 1] = 255
        writer.write(frame)
    writer.release()
    calibration = save_intrinsics(CameraIntrinsics(128, 96, 100.0, 101.0, 63.5, 47.5, (0.1, 0, 0, 0, 0)),
                                  tmp_path / "camera.yaml")  # calibrated at twice the published size
    probe = RosProbe("camera_probe2")
    node = NodeProcess("lapa_ros.camera_node", tmp_path / "camera.log",
                       {"source": str(video), "rate_hz": 20.0, "image_topic": "/test_camera/image",
                        "camera_info_url": f"file://{calibration}"}).start()
    try:
        frames = probe.record(Image, "/test_camera/image", qos_profile_sensor_data,
                              convert=lambda m: (stamp_seconds(m.header), image_to_rgb(m)))
        infos = probe.record(CameraInfo, "/test_camera/camera_info", qos_profile_sensor_data)
        wait_for(lambda: len(frames) >= 5 and len(infos) >= 5, 60, "5 frames and their camera_info")
        stamp, image = frames[-1][1]
        assert image.shape == (48, 64, 3) and image[:, :, 0].mean() > 150  # red arrives as red (RGB)
        info = infos[-1][1]
        assert (info.width, info.height) == (64, 48) and info.distortion_model == "plumb_bob"
        np.testing.assert_allclose(info.k, [50.0, 0, 31.5, 0, 50.5, 23.5, 0, 0, 1])  # scaled to 64x48
        assert list(info.d) == pytest.approx([0.1, 0, 0, 0, 0]) and info.header.frame_id == "camera"
        assert stamp_seconds(info.header) in {s for _, (s, _) in frames}  # each info shares an image's stamp
    finally:
        node.stop()
        probe.close()


def test_the_launch_file_is_installed_by_setup_py():
    assert Path(REPO_ROOT / "launch" / "franka.launch.py").is_file()
    assert 'glob("launch/*.launch.py")' in (REPO_ROOT / "setup.py").read_text()


def test_config_yaml_matches_the_nodes_parameters():
    import yaml

    from lapa_ros.camera_node import PARAMETERS as CAMERA
    from lapa_ros.policy_node import PARAMETERS as POLICY
    from lapa_ros.sim_node import PARAMETERS as SIM

    doc = yaml.safe_load((REPO_ROOT / "config" / "lapa_ros.yaml").read_text())
    for node, declared in (("lapa_policy", POLICY), ("lapa_sim", SIM), ("lapa_camera", CAMERA)):
        params = doc[node]["ros__parameters"]
        assert set(params) <= set(declared), node
        for name, value in params.items():
            assert value == declared[name][0], (node, name)


@pytest.mark.timeout(120)
def test_sim_camera_publishes_its_exact_camera_info_and_the_hand_camera(tmp_path):
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image

    from calibration.sim_camera import sim_scene_calibration
    from lapa.sim.scene import SceneConfig
    from lapa_ros.images import stamp_seconds

    probe = RosProbe("sim_camera_probe")
    node = NodeProcess("lapa_ros.sim_node", tmp_path / "sim.log",
                       {"image_size": 64, "camera_hz": 10.0, "image_topic": "/sim_test/image_raw",
                        "publish_wrist_camera": True, "wrist_image_topic": "/sim_test/wrist"}).start()
    try:
        stamps = probe.record(Image, "/sim_test/image_raw", qos_profile_sensor_data,
                              convert=lambda m: stamp_seconds(m.header))
        infos = probe.record(CameraInfo, "/sim_test/camera_info", qos_profile_sensor_data)
        wrists = probe.record(Image, "/sim_test/wrist", qos_profile_sensor_data)
        wait_for(lambda: len(stamps) >= 3 and len(infos) >= 3 and len(wrists) >= 3, 90,
                 "3 images, their camera_info and 3 hand images")
        info = infos[-1][1]
        expected = sim_scene_calibration(SceneConfig(image_size=64)).intrinsics
        assert (info.width, info.height) == (64, 64) and info.header.frame_id == "scene_camera"
        np.testing.assert_allclose(info.k, expected.K.ravel(), rtol=1e-9)
        assert stamp_seconds(info.header) in {s for _, s in stamps}
        wrist = wrists[-1][1]
        assert (wrist.width, wrist.height) == (64, 64) and wrist.header.frame_id == "wrist_camera"
        assert stamp_seconds(wrist.header) in {s for _, s in stamps}  # rendered at the scene image's instant
    finally:
        node.stop()
        probe.close()


def test_the_default_backend_is_int8_on_a_cpu_with_the_simulator_else_fp32(monkeypatch):
    import importlib.metadata
    import importlib.util

    from lapa_ros.launch_plan import default_server_backend

    real_distribution, real_find_spec = importlib.metadata.distribution, importlib.util.find_spec

    def no_gpu_build(name):
        if name == "onnxruntime-gpu":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_distribution(name)

    monkeypatch.setattr(importlib.metadata, "distribution", no_gpu_build)
    assert default_server_backend() == "onnxruntime-int8"  # this machine: CPU onnxruntime, mujoco installed
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mujoco" else real_find_spec(name))
    assert default_server_backend() == "onnxruntime"  # a robot PC without the simulator
    monkeypatch.setattr(importlib.util, "find_spec", real_find_spec)
    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: object())  # onnxruntime-gpu installed
    assert default_server_backend() == "onnxruntime"
