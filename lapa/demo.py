"""`lapa demo`: the main job on the embedded default (simulated Franka, no GPU, no robot).

Runs one episode of every task in the suite on the simulated tabletop and writes a video of
the scene camera with the results.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the simulated Franka through the task suite and write an mp4")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output directory (default: %(default)s)")
    p.add_argument("--suite", default="default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--driver", choices=("fast", "franky"), default="franky",
                   help="franky: franky-sim + the franky client in real time (default); fast: in-process")
    p.add_argument("--image-size", type=int, default=256)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lapa.data.video_io import write_video
    from lapa.sim.env import TabletopEnv, episode_task, run_episode
    from lapa.sim.scene import SceneConfig
    from lapa.sim.tasks import get_suite

    config = SceneConfig(image_size=args.image_size)
    if args.driver == "franky":
        from lapa.sim.franky_driver import FrankyDriver

        driver = FrankyDriver(config)
    else:
        from lapa.sim.fast_driver import FastDriver

        driver = FastDriver(config)
    args.out.mkdir(parents=True, exist_ok=True)
    results, clips = [], []
    with driver:
        env = TabletopEnv(driver)
        for i, family in enumerate(get_suite(args.suite)):
            task, instruction = episode_task(family, args.seed + i)
            print(f"[demo] {instruction!r} ({args.driver} driver)")
            result = run_episode(env, task, args.seed + i, instruction=instruction)
            print(f"[demo]   success={result.success} steps={result.steps}")
            results.append({"task": task.name, "instruction": instruction, "success": result.success,
                            "steps": result.steps})
            clips.append(result.frames)
    video = args.out / "demo.mp4"
    write_video(video, np.concatenate(clips), fps=int(round(driver.control_hz)))
    summary = {"episodes": results, "success_rate": float(np.mean([r["success"] for r in results])),
               "video": str(video)}
    (args.out / "demo.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0 if summary["success_rate"] > 0 else 1
