"""Which processes `franka.launch.py` starts, with which parameters: one plain function.

`ros2 launch lapa_ros franka.launch.py` and `lapa bringup` both call `plan(arguments)`; the
launch file turns the result into launch_ros `Node`s and `ExecuteProcess`es, `lapa bringup`
into subprocesses (lapa_ros/bringup.py). Arguments are strings, as launch arguments are.

    sim:=true (default)   lapa_sim (franky-sim + scene camera) ; lapa_policy (franky -> lapa_sim's address)
    sim:=false            lapa_camera (camera:=0 | URL | file) ; lapa_policy (franky -> robot_ip)
    start_server:=true    lapa-server --model <model> (loopback address of server_url)
    speech:=true          lapa_speech (pocketsphinx; wav_files:=a.wav,b.wav to replay files)
    console:=true         lapa_console (the operator's web page on console_host:console_port)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from lapa.intent_layout import has_intent

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = REPO_ROOT / "models" / "lapa_tabletop"
DEFAULT_MODEL_SUITE = "default"  # the task families the shipped model was finetuned on (its README.md)
EXPERT_MODEL = "expert"  # model:=expert serves the scripted expert (simulation only)
# How the policy node executes the shipped model's action chunks: the best measured mode (its
# README.md: temporal ensembling, decay 0.5, lifts push from 76% to 82% and held-out paraphrases on
# both families). Other models keep the node's own default (first_n, one action per model call).
DEFAULT_MODEL_EXECUTION: dict[str, object] = {"chunk_mode": "ensemble", "ensemble_decay": 0.5}
SERVER_BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8", "tensorrt")


def default_server_backend() -> str:
    """The started server's backend: the fastest that keeps closed-loop success here.

    On a CPU the static int8 graph (BENCHMARKS.md, experiments/int8/README.md): a checkpoint is
    exported to ONNX once on first start and cached (export/cache.py), and its int8 graph is built
    beside it from calibration rollouts in the simulator (export/quantize.py). fp32 ONNX Runtime
    instead where onnxruntime-gpu is installed (the int8 graph is a CPU graph) or where the simulator
    that calibrates it is not (a robot PC); `server_backend:=` chooses explicitly.
    """
    import importlib.metadata
    import importlib.util

    try:
        importlib.metadata.distribution("onnxruntime-gpu")
        return "onnxruntime"
    except importlib.metadata.PackageNotFoundError:
        pass
    return "onnxruntime-int8" if importlib.util.find_spec("mujoco") is not None else "onnxruntime"


DEFAULT_SERVER_BACKEND = default_server_backend()


WRIST_IMAGE_TOPIC = "/wrist_camera/image_raw"


def model_cameras(model: str) -> tuple[str, ...]:
    """The cameras a served checkpoint takes (config.json `vla.cameras`, or an export's metadata.json
    `cameras`); ("scene",) for the expert or a model that does not say."""
    if not model or model == EXPERT_MODEL:
        return ("scene",)
    for name, key in (("config.json", "vla"), ("metadata.json", None)):
        path = Path(model) / name
        if path.is_file():
            try:
                doc = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                return ("scene",)  # the server reports an unreadable model; the plan does not guess
            section = doc.get(key, {}) if key else doc
            return tuple(section.get("cameras", ("scene",)))
    return ("scene",)


def execution_parameters(model: str) -> dict[str, object]:
    """lapa_policy's chunk execution parameters for the served `model` (a directory or 'expert')."""
    if model and model != EXPERT_MODEL and Path(model).resolve() == DEFAULT_MODEL_DIR.resolve():
        return dict(DEFAULT_MODEL_EXECUTION)
    return {}
PACKAGE = "lapa_ros"

# name: (default, description)
LAUNCH_ARGUMENTS: dict[str, tuple[str, str]] = {
    "robot_ip": ("", "the Franka's address (sim:=false); with sim:=true the policy node uses franky-sim's"),
    "sim": ("true", "true: franky-sim with the tabletop scene and its camera instead of a robot"),
    "server_url": ("ws://127.0.0.1:8000", "policy server URL (ws:// or http://)"),
    "start_server": ("true", "start a policy server on server_url's port (false: use a running one)"),
    "model": ("", "checkpoint/export directory the started server loads (default: models/lapa_tabletop; "
                  "'expert' serves the scripted expert, simulation only)"),
    "server_backend": (DEFAULT_SERVER_BACKEND, "onnxruntime-int8 | onnxruntime | torch | tensorrt: the started "
                                              "server's backend (onnxruntime exports a checkpoint once, cached, "
                                              "and -int8 quantises it once; tensorrt takes an export directory "
                                              "with its engine)"),
    "server_threads": ("1", "intra-op threads of the started server's model"),
    "server_rt_priority": ("0", "1..99: the started server's event loop and model at SCHED_FIFO (needs "
                                "CAP_SYS_NICE; with the node's control_rt_priority, the whole frame-to-command path)"),
    "camera": ("sim", "sim (lapa_sim's scene camera), a device index, a stream URL, a video file, or none"),
    "wrist_camera": ("", "the hand camera for a model that takes one (its config's cameras [scene, wrist]): "
                         "with sim:=true lapa_sim renders it; otherwise a device index, stream URL or video file "
                         "for a second lapa_camera on /wrist_camera/image_raw"),
    "camera_info_url": ("", "lapa_camera: intrinsics YAML (camera_info_manager format, `lapa calibration "
                            "checkerboard`) published as /camera/camera_info"),
    "speech": ("false", "start lapa_speech (spoken instructions, pocketsphinx)"),
    "wav_files": ("", "lapa_speech: comma-separated WAV files to recognise instead of the microphone"),
    "control_hz": ("0", "control rate; 0 = the model's control_hz (server metadata)"),
    "console": ("false", "start lapa_console, the operator's web page (watch, command, stop, record)"),
    "console_host": ("127.0.0.1", "lapa_console: address of the page; anything but loopback needs $LAPA_API_KEY"),
    "console_port": ("8080", "lapa_console: port of the page"),
    "confirm_before_motion": ("false", "lapa_console: a new instruction waits for the operator's confirmation "
                                       "(after the intent preview when the model ships one)"),
    "params_file": ("", "a YAML parameter file for every node (e.g. config/lapa_ros.yaml)"),
}


class LaunchPlanError(ValueError):
    """Launch arguments that do not make a working system."""


@dataclass(frozen=True)
class NodeSpec:
    name: str  # ROS node name
    executable: str  # console script installed under lib/lapa_ros (colcon)
    module: str  # python -m entry (lapa bringup)
    parameters: dict[str, object] = field(default_factory=dict)
    params_files: tuple[str, ...] = ()
    package: str = PACKAGE


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    executable: str  # console script
    module: str  # python -m entry
    arguments: tuple[str, ...] = ()


@dataclass(frozen=True)
class LaunchPlan:
    processes: tuple[ProcessSpec, ...]
    nodes: tuple[NodeSpec, ...]
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        lines = []
        for p in self.processes:
            lines.append(f"process {p.name}: {p.executable} {' '.join(p.arguments)}")
        for n in self.nodes:
            params = ", ".join(f"{k}={v!r}" for k, v in n.parameters.items())
            files = f" [params: {', '.join(n.params_files)}]" if n.params_files else ""
            lines.append(f"node {n.name} ({n.package}/{n.executable}): {params}{files}")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def parse_bool(value: str, name: str) -> bool:
    v = str(value).strip().lower()
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off"):
        return False
    raise LaunchPlanError(f"{name}:={value!r} is not true or false")


def default_arguments() -> dict[str, str]:
    return {name: default for name, (default, _) in LAUNCH_ARGUMENTS.items()}


def plan(arguments: dict[str, str] | None = None) -> LaunchPlan:
    args = default_arguments()
    unknown = sorted(set(arguments or {}) - set(args))
    if unknown:
        raise LaunchPlanError(f"unknown launch argument(s) {unknown}; known: {sorted(args)}")
    args.update({k: str(v) for k, v in (arguments or {}).items()})
    sim = parse_bool(args["sim"], "sim")
    start_server = parse_bool(args["start_server"], "start_server")
    speech = parse_bool(args["speech"], "speech")
    console = parse_bool(args["console"], "console")
    confirm = parse_bool(args["confirm_before_motion"], "confirm_before_motion")
    try:
        control_hz = float(args["control_hz"])
    except ValueError:
        raise LaunchPlanError(f"control_hz:={args['control_hz']!r} is not a number") from None
    if control_hz < 0:
        raise LaunchPlanError("control_hz must be >= 0")
    camera = args["camera"].strip()
    robot_ip = args["robot_ip"].strip()
    params_files = (args["params_file"],) if args["params_file"] else ()
    notes: list[str] = []
    if not sim and not robot_ip:
        raise LaunchPlanError("sim:=false needs robot_ip:=<the Franka's address>")
    if not sim and camera == "sim":
        raise LaunchPlanError("camera:=sim needs sim:=true; give a device index, URL or video file")

    processes: list[ProcessSpec] = []
    execution: dict[str, object] = {}
    wrist = False  # does the served model take the hand camera
    if start_server:
        server, model = _server(args, sim, notes)
        if console and has_intent_preview(model):  # the page shows what the policy intends
            server = replace(server, arguments=(*server.arguments, "--intent", model))
        processes.append(server)
        execution = execution_parameters(model)
        wrist = "wrist" in model_cameras(model)
    wrist_source = args["wrist_camera"].strip()
    if wrist and not sim and not wrist_source:
        raise LaunchPlanError("the model takes a wrist camera: give wrist_camera:=<device index, URL or file>")
    if wrist_source or wrist:
        execution["wrist_image_topic"] = WRIST_IMAGE_TOPIC

    nodes: list[NodeSpec] = []
    if sim:
        nodes.append(NodeSpec("lapa_sim", "lapa_sim_node", "lapa_ros.sim_node", {
            "image_topic": "/camera/image_raw", "instruction_topic": "/lapa/instruction",
            "publish_camera": camera == "sim", "publish_wrist_camera": "wrist_image_topic" in execution,
            "wrist_image_topic": WRIST_IMAGE_TOPIC}, params_files))
        if robot_ip:
            notes.append(f"sim:=true: robot_ip:={robot_ip} is ignored, the policy node drives franky-sim")
    if camera not in ("sim", "none", ""):
        nodes.append(NodeSpec("lapa_camera", "lapa_camera_node", "lapa_ros.camera_node", {
            "source": camera, "image_topic": "/camera/image_raw",
            "camera_info_url": args["camera_info_url"].strip()}, params_files))
    if wrist_source and not sim:
        nodes.append(NodeSpec("lapa_wrist_camera", "lapa_camera_node", "lapa_ros.camera_node", {
            "source": wrist_source, "image_topic": WRIST_IMAGE_TOPIC}, params_files))
    nodes.append(NodeSpec("lapa_policy", "lapa_policy_node", "lapa_ros.policy_node", {
        "server_url": args["server_url"], "robot_backend": "franky",
        "robot_ip": "sim" if sim else robot_ip, "control_hz": control_hz,
        "image_topic": "/camera/image_raw", "instruction_topic": "/lapa/instruction", **execution}, params_files))
    if speech:
        wavs = [w.strip() for w in args["wav_files"].split(",") if w.strip()]
        speech_params: dict[str, object] = {"instruction_topic": "/lapa/instruction"}
        if wavs:
            speech_params["wav_files"] = wavs
        nodes.append(NodeSpec("lapa_speech", "lapa_speech", "lapa_ros.speech_node", speech_params, params_files))
    if console:
        nodes.append(NodeSpec("lapa_console", "lapa_console", "lapa_ros.console.node",
                              {**_console_params(args), "confirm_before_motion": confirm}, params_files))
    return LaunchPlan(tuple(processes), tuple(nodes), tuple(notes))


def has_intent_preview(model: str) -> bool:
    """A model directory that carries the intent preview (lapa/intent_layout.py)."""
    if not model or model == EXPERT_MODEL:
        return False
    return has_intent(model)


def _console_params(args: dict[str, str]) -> dict[str, object]:
    try:
        port = int(args["console_port"])
    except ValueError:
        raise LaunchPlanError(f"console_port:={args['console_port']!r} is not a port number") from None
    if not 0 < port < 65536:
        raise LaunchPlanError(f"console_port:={port} is not a port number")
    return {"host": args["console_host"].strip() or "127.0.0.1", "port": port, "server_url": args["server_url"],
            "image_topic": "/camera/image_raw", "instruction_topic": "/lapa/instruction"}


def _server(args: dict[str, str], sim: bool, notes: list[str]) -> tuple[ProcessSpec, str]:
    """The policy server process and the model it serves."""
    url = urlsplit(args["server_url"] if "://" in args["server_url"] else "ws://" + args["server_url"])
    host = url.hostname or "127.0.0.1"
    port = url.port or 8000
    model = args["model"].strip()
    if not model:
        if DEFAULT_MODEL_DIR.joinpath("config.json").is_file():
            model = str(DEFAULT_MODEL_DIR)
        elif sim:
            model = EXPERT_MODEL
            notes.append(f"no trained model at {DEFAULT_MODEL_DIR}: serving the scripted expert instead "
                         "(simulation only); pass model:=DIR to serve a checkpoint")
        else:
            raise LaunchPlanError(f"no model: {DEFAULT_MODEL_DIR} does not exist; pass model:=DIR")
    if model == EXPERT_MODEL:
        if not sim:
            raise LaunchPlanError("model:=expert reads the simulator's state: it needs sim:=true")
        backend_args = ("--backend", "lapa_ros.expert_policy:make_policy")
    else:
        if args["server_backend"] not in SERVER_BACKENDS:
            raise LaunchPlanError(f"server_backend:={args['server_backend']!r}: {', '.join(SERVER_BACKENDS)}")
        backend_args = ("--model", model, "--backend", args["server_backend"])
    return ProcessSpec("lapa_server", "lapa-server", "policy_server.app",
                       (*backend_args, "--host", host, "--port", str(port), "--threads", args["server_threads"],
                        "--rt-priority", args["server_rt_priority"])), model
