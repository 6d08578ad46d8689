"""Offline command recognition: pocketsphinx with the task grammar, a confidence that rejects
speech that is not a command, and a re-decoding open to unknown words that rejects near misses.

Confidence. A grammar decoder always returns *some* sentence of the grammar when the audio
reaches a final state, even for "what is the weather today", so its hypothesis alone cannot
reject. Each utterance is therefore decoded twice with the bundled English acoustic model:

1. with the command grammar (the hypothesis), and
2. with a free phone loop (any sequence of the model's phones), the garbage model: the best
   explanation of the audio by *some* speech, whatever was said.

Both searches score every senone in every frame (`compallsen`) and see the same features (the
front end is reset before each pass), so their per-frame score normalisation is the same and
the difference of their acoustic scores (`Decoder.seg()` word/phone `ascore`) is a log-likelihood
ratio. We divide it by the number of speech frames (frames that either path spends in a word
or phone rather than in silence) to get `llr_per_frame` (nats, <= 0 in practice; pocketsphinx
keeps search scores as log-base-1.0001 integers shifted down by SENSCR_SHIFT = 10 bits) and
report `confidence = exp(llr_per_frame)`: the geometric-mean per-frame likelihood ratio of
"this command" against "any speech", 1.0 when the grammar explains the audio as well as free
phone recognition does. Out-of-grammar speech is forced through grammar words or absorbed by
silence, which costs it about 2 nats a frame or more; noise and silence often reach no final
state of the grammar at all (confidence 0).

Near misses. A command with one word outside the vocabulary ("pick up the purple block") scores
like the command on average, so neither the confidence nor a worst-word LLR gate separates them.
Each task hypothesis is therefore decoded a third time, with a grammar of that sentence alone in
which every verb, object, colour and direction may instead be an unknown word
(`grammar.open_sentence_jsgf`): a decoy word of the same role (`decoys.py`: basic colour terms,
tabletop objects, manipulation verbs the vocabulary lacks) or a free phone loop, each at a small
JSGF weight against the word itself. If the re-decoding uses one, the utterance is rejected as out
of vocabulary (kind "none", the unknown words in `reason`). The open grammar is small and cached
per sentence, so the third pass costs about as much as the first; a grammar with unknown words in
every slot of every template was 40 times slower.

Not used: pocketsphinx's own posterior (`get_prob()`, `bestpath=True`). Its lattice search can
return word sequences outside the grammar ("stop the"), and a posterior normalised over grammar
paths only is high for out-of-grammar speech too.

The confidence thresholds were set on synthetic speech from 8 espeak-ng voices (72 commands: 68
accepted with the right task). The decoy and phone-loop weights were set on the tuning split of
`lapa bench speech` (6 other voices, other sentences) and measured once on its evaluation split;
see BENCHMARKS.md, "Spoken commands: near misses". Evaluation split (8 voices): of 64 true
commands 58% accepted with the right task and 8% with a wrong one (before: 78% and 17%); of 192
near misses 86% rejected (before: 26% of the 96 earlier ones); of 32 unrelated sentences 97%
rejected. Both 90% targets are missed. Tuning split (6 voices): 50%, 82%, 100%.
Known limit: the re-decoding checks the first pass's sentence only, so a near miss the first pass
heard as another command ("pick up the purple block" as "go to the blue block") keeps that
command's words, and on synthetic voices true words sometimes lose to a decoy ("block" to "ball").
A stop is accepted at a lower confidence than a task: a false stop halts the robot, a missed
stop does not.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lapa.vocabulary import TaskInstance, parse_instruction
from lapa_ros.speech.audio import SAMPLE_RATE_HZ, read_wav, to_int16_mono
from lapa_ros.speech.decoys import DECOY_CANDIDATES, DECOYS_BY_ROLE
from lapa_ros.speech.grammar import build_jsgf, grammar_words, is_stop, open_sentence_jsgf, strip_polite, word_roles

DEFAULT_THRESHOLD = 0.13       # task commands: llr_per_frame >= ln(0.13) = -2.04 nats
DEFAULT_STOP_THRESHOLD = 0.09  # stop: llr_per_frame >= ln(0.09) = -2.41 nats
MIN_AUDIO_S = 0.1
# Wider than pocketsphinx's defaults (1e-48, 7e-29, 1e-48): with those, a clean "stop" could lose
# its only grammar path to pruning when a little noise was added.
SEARCH_BEAMS = {"beam": 1e-80, "wbeam": 1e-60, "pbeam": 1e-80}

# The phones of the bundled en-us model (CMU ARPAbet, without silence): the garbage loop.
ARPABET_PHONES = ("AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH "
                  "T TH UH UW V W Y Z ZH").split()
# JSGF weights, against 1 for the decoded word, of a decoy word and of a phone loop in its place: set
# on the tuning split of `lapa bench speech`. Pocketsphinx scales grammar log-probabilities down,
# hence the tiny values.
DEFAULT_DECOY_WEIGHT = 1e-10
DEFAULT_PHONE_LOOP_WEIGHT = 1e-40
DECOY_WORDS = DECOY_CANDIDATES - grammar_words(build_jsgf())  # the decoys the default vocabulary lacks
UNKNOWN_MARK = "<unknown>"  # how a run of phones of an unknown word reads in `Recognition.text`
_MAX_OPEN_SEARCHES = 512
_PHONES_RULE = "phones"
_SENSCR_SHIFT = 10
_COMMAND_SEARCH = "command"
_GARBAGE_SEARCH = "garbage"
_PHONE_WORD = "ph_"
# short words whose few frames score erratically: the worst-word check reads the content words
FUNCTION_WORDS = frozenset({"the", "a", "on", "up", "to", "of", "top", "please", "it", "and"})


@dataclass(frozen=True)
class Recognition:
    """One utterance's result. `text` is the grammar's best sentence ('' if none)."""

    text: str
    confidence: float
    accepted: bool
    kind: str = "none"              # "task", "stop" or "none"
    task: TaskInstance | None = None
    llr_per_frame: float = -math.inf
    # the worst word: the lowest per-frame log-likelihood ratio over one grammar word's frames. Kept
    # for diagnosis: as a gate it did not separate near misses from commands (BENCHMARKS.md).
    min_word_llr: float = -math.inf
    reason: str = ""                # why it was not accepted
    duration_s: float = 0.0
    decode_time_s: float = 0.0

    @property
    def command(self) -> str:
        """The text without a leading "please": what goes on the instruction topic."""
        return strip_polite(self.text)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["task"] = self.task.name if self.task else None
        d["command"] = self.command
        d["llr_per_frame"] = None if math.isinf(self.llr_per_frame) else round(self.llr_per_frame, 4)
        d["min_word_llr"] = None if math.isinf(self.min_word_llr) else round(self.min_word_llr, 4)
        d["confidence"] = round(self.confidence, 4)
        return d


def _import_pocketsphinx():
    try:
        import pocketsphinx
    except ImportError:
        raise ImportError("speech recognition needs `pocketsphinx` (pip install pocketsphinx)") from None
    return pocketsphinx


class CommandRecognizer:
    """Recognises spoken task commands and stop with pocketsphinx, offline.

    `extra_pronunciations` adds words the dictionary lacks ({"word": "W ER D"}, ARPAbet).
    """

    def __init__(self, jsgf: str | None = None, threshold: float = DEFAULT_THRESHOLD,
                 stop_threshold: float = DEFAULT_STOP_THRESHOLD, hmm_dir: str | Path | None = None,
                 dictionary: str | Path | None = None,
                 extra_pronunciations: Mapping[str, str] | None = None,
                 decoy_weight: float = DEFAULT_DECOY_WEIGHT,
                 phone_loop_weight: float = DEFAULT_PHONE_LOOP_WEIGHT) -> None:
        for name, value in (("threshold", threshold), ("stop_threshold", stop_threshold),
                            ("decoy_weight", decoy_weight), ("phone_loop_weight", phone_loop_weight)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        ps = _import_pocketsphinx()
        self.jsgf = jsgf if jsgf is not None else build_jsgf()
        self.threshold = threshold
        self.stop_threshold = stop_threshold
        self.decoy_weight = decoy_weight
        self.phone_loop_weight = phone_loop_weight
        config = {"lm": None, "bestpath": False, "compallsen": True, "loglevel": "FATAL",
                  "samprate": SAMPLE_RATE_HZ, **SEARCH_BEAMS}
        if hmm_dir is not None:
            config["hmm"] = str(hmm_dir)
        if dictionary is not None:
            config["dict"] = str(dictionary)
        self._decoder = ps.Decoder(**config)
        for word, phones in (extra_pronunciations or {}).items():
            self._decoder.add_word(word, phones, update=False)
        self._check_dictionary()
        phones = self._add_phone_words()
        try:
            self._decoder.add_jsgf_string(_COMMAND_SEARCH, self.jsgf)
        except ValueError as exc:
            raise ValueError(f"the command grammar does not parse: {exc}") from None
        garbage = ("#JSGF V1.0;\ngrammar garbage;\npublic <speech> = <phone>+;\n"
                   f"<phone> = {' | '.join(phones)};\n")
        self._decoder.add_jsgf_string(_GARBAGE_SEARCH, garbage)
        self._roles = word_roles()
        self._decoys_by_role = self._known_decoys(grammar_words(self.jsgf))
        self.decoys = frozenset().union(*self._decoys_by_role.values())
        self._unknown_rules = self._unknown_rules_text(phones)
        self._open_searches: dict[str, str] = {}  # decoded sentence -> name of its open-sentence search
        self._logmath = self._decoder.get_logmath()
        self._initial_cmn = self._decoder.get_cmn()
        # Search scores are log-base `logbase` integers shifted down by SENSCR_SHIFT bits.
        self._nats_per_unit = math.log(float(self._decoder.config["logbase"])) * (1 << _SENSCR_SHIFT)
        self._lock = threading.Lock()  # a pocketsphinx decoder is not thread-safe

    def _check_dictionary(self) -> None:
        missing = sorted(w for w in grammar_words(self.jsgf) if self._decoder.lookup_word(w) is None)
        if missing:
            raise ValueError(f"grammar word(s) missing from the pronunciation dictionary: {missing}; "
                             "pass extra_pronunciations={'word': 'ARPABET PHONES'} or change the templates")

    def _add_phone_words(self) -> list[str]:
        words = []
        for phone in ARPABET_PHONES:
            word = _PHONE_WORD + phone.lower()
            try:
                self._decoder.add_word(word, phone, update=False)
            except RuntimeError:  # a model without this phone
                continue
            words.append(word)
        if not words:
            raise ValueError("the acoustic model knows none of the ARPAbet phones: cannot build the garbage model")
        self._decoder.add_word(_PHONE_WORD + "sil", "SIL", update=True)  # flushes the dictionary update
        return words

    def _known_decoys(self, vocabulary: set[str]) -> dict[str, frozenset[str]]:
        """The decoys per role that the vocabulary lacks and the dictionary has."""
        known = {role: frozenset(w for w in words if w not in vocabulary and self._decoder.lookup_word(w) is not None)
                 for role, words in DECOYS_BY_ROLE.items()}
        return {role: words for role, words in known.items() if words}

    def _unknown_rules_text(self, phones: list[str]) -> str:
        """The rules an unknown word comes from: a decoy word, or any sequence of phones."""
        rules = [f"<{_PHONES_RULE}> = ( {' | '.join(phones)} )+;"]
        for role, words in sorted(self._decoys_by_role.items()):
            rules.append(f"<decoy_{role}> = {' | '.join(sorted(words))};")
        return "\n".join(rules) + "\n"

    def _alternatives(self, word: str) -> dict[str, float]:
        """What may stand in for `word` in an open sentence: a decoy of its role, a phone loop."""
        role = self._roles.get(word)
        if role is None:
            return {}
        decoy = {f"decoy_{role}": self.decoy_weight} if role in self._decoys_by_role else {}
        return {**decoy, _PHONES_RULE: self.phone_loop_weight}

    def _open_search(self, sentence: str) -> str:
        """The search that re-decodes `sentence` with each word of `word_roles` open to an unknown word
        (cached per sentence)."""
        name = self._open_searches.get(sentence)
        if name is None:
            if len(self._open_searches) >= _MAX_OPEN_SEARCHES:
                self._open_searches.clear()  # grammars are re-added under the same names
            name = f"open{len(self._open_searches)}"
            alternatives = {w: self._alternatives(w) for w in sentence.split()}
            self._decoder.add_jsgf_string(name, open_sentence_jsgf(sentence, alternatives) + self._unknown_rules)
            self._open_searches[sentence] = name
        return name

    def _unknown_words(self, open_text: str) -> list[str]:
        """The words of the open decoding that are not the vocabulary's: decoys and `UNKNOWN_MARK`s."""
        return [w for w in _mark_unknown(open_text).split() if w == UNKNOWN_MARK or w in self.decoys]

    # --------------------------------------------------------------------- decoding
    def _decode(self, search: str, raw: bytes) -> tuple[str, list]:
        self._decoder.activate_search(search)
        # Same front-end state for every pass and utterance: the cepstral mean and the noise
        # estimate otherwise carry over from the previous audio, and results would depend on it.
        self._decoder.reinit_feat()
        self._decoder.set_cmn(self._initial_cmn)
        self._decoder.start_utt()
        self._decoder.process_raw(raw, full_utt=True)
        self._decoder.end_utt()
        hyp = self._decoder.hyp()
        segs = [s for s in (self._decoder.seg() or []) if s.word != "(NULL)" and s.end_frame >= s.start_frame >= 0]
        return (hyp.hypstr if hyp is not None else ""), segs

    def _frame_scores(self, segs: list, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-frame acoustic score (nats, each segment's spread evenly) and a speech mask."""
        scores = np.zeros(n_frames)
        speech = np.zeros(n_frames, bool)
        for s in segs:
            end = min(s.end_frame, n_frames - 1) + 1
            if end <= s.start_frame:
                continue
            ascore = self._logmath.log(s.ascore) if s.ascore > 0 else -(1 << 30)
            scores[s.start_frame:end] += ascore * self._nats_per_unit / (end - s.start_frame)
            if not s.word.startswith(("<", "[")) and s.word != _PHONE_WORD + "sil":
                speech[s.start_frame:end] = True
        return scores, speech

    def recognize(self, pcm: np.ndarray) -> Recognition:
        """Recognise one utterance: int16 mono 16 kHz samples (other shapes/dtypes are converted)."""
        audio = to_int16_mono(pcm)
        duration_s = audio.size / SAMPLE_RATE_HZ
        if duration_s < MIN_AUDIO_S:
            return Recognition("", 0.0, False, reason="too short", duration_s=duration_s)
        t0 = time.perf_counter()
        raw = audio.tobytes()
        with self._lock:
            text, cmd_segs = self._decode(_COMMAND_SEARCH, raw)
            n_frames = self._decoder.n_frames()
            open_text = self._decode(self._open_search(text), raw)[0] if text and not is_stop(text) else text
            _, garbage_segs = self._decode(_GARBAGE_SEARCH, raw) if text else ("", [])
        if not text:
            return Recognition("", 0.0, False, reason="matches no command",
                               duration_s=duration_s, decode_time_s=time.perf_counter() - t0)
        unknown = self._unknown_words(open_text)
        cmd, cmd_speech = self._frame_scores(cmd_segs, n_frames)
        garbage, garbage_speech = self._frame_scores(garbage_segs, n_frames)
        speech = cmd_speech | garbage_speech
        llr = float((cmd - garbage).sum() / max(int(speech.sum()), 1))
        confidence = float(min(1.0, math.exp(min(llr, 0.0))))
        word_llr = self._min_word_llr(cmd_segs, cmd - garbage, n_frames)
        decode_time_s = time.perf_counter() - t0
        if unknown:
            return Recognition(_mark_unknown(open_text), confidence, False, llr_per_frame=llr, min_word_llr=word_llr,
                               reason=f"out of vocabulary: {', '.join(unknown)}", duration_s=duration_s,
                               decode_time_s=decode_time_s)
        return self._decide(text, confidence, llr, duration_s, decode_time_s, word_llr)

    @staticmethod
    def _min_word_llr(segs: list, frame_llr: np.ndarray, n_frames: int) -> float:
        """The lowest mean per-frame LLR over the frames of one content word of the grammar's sentence
        (fillers, silence and function words skipped)."""
        worst = math.inf
        for s in segs:
            if s.word.startswith(("<", "[")) or s.word.startswith(_PHONE_WORD) or s.word in FUNCTION_WORDS:
                continue
            end = min(s.end_frame, n_frames - 1) + 1
            if end > s.start_frame:
                worst = min(worst, float(frame_llr[s.start_frame:end].mean()))
        return worst if math.isfinite(worst) else -math.inf

    def _decide(self, text: str, confidence: float, llr: float, duration_s: float,
                decode_time_s: float, min_word_llr: float = -math.inf) -> Recognition:
        common = dict(llr_per_frame=llr, min_word_llr=min_word_llr, duration_s=duration_s,
                      decode_time_s=decode_time_s)
        if is_stop(text):
            ok = confidence >= self.stop_threshold
            return Recognition(text, confidence, ok, kind="stop",
                               reason="" if ok else f"confidence below {self.stop_threshold}", **common)
        task = parse_instruction(text)
        if task is None:  # in the grammar but not a valid task, e.g. a block on itself
            return Recognition(text, confidence, False, reason="names no valid task", **common)
        ok = confidence >= self.threshold
        return Recognition(text, confidence, ok, kind="task", task=task,
                           reason="" if ok else f"confidence below {self.threshold}", **common)

    def recognize_file(self, path: str | Path) -> Recognition:
        """Recognise a WAV file (any PCM rate, width and channel count; converted to 16 kHz mono)."""
        return self.recognize(read_wav(path))


def _mark_unknown(text: str) -> str:
    """`pick up the ph_p ph_er ph_p ph_l block` -> `pick up the <unknown> block`."""
    out: list[str] = []
    for word in text.split():
        if not word.startswith(_PHONE_WORD):
            out.append(word)
        elif not out or out[-1] != UNKNOWN_MARK:
            out.append(UNKNOWN_MARK)
    return " ".join(out)
