"""The command box's suggestions: every sentence the speech grammar accepts (lapa.vocabulary's
training and held-out templates with every colour and direction), plus the stop words."""

from __future__ import annotations

from functools import cache
from itertools import permutations

from lapa.vocabulary import BLOCK_COLOURS, DIRECTIONS, FAMILIES
from lapa_ros.speech.grammar import STOP_PHRASES, family_templates


@cache
def suggestions() -> tuple[str, ...]:
    out: list[str] = []
    for family in FAMILIES.values():
        for template in family_templates(family):
            if family.needs_target:
                fills = [dict(colour=c, target=t) for c, t in permutations(BLOCK_COLOURS, 2)]
            elif family.needs_direction:
                fills = [dict(colour=c, direction=d) for c in BLOCK_COLOURS for d in DIRECTIONS]
            else:
                fills = [dict(colour=c) for c in BLOCK_COLOURS]
            out += [template.format(**fill) for fill in fills]
    return (*dict.fromkeys(out), *STOP_PHRASES)
