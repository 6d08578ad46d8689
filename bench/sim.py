"""`lapa bench sim`: fast-driver steps/s with rendering on one core, expert success, recording rate."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=300, help="control steps timed for steps_per_s")
    p.add_argument("--episodes", type=int, default=50, help="expert episodes per task")
    p.add_argument("--record-episodes", type=int, default=20, help="episodes recorded for episodes_per_min")
    p.add_argument("--suite", default="default")
    p.add_argument("--image-size", type=int, default=128)


def _pin_to_one_core() -> int:
    """Run this process (and software GL) on a single core, as the target asks."""
    os.environ["LP_NUM_THREADS"] = "1"  # llvmpipe: read when the GL context is created
    cpu = sorted(os.sched_getaffinity(0))[0]
    os.sched_setaffinity(0, {cpu})
    return cpu


def _steps_per_s(steps: int, image_size: int) -> dict:
    from lapa.sim.fast_driver import FastDriver
    from lapa.sim.scene import SceneConfig

    rng = np.random.default_rng(0)
    with FastDriver(SceneConfig(image_size=image_size)) as driver:
        driver.reset(0)
        for _ in range(5):  # warm-up: GL context, caches
            driver.apply_action([0, 0, 0, 0, 0, 0, 1])
            driver.render()
        step_s, render_s = [], []
        for i in range(steps):
            if i % 40 == 0:
                driver.reset(i)
            action = np.concatenate([rng.uniform(-0.01, 0.01, 3), [0, 0, 0], [float(i % 20 < 10)]])
            t0 = time.perf_counter()
            driver.apply_action(action)
            t1 = time.perf_counter()
            driver.render()
            t2 = time.perf_counter()
            step_s.append(t1 - t0)
            render_s.append(t2 - t1)
    total = np.array(step_s) + np.array(render_s)
    return {"steps_per_s": float(1.0 / total.mean()), "physics_ms_mean": 1e3 * float(np.mean(step_s)),
            "render_ms_mean": 1e3 * float(np.mean(render_s)), "timed_steps": steps}


def _expert_success(suite: str, episodes: int) -> dict:
    from lapa.sim.env import TabletopEnv, episode_task, run_episode
    from lapa.sim.fast_driver import FastDriver
    from lapa.vocabulary import get_suite

    families = get_suite(suite)
    success, steps = {}, {}
    with FastDriver(render=False) as driver:
        env = TabletopEnv(driver)
        bar = tqdm(total=episodes * len(families), desc="expert episodes", unit="ep")
        for family in families:
            wins, n_steps = 0, []
            for seed in range(episodes):
                task, instruction = episode_task(family, seed)
                result = run_episode(env, task, seed, instruction=instruction, record=False)
                wins += result.success
                n_steps.append(result.steps)
                bar.update(1)
            success[family] = wins / episodes
            steps[family] = float(np.mean(n_steps))
        bar.close()
    return {"expert_success": success, "expert_mean_steps": steps, "episodes_per_task": episodes}


def _recording_rate(suite: str, episodes: int, image_size: int) -> dict:
    from lapa.sim.record import record_dataset

    with tempfile.TemporaryDirectory() as tmp:
        summary = record_dataset(suite, episodes, Path(tmp) / "dataset", image_size=image_size, progress=True)
    return {"episodes_per_min": summary.episodes_per_min, "recorded_episodes": summary.episodes,
            "recorded_frames": summary.frames}


def run(args: argparse.Namespace) -> dict:
    cpu = _pin_to_one_core()
    results = {"pinned_cpu": cpu}
    results.update(_steps_per_s(args.steps, args.image_size))
    results.update(_expert_success(args.suite, args.episodes))
    results.update(_recording_rate(args.suite, args.record_episodes, args.image_size))
    return results
