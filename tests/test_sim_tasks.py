"""Task suite: names, instructions, success checks, scripted experts."""

import numpy as np
import pytest

from lapa.sim.env import TabletopEnv, episode_task, run_episode
from lapa.sim.fast_driver import FastDriver
from lapa.sim.tasks import FAMILIES, TaskInstance, get_suite, is_success, parse_instruction, task_progress


@pytest.fixture(scope="module")
def env():
    with FastDriver(render=False) as driver:
        yield TabletopEnv(driver)


def test_default_suite_has_the_four_task_families():
    assert get_suite("default") == ("reach", "push", "pick", "put")
    with pytest.raises(KeyError, match="unknown suite"):
        get_suite("kitchen")


@pytest.mark.parametrize("name", ["reach_red", "push_blue_left", "pick_yellow", "put_red_green"])
def test_task_names_round_trip(name):
    assert TaskInstance.parse(name).name == name


@pytest.mark.parametrize("name, message", [
    ("pick_purple", "unknown colour"),
    ("fly_red", "unknown task"),
    ("push_red_up", "needs a direction"),
    ("put_red_red", "on itself"),
    ("reach_red_left", "takes only a colour"),
])
def test_bad_task_names_fail_clearly(name, message):
    with pytest.raises(ValueError, match=message):
        TaskInstance.parse(name)


def test_every_template_parses_back_to_its_task():
    rng = np.random.default_rng(0)
    for family in FAMILIES.values():
        for held_out in (False, True):
            for _ in range(10):
                task, text = episode_task(family.name, int(rng.integers(1_000_000)), held_out=held_out)
                assert parse_instruction(text) == task, text
    assert parse_instruction("Please pick up the red block.") == TaskInstance("pick", "red")
    assert parse_instruction("make me a sandwich") is None


def test_held_out_paraphrases_differ_from_training_templates():
    for family in FAMILIES.values():
        assert not set(family.train_templates) & set(family.held_out_templates)


FUNCTION_WORDS = {"over", "with", "off", "a", "an", "onto"}


@pytest.mark.parametrize("task", [TaskInstance("reach", "red"), TaskInstance("push", "blue", direction="left"),
                                  TaskInstance("pick", "green"), TaskInstance("put", "red", target="yellow")])
def test_broad_augmentation_adds_wordings_of_the_same_task_without_held_out_words(task):
    basic, broad = task.wordings(), task.wordings(broad=True)
    assert set(basic) < set(broad) and len(broad) >= 10 * len(basic) and len(set(broad)) == len(broad)
    assert all(task.colour in w and (task.direction or task.target or "") in w for w in broad)
    # no wording of the broad set uses a content word that only the held-out paraphrases use
    train_words = {w for t in FAMILIES[task.family].train_templates for w in t.split()} | FUNCTION_WORDS
    held_out_words = {w for t in FAMILIES[task.family].held_out_templates for w in t.split()} - train_words
    assert not held_out_words & {w.strip(",.") for text in broad for w in text.split()}


@pytest.mark.parametrize("family", ["reach", "push", "pick", "put"])
@pytest.mark.parametrize("seed", [0, 1])
def test_expert_succeeds_and_success_is_false_at_the_start(env, family, seed):
    task, instruction = episode_task(family, seed)
    env.reset(task, seed, instruction)
    assert not env.success, "no task is solved before the robot moves"
    result = run_episode(env, task, seed, instruction=instruction, record=False)
    assert result.success, f"expert failed {task.name} on seed {seed}"
    assert result.steps <= FAMILIES[family].max_steps


def test_a_do_nothing_policy_fails(env):
    task, instruction = episode_task("pick", 3)
    result = run_episode(env, task, 3, policy=lambda obs: np.array([0, 0, 0, 0, 0, 0, 1.0]),
                         instruction=instruction, record=False)
    assert not result.success and result.steps == FAMILIES["pick"].max_steps


def test_pushing_the_wrong_way_is_not_success(env):
    task = TaskInstance("push", "red", direction="left")
    opposite = TaskInstance("push", "red", direction="right")
    result = run_episode(env, opposite, 4, record=False)
    assert result.success
    assert not is_success(task, env.driver, env.start)
    wrong, right = task_progress(task, env.driver, env.start), task_progress(opposite, env.driver, env.start)
    assert right["along_m"] >= 0.06 and wrong["along_m"] == pytest.approx(-right["along_m"])
    assert wrong["sideways_m"] == pytest.approx(right["sideways_m"])


def test_task_progress_measures_what_the_success_check_thresholds(env):
    task, instruction = episode_task("pick", 3)
    env.reset(task, 3, instruction)
    assert task_progress(task, env.driver, env.start)["lift_m"] == pytest.approx(0.0, abs=0.005)
    assert run_episode(env, task, 3, instruction=instruction, record=False).success
    assert task_progress(task, env.driver, env.start)["lift_m"] >= 0.08 - 0.02
    put, instruction = episode_task("put", 5)
    assert run_episode(env, put, 5, instruction=instruction, record=False).success
    stacked = task_progress(put, env.driver, env.start)
    assert stacked["stack_offset_m"] < 0.025 and abs(stacked["stack_height_error_m"]) < 0.012
    assert task_progress(TaskInstance("reach", "red"), env.driver, env.start) == {}


@pytest.mark.parametrize("family", ["reach", "push", "pick", "put"])
def test_pass_through_expert_succeeds_without_stopping_at_via_points(env, family):
    from lapa.sim.expert import MAX_STEP_M

    task, instruction = episode_task(family, 2)
    stopping = run_episode(env, task, 2, instruction=instruction)
    through = run_episode(env, task, 2, instruction=instruction, pass_through=True)
    assert stopping.success and through.success and through.steps <= stopping.steps

    def slow_steps(result):  # steps that move less than half speed without working the gripper
        moving = np.linalg.norm(result.actions[:-1, :3], axis=1)  # (T,)
        gripper_steady = np.r_[True, np.diff(result.actions[:-1, 6]) == 0]
        return int(np.sum((moving < MAX_STEP_M / 2) & gripper_steady))

    assert np.linalg.norm(through.actions[:-1, :3], axis=1).max() <= MAX_STEP_M + 1e-6
    if family in ("reach", "push"):  # their via points are where the stopping expert slows down
        assert slow_steps(through) < slow_steps(stopping)
