"""An episode on the tabletop: a driver, a task, its success check, and the observation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from lapa.sim.driver import Driver
from lapa.sim.expert import CARRY_Z_M, GRASP_Z_M, GRIPPER_CLOSED, GRIPPER_OPEN, HOVER_Z_M, ScriptedExpert
from lapa.sim.tasks import EpisodeStart, is_success
from lapa.vocabulary import FAMILIES, TaskInstance, sample_instance


@dataclass
class Observation:
    image: np.ndarray  # (H, W, 3) uint8, scene camera
    state: np.ndarray  # (8,) float32
    instruction: str
    wrist: np.ndarray | None = None  # (H, W, 3) uint8, the hand camera where the scene has one


@dataclass
class EpisodeResult:
    task: TaskInstance
    instruction: str
    seed: int
    success: bool
    steps: int
    frames: np.ndarray | None = None  # (T+1, H, W, 3) uint8: observations before each action + final
    wrist_frames: np.ndarray | None = None  # (T+1, H, W, 3) uint8: the same from the wrist camera, if any
    states: np.ndarray = field(default_factory=lambda: np.zeros((0, 8), np.float32))  # (T+1, 8)
    actions: np.ndarray = field(default_factory=lambda: np.zeros((0, 7), np.float32))  # (T+1, 7)


Policy = Callable[[Observation], np.ndarray]


def episode_task(family: str, seed: int, held_out: bool = False) -> tuple[TaskInstance, str]:
    """The task instance and instruction an episode seed stands for (deterministic)."""
    rng = np.random.default_rng([seed, 7])
    task = sample_instance(family, rng)
    return task, task.instruction(rng, held_out=held_out)


class TabletopEnv:
    """Wraps a driver (fast or franky) with a task and its success check."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.task: TaskInstance | None = None
        self.instruction = ""
        self.start: EpisodeStart | None = None
        self.steps = 0

    def reset(self, task: TaskInstance, seed: int, instruction: str | None = None) -> Observation:
        self.driver.reset(seed)
        self.task = task
        self.instruction = instruction or task.instruction()
        self.start = EpisodeStart(self.driver.block_positions())
        self.steps = 0
        return self.observe()

    @property
    def has_wrist_camera(self) -> bool:
        return self.driver.renderer is not None and "wrist" in self.driver.renderer.cameras

    def observe(self) -> Observation:
        image = self.driver.render("scene") if self.driver.renderer is not None else np.zeros((0, 0, 3), np.uint8)
        wrist = self.driver.render("wrist") if self.has_wrist_camera else None
        return Observation(image, self.driver.robot_state().as_vector(), self.instruction, wrist)

    def step(self, action) -> Observation:
        self.driver.apply_action(action)
        self.steps += 1
        return self.observe()

    @property
    def success(self) -> bool:
        return is_success(self.task, self.driver, self.start)

    @property
    def max_steps(self) -> int:
        return FAMILIES[self.task.family].max_steps


START_MOVE_STEP_M = 0.03  # per control step while moving to a random start


def move_to_random_start(env: TabletopEnv, rng: np.random.Generator, jitter_m: float) -> Observation:
    """Move the gripper (open, unrecorded) by up to `jitter_m` in x and y and down by up to half of it,
    in steps of at most 3 cm; the episode's step count starts after it."""
    offset = np.array([rng.uniform(-jitter_m, jitter_m), rng.uniform(-jitter_m, jitter_m),
                       -rng.uniform(0.0, jitter_m / 2)])
    n = max(1, int(np.ceil(np.linalg.norm(offset) / START_MOVE_STEP_M)))
    for _ in range(n):
        env.driver.apply_action(np.array([*(offset / n), 0.0, 0.0, 0.0, 1.0], np.float32))
    env.steps = 0
    return env.observe()


MISS_MIN_OFFSET_M = 0.025  # a missed grasp closes at least this far (table plane) from the block's centre
MISS_CLEARANCE_M = 0.07  # ... and this far from every other block, so that it closes on nothing
EMPTY_GRIP_M = 0.01  # fingers closer than this hold nothing (the blocks are 4 cm)


def move_to_missed_grasp(env: TabletopEnv, task: TaskInstance, rng: np.random.Generator,
                         max_offset_m: float) -> Observation | None:
    """Stage a missed grasp (unrecorded): the open gripper goes down beside the block to lift, between
    MISS_MIN_OFFSET_M and `max_offset_m` off its centre, closes on nothing, and stays there or rises
    part of the way to the carry height. The episode's step count starts after it, so the recording
    shows the expert's recovery (open, back over the block, grasp again) from the state a policy's
    missed grasp leaves, with clean labels. None where no spot clears the other blocks, or the
    fingers caught something."""
    block = env.driver.block_pose(task.colour)[0]  # (3,)
    others = [p for c, p in env.driver.block_positions().items() if c != task.colour]
    for _ in range(20):
        angle, radius = rng.uniform(0.0, 2 * np.pi), rng.uniform(MISS_MIN_OFFSET_M, max_offset_m)
        spot = block[:2] + radius * np.array([np.cos(angle), np.sin(angle)])  # (2,)
        if all(np.linalg.norm(spot - p[:2]) > MISS_CLEARANCE_M for p in others):
            break
    else:
        return None
    rise_z = rng.uniform(GRASP_Z_M, CARRY_Z_M)
    for target, gripper, settle in (((*spot, HOVER_Z_M), GRIPPER_OPEN, 0), ((*spot, GRASP_Z_M), GRIPPER_OPEN, 0),
                                    ((*spot, GRASP_Z_M), GRIPPER_CLOSED, 6), ((*spot, rise_z), GRIPPER_CLOSED, 0)):
        _move_to(env, np.array(target), gripper, settle)
    if env.driver.gripper_width_m() > EMPTY_GRIP_M:
        return None
    env.steps = 0
    return env.observe()


def _move_to(env: TabletopEnv, target: np.ndarray, gripper: float, settle_steps: int) -> None:
    """Straight to `target` (3,) in steps of at most START_MOVE_STEP_M, then `settle_steps` still steps."""
    for _ in range(40):
        delta = target - env.driver.robot_state().ee_pos_m
        dist = float(np.linalg.norm(delta))
        if dist < 0.003:
            break
        step = delta if dist <= START_MOVE_STEP_M else delta * (START_MOVE_STEP_M / dist)
        env.driver.apply_action(np.array([*step, 0.0, 0.0, 0.0, gripper], np.float32))
    for _ in range(settle_steps):
        env.driver.apply_action(np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, gripper], np.float32))


def run_episode(env: TabletopEnv, task: TaskInstance, seed: int, policy: Policy | None = None,
                instruction: str | None = None, record: bool = True, stop_on_success: bool = True,
                expert_noise_m: float = 0.0, dart_noise_m: float = 0.0, settle_steps: int = 0,
                start_jitter_m: float = 0.0, pass_through: bool = False, dart_fade_m: float = 0.0,
                missed_grasp_m: float = 0.0) -> EpisodeResult | None:
    """Roll out one episode; `policy=None` runs the scripted expert.

    Expert only: `dart_noise_m` (DART) adds Gaussian noise to the *executed* translation while
    the expert's clean, corrective action is what gets recorded, so the data covers the states a
    learned policy drifts into. `dart_fade_m` > 0 scales that noise down within this distance of the
    expert's next waypoint (to zero on it and while it holds there): full-strength noise at every step
    keeps the arm from ever settling within a grasp's 4 mm tolerance, and the recording fills with
    dithering at the block instead of grasps and lifts. `settle_steps` (with `stop_on_success=False`)
    keeps recording the expert holding still at its final pose, so the data shows the last centimetres and the stop.
    `start_jitter_m` moves the gripper to a random start (seeded) before the episode begins: from
    a fixed home pose, where the arm is on its straight path tells where it goes, and a policy
    learns that shortcut instead of looking at the blocks and the instruction. `pass_through`: the
    expert moves through its via points at full speed (see `ScriptedExpert`). `missed_grasp_m` > 0
    (pick and put) starts from a staged missed grasp instead (`move_to_missed_grasp`); None when
    that seed's scene leaves no spot for one.
    """
    obs = env.reset(task, seed, instruction)
    if missed_grasp_m > 0 and task.family in ("pick", "put"):
        obs = move_to_missed_grasp(env, task, np.random.default_rng([seed, 19]), missed_grasp_m)
        if obs is None:
            return None
    elif start_jitter_m > 0:
        obs = move_to_random_start(env, np.random.default_rng([seed, 17]), start_jitter_m)
    expert = None
    noise_rng = np.random.default_rng([seed, 13])
    if policy is None:
        expert = ScriptedExpert(task, env.driver, np.random.default_rng([seed, 11]), noise_m=expert_noise_m,
                                pass_through=pass_through)
        policy = lambda _obs: expert.act(env.driver)  # noqa: E731
    frames, wrist_frames, states, actions = [], [], [], []
    success = False
    settled = 0
    while env.steps < env.max_steps:
        action = np.asarray(policy(obs), dtype=np.float32)
        if record:
            frames.append(obs.image)
            wrist_frames.append(obs.wrist)
            states.append(obs.state)
            actions.append(action)
        executed = action
        if expert is not None and dart_noise_m > 0 and not expert.done:
            executed = action.copy()
            scale = 1.0 if dart_fade_m <= 0 else min(1.0, expert.distance_to_target_m(env.driver) / dart_fade_m)
            executed[:3] += (scale * noise_rng.normal(0.0, dart_noise_m, 3)).astype(np.float32)
        obs = env.step(executed)
        success = env.success
        if success and stop_on_success:
            break
        if expert is not None and expert.done:
            if settled >= settle_steps:
                break
            settled += 1
    result = EpisodeResult(task, env.instruction, seed, success, env.steps)
    if record:
        hold = np.zeros(7, np.float32)
        hold[6] = actions[-1][6] if actions else 1.0
        frames.append(obs.image)
        wrist_frames.append(obs.wrist)
        states.append(obs.state)
        actions.append(hold)
        result.frames = np.stack(frames)
        if obs.wrist is not None:
            result.wrist_frames = np.stack(wrist_frames)
        result.states = np.stack(states).astype(np.float32)
        result.actions = np.stack(actions).astype(np.float32)
    return result
