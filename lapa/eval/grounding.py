"""Does the policy listen? The first action for every colour's instruction on the same scene.

For `scenes` seeded scenes (the robot at home, four blocks), the model is asked for its first
action under "reach the <colour> block" for each of the four colours. A policy that grounds the
instruction points its first move (dx, dy) at the named block; one that ignores the instruction
gives the same action for every colour. Reported: the fraction of (scene, colour) pairs whose
first move points more at the named block than at any other (chance 0.25), and the mean spread
of the first move across the four instructions (millimetres; 0 = the instruction has no effect).
Offline and cheap (one batched call per scene), so it runs on checkpoints while training goes on.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from lapa.eval.closed_loop import EVAL_SEED_BASE, recording_image_size
from lapa.state_history import StateHistory

PROBE_SEED_BASE = EVAL_SEED_BASE + 10_000_000  # disjoint from the closed-loop seeds as well
TEMPLATE = "reach the {colour} block"


def grounding_probe(ckpt: str | os.PathLike, scenes: int = 20, *, text_encoder: Any | None = None,
                    render_size: int | None = None, seed_base: int = PROBE_SEED_BASE) -> dict[str, Any]:
    """render_size None: the size the checkpoint's training recordings had (as `lapa eval`)."""
    from lapa.data.frame_pairs import resize_frames
    from lapa.policy.checkpoint_io import load_vla
    from lapa.policy.train import load_text_encoder, resolve_vla_checkpoint
    from lapa.sim.fast_driver import FastDriver
    from lapa.sim.scene import BLOCK_COLOURS, SceneConfig

    path = resolve_vla_checkpoint(ckpt)
    model, config, _ = load_vla(path)
    render_size = render_size or recording_image_size(path) or config.image_size
    colours = list(BLOCK_COLOURS)
    with torch.no_grad():
        text = load_text_encoder(text_encoder).encode([TEMPLATE.format(colour=c) for c in colours]).float().clone()
    hits, spreads = 0, []
    with FastDriver(SceneConfig(image_size=render_size)) as driver:
        for i in range(scenes):
            driver.reset(seed_base + i)
            image = torch.from_numpy(resize_frames(driver.render("scene")[None], config.image_size))  # (1, S, S, 3)
            now = driver.robot_state().as_vector()  # (8,) the first tick: every past state is this one
            state = torch.from_numpy(StateHistory(config.state_history).push(now)[None])  # (1, 8 * (1 + H))
            n = len(colours)
            with torch.no_grad():
                _, actions = model.predict_actions(image.expand(n, -1, -1, -1), text,
                                                   state=state.expand(n, -1) if config.state_dim else None)
            move = actions[:, 0, :2].numpy()  # (n, 2) first dx, dy per instruction
            ee = driver.robot_state().ee_pos_m[:2]
            blocks = np.array([driver.block_pose(c)[0][:2] - ee for c in colours])  # (n, 2)
            blocks /= np.linalg.norm(blocks, axis=1, keepdims=True)
            cos = (move / (np.linalg.norm(move, axis=1, keepdims=True) + 1e-9)) @ blocks.T  # (instruction, block)
            hits += int(np.sum(cos.argmax(axis=1) == np.arange(n)))
            spreads.append(float(np.linalg.norm(move - move.mean(axis=0), axis=1).mean()))
    return {"checkpoint": str(path), "scenes": scenes, "points_at_named_block": hits / (scenes * len(colours)),
            "chance": 1.0 / len(colours), "first_move_spread_mm": 1000.0 * float(np.mean(spreads))}
