"""`lapa bench latency`: every stage of camera -> command, measured in one run, side by side.

Stages (each: p50 / p95 / p99 / max in ms over `--runs` calls after `--warmup` untimed ones, with
the threads and backend recorded):
- capture: the simulated camera's rendering (FastDriver at 128 px); encode raw (bytes) and JPEG
  (cv2, quality 90);
- transport: in-process (a direct `OrtPolicy.infer`, transport 0), and against a real `lapa-server`
  subprocess on 127.0.0.1 serving the exported model: HTTP msgpack, WebSocket msgpack and
  OpenVLA's JSON `POST /act` (the peer protocol); each as round trip minus the server's model time;
- decode (JPEG -> array, the server's decoder) and preprocessing (the server's resize to the model's
  input, INTER_AREA);
- the model per backend: torch eager, ONNX Runtime fp32, ONNX Runtime on the static int8 graph the
  default backend serves (export/quantize.py, calibrated on closed-loop rollouts; with its agreement
  with fp32 on random inputs), CUDA / TensorRT execution providers when this onnxruntime has them;
- postprocessing (ChunkExecutor, ensemble mode), the safety filter, the robot command (the franky
  velocity of lapa/franka.py);
- the in-process chain from a frame's arrival to the command, timed as one call;
- batch 1 / 8 / 32 throughput of torch and ORT, and the GFLOP/s achieved against the float32
  matmul peak measured in the same run;
- the ORT model under load: while other processes step and render the simulator on the same cores.

JSON (`--json`), a markdown table with one row per stage (`--markdown`, default beside the JSON)
and one PNG (`--png`: p50 bars with p99 whiskers, default beside the JSON).
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing as mp
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.figures import save_figure

DEFAULT_CKPT = Path("models/lapa_tabletop")
CAMERA_SIZE = 128
JPEG_QUALITY = 90
BATCHES = (1, 8, 32)
INSTRUCTION = "pick up the red block"
CONTROL_PERIOD_S = 0.1
NO_GPU_REASON = "no CUDA/TensorRT provider in this onnxruntime"
INT8_NOTE = ("static int8 graph (export/quantize.py: weights int8, activations uint8 calibrated on closed-loop "
             "rollouts, products of two activations in float32): the default backend (onnxruntime-int8), chosen "
             "on its closed-loop success (experiments/int8/README.md)")
INT8_STAGE = "ONNX Runtime int8 (static, served)"
GROUPS = ("capture", "transport", "decode", "preprocess", "model", "postprocess", "safety", "command", "end-to-end",
          "model under load")
# the quantised model's agreement with fp32 that counts as parity (tests assert it on a random model)
INT8_BIN_AGREEMENT_MIN = 0.9


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", type=Path, default=DEFAULT_CKPT, help="VLA checkpoint (default: %(default)s)")
    p.add_argument("--runs", type=int, default=300, help="timed calls per stage")
    p.add_argument("--warmup", type=int, default=30, help="untimed calls per stage first")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for torch and ONNX Runtime")
    p.add_argument("--no-server", action="store_true", help="skip the transport stages (no lapa-server)")
    p.add_argument("--quick", action="store_true", help="tiny counts (tests): numbers meaningless")
    p.add_argument("--exporter", choices=("dynamo", "legacy"), default="dynamo")
    p.add_argument("--tiny-text-encoder", action="store_true",
                   help="export a small random text encoder instead of MiniLM (fast; only the model's timing counts)")
    p.add_argument("--quant-samples", type=int, default=200, help="random inputs for the int8 agreement")
    p.add_argument("--load-procs", type=int, default=2, help="simulator processes loading the cores (model under load)")
    p.add_argument("--markdown", type=Path, default=None, help="stage table (default: beside --json, .md)")
    p.add_argument("--png", type=Path, default=None, help="p50/p99 bar chart (default: beside --json)")


# ----------------------------------------------------------------------------- timing


def stage_stats(seconds: list[float] | np.ndarray) -> dict[str, float]:
    """p50 / p95 / p99 / max / mean in ms of per-call times in seconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    if ms.size == 0:
        raise ValueError("no timings")
    pct = np.percentile(ms, [50, 95, 99])
    return {"p50_ms": round(float(pct[0]), 4), "p95_ms": round(float(pct[1]), 4), "p99_ms": round(float(pct[2]), 4),
            "max_ms": round(float(ms.max()), 4), "mean_ms": round(float(ms.mean()), 4), "runs": int(ms.size)}


def time_calls(fn: Callable[[], Any], runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, leave=False)


# ----------------------------------------------------------------------------- background load


def _load_worker(stop: Any, ready: Any, seed: int) -> None:  # pragma: no cover - runs in a child process
    """Step and render the simulator as fast as it goes until `stop` is set (`ready` once the scene is built)."""
    from lapa.sim.fast_driver import FastDriver
    from lapa.sim.scene import SceneConfig

    rng = np.random.default_rng(seed)
    driver = FastDriver(SceneConfig(image_size=CAMERA_SIZE))
    driver.reset(seed)
    ready.put(seed)
    while not stop.is_set():
        action = np.zeros(7)
        action[:3] = rng.uniform(-0.005, 0.005, 3)
        action[6] = 1.0
        driver.apply_action(action)
        driver.render("scene")


# ----------------------------------------------------------------------------- the benchmark


class _Stages:
    """The rows of the stage table, in order."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, group: str, stage: str, seconds: list[float] | np.ndarray, **info: Any) -> dict[str, Any]:
        """A timed row; `threads` defaults to 1 (a plain Python/numpy call on the calling thread)."""
        row = {"group": group, "stage": stage, **stage_stats(seconds), "threads": 1, **info}
        self.rows.append(row)
        return row

    def skip(self, group: str, stage: str, reason: str, **info: Any) -> None:
        self.rows.append({"group": group, "stage": stage, "skipped": reason, **info})


def run(args: argparse.Namespace) -> dict[str, Any]:
    import cv2
    import torch

    from bench.model import _forward_flops, _interleaved, _matmul_peak_gflops
    from bench.random_models import random_text_encoder
    from export.metadata import ACTIONS_OUTPUT, BINS_OUTPUT, IMAGE_INPUT, POLICY_ONNX, STATE_INPUT, TEXT_EMB_INPUT
    from export.onnx_export import export_onnx
    from export.ort_policy import OrtPolicy, open_session, session_options
    from lapa.action import RobotState, fake_state
    from lapa.chunking import ChunkExecutor
    from lapa.franka import velocity_for
    from lapa.policy.checkpoint_io import load_vla, read_vla_config
    from lapa.sim.fast_driver import FastDriver
    from lapa.sim.scene import SceneConfig
    from lapa.state_history import StateHistory
    from lapa_ros.safety import SafetyFilter
    from policy_server.observation import InputLimits, decode_image_file, to_image

    if args.quick:
        args.runs, args.warmup, args.quant_samples = min(args.runs, 6), min(args.warmup, 1), min(args.quant_samples, 16)
        args.load_procs = min(args.load_procs, 1)
    if args.threads < 1 or args.runs < 1 or args.warmup < 0 or args.quant_samples < 1:
        raise ValueError("--threads, --runs and --quant-samples must be >= 1, --warmup >= 0")
    torch.set_num_threads(args.threads)
    runs, warmup, threads = args.runs, args.warmup, args.threads
    stages = _Stages()
    notes: list[str] = []
    results: dict[str, Any] = {"threads": threads, "runs": runs, "warmup": warmup, "quick": bool(args.quick),
                               "camera_size": CAMERA_SIZE, "checkpoint": str(args.ckpt)}
    progress = _progress(11, "bench latency")

    with tempfile.TemporaryDirectory(prefix="lapa-bench-latency-") as tmp:
        work = Path(tmp)
        _, config, _ = read_vla_config(args.ckpt)
        text_dir = None
        if args.tiny_text_encoder:
            text_dir = random_text_encoder(work / "text_encoder", hidden=config.text_dim,
                                           heads=2 if config.text_dim % 2 == 0 else 1)
            notes.append("text encoder: a small random MiniLM (--tiny-text-encoder); the instruction is cached, "
                         "so it does not enter the per-step stages")
        export_dir = work / "export"
        export_onnx(args.ckpt, export_dir, text_encoder_dir=text_dir, exporter=args.exporter,
                    parity_samples=8 if args.quick else 32, threads=threads, log=lambda _m: None)
        model, config, _ = load_vla(args.ckpt)
        model.eval()
        policy = OrtPolicy(export_dir, threads=threads, providers=["CPUExecutionProvider"])
        H = W = config.image_size
        results["model"] = {"image_size": [H, W], "state_dim": config.state_dim, "chunk_size": config.chunk_size,
                            "action_output": config.action_output, "parameters": model.num_params(),
                            "exporter": args.exporter}
        progress.update()

        # ---- 1. capture / encode
        driver = FastDriver(SceneConfig(image_size=CAMERA_SIZE))
        driver.reset(0)
        frame = driver.render("scene")
        robot_state = driver.robot_state()
        stages.add("capture", "render 128 px (FastDriver, simulated camera)",
                   time_calls(lambda: driver.render("scene"), runs, warmup), backend="mujoco")
        stages.add("capture", "encode raw (bytes)", time_calls(frame.tobytes, runs, warmup), backend="numpy")
        jpeg_params = [int(cv2.IMWRITE_JPEG_QUALITY), JPEG_QUALITY]
        cv2_info = {"backend": "cv2", "threads": cv2.getNumThreads()}

        def encode_jpeg() -> bytes:
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), jpeg_params)
            return buf.tobytes()

        stages.add("capture", f"encode JPEG q{JPEG_QUALITY}", time_calls(encode_jpeg, runs, warmup), **cv2_info)
        jpeg = encode_jpeg()
        results["frame_bytes"] = {"raw": int(frame.nbytes), "jpeg": len(jpeg)}
        progress.update()

        # ---- 3. decode / preprocessing (the server's own functions)
        limits = InputLimits()
        stages.add("decode", "decode JPEG -> array (server)", time_calls(lambda: decode_image_file(jpeg, limits),
                                                                         runs, warmup), **cv2_info)
        stages.add("preprocess", f"resize {CAMERA_SIZE}->{H} INTER_AREA (server)",
                   time_calls(lambda: to_image(frame, (H, W), limits), runs, warmup), **cv2_info)
        image = np.ascontiguousarray(to_image(frame, (H, W), limits))
        state = None
        if config.state_dim:  # the state the node sends: with the model's history, at an episode's first tick
            state = StateHistory(config.state_history).push(robot_state.as_vector())  # (8 * (1 + H),)
        obs = {"image": image, "instruction": INSTRUCTION, **({"state": state} if state is not None else {})}
        progress.update()

        # ---- 4. model per backend
        text_np = policy.instructions.get(INSTRUCTION)[None]
        feeds = {IMAGE_INPUT: image[None], TEXT_EMB_INPUT: text_np}
        if state is not None:
            feeds[STATE_INPUT] = state[None]
        img_t, text_t = torch.from_numpy(image[None].copy()), torch.from_numpy(text_np.copy())
        state_t = None if state is None else torch.from_numpy(state[None].copy())

        def eager() -> None:
            with torch.inference_mode():
                model.predict_actions(img_t, text_t, state=state_t)

        outputs = [ACTIONS_OUTPUT, BINS_OUTPUT]
        int8_session, int8_info = _quantize(export_dir, threads)
        engines = {"torch eager": eager, "ORT fp32": lambda: policy.session.run(outputs, feeds)}
        if int8_session is not None:
            engines["ORT int8"] = lambda: int8_session.run(outputs, feeds)
        # interleaved in blocks (bench/model.py), so a noisy neighbour hits every engine alike
        load_before = os.getloadavg()
        model_times = _interleaved(engines, runs, warmup, block=max(1, min(25, runs)))
        load_after = os.getloadavg()
        results["model_load_average"] = {"before": [round(x, 2) for x in load_before],
                                         "after": [round(x, 2) for x in load_after]}
        if max(load_before[0], load_after[0]) > 1.5 * threads:
            notes.append(f"the machine was busy during the model runs (1-min load average {load_before[0]:.1f} -> "
                         f"{load_after[0]:.1f} on {os.cpu_count()} CPUs): tails include waiting for a core, torch's "
                         "OpenMP threads suffer most")
        stages.add("model", "torch eager", model_times["torch eager"], backend="torch", threads=threads)
        if threads > 1:  # a single OpenMP thread never waits at a barrier for a descheduled sibling
            torch.set_num_threads(1)
            stages.add("model", "torch eager, 1 thread", time_calls(eager, runs, warmup), backend="torch", threads=1)
            torch.set_num_threads(threads)
        stages.add("model", "ONNX Runtime fp32", model_times["ORT fp32"], backend="onnxruntime",
                   threads=threads, providers=["CPUExecutionProvider"])
        progress.update()
        if int8_session is None:
            stages.skip("model", INT8_STAGE, int8_info["skipped"], backend="onnxruntime-int8")
        else:
            stages.add("model", INT8_STAGE, model_times["ORT int8"], backend="onnxruntime-int8",
                       threads=threads, providers=["CPUExecutionProvider"])
            int8_info.update(int8_agreement(policy.session, int8_session, config, args.quant_samples, fake_state))
            int8_info["at_parity"] = int8_info["bin_agreement"] >= INT8_BIN_AGREEMENT_MIN
        results["int8"] = int8_info
        progress.update()
        _gpu_providers(export_dir / POLICY_ONNX, feeds, outputs, stages, runs, warmup, threads,
                       open_session, session_options)
        progress.update()

        # ---- 2. transport: in-process
        def infer() -> dict[str, Any]:
            return policy.infer(obs)

        in_process = []
        for _ in range(warmup):
            infer()
        for _ in range(runs):
            start = time.perf_counter()
            reply = infer()
            in_process.append(time.perf_counter() - start - reply["model_ms"] / 1000.0)
        stages.add("transport", "in-process (OrtPolicy.infer, no transport)", in_process, backend="onnxruntime",
                   method="infer() call minus its model_ms: validation and the cached instruction lookup")
        chunk = policy.infer(obs)["actions"]
        progress.update()

        # ---- 5. postprocessing, safety, robot command
        executor = ChunkExecutor("ensemble")
        tick = [0]

        def post():
            tick[0] += 1
            executor.add_chunk(chunk, tick[0] * CONTROL_PERIOD_S, tick[0])
            return executor.action_for(tick[0]).action

        stages.add("postprocess", "ChunkExecutor ensemble (add_chunk + action_for)",
                   time_calls(post, runs, warmup), backend="numpy")
        action = post()
        safety = SafetyFilter()
        now = time.monotonic()
        robot = RobotState(np.asarray(robot_state.ee_pos_m), np.asarray(robot_state.ee_rpy_rad),
                           robot_state.gripper_width_m)
        stages.add("safety", "SafetyFilter.filter",
                   time_calls(lambda: safety.filter(action, robot, now, now, now, now), runs, warmup), backend="numpy")
        verdict = safety.filter(action, robot, now, now, now, now)
        safe = verdict.action if verdict.action is not None else np.zeros(7)
        stages.add("command", "franky velocity (lapa.franka.velocity_for)",
                   time_calls(lambda: velocity_for(safe, CONTROL_PERIOD_S), runs, warmup), backend="numpy")

        def chain() -> None:  # a frame's arrival at the policy to the command handed to franky
            img = to_image(frame, (H, W), limits)
            o = {"image": img, "instruction": INSTRUCTION, **({"state": state} if state is not None else {})}
            actions = policy.infer(o)["actions"]
            tick[0] += 1
            executor.add_chunk(actions, tick[0] * CONTROL_PERIOD_S, tick[0])
            a = executor.action_for(tick[0]).action
            v = safety.filter(a, robot, now, now, now, now)
            velocity_for(v.action if v.action is not None else np.zeros(7), CONTROL_PERIOD_S)

        chain_row = stages.add("end-to-end", "frame -> command in-process (ORT fp32, one chain)",
                               time_calls(chain, runs, warmup), backend="onnxruntime", threads=threads)
        results["node_to_command_in_process_p50_ms"] = chain_row["p50_ms"]
        results["node_to_command_in_process_p99_ms"] = chain_row["p99_ms"]
        progress.update()

        # ---- 2. transport over the server
        if args.no_server:
            results["server"] = {"skipped": "--no-server"}
        else:
            results["server"] = _transports(export_dir, frame, jpeg, state, threads, runs, warmup, stages, notes)
        progress.update()

        # ---- 6. batch throughput and FLOP/s
        results["throughput"] = _throughput(torch, model, config, policy, outputs, runs, warmup, threads,
                                            _forward_flops, _matmul_peak_gflops, fake_state)
        progress.update()

        # ---- 7. the model under load
        results["under_load"] = _under_load(args, policy, feeds, outputs, stages, model_times["ORT fp32"])
        progress.update()
        driver.close()
    progress.close()

    by_stage = {r["stage"]: r for r in stages.rows if "skipped" not in r}
    eager_rows = [r for name, r in by_stage.items() if name.startswith("torch eager")]
    best_eager = min(eager_rows, key=lambda r: r["p50_ms"])
    if best_eager is not by_stage["torch eager"] and by_stage["torch eager"]["p50_ms"] > 3 * best_eager["p50_ms"]:
        notes.append(f"torch eager on {threads} threads took {by_stage['torch eager']['p50_ms']:.1f} ms (p50) against "
                     f"{best_eager['p50_ms']:.2f} ms on one thread: its OpenMP threads wait at barriers for "
                     "descheduled siblings on a shared machine; ort_over_eager uses the faster")
    if any(r[e]["percent_of_matmul_peak"] > 100 for b, r in results["throughput"].items() if b.isdigit()
           for e in ("torch", "ort")):
        notes.append("a percentage of the matmul peak above 100: the peak (torch.mm) was measured while the "
                     "machine was contended, so it reads low")
    summary: dict[str, Any] = {
        "ort_over_eager": round(by_stage["ONNX Runtime fp32"]["p50_ms"] / best_eager["p50_ms"], 4),
        "eager_for_ratio": best_eager["stage"],
        "node_to_command_in_process_p50_ms": results["node_to_command_in_process_p50_ms"],
        "node_to_command_in_process_p99_ms": results["node_to_command_in_process_p99_ms"],
    }
    if INT8_STAGE in by_stage:
        summary["int8_over_fp32"] = round(by_stage[INT8_STAGE]["p50_ms"] / by_stage["ONNX Runtime fp32"]["p50_ms"], 4)
        summary["int8_over_eager"] = round(by_stage[INT8_STAGE]["p50_ms"] / best_eager["p50_ms"], 4)
    if "http" in results["server"]:
        summary["server_overhead_p50_ms"] = {k: v["overhead_p50_ms"] for k, v in results["server"].items()
                                             if isinstance(v, dict) and "overhead_p50_ms" in v}
    results["summary"] = summary
    results["notes"] = notes
    results["stages"] = sorted(stages.rows, key=lambda r: GROUPS.index(r["group"]))  # stable: camera -> command
    results["load_average"] = [round(x, 2) for x in os.getloadavg()]
    json_path = getattr(args, "json", None)
    md = args.markdown or (json_path.with_suffix(".md") if json_path else None)
    if md is not None:
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(markdown_table(results["stages"], results) + "\n")
        results["markdown"] = str(md)
    png = args.png or (json_path.with_suffix(".png") if json_path else None)
    if png is not None:
        plot_stages(png, results["stages"], f"camera -> command stages, {threads} threads")
        results["png"] = str(png)
    return results


def _quantize(export_dir: Path, threads: int) -> tuple[Any, dict]:
    """The served static int8 graph of the export: (its session or None, what the JSON says about it)."""
    from export.metadata import INT8_ONNX, POLICY_ONNX
    from export.ort_policy import OrtPolicy
    from export.quantize import quantize_from_rollouts

    info: dict[str, Any] = {"default": True, "note": INT8_NOTE, "parity_min_bin_agreement": INT8_BIN_AGREEMENT_MIN}
    try:
        info["quantization"] = quantize_from_rollouts(export_dir, progress=False, log=lambda _m: None)
        session = OrtPolicy(export_dir, threads=threads, providers=["CPUExecutionProvider"], precision="int8",
                            batch=1).session  # as served: one observation a call
    except Exception as err:  # noqa: BLE001 - recorded, the run goes on
        return None, {**info, "skipped": f"quantisation failed: {type(err).__name__}: {err}"}
    info["model_bytes"] = {"fp32": (export_dir / POLICY_ONNX).stat().st_size,
                           "int8": (export_dir / INT8_ONNX).stat().st_size}
    return session, info


def int8_agreement(fp32: Any, int8: Any, config: Any, samples: int, fake_state, seed: int = 0) -> dict[str, Any]:
    """Bins (per action dimension) and actions of two sessions on `samples` random inputs, batch 1 each."""
    from export.metadata import ACTIONS_OUTPUT, BINS_OUTPUT, IMAGE_INPUT, STATE_INPUT, TEXT_EMB_INPUT

    rng = np.random.default_rng(seed)
    same_bins, near_bins, same_chunks, diffs = [], [], [], []
    for i in range(samples):
        text = rng.normal(size=(1, config.text_input_dim)).astype(np.float32)
        feeds = {IMAGE_INPUT: rng.integers(0, 256, (1, config.image_size, config.image_size, 3), dtype=np.uint8),
                 TEXT_EMB_INPUT: text / np.linalg.norm(text)}
        if config.state_dim:
            feeds[STATE_INPUT] = fake_state(1, seed=seed + i, dim=config.state_input_dim)
        a32, b32 = fp32.run([ACTIONS_OUTPUT, BINS_OUTPUT], feeds)
        a8, b8 = int8.run([ACTIONS_OUTPUT, BINS_OUTPUT], feeds)
        same_bins.append(np.mean(b32 == b8))
        near_bins.append(np.mean(np.abs(b32 - b8) <= 1))
        same_chunks.append(bool(np.all(b32 == b8)))
        diffs.append(np.abs(a32 - a8))
    d = np.concatenate([x.ravel() for x in diffs])
    return {"samples": samples, "bin_agreement": round(float(np.mean(same_bins)), 4),
            "bin_within_one": round(float(np.mean(near_bins)), 4),
            "chunk_agreement": round(float(np.mean(same_chunks)), 4),
            "action_abs_diff_max": round(float(d.max()), 6), "action_abs_diff_mean": round(float(d.mean()), 6),
            "measured_on": "random uint8 images, unit random text embeddings, random plausible states"}


def _gpu_providers(path: Path, feeds: dict, outputs: list[str], stages: _Stages, runs: int, warmup: int,
                   threads: int, open_session, session_options) -> None:
    import onnxruntime as ort

    available = ort.get_available_providers()
    for name, label in (("CUDAExecutionProvider", "ONNX Runtime CUDA EP"),
                        ("TensorrtExecutionProvider", "ONNX Runtime TensorRT EP")):
        if name not in available:
            stages.skip("model", label, NO_GPU_REASON, backend=name)
            continue
        try:
            session = open_session(path, session_options(threads), [name, "CPUExecutionProvider"])
            stages.add("model", label, time_calls(lambda s=session: s.run(outputs, feeds), runs, warmup),
                       backend=name, providers=session.get_providers())
        except Exception as err:  # noqa: BLE001 - recorded
            stages.skip("model", label, f"{type(err).__name__}: {err}", backend=name)


def _transports(export_dir: Path, frame: np.ndarray, jpeg: bytes, state, threads: int, runs: int, warmup: int,
                stages: _Stages, notes: list[str]) -> dict[str, Any]:
    """HTTP / WebSocket msgpack and OpenVLA JSON /act against a lapa-server subprocess on loopback."""
    from bench.server import _free_port, serving
    from policy_server import codec
    from policy_server.client import PolicyClient

    port = _free_port()
    base = f"127.0.0.1:{port}"
    server_args = argparse.Namespace(model=str(export_dir), backend="onnxruntime", threads=threads)
    info: dict[str, Any] = {"backend": "onnxruntime", "server_threads": threads, "image": f"{CAMERA_SIZE} px raw"}
    started = time.perf_counter()
    with serving(server_args, port):
        info["startup_s"] = round(time.perf_counter() - started, 2)
        for name, scheme in (("HTTP msgpack", "http"), ("WebSocket msgpack", "ws")):
            for image_name, image in (("raw", frame), ("jpeg", jpeg)):
                with PolicyClient(f"{scheme}://{base}", timeout_s=30.0) as client:
                    for _ in range(warmup):
                        client.act(image, INSTRUCTION, state)
                    over, model_ms = [], []
                    for _ in range(runs):
                        r = client.act(image, INSTRUCTION, state)
                        over.append((r.round_trip_ms - r.model_ms) / 1000.0)
                        model_ms.append(r.model_ms)
                label = "raw image" if image_name == "raw" else "JPEG image, decoded by the server"
                row = stages.add("transport", f"{name}, {label} (round trip - model_ms)", over,
                                 backend="onnxruntime", threads=threads,
                                 model_p50_ms=round(float(np.median(model_ms)), 4))
                key = scheme if image_name == "raw" else f"{scheme}_jpeg"
                info[key] = {"overhead_p50_ms": row["p50_ms"], "overhead_p99_ms": row["p99_ms"]}
        info["openvla"] = _openvla(port, frame, runs, warmup, stages, notes, codec, threads)
    return info


def _openvla(port: int, frame: np.ndarray, runs: int, warmup: int, stages: _Stages, notes: list[str], codec,
             threads: int) -> dict[str, Any]:
    body = codec.json_dumps({"image": frame, "instruction": INSTRUCTION})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def once() -> tuple[float, int, float]:
        start = time.perf_counter()
        conn.request("POST", "/act", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        rt = time.perf_counter() - start
        return rt, resp.status, float(resp.getheader("X-Model-Ms") or 0.0)

    try:
        for _ in range(warmup):
            once()
        times, statuses = [], set()
        for _ in range(runs):
            rt, status, model_ms = once()
            times.append(rt - model_ms / 1000.0)
            statuses.add(status)
    finally:
        conn.close()
    out: dict[str, Any] = {"request_bytes": len(body), "statuses": sorted(statuses)}
    if statuses == {200}:
        stage = "OpenVLA JSON /act (round trip - model_ms)"
    else:
        stage = "OpenVLA JSON /act, answered 422 (no model call)"
        out["note"] = ("this model takes the proprio state, which OpenVLA's /act request does not carry: the server "
                       "decodes the JSON image and answers 422, so this row is the peer protocol's transport and "
                       "decode cost without a model call")
        notes.append(out["note"])
    row = stages.add("transport", stage, times, backend="onnxruntime", threads=threads)
    out.update(overhead_p50_ms=row["p50_ms"], overhead_p99_ms=row["p99_ms"])
    return out


def _throughput(torch, model, config, policy, outputs, runs, warmup, threads, forward_flops, matmul_peak,
                fake_state) -> dict[str, Any]:
    from export.metadata import IMAGE_INPUT, STATE_INPUT, TEXT_EMB_INPUT

    peak = matmul_peak(torch)
    images1, text1 = config.fake_inputs(batch=1, seed=1)
    state1 = torch.from_numpy(fake_state(1, seed=1, dim=config.state_input_dim)) if config.state_dim else None
    flops = forward_flops(torch, model, images1, text1, state1)
    out: dict[str, Any] = {"forward_flops_batch1": flops, "threads": threads}
    batch_runs = max(3, runs // 10)
    for b in BATCHES:
        images, text = config.fake_inputs(batch=b, seed=2)
        state = fake_state(b, seed=2, dim=config.state_input_dim) if config.state_dim else None
        feeds = {IMAGE_INPUT: images.numpy(), TEXT_EMB_INPUT: text.numpy()}
        state_t = None
        if state is not None:
            feeds[STATE_INPUT] = state
            state_t = torch.from_numpy(state)

        def eager(images=images, text=text, state_t=state_t) -> None:
            with torch.inference_mode():
                model.predict_actions(images, text, state=state_t)

        row: dict[str, Any] = {}
        for name, fn in (("torch", eager), ("ort", lambda feeds=feeds: policy.session.run(outputs, feeds))):
            median_s = float(np.median(time_calls(fn, batch_runs, max(1, warmup // 10))))
            gflops = flops * b / median_s / 1e9
            row[name] = {"batch_ms": round(median_s * 1000, 4), "samples_per_s": round(b / median_s, 1),
                         "gflop_per_s": round(gflops, 3), "percent_of_matmul_peak": round(100 * gflops / peak, 2)}
        out[str(b)] = row
    peak = max(peak, matmul_peak(torch))
    out["matmul_peak_gflop_per_s"] = round(peak, 2)
    out["peak_measured_with"] = (f"torch.mm 1024x1024 float32, {threads} threads, best of 30 calls before and after "
                                 "the batch runs; FLOPs: torch.utils.flop_counter (matmul-type ops) of batch 1 x B")
    for b in BATCHES:  # percentages against the final peak
        for name in ("torch", "ort"):
            r = out[str(b)][name]
            r["percent_of_matmul_peak"] = round(100 * r["gflop_per_s"] / peak, 2)
    return out


def _under_load(args, policy, feeds, outputs, stages: _Stages, alone: list[float]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    stop, ready = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_load_worker, args=(stop, ready, i), daemon=True) for i in range(args.load_procs)]
    for p in procs:
        p.start()
    try:
        for _ in procs:  # the workers import and build their scenes first
            ready.get(timeout=120)
        loaded = time_calls(lambda: policy.session.run(outputs, feeds), args.runs, args.warmup)
    finally:
        stop.set()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
    row = stages.add("model under load", f"ONNX Runtime fp32 with {args.load_procs} sim process(es) loading the cores",
                     loaded, backend="onnxruntime", threads=args.threads)
    alone_p50 = stage_stats(alone)["p50_ms"]
    return {"load": f"{args.load_procs} process(es) stepping and rendering FastDriver ({CAMERA_SIZE} px) flat out",
            "cpus": os.cpu_count(), "alone_p50_ms": alone_p50, "loaded_p50_ms": row["p50_ms"],
            "loaded_p99_ms": row["p99_ms"], "slowdown_p50": round(row["p50_ms"] / max(alone_p50, 1e-9), 2)}


# ----------------------------------------------------------------------------- outputs


def markdown_table(rows: list[dict[str, Any]], results: dict[str, Any]) -> str:
    lines = [f"# lapa bench latency: camera -> command, {results['threads']} threads, {results['runs']} runs "
             f"(warm-up {results['warmup']} excluded)", "",
             "| group | stage | backend | threads | p50 ms | p95 ms | p99 ms | max ms |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['group']} | {r['stage']} | {r.get('backend', '')} | | skipped: {r['skipped']} | | | |")
        else:
            lines.append(f"| {r['group']} | {r['stage']} | {r.get('backend', '')} | {r['threads']} | "
                         f"{r['p50_ms']:.3f} | {r['p95_ms']:.3f} | {r['p99_ms']:.3f} | {r['max_ms']:.3f} |")
    tp = results.get("throughput")
    if tp:
        lines += ["", "| batch | torch samples/s | ORT samples/s | torch % of matmul peak | ORT % of matmul peak |",
                  "|---:|---:|---:|---:|---:|"]
        for b in BATCHES:
            r = tp[str(b)]
            lines.append(f"| {b} | {r['torch']['samples_per_s']} | {r['ort']['samples_per_s']} | "
                         f"{r['torch']['percent_of_matmul_peak']} | {r['ort']['percent_of_matmul_peak']} |")
        lines.append(f"\nmatmul peak {tp['matmul_peak_gflop_per_s']} GFLOP/s")
    q = results.get("int8") or {}
    if "bin_agreement" in q:
        lines.append(f"\nint8 (static) vs fp32 on {q['samples']} random inputs: bins agree {q['bin_agreement']:.1%} "
                     f"(within one bin {q['bin_within_one']:.1%}), "
                     f"max |action diff| {q['action_abs_diff_max']}. {q['note']}.")
    load = results.get("under_load") or {}
    if "loaded_p50_ms" in load:
        lines.append(f"\nmodel under load ({load['load']}, {load['cpus']} CPUs): ORT fp32 p50 "
                     f"{load['alone_p50_ms']} ms alone -> {load['loaded_p50_ms']} ms loaded "
                     f"(x{load['slowdown_p50']}), p99 {load['loaded_p99_ms']} ms")
    for note in results.get("notes", []):
        lines.append(f"\nnote: {note}")
    return "\n".join(lines)


def plot_stages(path: Path, rows: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in rows if "skipped" not in r]
    labels = [f"{r['group']}: {r['stage']}" for r in timed]
    p50 = np.array([max(r["p50_ms"], 1e-4) for r in timed])
    p99 = np.array([max(r["p99_ms"], 1e-4) for r in timed])
    fig, ax = plt.subplots(figsize=(11, 0.38 * len(timed) + 1.5))
    y = np.arange(len(timed))[::-1]
    ax.barh(y, p50, xerr=[np.zeros_like(p50), np.maximum(p99 - p50, 0)], capsize=3, color="tab:blue", alpha=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("ms per call (log scale): bar p50, whisker p99")
    ax.set_title(title)
    save_figure(fig, path)
