"""`lapa bench speech`: does the offline recogniser accept true commands and reject near misses?

Synthetic speech from espeak-ng (several voices and speeds, 16 kHz after resampling, silence padded):
- true commands: wordings of every task family;
- near misses: a true command with one word changed to a colour, object or verb outside the
  vocabulary ("pick up the purple block", "pick up the red cup", "kick the red block"): a wrong
  command that moves the arm is worse than a rejected one;
- unrelated speech.

Two disjoint splits (no sentence and no voice in both): `--split tune` is the only one thresholds,
grammar weights and decoy lists may be looked at with; `--split eval` is reported once. Near misses
are also counted by whether their changed word is one of the recogniser's decoy words or not, so the
JSON shows how the open (phone-loop) alternative does on words nobody listed.
Needs espeak-ng (`apt-get install espeak-ng`) only to run; it is never needed by the robot.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

EVAL = {
    "voices": (("en-us", 150), ("en-gb", 135), ("en-us+f3", 165), ("en-gb-x-rp", 145), ("en-us+m3", 150),
               ("en-029", 140), ("en-gb-scotland", 155), ("en-us+f2", 130)),
    "command": ("pick up the red block", "reach the green block", "push the blue block left",
                "put the green block on the yellow block", "lift the yellow block", "slide the red block forward",
                "stack the blue block on the red block", "go to the blue block"),
    # one word changed, to a word the grammar does not have: (sentence, changed word)
    "near_miss": (("pick up the purple block", "purple"), ("pick up the red cup", "cup"),
                  ("kick the red block", "kick"), ("reach the orange block", "orange"),
                  ("reach the green ball", "ball"), ("push the pink block left", "pink"),
                  ("push the blue bottle left", "bottle"), ("put the green box on the yellow block", "box"),
                  ("lift the black block", "black"), ("throw the yellow block", "throw"),
                  ("slide the red chair forward", "chair"), ("go to the brown block", "brown"),
                  ("pick up the violet block", "violet"), ("reach the silver block", "silver"),
                  ("push the cyan block left", "cyan"), ("lift the green brick", "brick"),
                  ("go to the red lamp", "lamp"), ("stack the blue pillow on the red block", "pillow"),
                  ("smash the blue block", "smash"), ("paint the green block", "paint"),
                  ("wash the yellow block", "wash"), ("lick the red block", "lick"),
                  ("slide the beige block forward", "beige"), ("put the green block on the yellow shoe", "shoe")),
    "unrelated": ("what is the weather today", "turn on the lights in the kitchen", "hello how are you",
                  "the meeting starts at noon"),
}
TUNE = {
    "voices": (("en-gb-x-gbclan", 150), ("en-us-nyc", 145), ("en-gb-x-gbcwmd", 140), ("en-us+f4", 160),
               ("en-gb+m2", 130), ("en-us+m6", 170)),
    "command": ("grab the green block", "move to the red block", "move the yellow block back",
                "place the blue block on top of the green block", "reach the yellow block",
                "slide the green block right", "pick up the blue block", "put the red block on the blue block"),
    "near_miss": (("grab the white block", "white"), ("move to the red mug", "mug"),
                  ("move the grey block back", "grey"), ("pull the yellow block left", "pull"),
                  ("place the blue bowl on top of the green block", "bowl"), ("reach the gold block", "gold"),
                  ("slide the green stone right", "stone"), ("hit the blue block", "hit"),
                  ("pick up the red sock", "sock"), ("clean the green block", "clean"),
                  ("put the tan block on the blue block", "tan"), ("reach the yellow plate", "plate"),
                  ("drop the red block", "drop"), ("move the maroon block back", "maroon"),
                  ("pick up the blue spoon", "spoon"), ("kiss the green block", "kiss")),
    "unrelated": ("please open the window", "where did you put my keys", "the red car is parked outside",
                  "call me tomorrow morning"),
}
SPLITS = {"eval": EVAL, "tune": TUNE}
KINDS = ("command", "near_miss", "unrelated")
PAD_BEFORE_S, PAD_AFTER_S = 0.3, 0.4


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", choices=sorted(SPLITS), default="eval",
                   help="tune: sentences and voices for setting weights; eval: the held-apart set to report")
    p.add_argument("--voices", type=int, default=None, help="how many of the split's voices to use (default all)")


def synthesize(text: str, voice: str, wpm: int, work: Path) -> np.ndarray:
    """int16 mono 16 kHz samples of `text` spoken by espeak-ng, with silence around it."""
    from lapa_ros.speech.audio import SAMPLE_RATE_HZ, read_wav

    path = work / "utterance.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(path), text], check=True,
                   capture_output=True, timeout=30)
    pcm = read_wav(path)
    return np.concatenate([np.zeros(int(PAD_BEFORE_S * SAMPLE_RATE_HZ), np.int16), pcm,
                           np.zeros(int(PAD_AFTER_S * SAMPLE_RATE_HZ), np.int16)])


def utterances(split: dict) -> list[tuple[str, str, str]]:
    """(kind, text, changed word or '') for every sentence of a split."""
    out = [("command", t, "") for t in split["command"]]
    out += [("near_miss", t, w) for t, w in split["near_miss"]]
    return out + [("unrelated", t, "") for t in split["unrelated"]]


def _rate(rows: list[dict], accepted: bool) -> float:
    ok = [(r["accepted"] and (r["kind"] != "command" or r["right_task"])) == accepted for r in rows]
    return float(np.mean(ok)) if ok else float("nan")


def summarize(rows: list[dict], decoys: frozenset[str]) -> dict[str, Any]:
    """Rates per kind, and near misses split by whether their changed word is a decoy."""
    by = {kind: [r for r in rows if r["kind"] == kind] for kind in KINDS}
    near = by["near_miss"]
    listed = [r for r in near if r["changed_word"] in decoys]
    unlisted = [r for r in near if r["changed_word"] not in decoys]
    return {
        "utterances": {kind: len(by[kind]) for kind in KINDS},
        "commands_accepted_right_task": _rate(by["command"], True),
        "commands_accepted_wrong_task": float(np.mean([r["accepted"] and not r["right_task"] for r in by["command"]])),
        "near_misses_rejected": _rate(near, False),
        "near_misses_rejected_changed_word_a_decoy": {"utterances": len(listed), "rate": _rate(listed, False)},
        "near_misses_rejected_changed_word_not_a_decoy": {"utterances": len(unlisted), "rate": _rate(unlisted, False)},
        "unrelated_rejected": _rate(by["unrelated"], False),
        "targets": {"near_misses_rejected": 0.9, "commands_accepted_right_task": 0.9},
    }


def recognise_all(recognizer, split: dict, voices) -> list[dict]:
    from lapa.vocabulary import parse_instruction

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for voice, wpm in tqdm(voices, desc="voices"):
            for kind, text, changed in utterances(split):
                rec = recognizer.recognize(synthesize(text, voice, wpm, Path(tmp)))
                truth = parse_instruction(text) if kind == "command" else None
                rows.append({"voice": voice, "wpm": wpm, "kind": kind, "text": text, "changed_word": changed,
                             "heard": rec.text, "accepted": rec.accepted, "decided": rec.kind,
                             "right_task": rec.task == truth if truth else False, "reason": rec.reason,
                             "confidence": round(rec.confidence, 4)})
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    from lapa_ros.speech.recognizer import DECOY_WORDS, CommandRecognizer

    if shutil.which("espeak-ng") is None:
        raise SystemExit("lapa bench speech needs espeak-ng to synthesise speech: apt-get install espeak-ng")
    split = SPLITS[args.split]
    voices = split["voices"][:args.voices]
    recognizer = CommandRecognizer()
    rows = recognise_all(recognizer, split, voices)
    return {
        "split": args.split,
        "voices": [f"{v} {w} wpm" for v, w in voices],
        **summarize(rows, DECOY_WORDS),
        "settings": {"threshold": recognizer.threshold, "stop_threshold": recognizer.stop_threshold,
                     "decoy_weight": recognizer.decoy_weight, "phone_loop_weight": recognizer.phone_loop_weight,
                     "decoys": sorted(recognizer.decoys)},
        "rows": rows,
    }
