"""Record scripted-expert episodes as a LeRobot v3 dataset or an action-free video set.

Recording is resumable: each finished episode is staged in `<out>.partial/` (LeRobot) or
appended to the video set's partial captions, so an interrupted run continues where it
stopped. The final dataset appears under `<out>` only once it is complete.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lapa.action import ACTION_NAMES, STATE_NAMES
from lapa.data.lerobot_v3.layout import WRIST_VIDEO_KEY
from lapa.errors import UserError
from lapa.sim.env import MISS_MIN_OFFSET_M, EpisodeResult, TabletopEnv, episode_task, run_episode
from lapa.sim.fast_driver import FastDriver
from lapa.sim.scene import SceneConfig
from lapa.vocabulary import get_suite

MAX_ATTEMPTS_PER_EPISODE = 5  # expert failures are skipped; the next seed is tried


@dataclass
class RecordSummary:
    out: str
    suite: str
    episodes: int
    frames: int
    attempts: int
    expert_failures: int
    seconds: float
    resumed_episodes: int = 0
    tasks: dict[str, int] = field(default_factory=dict)

    @property
    def episodes_per_min(self) -> float:
        return 60.0 * self.episodes / max(self.seconds, 1e-9)


def _check_output_dir(out: Path) -> None:
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the output's parent directory {parent}: {err.strerror}") from err
    probe = parent / f".lapa-write-test-{time.monotonic_ns()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UserError(f"output directory {parent} is not writable: {err.strerror}") from err
    resumable = (out / "captions.partial.jsonl").exists() and not (out / "captions.jsonl").exists()
    if out.exists() and any(out.iterdir()) and not resumable:
        raise UserError(f"{out} already exists and is not empty; choose another --out or remove it")


def _episode_seed(base_seed: int, index: int, attempt: int) -> int:
    return base_seed + index + attempt * 1_000_003


@dataclass(frozen=True)
class ExpertOptions:
    """How the scripted expert is recorded.

    noise_m: noise on the recorded *and* executed translation. dart_noise_m: noise on the executed
    translation only, the clean corrective action recorded (DART). until_done: keep recording past
    the success check until the expert's plan ends, then `settle_steps` steps of holding still.
    """

    noise_m: float = 0.002
    dart_noise_m: float = 0.0
    dart_fade_m: float = 0.0  # the DART noise fades to zero within this distance of the next waypoint
    until_done: bool = False
    settle_steps: int = 0
    start_jitter_m: float = 0.0  # random start of the gripper (lapa.sim.env.move_to_random_start)
    pass_through: bool = False  # the expert moves through its via points without stopping
    # pick and put: start from a missed grasp up to this far off the block (lapa.sim.env.move_to_missed_grasp)
    missed_grasp_m: float = 0.0

    def __post_init__(self) -> None:
        if min(self.noise_m, self.dart_noise_m, self.dart_fade_m, self.settle_steps, self.start_jitter_m,
               self.missed_grasp_m) < 0:
            raise UserError("expert noise, DART noise and fade, settle steps, start jitter and missed grasp "
                            "must be >= 0")
        if 0 < self.missed_grasp_m <= MISS_MIN_OFFSET_M:
            raise UserError(f"a missed grasp is staged at least {MISS_MIN_OFFSET_M} m off the block: "
                            f"give more than that, got {self.missed_grasp_m}")
        if self.start_jitter_m > 0.15:
            raise UserError(f"start jitter {self.start_jitter_m} m would leave the workspace (at most 0.15 m)")


def _rollout(env: TabletopEnv, family: str, base_seed: int, index: int, held_out: bool,
             expert: ExpertOptions) -> tuple[EpisodeResult, int]:
    """The first successful expert episode for this index; returns it and the attempts used."""
    for attempt in range(MAX_ATTEMPTS_PER_EPISODE):
        seed = _episode_seed(base_seed, index, attempt)
        task, instruction = episode_task(family, seed, held_out=held_out)
        result = run_episode(env, task, seed, instruction=instruction, expert_noise_m=expert.noise_m,
                             dart_noise_m=expert.dart_noise_m, stop_on_success=not expert.until_done,
                             settle_steps=expert.settle_steps, start_jitter_m=expert.start_jitter_m,
                             pass_through=expert.pass_through, dart_fade_m=expert.dart_fade_m,
                             missed_grasp_m=expert.missed_grasp_m)
        if result is not None and result.success:
            return result, attempt + 1
    raise RuntimeError(f"the scripted expert failed {MAX_ATTEMPTS_PER_EPISODE} times in a row on {family} "
                       "(or no scene left room for a missed grasp); the scene or controller is broken")


def record_dataset(suite: str, episodes: int, out: Path, *, seed: int = 0, no_actions: bool = False,
                   image_size: int = 128, held_out: bool = False, control_hz: float = 10.0,
                   expert_noise_m: float = 0.002, progress: bool = True,
                   expert: ExpertOptions | None = None, wrist_camera: bool = False) -> RecordSummary:
    """Record `episodes` successful expert episodes of `suite` into `out`.

    `expert` overrides `expert_noise_m` with the full set of expert options. `wrist_camera` records
    the hand camera too (LeRobot key observation.images.wrist, same size as the scene camera).
    """
    expert = expert or ExpertOptions(noise_m=expert_noise_m)
    try:
        families = get_suite(suite)
    except KeyError as err:
        raise UserError(str(err.args[0])) from err
    if episodes < 1:
        raise UserError(f"--episodes must be at least 1, got {episodes}")
    out = Path(out)
    _check_output_dir(out)
    config = SceneConfig(image_size=image_size, wrist_camera=wrist_camera)
    fps = int(round(control_hz))
    if no_actions:
        if wrist_camera:
            raise UserError("--wrist-camera needs a LeRobot dataset (not --no-actions): a video set has one camera")
        sink = _VideoSetSink(out, fps)
    else:
        sink = _LeRobotSink(out, fps, image_size, wrist_camera)
    done = sink.done_indices()
    summary = RecordSummary(str(out), suite, episodes, 0, 0, 0, 0.0, resumed_episodes=len(done))
    start = time.perf_counter()
    with FastDriver(config, control_hz=control_hz) as driver:
        env = TabletopEnv(driver)
        bar = tqdm(total=episodes, initial=len(done), desc=f"record {suite}", unit="ep", disable=not progress)
        for index in range(episodes):
            if index in done:
                continue
            family = families[index % len(families)]
            result, attempts = _rollout(env, family, seed, index, held_out, expert)
            summary.attempts += attempts
            summary.expert_failures += attempts - 1
            summary.frames += len(result.frames)
            summary.tasks[family] = summary.tasks.get(family, 0) + 1
            sink.add(index, result)
            bar.update(1)
        bar.close()
    sink.finalize(
        {"suite": suite, "episodes": episodes, "seed": seed, "held_out_instructions": held_out,
         "control_hz": control_hz, "image_size": image_size, "expert_noise_m": expert.noise_m,
         "dart_noise_m": expert.dart_noise_m, "dart_fade_m": expert.dart_fade_m,
         "until_done": expert.until_done, "settle_steps": expert.settle_steps,
         "start_jitter_m": expert.start_jitter_m, "pass_through": expert.pass_through,
         "missed_grasp_m": expert.missed_grasp_m,
         "cameras": ["scene", "wrist"] if wrist_camera else ["scene"]}
    )
    summary.seconds = time.perf_counter() - start
    return summary


class _LeRobotSink:
    """Stages episodes as compressed .npz (no pickles) and writes the v3 layout at the end."""

    def __init__(self, out: Path, fps: int, image_size: int, wrist_camera: bool = False) -> None:
        self.out = out
        self.fps = fps
        self.image_size = image_size
        self.wrist_camera = wrist_camera
        self.staging = out.with_name(out.name + ".partial")
        self.staging.mkdir(parents=True, exist_ok=True)

    def done_indices(self) -> set[int]:
        return {int(p.stem.split("_")[1]) for p in self.staging.glob("episode_*.json")}

    def add(self, index: int, result: EpisodeResult) -> None:
        stem = self.staging / f"episode_{index:06d}"
        tmp = stem.with_suffix(".tmp.npz")
        wrist = {"wrist_frames": result.wrist_frames} if self.wrist_camera else {}
        np.savez_compressed(tmp, frames=result.frames, states=result.states, actions=result.actions, **wrist)
        tmp.replace(stem.with_suffix(".npz"))
        meta = {"index": index, "task": result.instruction, "task_name": result.task.name,
                "seed": result.seed, "steps": result.steps}
        stem.with_suffix(".json").write_text(json.dumps(meta))  # written last: marks it done

    def finalize(self, recording: dict) -> None:
        from lapa.data.lerobot_v3 import LeRobotV3Writer

        # named dimensions in info.json, as LeRobot's own robots have (not s0..s7, a0..a6)
        extra_keys = (WRIST_VIDEO_KEY,) if self.wrist_camera else ()
        writer = LeRobotV3Writer(self.out, fps=self.fps, image_shape=(self.image_size, self.image_size, 3),
                                 extra_video_keys=extra_keys, state_names=STATE_NAMES, action_names=ACTION_NAMES)
        metas = sorted((json.loads(p.read_text()) for p in self.staging.glob("episode_*.json")),
                       key=lambda m: m["index"])
        for meta in metas:
            with np.load(self.staging / f"episode_{meta['index']:06d}.npz", allow_pickle=False) as z:
                if self.wrist_camera and "wrist_frames" not in z:
                    raise UserError(f"{self.staging}: episode {meta['index']} was staged without the wrist camera; "
                                    "resume with the options it started with, or record into a new folder")
                extra = {WRIST_VIDEO_KEY: z["wrist_frames"]} if self.wrist_camera else None
                writer.add_episode(z["frames"], z["states"], z["actions"], meta["task"], extra_frames=extra)
        writer.finalize()
        recording["episodes_meta"] = [{k: m[k] for k in ("index", "task_name", "seed", "steps")} for m in metas]
        (self.out / "meta" / "lapa_recording.json").write_text(json.dumps(recording, indent=2))
        shutil.rmtree(self.staging)


class _VideoSetSink:
    """Action-free video set: one mp4 per episode plus captions.jsonl."""

    def __init__(self, out: Path, fps: int) -> None:
        from lapa.data.video_folder import VideoFolderWriter

        self.fps = fps
        self.out = out
        self.writer = VideoFolderWriter(out, resume=True)

    def done_indices(self) -> set[int]:
        return {int(name.split("_")[1]) for name in self.writer.existing_names()}

    def add(self, index: int, result: EpisodeResult) -> None:
        self.writer.add(f"episode_{index:06d}", result.frames, self.fps, result.instruction)

    def finalize(self, recording: dict) -> None:
        self.writer.finalize()
        (self.out / "recording.json").write_text(json.dumps(recording, indent=2))


def summary_dict(summary: RecordSummary) -> dict:
    d = asdict(summary)
    d["episodes_per_min"] = summary.episodes_per_min
    return d
