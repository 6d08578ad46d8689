"""Closed-loop evaluation of a policy on the simulated tabletop: success rates with Wilson intervals.

Each task family of a suite gets `episodes` fixed seeds, `EVAL_SEED_BASE + family_index *
FAMILY_SEED_STRIDE + i`, far from the seeds the recorder uses for training data (base + index,
plus 1_000_003 per retry), and checked against the seeds recorded in the training datasets when
their metadata is at hand. The same seeds serve seen instructions (training templates) and unseen
ones (held-out paraphrases): the scene and task are identical, only the wording changes.

The scene is rendered at the training dataset's image size and resized to the model's input with
the same function the training data went through. A policy replies with a chunk of K actions,
executed by the ROS policy node's own `lapa.chunking.ChunkExecutor` in simulated time (step i of
an episode is tick i): `chunk_mode="first_n"` runs the first `execute_n` actions of each chunk
before asking again (1, the default: plain closed loop; K: the whole chunk open loop),
`"ensemble"` asks every step and executes ACT's temporal ensemble of the overlapping chunks.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from lapa.chunking import DEFAULT_ENSEMBLE_DECAY, ChunkExecutor
from lapa.errors import UserError
from lapa.policy_protocol import OBS_IMAGE, OBS_INSTRUCTION, OBS_STATE, OBS_WRIST_IMAGE
from lapa.sim.env import Observation
from lapa.state_history import StateHistory

EVAL_SEED_BASE = 50_000_000
FAMILY_SEED_STRIDE = 100_000
Z_95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (0, 1 for n = 0)."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be within 0..{n}, got {successes}")
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends despite float round-off
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def eval_seeds(family_index: int, episodes: int, base: int = EVAL_SEED_BASE) -> list[int]:
    return [base + family_index * FAMILY_SEED_STRIDE + i for i in range(episodes)]


# ----------------------------------------------------------------------------- policy adapter


class ClosedLoopExecutor:
    """Observation -> one action, over a policy replying with chunks (`infer(obs)["actions"]` (K, 7)).

    Chunks go through `lapa.chunking.ChunkExecutor`, as on the robot, in simulated time: the i-th
    call since `reset()` is tick i; a chunk requested at tick i starts there and arrives at once
    (the simulator waits for the model). `first_n` asks the policy only when no chunk covers the
    tick, `ensemble` asks every tick. `image_size` (model input side): observations rendered at
    another size are resized first. `calls` and `model_ms` add up over all episodes.
    `state_history` (lags in ticks): the model's state history, recorded every tick
    (lapa/state_history.py), as the ROS node does.
    """

    def __init__(self, policy: Any, chunk_mode: str = "first_n", execute_n: int = 1,
                 ensemble_decay: float = DEFAULT_ENSEMBLE_DECAY, image_size: int | None = None,
                 state_history: Sequence[int] = ()) -> None:
        self.chunks = ChunkExecutor(chunk_mode, execute_n, ensemble_decay)  # validates the three
        self.history = StateHistory(state_history) if state_history else None
        self.policy = policy
        self.image_size = image_size
        self.tick = 0
        self.calls = 0
        self.model_ms = 0.0

    def reset(self) -> None:
        """A new episode: no chunks, tick 0, and the policy's own reset."""
        self.chunks.clear()
        self.tick = 0
        if self.history is not None:
            self.history.reset()
        self.policy.reset()

    def _resized(self, image: np.ndarray) -> np.ndarray:
        if self.image_size is not None and image.shape[0] != self.image_size:
            from lapa.data.frame_pairs import resize_frames

            return resize_frames(image[None], self.image_size)[0]
        return image

    def _model_obs(self, obs: Observation, state: np.ndarray | None) -> dict[str, Any]:
        out = {OBS_IMAGE: self._resized(obs.image), OBS_INSTRUCTION: obs.instruction, OBS_STATE: state}
        if obs.wrist is not None:
            out[OBS_WRIST_IMAGE] = self._resized(obs.wrist)
        return out

    def __call__(self, obs: Observation) -> np.ndarray:
        tick = self.tick
        state = obs.state
        if self.history is not None and state is not None:
            state = self.history.push(state)  # (8 * (1 + H),) every tick, asked or not
        if self.chunks.needs_request(tick):
            reply = self.policy.infer(self._model_obs(obs, state))
            self.calls += 1
            self.model_ms += float(reply.get("model_ms", 0.0))
            self.chunks.add_chunk(np.asarray(reply["actions"], np.float32), obs_time_s=float(tick),
                                  start_tick=tick, arrival_tick=tick)
        tick_action = self.chunks.action_for(tick)
        if tick_action is None:  # cannot happen: a chunk that just arrived covers its own tick
            raise RuntimeError(f"no action for tick {tick}")
        self.tick += 1
        return tick_action.action.astype(np.float32)


# ----------------------------------------------------------------------------- the evaluation


@dataclass
class EpisodeOutcome:
    family: str
    seed: int
    task: str
    instruction: str
    success: bool
    steps: int
    # where the gripper ended relative to the instructed block: grounding and final-approach evidence
    target_xy_m: float = float("nan")  # TCP to the instructed block, in the table plane
    height_above_target_m: float = float("nan")  # TCP above the instructed block's top face
    nearest_is_target: bool = False  # the block nearest the TCP (in the plane) is the instructed one
    progress: dict[str, float] = field(default_factory=dict)  # the task's own measures (tasks.task_progress)


def final_geometry(driver: Any, colour: str) -> tuple[float, float, bool]:
    """(xy distance, height above the top face, nearest block is `colour`) at the episode's end."""
    from lapa.sim.scene import BLOCK_HALF_SIZE_M

    tcp = driver.robot_state().ee_pos_m
    blocks = driver.block_positions()
    xy = {c: float(np.linalg.norm(tcp[:2] - p[:2])) for c, p in blocks.items()}
    target = blocks[colour]
    return xy[colour], float(tcp[2] - target[2] - BLOCK_HALF_SIZE_M), min(xy, key=xy.get) == colour


def _median_progress(rows: list[EpisodeOutcome]) -> dict[str, float]:
    """The median of each progress measure that every row has (families measure different things)."""
    keys = set.intersection(*(set(r.progress) for r in rows)) if rows else set()
    return {key: float(np.median([r.progress[key] for r in rows])) for key in sorted(keys)}


def summarize(outcomes: list[EpisodeOutcome], families: tuple[str, ...]) -> dict[str, Any]:
    """Per family and overall: successes, episodes, success_rate, ci95 [lo, hi], mean_steps."""

    def block(rows: list[EpisodeOutcome]) -> dict[str, Any]:
        k, n = sum(r.success for r in rows), len(rows)
        lo, hi = wilson_interval(k, n)
        failed = [r for r in rows if not r.success]
        return {"successes": k, "episodes": n, "success_rate": k / n if n else 0.0, "ci95": [lo, hi],
                "mean_steps": float(np.mean([r.steps for r in rows])) if rows else 0.0,
                "nearest_is_target": float(np.mean([r.nearest_is_target for r in rows])) if rows else 0.0,
                "failed_median_target_xy_m": float(np.median([r.target_xy_m for r in failed])) if failed else None,
                "failed_median_height_above_target_m":
                    float(np.median([r.height_above_target_m for r in failed])) if failed else None,
                "failed_median_progress": _median_progress(failed)}

    return {"tasks": {f: block([o for o in outcomes if o.family == f]) for f in families},
            "overall": block(outcomes)}


def evaluate_policy(policy: Callable[[Observation], np.ndarray], suite: str, episodes: int, *,
                    held_out: bool = False, render_size: int = 64, seed_base: int = EVAL_SEED_BASE,
                    videos: str | os.PathLike | None = None, max_videos_per_task: int = 2,
                    progress: bool = True, reset: Callable[[], None] | None = None,
                    wrist_camera: bool = False) -> dict[str, Any]:
    """Roll out `episodes` seeded episodes per task family of `suite` with `policy` (`wrist_camera`:
    observations carry the hand camera too)."""
    from lapa.data.video_io import write_video
    from lapa.sim.env import TabletopEnv, episode_task, run_episode
    from lapa.sim.fast_driver import FastDriver
    from lapa.sim.scene import SceneConfig
    from lapa.sim.tasks import get_suite, task_progress

    try:
        families = get_suite(suite)
    except KeyError as err:
        raise UserError(str(err.args[0])) from err
    if episodes < 1:
        raise UserError(f"--episodes must be at least 1, got {episodes}")
    video_dir = Path(videos) if videos is not None else None
    if video_dir is not None:
        video_dir.mkdir(parents=True, exist_ok=True)
    outcomes: list[EpisodeOutcome] = []
    t0 = time.perf_counter()
    total_steps = 0
    with FastDriver(SceneConfig(image_size=render_size, wrist_camera=wrist_camera)) as driver:
        env = TabletopEnv(driver)
        bar = tqdm(total=episodes * len(families), desc=f"eval {'unseen' if held_out else 'seen'}", unit="ep",
                   disable=not progress)
        for fi, family in enumerate(families):
            for i, seed in enumerate(eval_seeds(fi, episodes, seed_base)):
                task, instruction = episode_task(family, seed, held_out=held_out)
                if reset is not None:
                    reset()
                record = video_dir is not None and i < max_videos_per_task
                result = run_episode(env, task, seed, policy=policy, instruction=instruction, record=record)
                outcomes.append(EpisodeOutcome(family, seed, task.name, instruction, bool(result.success),
                                               int(result.steps), *final_geometry(driver, task.colour),
                                               progress=task_progress(task, driver, env.start)))
                total_steps += result.steps
                if record and result.frames is not None:
                    tag = "success" if result.success else "failure"
                    write_video(video_dir / f"{family}_{seed}_{tag}.mp4", result.frames, fps=10)
                bar.update(1)
        bar.close()
    seconds = time.perf_counter() - t0
    summary = summarize(outcomes, families)
    return {
        "suite": suite, "instructions": "unseen" if held_out else "seen", "episodes_per_task": episodes,
        "seed_base": seed_base, "render_size": render_size, **summary,
        "success": {f: block["success_rate"] for f, block in summary["tasks"].items()},
        "episodes": [asdict(o) for o in outcomes], "seconds": seconds,
        "steps_per_s": total_steps / max(seconds, 1e-9),
    }


# ----------------------------------------------------------------------------- checkpoints


def _provenance(ckpt: Path) -> dict[str, Any]:
    doc = json.loads((ckpt / "config.json").read_text())
    prov = doc.get("provenance")
    return prov if isinstance(prov, dict) else {}


def _provenance_chain(ckpt: str | os.PathLike, depth: int = 8) -> list[dict[str, Any]]:
    """The provenance of a checkpoint and of its `init` chain (as far as it is on disk), newest first."""
    chain: list[dict[str, Any]] = []
    path: Path | None = Path(ckpt)
    while path is not None and depth > 0 and (path / "config.json").is_file():
        prov = _provenance(path)
        chain.append(prov)
        init = prov.get("init")
        path = Path(init) if isinstance(init, str) and init != "scratch" else None
        depth -= 1
    return chain


def training_datasets(ckpt: str | os.PathLike, depth: int = 8) -> list[str]:
    """Datasets a checkpoint was trained on, following its `init` chain (as far as it is on disk)."""
    out: list[str] = []
    for prov in _provenance_chain(ckpt, depth):
        out += [d for d in prov.get("datasets", []) if d not in out]
    return out


def recording_image_size(ckpt: str | os.PathLike) -> int | None:
    """The frame side of the recordings a checkpoint was trained on: from its provenance (written at
    training time, so it travels with a shipped model), else from those datasets if they are on disk."""
    from lapa.data.frame_pairs import dataset_image_size

    for prov in _provenance_chain(ckpt):
        if isinstance(prov.get("recording_image_size"), int):
            return prov["recording_image_size"]
    sizes = [s for s in map(dataset_image_size, training_datasets(ckpt)) if s]
    return sizes[0] if sizes else None


def recorded_seeds(root: str | os.PathLike) -> set[int]:
    """Episode seeds a simulator recording wrote into its metadata (empty if unknown)."""
    meta = Path(root) / "meta" / "lapa_recording.json"
    if not meta.is_file():
        return set()
    doc = json.loads(meta.read_text())
    return {int(e["seed"]) for e in doc.get("episodes_meta", []) if "seed" in e}


def check_disjoint_seeds(ckpt: str | os.PathLike, suite_size: int, episodes: int, seed_base: int) -> None:
    """UserError if an evaluation seed is among the seeds of the checkpoint's training recordings."""
    used: set[int] = set()
    for root in training_datasets(ckpt):
        used |= recorded_seeds(root)
    ours = {s for fi in range(suite_size) for s in eval_seeds(fi, episodes, seed_base)}
    overlap = sorted(used & ours)
    if overlap:
        raise UserError(f"evaluation seeds {overlap[:5]} were used to record training data; pick another --seed-base")


def evaluate_checkpoint(ckpt: str | os.PathLike, suite: str = "default", episodes: int = 10, *,
                        held_out: bool = False, chunk_mode: str = "first_n", execute_n: int = 1,
                        ensemble_decay: float = DEFAULT_ENSEMBLE_DECAY, seed_base: int = EVAL_SEED_BASE,
                        videos: str | os.PathLike | None = None, max_videos_per_task: int = 2,
                        text_encoder: Any | None = None, render_size: int | None = None,
                        progress: bool = True, policy: Any | None = None) -> dict[str, Any]:
    """Evaluate a finetuned VLA checkpoint (or training run directory) through TorchPolicy, or through
    `policy`, a serving backend built from it (ONNX Runtime fp32 or int8: `lapa eval --backend`).

    `chunk_mode`, `execute_n`, `ensemble_decay`: how chunks are executed (see ClosedLoopExecutor).
    """
    from lapa.policy.torch_policy import TorchPolicy
    from lapa.policy.train import load_text_encoder, resolve_vla_checkpoint
    from lapa.sim.tasks import get_suite

    try:
        ChunkExecutor(chunk_mode, execute_n, ensemble_decay)  # bad options fail before the model loads
    except ValueError as err:
        raise UserError(str(err)) from err
    path = resolve_vla_checkpoint(ckpt)
    try:
        families = get_suite(suite)
    except KeyError as err:
        raise UserError(str(err.args[0])) from err
    check_disjoint_seeds(path, len(families), episodes, seed_base)
    if policy is None:
        policy = TorchPolicy(path, text_encoder=load_text_encoder(text_encoder))
    meta = policy.metadata  # the Policy protocol's keys, alike in every backend
    model_size = int(meta["image_size"][0])
    if render_size is None:
        render_size = recording_image_size(path) or model_size
    executor = ClosedLoopExecutor(policy, chunk_mode, execute_n, ensemble_decay, image_size=model_size,
                                  state_history=[int(t) for t in meta.get("state_history", [])])
    result = evaluate_policy(executor, suite, episodes, held_out=held_out, render_size=render_size,
                             seed_base=seed_base, videos=videos, max_videos_per_task=max_videos_per_task,
                             progress=progress, reset=executor.reset,
                             wrist_camera="wrist" in meta.get("cameras", ["scene"]))
    return {"checkpoint": str(path), "backend": meta.get("backend", "torch"), "chunk_mode": chunk_mode,
            "execute_n": execute_n, "ensemble_decay": float(ensemble_decay), "chunk_size": int(meta["chunk_size"]),
            "model_image_size": model_size, "policy_calls": executor.calls,
            "mean_model_ms": executor.model_ms / max(executor.calls, 1), **result}
