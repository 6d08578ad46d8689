"""Spoken commands: the grammar covers the task suite, the recogniser gets the fixtures right and
rejects what is not a command, audio files and VAD segmentation behave.

Fixtures: tests/fixtures/speech/*.wav, made by make_fixtures.sh (espeak-ng + sox, not needed here).
"""

from __future__ import annotations

import itertools
import json
import re
import sys
import wave
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from lapa.vocabulary import BLOCK_COLOURS, DIRECTIONS, FAMILIES, TaskFamily, TaskInstance, parse_instruction
from lapa_ros.speech.audio import AudioFileError, read_wav, resample
from lapa_ros.speech.grammar import (
    STOP_PHRASES,
    build_jsgf,
    grammar_words,
    is_stop,
    open_sentence_jsgf,
    strip_polite,
    word_roles,
)
from lapa_ros.speech.microphone import EnergyVad, MicrophoneUnavailable, WavSource, segment, wav_paths

pytest.importorskip("pocketsphinx")
from lapa_ros.speech.recognizer import CommandRecognizer  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "speech"
COMMANDS = {
    "pick_up_the_red_block.wav": ("pick up the red block", TaskInstance("pick", "red")),
    "reach_the_green_block.wav": ("reach the green block", TaskInstance("reach", "green")),
    "push_the_blue_block_left.wav": ("push the blue block left", TaskInstance("push", "blue", direction="left")),
    "put_the_green_block_on_the_yellow_block.wav": ("put the green block on the yellow block",
                                                    TaskInstance("put", "green", target="yellow")),
    # a held-out paraphrase: never in training instructions, still a command
    "nudge_the_yellow_cube_forward.wav": ("nudge the yellow cube forward",
                                          TaskInstance("push", "yellow", direction="forward")),
}
NOT_COMMANDS = ("what_is_the_weather_today.wav", "noise.wav", "silence.wav")
# one word outside the vocabulary: (what the open re-decoding hears, the unknown word reported)
NEAR_MISSES = {"reach_the_orange_block.wav": ("reach the orange block", "orange"),  # a decoy colour
               "lift_the_green_brick.wav": ("lift the green <unknown>", "<unknown>")}  # no decoy: phone loop


# ------------------------------------------------------------------ JSGF -> regex (test oracle)
def jsgf_to_regex(jsgf: str, rule: str = "command") -> re.Pattern:
    """The language of a JSGF rule as a regex over 'word word ' strings (words, <refs>, [], (), |)."""
    rules = dict(re.findall(r"^(?:public\s+)?<(\w+)>\s*=\s*(.+?);\s*$", jsgf, re.MULTILINE))

    @cache
    def expand(name: str) -> str:
        out = []
        for tok in re.findall(r"<\w+>|[\[\]()|]|[a-z']+|\S", rules[name]):
            if tok.startswith("<"):
                out.append(f"(?:{expand(tok[1:-1])})")
            elif tok in "[(":
                out.append("(?:")
            elif tok == "]":
                out.append(")?")
            elif tok in ")|":
                out.append(tok)
            elif re.fullmatch(r"[a-z']+", tok):
                out.append(re.escape(tok) + " ")
            else:
                raise ValueError(f"the test's JSGF reader does not know {tok!r}")
        return "".join(out)

    return re.compile(expand(rule))


def accepts(regex: re.Pattern, sentence: str) -> bool:
    return regex.fullmatch(" ".join(sentence.split()) + " ") is not None


def all_instructions(families=FAMILIES):
    """Every instruction of every template, with every colour/direction/target."""
    for family in families.values():
        for template in family.train_templates + family.held_out_templates:
            for colour, direction, target in itertools.product(BLOCK_COLOURS, DIRECTIONS, BLOCK_COLOURS):
                yield template.format(colour=colour, direction=direction, target=target)


def test_grammar_accepts_every_instruction_of_the_suite():
    jsgf = build_jsgf()
    regex = jsgf_to_regex(jsgf)
    sentences = set(all_instructions())
    assert len(sentences) == 200  # 5 templates x 4 colours (reach, pick), x 4 directions (push), x 4 targets (put)
    for s in sentences:
        assert accepts(regex, s), s
        assert accepts(regex, "please " + s), s
    for s in STOP_PHRASES:
        assert accepts(regex, s) and is_stop(s)
    for s in ("what is the weather today", "pick up the purple block", "push the red block up",
              "pick up the red", "please", "", "stop stop"):
        assert not accepts(regex, s), s


def test_grammar_is_rules_not_a_sentence_list():
    jsgf = build_jsgf()
    assert len(jsgf.splitlines()) < 20
    assert jsgf.count("red") == 1 and jsgf.count("forward") == 1  # colours/directions are one shared rule
    assert "<stop>" in jsgf and re.search(r"^<stop> = ", jsgf, re.MULTILINE)
    for family in FAMILIES.values():  # every template, training and held-out
        for template in family.train_templates + family.held_out_templates:
            words = template.split()[0]
            assert words in jsgf


def test_grammar_follows_the_task_vocabulary():
    families = {**FAMILIES, "wave": TaskFamily("wave", ("wave at the {colour} block",), ("salute the {colour} cube",),
                                               max_steps=10)}
    jsgf = build_jsgf(families=families, colours=(*BLOCK_COLOURS, "purple"), directions=(*DIRECTIONS, "up"))
    regex = jsgf_to_regex(jsgf)
    for s in ("wave at the purple block", "salute the red cube", "push the purple block up",
              "put the purple block on the green block"):
        assert accepts(regex, s), s
    assert {"wave", "salute", "purple", "up"} <= grammar_words(jsgf)


def test_word_roles_follow_the_templates():
    roles = word_roles()
    assert {w: roles[w] for w in ("red", "left", "block", "cube", "pick", "nudge")} == {
        "red": "colour", "left": "direction", "block": "object", "cube": "object", "pick": "verb", "nudge": "verb"}
    assert not {"the", "up", "on", "top", "please"} & set(roles)


def test_open_sentence_opens_only_the_words_given_alternatives():
    jsgf = open_sentence_jsgf("pick up the red block", {"red": {"decoy_colour": 1e-10, "phones": 1e-40}})
    assert "( /1/ red | /1e-10/ <decoy_colour> | /1e-40/ <phones> )" in jsgf
    assert "pick up the (" in jsgf and "> ) block;" in jsgf
    with pytest.raises(ValueError):
        open_sentence_jsgf("  ", {})


def test_text_helpers():
    assert strip_polite("Please pick up the red block.") == "pick up the red block"
    assert is_stop("please stop") and is_stop("Stop the robot!") and not is_stop("stop the red block")


# ------------------------------------------------------------------ recogniser
@pytest.fixture(scope="module")
def recognizer() -> CommandRecognizer:
    return CommandRecognizer()


def test_fixtures_exist_and_are_small():
    wavs = sorted(FIXTURES.glob("*.wav"))
    assert {p.name for p in wavs} >= set(COMMANDS) | set(NOT_COMMANDS) | {"stop.wav"}
    assert sum(p.stat().st_size for p in wavs) < 1_000_000
    for p in wavs:
        with wave.open(str(p)) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_commands_are_recognised_exactly(recognizer, name):
    text, task = COMMANDS[name]
    r = recognizer.recognize_file(FIXTURES / name)
    assert r.text == text, r
    assert r.accepted and r.kind == "task", r
    assert r.task == task and parse_instruction(r.text) == task
    assert recognizer.threshold <= r.confidence <= 1.0
    json.dumps(r.to_dict())


def test_stop_is_recognised(recognizer):
    r = recognizer.recognize_file(FIXTURES / "stop.wav")
    assert (r.text, r.kind, r.accepted, r.task) == ("stop", "stop", True, None), r


@pytest.mark.parametrize("name", NOT_COMMANDS)
def test_non_commands_are_not_accepted(recognizer, name):
    r = recognizer.recognize_file(FIXTURES / name)
    assert not r.accepted, r
    assert r.reason


@pytest.mark.parametrize("name", sorted(NEAR_MISSES))
def test_near_misses_are_rejected_as_out_of_vocabulary(recognizer, name):
    heard, unknown = NEAR_MISSES[name]
    r = recognizer.recognize_file(FIXTURES / name)
    assert (r.accepted, r.kind, r.task) == (False, "none", None), r
    assert r.text == heard and r.reason == f"out of vocabulary: {unknown}", r
    json.dumps(r.to_dict())


def test_decoys_are_words_the_vocabulary_lacks(recognizer):
    assert {"purple", "orange", "cup", "throw"} <= recognizer.decoys
    assert not recognizer.decoys & grammar_words(build_jsgf())


def test_results_do_not_depend_on_what_was_heard_before(recognizer):
    stop = read_wav(FIXTURES / "stop.wav")
    first = recognizer.recognize(stop)
    recognizer.recognize_file(FIXTURES / "noise.wav")
    recognizer.recognize_file(FIXTURES / "put_the_green_block_on_the_yellow_block.wav")
    again = recognizer.recognize(stop)
    assert (again.text, again.confidence, again.llr_per_frame) == (first.text, first.confidence, first.llr_per_frame)


def test_other_formats_are_converted(recognizer, tmp_path):
    audio = read_wav(FIXTURES / "pick_up_the_red_block.wav")
    up = resample(audio, 16000, 44100)
    stereo = np.stack([up, up], axis=1)
    path = tmp_path / "pick_44k_stereo.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes(stereo.astype("<i2").tobytes())
    back = read_wav(path)
    assert abs(back.size - audio.size) <= 2
    assert recognizer.recognize_file(path).text == "pick up the red block"
    float_audio = audio.astype(np.float32) / 32768.0  # float input to recognize()
    assert recognizer.recognize(float_audio).text == "pick up the red block"


def test_unreadable_files_give_a_clear_error(recognizer, tmp_path):
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    for path in (text, empty):
        with pytest.raises(AudioFileError, match=r"cannot read .*\.wav as a PCM WAV file"):
            recognizer.recognize_file(path)
    with pytest.raises(AudioFileError, match="no such file"):
        recognizer.recognize_file(tmp_path / "missing.wav")


def test_too_short_audio_is_rejected(recognizer):
    r = recognizer.recognize(np.zeros(800, np.int16))
    assert not r.accepted and r.reason == "too short"


def test_grammar_words_missing_from_the_dictionary_fail_at_construction():
    jsgf = "#JSGF V1.0;\ngrammar g;\npublic <command> = frobnicate the red block | stop;\n"
    with pytest.raises(ValueError, match="frobnicate"):
        CommandRecognizer(jsgf=jsgf)
    CommandRecognizer(jsgf=jsgf, extra_pronunciations={"frobnicate": "F R AA B N AH K EY T"})


def test_thresholds_are_checked():
    with pytest.raises(ValueError, match="threshold"):
        CommandRecognizer(threshold=1.5)
    with pytest.raises(ValueError, match="decoy_weight"):
        CommandRecognizer(decoy_weight=2.0)


# ------------------------------------------------------------------ VAD and sources
def test_vad_cuts_a_recording_into_utterances():
    pause = np.zeros(16000, np.int16)
    pick = read_wav(FIXTURES / "pick_up_the_red_block.wav")
    stop = read_wav(FIXTURES / "stop.wav")
    rng = np.random.default_rng(0)
    hum = rng.normal(0, 60, pause.size * 3 + pick.size + stop.size).astype(np.int16)  # a quiet room
    recording = np.concatenate([pause, pick, pause, stop, pause]) + hum
    blocks = [recording[i:i + 480] for i in range(0, recording.size, 480)]
    utterances = list(segment(blocks, EnergyVad()))
    assert len(utterances) == 2
    for utterance, words in zip(utterances, (pick, stop), strict=True):
        loud = np.flatnonzero(np.abs(words) > 300)
        speech_s = (loud[-1] - loud[0]) / 16000
        # all of the speech, plus at most the VAD's pre-roll before and kept silence after
        assert speech_s <= utterance.size / 16000 <= speech_s + 0.7


def test_vad_learns_steady_noise_that_starts_loud():
    rng = np.random.default_rng(1)
    stop = read_wav(FIXTURES / "stop.wav")
    fan = rng.normal(0, 500, 16000 * 12)  # -36 dBFS, from the first sample on
    fan[16000 * 10:16000 * 10 + stop.size] += stop
    vad = EnergyVad()
    blocks = np.clip(fan, -32768, 32767).astype(np.int16).reshape(-1, 1600)
    utterances = [u for block in blocks for u in vad.push(block)]
    # first the fan itself, cut at the maximum length; then the floor knows it and only "stop" is speech
    assert [round(u.size / 16000) for u in utterances][:1] == [8]
    assert len(utterances) == 2 and utterances[1].size < 16000 * 2
    assert vad.noise_floor_dbfs > -40.0


def test_vad_ignores_silence_and_short_clicks():
    vad = EnergyVad()
    click = np.zeros(16000, np.int16)
    click[8000:8480] = 20000  # 30 ms
    assert list(segment([np.zeros(16000, np.int16), click], vad)) == []


def test_wav_source_replays_a_directory(tmp_path):
    assert [p.name for p in wav_paths(FIXTURES)] == sorted(p.name for p in FIXTURES.glob("*.wav"))
    heard = [path.name for path, _ in WavSource(FIXTURES / "stop.wav").utterances(EnergyVad())]
    assert heard == ["stop.wav"]
    with pytest.raises(AudioFileError, match="no .wav files"):
        wav_paths(tmp_path)
    with pytest.raises(AudioFileError, match="no such WAV file"):
        wav_paths(tmp_path / "nope")


def test_microphone_without_sounddevice_says_what_to_install(monkeypatch):
    from lapa_ros.speech.microphone import MicrophoneSource

    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails as if not installed
    with pytest.raises(MicrophoneUnavailable, match="pip install sounddevice"):
        MicrophoneSource()
