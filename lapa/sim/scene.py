"""The tabletop scene: franky-sim's FR3 model plus a table, four coloured blocks and cameras.

One definition serves both drivers. `build_simulator` returns a franky-sim `MujocoSimulator`
whose MJCF tree has been extended; the franky driver starts it behind a libfranka-protocol
server, the fast driver compiles the same tree (`scene_xml`) and steps it in-process.

Frames: the robot base sits at the world origin, so world == robot base frame. The table top
is the plane z = 0; +x points away from the robot, +y to its left.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import numpy as np

from lapa.franka import HOME_GRIPPER_WIDTH_M, HOME_JOINT_POS_RAD
from lapa.vocabulary import BLOCK_COLOURS

BLOCK_HALF_SIZE_M = 0.02  # 4 cm cubes
TCP_OFFSET_M = 0.1034  # flange -> fingertip centre, franky's default end effector
ROBOT_PREFIX = "robot0_"


@dataclass(frozen=True)
class WorkspaceBox:
    """Axis-aligned box in the base frame (metres) where blocks spawn and the EE may go."""

    x_m: tuple[float, float] = (0.35, 0.65)
    y_m: tuple[float, float] = (-0.20, 0.20)
    z_m: tuple[float, float] = (0.0, 0.35)

    def contains(self, p: np.ndarray, margin_m: float = 0.0) -> bool:
        lo = np.array([self.x_m[0], self.y_m[0], self.z_m[0]]) - margin_m
        hi = np.array([self.x_m[1], self.y_m[1], self.z_m[1]]) + margin_m
        return bool(np.all(p >= lo) and np.all(p <= hi))


@dataclass(frozen=True)
class CameraSpec:
    name: str
    width: int = 128
    height: int = 128
    fovy_deg: float = 50.0


@dataclass(frozen=True)
class SceneConfig:
    """What the scene contains. Block positions are sampled per episode from a seed."""

    image_size: int = 128
    wrist_camera: bool = False
    colours: tuple[str, ...] = tuple(BLOCK_COLOURS)
    spawn: WorkspaceBox = field(default_factory=lambda: WorkspaceBox(x_m=(0.40, 0.60), y_m=(-0.15, 0.15)))
    min_block_separation_m: float = 0.09
    max_block_yaw_rad: float = 0.5

    def __post_init__(self) -> None:
        if not 16 <= self.image_size <= 1024:
            raise ValueError(f"image_size must be within 16..1024, got {self.image_size}")
        unknown = [c for c in self.colours if c not in BLOCK_COLOURS]
        if unknown:
            raise ValueError(f"unknown block colour(s) {unknown}; known: {list(BLOCK_COLOURS)}")

    @property
    def cameras(self) -> list[CameraSpec]:
        cams = [CameraSpec("scene", self.image_size, self.image_size, 38.0)]
        if self.wrist_camera:
            cams.append(CameraSpec("wrist", self.image_size, self.image_size, 70.0))
        return cams


def block_body_name(colour: str) -> str:
    return f"block_{colour}"


def block_joint_name(colour: str) -> str:
    return f"block_{colour}_joint"


def _find_body(root: ET.Element, name: str) -> ET.Element:
    for body in root.iter("body"):
        if body.get("name") == name:
            return body
    raise KeyError(f"body {name!r} not in the franky-sim robot model")


def extend_scene(sim, config: SceneConfig) -> None:
    """Add the table, blocks, TCP site and cameras to a franky-sim simulator before it starts."""
    world = sim.worldbody
    scene = sim.scene
    asset = scene.find("asset")
    ET.SubElement(asset, "material", name="table_wood", rgba="0.55 0.42 0.30 1", specular="0.1")

    # The table: a slab whose top face is z = 0, the robot mounted on it; the floor below it.
    for geom in world.findall("geom"):
        if geom.get("name") == "ground":
            geom.set("pos", "0 0 -0.75")
    ET.SubElement(world, "geom", name="table", type="box", pos="0.45 0 -0.025",
                  size="0.75 0.6 0.025", material="table_wood", contype="1", conaffinity="1")

    for i, colour in enumerate(config.colours):
        r, g, b = BLOCK_COLOURS[colour]
        body = ET.SubElement(world, "body", name=block_body_name(colour),
                             pos=f"0.5 {0.3 + 0.1 * i} {BLOCK_HALF_SIZE_M}")
        ET.SubElement(body, "freejoint", name=block_joint_name(colour))
        h = BLOCK_HALF_SIZE_M
        ET.SubElement(body, "geom", name=f"{block_body_name(colour)}_geom", type="box",
                      size=f"{h} {h} {h}", rgba=f"{r} {g} {b} 1", mass="0.05",
                      friction="1.5 0.01 0.001", condim="4", solref="0.005 1")

    hand = _find_body(world, f"{ROBOT_PREFIX}hand")
    ET.SubElement(hand, "site", name="tcp", pos=f"0 0 {TCP_OFFSET_M}", size="0.005", group="5")

    # Fixed scene camera looking at the workspace from the front-right, above the table.
    ET.SubElement(world, "body", name="workspace_centre", pos="0.48 0 0.12")
    ET.SubElement(world, "camera", name="scene", pos="1.20 -0.30 0.70", mode="targetbody",
                  target="workspace_centre", fovy="38")
    if config.wrist_camera:
        ET.SubElement(hand, "camera", name="wrist", pos="0.06 0 0.04", quat="0 1 0 0", fovy="70")

    # Cheap offscreen rendering: no multisampling, small shadow map.
    quality = scene.find("visual/quality")
    if quality is not None:
        quality.set("offsamples", "0")
        quality.set("shadowsize", "0")
    visual = scene.find("visual")
    ET.SubElement(visual, "global", offwidth=str(max(640, config.image_size)),
                  offheight=str(max(480, config.image_size)))


def build_simulator(config: SceneConfig):
    """A franky-sim `MujocoSimulator` with the robot at its home pose and the tabletop added."""
    from franky_sim.mujoco_simulator import MujocoSimulator

    sim = MujocoSimulator(enable_visualization=False)
    sim.add_robot(initial_q=HOME_JOINT_POS_RAD, initial_hand_width=HOME_GRIPPER_WIDTH_M)
    extend_scene(sim, config)
    return sim


def scene_xml(config: SceneConfig) -> str:
    """The complete MJCF of the scene, as franky-sim would compile it."""
    return ET.tostring(build_simulator(config).scene, encoding="unicode")


def sample_block_poses(config: SceneConfig, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, float]]:
    """Seeded block placements: colour -> (xyz position in metres, yaw in radians).

    Rejection-samples so that blocks keep `min_block_separation_m` from each other.
    """
    box = config.spawn
    for _attempt in range(1000):
        xy = np.column_stack([
            rng.uniform(*box.x_m, size=len(config.colours)),
            rng.uniform(*box.y_m, size=len(config.colours)),
        ])  # (N, 2)
        d = np.linalg.norm(xy[:, None, :] - xy[None, :, :], axis=-1)  # (N, N)
        np.fill_diagonal(d, np.inf)
        if d.min() >= config.min_block_separation_m:
            break
    else:  # pragma: no cover - the spawn box is far larger than four blocks need
        raise RuntimeError("could not place blocks without overlap; enlarge the spawn box")
    yaws = rng.uniform(-config.max_block_yaw_rad, config.max_block_yaw_rad, size=len(config.colours))
    return {
        colour: (np.array([xy[i, 0], xy[i, 1], BLOCK_HALF_SIZE_M]), float(yaws[i]))
        for i, colour in enumerate(config.colours)
    }
