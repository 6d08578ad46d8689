"""Step-by-step trace of a policy's rollouts: where the TCP is relative to the named block when the
gripper closes (experiments/policy/README.md, fifth round).

    python experiments/policy/put_trace.py --ckpt runs/policy/Z2_put_fade --family put --episodes 3
    python experiments/policy/put_trace.py --ckpt runs/policy/P2_put_pool --episodes 20 --grasps
    python experiments/policy/put_trace.py --ckpt runs/policy/D1_b4_decay --episodes 20 --grasps --held-out

`--grasps`: one line per episode instead, the table-plane distance from the TCP to every block when
the policy first closes the gripper, and how many episodes close nearest the named block.
"""

from __future__ import annotations

import argparse

import numpy as np

from lapa.eval.closed_loop import ClosedLoopExecutor, eval_seeds
from lapa.policy.torch_policy import TorchPolicy
from lapa.policy.train import load_text_encoder, resolve_vla_checkpoint
from lapa.sim.env import TabletopEnv, episode_task
from lapa.sim.fast_driver import FastDriver
from lapa.sim.scene import SceneConfig
from lapa.vocabulary import BLOCK_COLOURS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--family", default="put")
    p.add_argument("--episodes", type=int, default=3)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--grasps", action="store_true", help="only where each episode first closes the gripper")
    p.add_argument("--held-out", action="store_true", help="the held-out paraphrases' instructions")
    args = p.parse_args()
    policy = TorchPolicy(resolve_vla_checkpoint(args.ckpt), text_encoder=load_text_encoder(None))
    executor = ClosedLoopExecutor(policy, "ensemble", 1, 0.5, image_size=policy.config.image_size,
                                  state_history=policy.config.state_history)
    nearest_named = 0
    with FastDriver(SceneConfig(image_size=128)) as driver:
        env = TabletopEnv(driver)
        for seed in eval_seeds(0, args.episodes):
            task, instruction = episode_task(args.family, seed, held_out=args.held_out)
            executor.reset()
            obs = env.reset(task, seed, instruction)
            named = driver.block_pose(task.colour)[0]  # (3,) the block to reach / lift
            if args.grasps:
                nearest_named += _first_grasp(executor, env, driver, obs, task, instruction, args.steps)
                continue
            print(f"{seed} {instruction!r}")
            for t in range(args.steps):
                action = np.asarray(executor(obs))  # (7,)
                offset_cm = (driver.robot_state().ee_pos_m - named) * 100
                print(f"  t{t:02d} TCP - named block {np.round(offset_cm, 1)} cm  gripper command {action[6]:.2f}  "
                      f"finger width {driver.gripper_width_m() * 100:.1f} cm")
                obs = env.step(action)
            print(f"  named block height at the end: {driver.block_pose(task.colour)[0][2]:.3f} m")
    if args.grasps:
        print(f"closed nearest the named block in {nearest_named} of {args.episodes} episodes")


def _first_grasp(executor, env, driver, obs, task, instruction: str, steps: int) -> int:
    """Run until the policy first commands the gripper closed; print the distance to every block. 1 if
    the named block is the nearest then."""
    blocks = {c: driver.block_pose(c)[0].copy() for c in BLOCK_COLOURS}  # colour -> (3,)
    for t in range(steps):
        action = np.asarray(executor(obs))  # (7,)
        if action[6] < 0.5:
            tcp = driver.robot_state().ee_pos_m
            cm = {c: round(float(np.linalg.norm((tcp - b)[:2])) * 100, 1) for c, b in blocks.items()}
            print(f"{instruction!r:52s} t{t:02d} named {task.colour} target {task.target}: cm to each block {cm}")
            return int(min(cm, key=cm.get) == task.colour)
        obs = env.step(action)
    print(f"{instruction!r:52s} never closed")
    return 0


if __name__ == "__main__":
    main()
