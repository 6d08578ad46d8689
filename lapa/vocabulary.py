"""The task vocabulary: block colours, directions, task families with their instruction templates,
suites, task instances and instruction parsing.

A task family ("pick") is parametrised by colours and directions; a `TaskInstance` fixes them
("pick up the red block"). Every family has training instruction templates and held-out
paraphrases used only to test generalisation to unseen instructions. The simulator scores tasks
(lapa/sim/tasks.py), the speech recogniser and the ROS side parse them; none of this needs a
simulator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

# Block colour names and their RGB (0..1) in the simulated scene.
BLOCK_COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10),
    "green": (0.15, 0.70, 0.20),
    "blue": (0.12, 0.30, 0.85),
    "yellow": (0.95, 0.85, 0.10),
}

# Directions in the robot base frame, as seen by an operator standing behind the robot.
DIRECTIONS: dict[str, np.ndarray] = {
    "left": np.array([0.0, 1.0]),
    "right": np.array([0.0, -1.0]),
    "forward": np.array([1.0, 0.0]),
    "back": np.array([-1.0, 0.0]),
}


@dataclass(frozen=True)
class TaskFamily:
    name: str
    train_templates: tuple[str, ...]
    held_out_templates: tuple[str, ...]
    max_steps: int  # at 10 Hz
    # more wordings for instruction augmentation in training (as LLM relabelling does for robot
    # data); written without the held-out paraphrases' distinctive words, so "unseen" stays unseen
    augment_templates: tuple[str, ...] = ()
    # the broad augmentation adds these, and each wording again with other nouns and openings
    broad_templates: tuple[str, ...] = ()

    @property
    def needs_direction(self) -> bool:
        return "{direction}" in self.train_templates[0]

    @property
    def needs_target(self) -> bool:
        return "{target}" in self.train_templates[0]


# the broad instruction augmentation: other nouns for "block", and openings / closes of a spoken command
AUGMENT_NOUNS = ("brick", "box", "piece", "object")
AUGMENT_FRAMES = (("please ", ""), ("", " please"), ("robot, ", ""), ("now ", ""), ("can you ", ""),
                  ("", " now"), ("i want you to ", ""), ("", ", thanks"))

FAMILIES: dict[str, TaskFamily] = {
    f.name: f
    for f in [
        TaskFamily(
            "reach",
            ("reach the {colour} block", "move to the {colour} block", "go to the {colour} block"),
            ("touch the {colour} cube", "bring the gripper over the {colour} block"),
            max_steps=40,
            augment_templates=("approach the {colour} block", "head for the {colour} block",
                               "reach for the {colour} block", "get close to the {colour} block",
                               "move over to the {colour} block", "go near the {colour} block",
                               "the {colour} block, reach it", "position yourself at the {colour} block"),
            broad_templates=("come to the {colour} block", "travel to the {colour} block",
                             "head to the {colour} block", "get next to the {colour} block",
                             "move close to the {colour} block", "go up to the {colour} block",
                             "move the hand to the {colour} block", "send the arm to the {colour} block",
                             "move your fingers to the {colour} block", "reach out to the {colour} block",
                             "go and reach the {colour} block", "stop at the {colour} block"),
        ),
        TaskFamily(
            "push",
            ("push the {colour} block {direction}", "slide the {colour} block {direction}",
             "move the {colour} block {direction}"),
            ("nudge the {colour} cube {direction}", "shove the {colour} block {direction}"),
            max_steps=60,
            augment_templates=("drive the {colour} block {direction}", "sweep the {colour} block {direction}",
                               "knock the {colour} block {direction}", "send the {colour} block {direction}",
                               "displace the {colour} block {direction}", "press the {colour} block {direction}",
                               "make the {colour} block go {direction}", "the {colour} block, push it {direction}"),
            broad_templates=("push the {colour} block to the {direction}", "move the {colour} block to the {direction}",
                             "poke the {colour} block {direction}", "bump the {colour} block {direction}",
                             "budge the {colour} block {direction}", "force the {colour} block {direction}",
                             "propel the {colour} block {direction}",
                             "slide the {colour} block over to the {direction}",
                             "push the {colour} block a bit {direction}", "get the {colour} block moving {direction}"),
        ),
        TaskFamily(
            "pick",
            ("pick up the {colour} block", "lift the {colour} block", "grab the {colour} block"),
            ("raise the {colour} cube off the table", "take the {colour} block"),
            max_steps=60,
            augment_templates=("pick the {colour} block up", "grasp the {colour} block and lift it",
                               "hold up the {colour} block", "collect the {colour} block",
                               "get the {colour} block", "lift up the {colour} block"),
            broad_templates=("grasp the {colour} block", "seize the {colour} block",
                             "grip the {colour} block and lift it",
                             "hold the {colour} block up high", "carry the {colour} block up",
                             "lift the {colour} block up", "fetch the {colour} block", "pick the {colour} block",
                             "grab and lift the {colour} block", "lift the {colour} block into the air"),
        ),
        TaskFamily(
            "put",
            ("put the {colour} block on the {target} block", "stack the {colour} block on the {target} block",
             "place the {colour} block on top of the {target} block"),
            ("set the {colour} cube onto the {target} cube",
             "build a tower with the {colour} block on the {target} block"),
            max_steps=100,
            augment_templates=("move the {colour} block onto the {target} block",
                               "drop the {colour} block on the {target} block",
                               "lay the {colour} block on the {target} block",
                               "pile the {colour} block on the {target} block",
                               "put the {colour} block on top of the {target} block"),
            broad_templates=("stack the {colour} block on top of the {target} block",
                             "position the {colour} block on the {target} block",
                             "lower the {colour} block on the {target} block",
                             "move the {colour} block on top of the {target} block",
                             "carry the {colour} block to the {target} block and stack it",
                             "pick up the {colour} block and put it on the {target} block",
                             "the {colour} block goes on the {target} block",
                             "stack {colour} on {target}"),
        ),
    ]
}

SUITES: dict[str, tuple[str, ...]] = {
    "default": ("reach", "push", "pick", "put"),
    "reach_push": ("reach", "push"),
    "reach_push_pick": ("reach", "push", "pick"),
    "reach": ("reach",),
    "push": ("push",),
    "pick": ("pick",),
    "put": ("put",),
}


def get_suite(name: str) -> tuple[str, ...]:
    if name not in SUITES:
        raise KeyError(f"unknown suite {name!r}; known suites: {sorted(SUITES)}")
    return SUITES[name]


@dataclass(frozen=True)
class TaskInstance:
    """One concrete task: a family with its colour (and direction or target colour)."""

    family: str
    colour: str
    direction: str | None = None
    target: str | None = None

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown task {self.family!r}; known tasks: {sorted(FAMILIES)}")
        fam = FAMILIES[self.family]
        if self.colour not in BLOCK_COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; known colours: {sorted(BLOCK_COLOURS)}")
        if fam.needs_direction and self.direction not in DIRECTIONS:
            raise ValueError(
                f"task {self.family!r} needs a direction from {sorted(DIRECTIONS)}, got {self.direction!r}")
        if fam.needs_target:
            if self.target not in BLOCK_COLOURS:
                raise ValueError(f"task {self.family!r} needs a target colour from {sorted(BLOCK_COLOURS)}, "
                                 f"got {self.target!r}")
            if self.target == self.colour:
                raise ValueError("a block cannot be put on itself")

    @property
    def name(self) -> str:
        extra = self.direction or self.target
        return f"{self.family}_{self.colour}" + (f"_{extra}" if extra else "")

    def wordings(self, broad: bool = False) -> list[str]:
        """Every training wording of this task: the training templates, then the augmentation ones.

        `broad` adds the family's broad templates and, for every wording, variants with another noun
        for "block" and with a spoken opening or close ("please ...", "robot, ..."), as instruction
        relabelling with a language model would produce. None uses a held-out paraphrase's words."""
        fam = FAMILIES[self.family]
        templates = fam.train_templates + fam.augment_templates + (fam.broad_templates if broad else ())
        base = [t.format(colour=self.colour, direction=self.direction, target=self.target) for t in templates]
        if not broad:
            return base
        variants = [w.replace(" block", f" {noun}") for w in base for noun in AUGMENT_NOUNS]
        variants += [f"{opening}{w}{close}" for w in base for opening, close in AUGMENT_FRAMES]
        return list(dict.fromkeys(base + variants))

    def instruction(self, rng: np.random.Generator | None = None, held_out: bool = False) -> str:
        fam = FAMILIES[self.family]
        templates = fam.held_out_templates if held_out else fam.train_templates
        template = templates[0] if rng is None else templates[int(rng.integers(len(templates)))]
        return template.format(colour=self.colour, direction=self.direction, target=self.target)

    @classmethod
    def parse(cls, name: str) -> TaskInstance:
        """From a name like `pick_red`, `push_blue_left`, `put_red_green` (see `.name`)."""
        parts = name.strip().lower().split("_")
        if len(parts) < 2:
            raise ValueError(f"task name {name!r} must look like FAMILY_COLOUR[_DIRECTION|_TARGET]")
        family, colour, *rest = parts
        fam = FAMILIES.get(family)
        extra = rest[0] if rest else None
        if fam is not None and fam.needs_direction:
            return cls(family, colour, direction=extra)
        if fam is not None and fam.needs_target:
            return cls(family, colour, target=extra)
        if rest:
            raise ValueError(f"task {family!r} takes only a colour, got {name!r}")
        return cls(family, colour)


def sample_instance(family: str, rng: np.random.Generator,
                    colours: tuple[str, ...] = tuple(BLOCK_COLOURS)) -> TaskInstance:
    if family not in FAMILIES:
        raise ValueError(f"unknown task {family!r}; known tasks: {sorted(FAMILIES)}")
    fam = FAMILIES[family]
    colour = colours[int(rng.integers(len(colours)))]
    if fam.needs_direction:
        return TaskInstance(family, colour, direction=sorted(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))])
    if fam.needs_target:
        others = [c for c in colours if c != colour]
        return TaskInstance(family, colour, target=others[int(rng.integers(len(others)))])
    return TaskInstance(family, colour)


def _template_regex(template: str) -> re.Pattern:
    colours = "|".join(BLOCK_COLOURS)
    pattern = re.escape(template)
    pattern = pattern.replace(re.escape("{colour}"), f"(?P<colour>{colours})")
    pattern = pattern.replace(re.escape("{target}"), f"(?P<target>{colours})")
    pattern = pattern.replace(re.escape("{direction}"), f"(?P<direction>{'|'.join(DIRECTIONS)})")
    return re.compile(rf"^\s*(?:please\s+)?{pattern}\s*[.!]?\s*$", re.IGNORECASE)


_PARSERS = [
    (family.name, _template_regex(t))
    for family in FAMILIES.values()
    for t in family.train_templates + family.held_out_templates
]


def parse_instruction(text: str) -> TaskInstance | None:
    """The task an instruction names, if it matches one of the suite's phrasings."""
    for family, regex in _PARSERS:
        m = regex.match(text)
        if m:
            g = {k: (v.lower() if v else None) for k, v in m.groupdict().items()}
            try:
                return TaskInstance(family, g["colour"], direction=g.get("direction"), target=g.get("target"))
            except ValueError:
                return None
    return None
