"""`lapa bench speech`: does the offline recogniser accept true commands and reject near misses?

Synthetic speech from espeak-ng (several voices and speeds, 16 kHz after resampling, silence padded):
- true commands: training wordings of every task family;
- near misses: a true command with one word changed to a colour, object or verb outside the
  vocabulary ("pick up the purple block", "pick up the red cup", "kick the red block"): a wrong
  command that moves the arm is worse than a rejected one;
- unrelated speech.
For each utterance the recogniser's decision and its scores (whole-utterance and worst-word
log-likelihood ratios) are kept, so the JSON also shows the trade-off of the worst-word threshold.
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

VOICES = (("en-us", 150), ("en-gb", 135), ("en-us+f3", 165), ("en-gb-x-rp", 145), ("en-us+m3", 150),
          ("en-029", 140), ("en-gb-scotland", 155), ("en-us+f2", 130))
COMMANDS = ("pick up the red block", "reach the green block", "push the blue block left",
            "put the green block on the yellow block", "lift the yellow block", "slide the red block forward",
            "stack the blue block on the red block", "go to the blue block")
# one word changed, to a word the grammar does not have
NEAR_MISSES = ("pick up the purple block", "pick up the red cup", "kick the red block",
               "reach the orange block", "reach the green ball", "push the pink block left",
               "push the blue bottle left", "put the green box on the yellow block",
               "lift the black block", "throw the yellow block", "slide the red chair forward",
               "go to the brown block")
UNRELATED = ("what is the weather today", "turn on the lights in the kitchen", "hello how are you",
             "the meeting starts at noon")
PAD_BEFORE_S, PAD_AFTER_S = 0.3, 0.4


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--voices", type=int, default=len(VOICES), help="how many of the voices to use")
    p.add_argument("--word-thresholds", default="-2.5,-3.0,-3.5,-4.0,-4.5,-5.0,-6.0",
                   help="worst-word LLR thresholds (nats per frame) to report the trade-off for")


def synthesize(text: str, voice: str, wpm: int, work: Path) -> np.ndarray:
    """int16 mono 16 kHz samples of `text` spoken by espeak-ng, with silence around it."""
    from lapa_ros.speech.audio import SAMPLE_RATE_HZ, read_wav

    path = work / "utterance.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(path), text], check=True,
                   capture_output=True, timeout=30)
    pcm = read_wav(path)
    return np.concatenate([np.zeros(int(PAD_BEFORE_S * SAMPLE_RATE_HZ), np.int16), pcm,
                           np.zeros(int(PAD_AFTER_S * SAMPLE_RATE_HZ), np.int16)])


def _rate(rows: list[dict], kind: str, accepted: bool, word_threshold: float | None = None) -> float:
    picked = [r for r in rows if r["kind"] == kind]

    def accepts(r: dict) -> bool:
        ok = r["accepted"] and (kind != "command" or r["right_task"])
        if word_threshold is not None:
            ok = ok and r["min_word_llr"] is not None and r["min_word_llr"] >= word_threshold
        return ok

    return float(np.mean([accepts(r) == accepted for r in picked])) if picked else float("nan")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from lapa.vocabulary import parse_instruction
    from lapa_ros.speech.recognizer import CommandRecognizer

    if shutil.which("espeak-ng") is None:
        raise SystemExit("lapa bench speech needs espeak-ng to synthesise speech: apt-get install espeak-ng")
    recognizer = CommandRecognizer()
    utterances = [(kind, text) for kind, texts in (("command", COMMANDS), ("near_miss", NEAR_MISSES),
                                                   ("unrelated", UNRELATED)) for text in texts]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for voice, wpm in tqdm(VOICES[:args.voices], desc="voices"):
            for kind, text in utterances:
                rec = recognizer.recognize(synthesize(text, voice, wpm, Path(tmp)))
                truth = parse_instruction(text) if kind == "command" else None
                rows.append({"voice": voice, "wpm": wpm, "kind": kind, "text": text, "heard": rec.text,
                             "accepted": rec.accepted, "right_task": rec.task == truth if truth else False,
                             "confidence": round(rec.confidence, 4),
                             "min_word_llr": None if not np.isfinite(rec.min_word_llr) else round(rec.min_word_llr, 3)})
    thresholds = [float(t) for t in args.word_thresholds.split(",")]
    return {
        "voices": [f"{v} {w} wpm" for v, w in VOICES[:args.voices]],
        "utterances": {kind: sum(r["kind"] == kind for r in rows) for kind in ("command", "near_miss", "unrelated")},
        "commands_accepted_right_task": _rate(rows, "command", True),
        "commands_accepted_wrong_task": float(np.mean([r["accepted"] and not r["right_task"]
                                                       for r in rows if r["kind"] == "command"])),
        "near_misses_rejected": _rate(rows, "near_miss", False),
        "unrelated_rejected": _rate(rows, "unrelated", False),
        "targets": {"near_misses_rejected": 0.9, "commands_accepted_right_task": 0.9},
        "worst_word_threshold_tradeoff": [
            {"min_word_llr": t, "commands_accepted_right_task": _rate(rows, "command", True, t),
             "near_misses_rejected": _rate(rows, "near_miss", False, t),
             "unrelated_rejected": _rate(rows, "unrelated", False, t)} for t in thresholds],
        "threshold_in_use": getattr(recognizer, "word_threshold", None),
        "rows": rows,
    }
