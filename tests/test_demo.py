"""`lapa demo`'s episode plan: instructions the served model was trained for."""

from __future__ import annotations

import argparse
from pathlib import Path

from lapa.vocabulary import get_suite, parse_instruction
from lapa_ros.demo import EXPERT_SCRIPT, MODEL_SCRIPT, SPEECH_FIXTURES, demo_script, episode_plan, register
from lapa_ros.launch_plan import DEFAULT_MODEL_SUITE


def demo_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["demo", *argv])


def test_every_scripted_wav_is_a_fixture():
    for _, wav, _ in (MODEL_SCRIPT, EXPERT_SCRIPT):
        assert (SPEECH_FIXTURES / wav).is_file()


def test_the_trained_model_gets_its_families_and_the_expert_every_family():
    model_plan = episode_plan(demo_args("--episodes", "6"), "models/lapa_tabletop")
    assert [source for _, _, source in model_plan] == ["typed", "spoken", "typed", "typed", "typed", "typed"]
    assert Path(model_plan[1][0]).name == "reach_the_green_block.wav"
    typed = [text for text, _, source in model_plan if source == "typed"]
    assert {parse_instruction(t).family for t in typed} == set(get_suite(DEFAULT_MODEL_SUITE))

    expert_plan = episode_plan(demo_args("--episodes", "6"), "expert")
    families = {parse_instruction(text).family for text, _, source in expert_plan if source == "typed"}
    assert families == {"pick", "reach", "push", "put"}
    assert [seed for _, seed, _ in expert_plan] == list(range(6))


def test_flags_override_the_script():
    typed, wav, suite = demo_script(demo_args("--typed", "pick up the blue block", "--wav", "x.wav",
                                              "--suite", "default"), "models/lapa_tabletop")
    assert (typed, wav, suite) == ("pick up the blue block", Path("x.wav"), "default")


def test_the_demo_serves_a_checkpoint_with_the_default_backend_and_names_it():
    from lapa_ros.demo import served_backend
    from lapa_ros.launch_plan import DEFAULT_SERVER_BACKEND

    assert demo_args().server_backend == DEFAULT_SERVER_BACKEND == "onnxruntime-int8"
    assert served_backend("models/lapa_tabletop", demo_args().server_backend) == "onnxruntime-int8"
    assert served_backend("expert", "onnxruntime-int8") == "scripted expert"
    assert demo_args("--server-backend", "torch").server_backend == "torch"
