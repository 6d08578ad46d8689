"""A JSGF grammar for spoken commands, generated from the task vocabulary in `lapa.vocabulary`.

Every training and held-out template becomes one rule whose `{colour}`, `{target}` and
`{direction}` slots refer to shared alternative rules, so the grammar stays small (no list of
sentences) and follows tasks.py: a new colour, direction or template changes it automatically.
A separate `<stop>` rule lets an operator halt the robot.

`open_sentence_jsgf` writes the check of one decoded sentence: each of its verbs, objects, colours
and directions (`word_roles`) may instead be an unknown word, from rules the caller defines (the
recogniser: a decoy word of the same role, or a phone loop). An unknown word is then decoded as
unknown rather than forced onto the nearest vocabulary word ("pick up the purple block" is not
"pick up the blue block").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from lapa.vocabulary import BLOCK_COLOURS, DIRECTIONS, FAMILIES, TaskFamily

GRAMMAR_NAME = "lapa_commands"
# Spoken ways to stop; kept short and distinct from every task phrase.
STOP_PHRASES: tuple[str, ...] = ("stop", "stop the robot", "cancel")
POLITE_PREFIX = "please"

# Words never open: an unknown word replaces a verb, an object, a colour or a direction, not these.
CLOSED_WORDS = frozenset({"please", "the", "a", "up", "on", "to", "of", "top", "off", "over", "with", "onto"})

_SLOT = re.compile(r"\{(colour|target|direction)\}")
_WORD = re.compile(r"^[a-z][a-z']*$")


def _rule_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _expansion(phrase: str) -> str:
    """One template as a JSGF sequence: words stay words, `{slot}` becomes `<slot>`."""
    tokens = []
    for token in phrase.lower().split():
        slot = _SLOT.fullmatch(token)
        if slot:
            # {target} names a block colour like {colour}: it reuses the same alternatives.
            tokens.append("<direction>" if slot.group(1) == "direction" else "<colour>")
        elif _WORD.match(token):
            tokens.append(token)
        else:
            raise ValueError(f"template {phrase!r} has token {token!r} that is neither a word nor a slot")
    return " ".join(tokens)


def _alternatives(items: Iterable[str]) -> str:
    return " | ".join(f"( {item} )" if " " in item else item for item in items)


def family_templates(family: TaskFamily) -> tuple[str, ...]:
    return family.train_templates + family.held_out_templates


def build_jsgf(families: Mapping[str, TaskFamily] = FAMILIES,
               colours: Sequence[str] = tuple(BLOCK_COLOURS),
               directions: Sequence[str] = tuple(DIRECTIONS),
               stop_phrases: Sequence[str] = STOP_PHRASES) -> str:
    """The grammar: `public <command> = [please] ( <task> | <stop> );`."""
    family_rules = {_rule_name(name): [_expansion(t) for t in family_templates(f)] for name, f in families.items()}
    lines = [
        "#JSGF V1.0;",
        f"grammar {GRAMMAR_NAME};",
        "",
        f"public <command> = [ {POLITE_PREFIX} ] ( <task> | <stop> );",
        f"<task> = {_alternatives(f'<{r}>' for r in family_rules)};",
        f"<stop> = {_alternatives(stop_phrases)};",
        f"<colour> = {_alternatives(colours)};",
        f"<direction> = {_alternatives(directions)};",
    ]
    lines += [f"<{rule}> = {_alternatives(expansions)};" for rule, expansions in family_rules.items()]
    return "\n".join(lines) + "\n"


def word_roles(families: Mapping[str, TaskFamily] = FAMILIES, colours: Sequence[str] = tuple(BLOCK_COLOURS),
               directions: Sequence[str] = tuple(DIRECTIONS)) -> dict[str, str]:
    """What each open word of the vocabulary is: "colour", "direction", "object" (a word right after
    a colour slot) or "verb" (a template's first word)."""
    roles = {}
    for family in families.values():
        for template in family_templates(family):
            words = template.lower().split()
            roles.setdefault(words[0], "verb")
            after_slot = zip(words, words[1:], strict=False)
            roles.update({b: "object" for a, b in after_slot if _SLOT.fullmatch(a) and _WORD.match(b)})
    roles.update({c: "colour" for c in colours})
    roles.update({d: "direction" for d in directions})
    return {w: r for w, r in roles.items() if w not in CLOSED_WORDS}


def open_sentence_jsgf(sentence: str, alternatives: Mapping[str, Mapping[str, float]]) -> str:
    """A grammar of `sentence` in which a word with `alternatives` ({word: {rule: JSGF weight against
    1 for the word}}) may instead be one of those rules, which the caller defines."""
    words = normalise(sentence).split()
    if not words:
        raise ValueError("an open sentence needs at least one word")
    tokens = []
    for w in words:
        others = [f"/{weight:g}/ <{rule}>" for rule, weight in alternatives.get(w, {}).items()]
        tokens.append(f"( /1/ {w} | {' | '.join(others)} )" if others else w)
    return f"#JSGF V1.0;\ngrammar open_sentence;\n\npublic <sentence> = {' '.join(tokens)};\n"


def grammar_words(jsgf: str) -> set[str]:
    """Every word the grammar can produce (what the pronunciation dictionary must know)."""
    body = "\n".join(line.split("=", 1)[1] for line in jsgf.splitlines() if "=" in line)
    body = re.sub(r"<[^>]*>", " ", body)
    return {w for w in re.findall(r"[A-Za-z][A-Za-z']*", body)}


def normalise(text: str) -> str:
    """Lower-case, single-spaced, no trailing punctuation."""
    return " ".join(re.sub(r"[.!?,]", " ", text.lower()).split())


def strip_polite(text: str) -> str:
    """`please pick up the red block` -> `pick up the red block`."""
    words = normalise(text).split()
    return " ".join(words[1:] if words[:1] == [POLITE_PREFIX] else words)


def is_stop(text: str, stop_phrases: Sequence[str] = STOP_PHRASES) -> bool:
    return strip_polite(text) in {normalise(p) for p in stop_phrases}
