"""`lapa sim ...`: record datasets and play episodes on the simulated Franka tabletop."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lapa.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    sim = sub.add_parser("sim", help="the simulated Franka tabletop: record datasets, play episodes")
    sim_sub = sim.add_subparsers(dest="sim_command", metavar="SIM_COMMAND", required=True)

    rec = sim_sub.add_parser("record", help="record scripted-expert episodes (LeRobot v3 or action-free videos)")
    rec.add_argument("--suite", default="default", help="task suite (default: %(default)s)")
    rec.add_argument("--episodes", type=int, required=True, help="number of successful episodes to record")
    rec.add_argument("--out", type=Path, required=True, help="output directory (must not exist or be empty)")
    rec.add_argument("--no-actions", action="store_true",
                     help="write an action-free video set (mp4 + captions.jsonl) instead of a LeRobot dataset")
    rec.add_argument("--seed", type=int, default=0, help="first episode seed (default: %(default)s)")
    rec.add_argument("--image-size", type=int, default=128, help="scene camera size in pixels")
    rec.add_argument("--wrist-camera", action="store_true",
                     help="record the hand camera too (observation.images.wrist, same size as the scene camera)")
    rec.add_argument("--held-out", action="store_true",
                     help="caption episodes with held-out paraphrases (for unseen-instruction tests)")
    rec.add_argument("--control-hz", type=float, default=10.0)
    rec.add_argument("--expert-noise", type=float, default=0.002, help="expert action noise std (metres)")
    rec.add_argument("--dart-noise", type=float, default=0.0,
                     help="DART: noise std (metres) on the executed translation, the clean expert action recorded")
    rec.add_argument("--dart-fade", type=float, default=0.0,
                     help="with --dart-noise: fade the noise to zero within this many metres of the expert's next "
                          "waypoint, so it can settle for a grasp (0: full noise everywhere)")
    rec.add_argument("--until-done", action="store_true",
                     help="record past the success check until the expert's plan ends (the final approach)")
    rec.add_argument("--settle-steps", type=int, default=0,
                     help="with --until-done: steps of the expert holding still at the end")
    rec.add_argument("--start-jitter", type=float, default=0.0,
                     help="random gripper start: up to this many metres from home in x/y, half of it down")
    rec.add_argument("--pass-through", action="store_true",
                     help="the expert moves through its via points at full speed instead of stopping at each "
                          "(stops leave near-zero actions there, where a learned policy then stalls)")
    rec.add_argument("--missed-grasp", type=float, default=0.0, metavar="M",
                     help="pick and put: start each episode from a missed grasp (fingers closed on nothing, up to M "
                          "metres off the block to lift), so the recording shows the recovery: open, grasp again")
    rec.set_defaults(func=_record)

    play = sim_sub.add_parser("play", help="run one episode and write an mp4 to watch")
    play.add_argument("--task", required=True,
                      help="task name (pick, pick_red, push_blue_left, put_red_green) or an instruction")
    play.add_argument("--out", type=Path, required=True, help="output .mp4 file")
    play.add_argument("--seed", type=int, default=0)
    play.add_argument("--image-size", type=int, default=256)
    play.add_argument("--driver", choices=("fast", "franky"), default="fast",
                      help="fast: in-process stepping; franky: franky-sim server + franky client, real time")
    play.set_defaults(func=_play)


def _record(args: argparse.Namespace) -> int:
    from lapa.sim.record import ExpertOptions, record_dataset, summary_dict

    expert = ExpertOptions(noise_m=args.expert_noise, dart_noise_m=args.dart_noise, until_done=args.until_done,
                           dart_fade_m=args.dart_fade, settle_steps=args.settle_steps, start_jitter_m=args.start_jitter,
                           pass_through=args.pass_through, missed_grasp_m=args.missed_grasp)
    summary = record_dataset(args.suite, args.episodes, args.out, seed=args.seed, no_actions=args.no_actions,
                             image_size=args.image_size, held_out=args.held_out, control_hz=args.control_hz,
                             expert=expert, wrist_camera=args.wrist_camera)
    print(json.dumps(summary_dict(summary), indent=2))
    return 0


def resolve_task(text: str, seed: int):
    """A task name, a family (random colour from the seed), or an instruction -> (task, instruction)."""
    from lapa.sim.env import episode_task
    from lapa.vocabulary import FAMILIES, TaskInstance, parse_instruction

    text = text.strip()
    if text in FAMILIES:
        return episode_task(text, seed)
    if " " in text:
        task = parse_instruction(text)
        if task is None:
            raise UserError(f"no task in the suite matches the instruction {text!r}")
        return task, text
    try:
        task = TaskInstance.parse(text)
    except ValueError as err:
        raise UserError(str(err)) from err
    return task, task.instruction()


def _play(args: argparse.Namespace) -> int:
    from lapa.data.video_io import write_video
    from lapa.sim.env import TabletopEnv, run_episode
    from lapa.sim.scene import SceneConfig

    task, instruction = resolve_task(args.task, args.seed)
    if args.out.suffix.lower() not in (".mp4", ".webm"):
        raise UserError(f"--out must end in .mp4 or .webm, got {args.out}")
    config = SceneConfig(image_size=args.image_size)
    if args.driver == "fast":
        from lapa.sim.fast_driver import FastDriver

        driver = FastDriver(config)
    else:
        from lapa.sim.franky_driver import FrankyDriver

        driver = FrankyDriver(config)
    with driver:
        result = run_episode(TabletopEnv(driver), task, args.seed, instruction=instruction)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_video(args.out, result.frames, fps=int(round(driver.control_hz)))
    print(json.dumps({"task": task.name, "instruction": instruction, "success": result.success,
                      "steps": result.steps, "video": str(args.out)}))
    return 0
