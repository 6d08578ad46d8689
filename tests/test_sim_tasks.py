"""Task suite: names, instructions, success checks, scripted experts."""

import numpy as np
import pytest

from lapa.sim.env import TabletopEnv, episode_task, run_episode
from lapa.sim.fast_driver import FastDriver
from lapa.sim.tasks import FAMILIES, TaskInstance, get_suite, is_success, parse_instruction


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
