"""`lapa demo` (`./run demo`): the whole system on the simulated Franka, in a few minutes on a CPU.

Starts franky-sim with the tabletop scene (lapa_sim), a policy server, and the policy node
(lapa_policy, franky backend: the real franky client driving franky-sim over loopback), all as
ROS 2 processes on a private domain. Then gives a typed instruction and a spoken one (a WAV
fixture through the speech recogniser), runs the episodes, prints success, the control rate
achieved and the camera-to-command latency percentiles, writes an mp4 of the camera view, and
stops every process it started.

The model: `models/lapa_tabletop/`, the VLA shipped with the repo (LAPA: LAQ and latent
pretraining on the reach and push episodes as action-free videos, then action finetuning; see its
README.md for its measured success). The demo reports what happens. `--model expert` serves the
scripted expert instead (lapa_ros/expert_policy.py, which reads the simulator's block poses) to
show the whole loop on every task family. The exit
status is non-zero only when the loop itself broke (an error, a process that died), not when the
policy missed the block.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from lapa_ros.launch_plan import DEFAULT_MODEL_DIR as DEFAULT_MODEL
from lapa_ros.launch_plan import (
    DEFAULT_MODEL_SUITE,
    DEFAULT_SERVER_BACKEND,
    EXPERT_MODEL,
    REPO_ROOT,
    SERVER_BACKENDS,
)

SPEECH_FIXTURES = REPO_ROOT / "tests" / "fixtures" / "speech"
# (typed instruction, spoken WAV, suite of the further episodes): for the shipped model (reach and
# push), and for the scripted expert, which does every task family
MODEL_SCRIPT = ("reach the red block", "reach_the_green_block.wav", DEFAULT_MODEL_SUITE)
EXPERT_SCRIPT = ("pick up the red block", "push_the_blue_block_left.wav", "default")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the full ROS loop on simulated Franka: typed + spoken instruction, mp4, numbers",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output directory (default: %(default)s)")
    p.add_argument("--model", help="checkpoint directory, or 'expert' (default: models/lapa_tabletop if present, "
                                   "else the scripted expert)")
    p.add_argument("--episodes", type=int, default=2,
                   help="episodes: the typed one, the spoken one, then tasks of the suite (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="block placement seed of the first episode")
    p.add_argument("--typed", help="the typed instruction (default: one the model was trained for)")
    p.add_argument("--wav", type=Path, help="the spoken instruction, a WAV file (default: a fixture under "
                                            "tests/fixtures/speech/ matching the model)")
    p.add_argument("--suite", help="task suite of the episodes after the first two (default: the model's)")
    p.add_argument("--control-hz", type=float, default=0.0, help="control rate (default: the model's)")
    p.add_argument("--server-backend", default=DEFAULT_SERVER_BACKEND, choices=SERVER_BACKENDS,
                   help="the policy server's backend for a checkpoint (default: %(default)s)")
    p.set_defaults(func=run)


def choose_model(requested: str | None) -> tuple[str, str]:
    """(model for the server, a sentence saying what it is)."""
    if requested:
        return requested, f"model: {requested}"
    if (DEFAULT_MODEL / "config.json").is_file():
        return str(DEFAULT_MODEL), f"model: the finetuned VLA at {DEFAULT_MODEL}"
    return "expert", (f"model: NONE FOUND at {DEFAULT_MODEL} (the shipped finetuned model is not there yet). "
                      "Training a VLA that solves these tasks takes far longer than a few minutes on this CPU, "
                      "so the policy server serves the SCRIPTED EXPERT instead (it reads the simulator's block "
                      "poses); the rest of the loop (camera, ROS, server, safety filter, franky) is the real one.")


def recognise(wav: Path) -> tuple[str, str]:
    """(instruction, how it was obtained) from a WAV file."""
    try:
        from lapa_ros.speech.recognizer import CommandRecognizer
    except ImportError as e:
        text = wav.stem.replace("_", " ")
        return text, f"speech recogniser not available ({e}): using the fixture's transcript"
    result = CommandRecognizer().recognize_file(wav)
    if not result.accepted or not result.command:
        raise RuntimeError(f"the recogniser heard no command in {wav}: {result.reason or result.text!r}")
    return result.command, f"recognised by pocketsphinx, confidence {result.confidence:.2f}"


def demo_script(args: argparse.Namespace, model: str) -> tuple[str, Path, str]:
    """(typed instruction, spoken WAV, suite): the flags, else what suits the model."""
    typed, wav, suite = EXPERT_SCRIPT if model == "expert" else MODEL_SCRIPT
    return args.typed or typed, args.wav or SPEECH_FIXTURES / wav, args.suite or suite


def episode_plan(args: argparse.Namespace, model: str) -> list[tuple[str, int, str]]:
    """[(instruction or WAV path, seed, source)]: typed, spoken, then suite tasks."""
    from lapa.sim.env import episode_task
    from lapa.vocabulary import get_suite

    typed, wav, suite = demo_script(args, model)
    plan = [(typed, args.seed, "typed"), (str(wav), args.seed + 1, "spoken")]
    families = get_suite(suite)
    i = 0
    while len(plan) < args.episodes:
        seed = args.seed + 2 + i
        _, instruction = episode_task(families[i % len(families)], seed)
        plan.append((instruction, seed, "typed"))
        i += 1
    return plan[:max(1, args.episodes)]


def write_demo_video(path: Path, frames: list[np.ndarray], captions: list[str], fps: int) -> Path | None:
    import cv2

    from lapa.data.video_io import write_video

    if not frames:
        return None
    out = []
    for image, caption in zip(frames, captions, strict=True):
        big = cv2.resize(image, (384, 384), interpolation=cv2.INTER_LINEAR)
        lines = caption.split("\n")
        big[:8 + 18 * len(lines)] //= 3  # a dark banner behind the text
        for k, line in enumerate(lines):
            cv2.putText(big, line, (8, 18 + 18 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        out.append(big)
    return write_video(path, np.stack(out), fps=fps)


def served_backend(model: str, server_backend: str) -> str:
    """The backend that runs the model: the scripted expert has its own, a checkpoint the chosen one."""
    return "scripted expert" if model == EXPERT_MODEL else server_backend


def run(args: argparse.Namespace) -> int:
    from lapa_ros.session import EpisodeResult, LoopSession, SessionConfig, summarize_stats

    t_start = time.monotonic()
    model, model_note = choose_model(args.model)
    print(f"[demo] {model_note}")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    # 20 Hz of 128x128 scene camera: leaves CPU for franky-sim on a 2-core machine (the commands wait
    # for a fresh frame, so the camera-to-command latency does not grow with a slower camera)
    session = LoopSession(SessionConfig(out_dir=out, model=model, control_hz=args.control_hz, camera_hz=20.0,
                                        server_backend=args.server_backend))
    results = []
    captions: list[str] = []
    try:
        print(f"[demo] starting the policy server, lapa_sim (franky-sim) and lapa_policy on ROS_DOMAIN_ID "
              f"{session.domain_id} (logs: {out / 'logs'})")
        startup = session.start()
        print(f"[demo] ready in {startup:.1f} s (franky-sim at {session.sim_status.get('robot_ip')}; "
              f"policy server backend {served_backend(model, args.server_backend)})")
        for instruction, seed, source in episode_plan(args, model):
            how = ""
            if source == "spoken":
                wav = Path(instruction)
                instruction, how = recognise(wav)
                print(f"[demo] spoken: {wav.name} -> {instruction!r} ({how})")
            print(f"[demo] episode: {instruction!r} ({source}, seed {seed}) ...", flush=True)
            n0 = len(session.frames)
            try:
                r = session.run_episode(instruction, seed, source=source)
            except (RuntimeError, TimeoutError) as e:  # the loop broke: report it, try the next one
                print(f"[demo]   ERROR: {e}")
                r = EpisodeResult(instruction, None, seed, False, 0.0, source, error=str(e))
            print(f"[demo]   {'SUCCESS' if r.success else 'failed'} in {r.duration_s:.1f} s")
            results.append(r)
            n1 = len(session.frames)
            frame_s = session.config.record_every / session.config.camera_hz
            for k in range(n0, n1):
                done = r.success and k >= n1 - 8
                status = "SUCCESS" if done else f"t = {(k - n0) * frame_s:.1f} s"
                captions.append(f"{source}: {instruction}\n{status}")
    finally:
        codes = session.close()
        print(f"[demo] stopped: {', '.join(f'{n} ({rc})' for n, rc in codes.items())}")

    stats = session.policy_stats()
    control_hz = (stats or {}).get("control_hz") or 10.0
    numbers = summarize_stats(stats, control_hz) if stats else {}
    frames = [f for _, f in session.frames]
    fps = max(1, round(session.config.camera_hz / session.config.record_every))
    video = write_demo_video(out / "demo.mp4", frames, captions[:len(frames)], fps)
    summary = {
        "model": model, "model_note": model_note, "server_backend": served_backend(model, args.server_backend),
        "episodes": [r.__dict__ for r in results],
        "success_rate": float(np.mean([r.success for r in results])) if results else 0.0,
        "loop": numbers, "startup_s": session.startup_s, "video": str(video) if video else None,
        "wall_time_s": round(time.monotonic() - t_start, 1),
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    print("[demo] results")
    for r in results:
        print(f"  {'ok  ' if r.success else 'FAIL'} {r.source:6s} {r.instruction!r} ({r.duration_s:.1f} s)")
    if numbers:
        print(f"  control: {numbers['achieved_hz']} Hz achieved of {control_hz:g} Hz, period jitter p99 "
              f"{numbers['jitter_p99_ms']} ms")
        print(f"  camera-to-command latency: p50 {numbers['latency_p50_ms']} ms, p90 {numbers['latency_p90_ms']} ms, "
              f"p99 {numbers['latency_p99_ms']} ms ({numbers['latency_samples']} commands; model p50 "
              f"{numbers['model_p50_ms']} ms)")
    print(f"  video: {video}  summary: {out / 'demo.json'}  ({summary['wall_time_s']} s in all)")
    broken = [r for r in results if r.error]
    if broken:
        print(f"[demo] the loop broke in {len(broken)} episode(s); see {out / 'logs'}")
    return 0 if results and not broken else 1
