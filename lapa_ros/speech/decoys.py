"""Decoy words: common English words a speaker might put in a command's place that the task
vocabulary lacks. In the decoding grammar they compete with the vocabulary words, so "pick up the
purple block" is heard as purple, not forced onto blue; a sentence that uses one is rejected. A
decoy only stands in for a word of its own kind (a colour for a colour): "ball" never competes with
"yellow".

Chosen on general grounds, not from any test sentence: the basic colour terms of English (Berlin
and Kay's eleven), everyday tabletop objects (kitchen and desk items of the kind in robot
manipulation object sets) and common hand-manipulation verbs. Words the vocabulary already has are
dropped by the recogniser; words the pronunciation dictionary lacks are skipped. Anything not listed
is left to the phone-loop alternative.
"""

from __future__ import annotations

BASIC_COLOURS = ("white", "black", "red", "green", "yellow", "blue", "brown", "purple", "pink", "orange",
                 "grey", "gray")
TABLETOP_OBJECTS = ("cup", "mug", "bowl", "plate", "bottle", "can", "jar", "box", "ball", "spoon", "fork",
                    "knife", "pen", "pencil", "book", "phone", "toy", "sponge", "apple", "banana")
MANIPULATION_VERBS = ("pull", "drop", "throw", "hit", "kick", "turn", "open", "close", "hold", "carry",
                      "roll", "flip", "shake", "squeeze", "pour", "rotate", "press", "tap")
# a decoy competes only with vocabulary words of its role (see `grammar.word_roles`)
DECOYS_BY_ROLE = {"colour": BASIC_COLOURS, "object": TABLETOP_OBJECTS, "verb": MANIPULATION_VERBS}
DECOY_CANDIDATES = frozenset(BASIC_COLOURS + TABLETOP_OBJECTS + MANIPULATION_VERBS)
