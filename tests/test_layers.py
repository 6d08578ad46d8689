"""The layers of the code base (README.md, "Layers"): imports only go downwards, and the robot side
loads neither training code nor a simulator unless the simulator is what it drives.

The import graph is read from the source with `ast` (every import statement, also those inside
functions, which is how heavy dependencies are loaded lazily); the fresh-interpreter checks then
look at what importing a module really loads.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lapa", "export", "policy_server", "lapa_ros", "calibration", "bench")

# Bottom to top; a module belongs to the layer of its longest matching prefix (a prefix names a module
# and its submodules, except `lapa`, the package's own __init__, which names only itself).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("core", ("lapa", "lapa.action", "lapa.geometry", "lapa.vocabulary", "lapa.checkpoint", "lapa.policy_protocol",
              "lapa.chunking", "lapa.franka", "lapa.lru_cache", "lapa.file_hash", "lapa.errors",
              "lapa.config_checks", "lapa.state_history", "lapa.intent_layout", "lapa.realtime")),
    ("training", ("lapa.sim", "lapa.data", "lapa.laq", "lapa.policy", "lapa.eval", "lapa.experiment",
                  "lapa.training", "lapa.distributed", "lapa.parallel")),
    ("export", ("export",)),
    ("policy server", ("policy_server",)),
    ("robot side", ("lapa_ros", "calibration")),
    ("entry points", ("lapa.cli", "bench")),
)
TRAINING_SIDE = LAYERS[1][1]
# What a robot PC needs neither of: the training stack and a simulator.
HEAVY = ("torch", "mujoco", "franky_sim")
# Robot-side modules that exist to drive the simulator (the sim backend, lapa_sim, the demo on
# franky-sim, the scripted expert that reads the simulator's state): they may use it.
SIMULATION_MODULES = ("lapa_ros.backends.sim_backend", "lapa_ros.sim_node", "lapa_ros.expert_policy",
                      "lapa_ros.demo", "calibration.sim_camera", "calibration.mujoco_camera",
                      "calibration.cli")
# The dataset format (LeRobot v3 with pyarrow + PyAV, no torch): the console records episodes with it.
# Exact modules: `lapa.data` names only the package's own __init__ here.
DATASET_FORMAT = ("lapa.data", "lapa.data.lerobot_v3", "lapa.data.video_io")


def in_dataset_format(module: str) -> bool:
    return module in ("lapa.data", "lapa.data.video_io") or within(module, ("lapa.data.lerobot_v3",))


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for index, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            matches = module == p if p == "lapa" else within(module, (p,))
            if matches and (best is None or len(p) > best[0]):
                best = (len(p), index)
    return None if best is None else best[1]


@cache
def source_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


@cache
def imports_of(module: str) -> frozenset[str]:
    """Every module an import statement of `module` names (first-party ones resolved to the module
    itself where `from package import name` names a module)."""
    path = source_modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            for alias in node.names:
                if f"{base}.{alias.name}" in source_modules():
                    found.add(f"{base}.{alias.name}")
    return frozenset(found)


def test_every_module_has_a_layer():
    unplaced = [m for m in source_modules() if layer_of(m) is None]
    assert not unplaced, f"modules in no layer (add them to LAYERS and to README.md): {unplaced}"


def test_imports_only_go_downwards():
    upward = []
    for module in source_modules():
        own = layer_of(module)
        for imported in imports_of(module):
            theirs = layer_of(imported)
            if theirs is not None and theirs > own:
                upward.append(f"{module} ({LAYERS[own][0]}) imports {imported} ({LAYERS[theirs][0]})")
    assert not upward, "\n".join(upward)


def reachable(start: str, stop: tuple[str, ...]) -> dict[str, str]:
    """Modules reachable from `start` through any import statement, each with the module that
    imports it; modules under `stop` are not followed."""
    seen = {start: ""}
    todo = [start]
    while todo:
        module = todo.pop()
        for imported in imports_of(module):
            candidates = [imported] + [p for p in _parents(imported) if p in source_modules()]
            for name in candidates:
                if name in seen:
                    continue
                seen[name] = module
                if name in source_modules() and not within(name, stop):
                    todo.append(name)
    return seen


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def robot_modules() -> list[str]:
    return [m for m in source_modules()
            if layer_of(m) == 4 and not within(m, SIMULATION_MODULES)]


@pytest.mark.parametrize("module", robot_modules())
def test_robot_side_reaches_no_training_code_or_simulator(module):
    """Following every import, also those inside functions, except into the simulation modules."""
    seen = reachable(module, SIMULATION_MODULES)
    bad = {m: by for m, by in seen.items()
           if (within(m, TRAINING_SIDE) and not in_dataset_format(m) or m.split(".")[0] in HEAVY)
           and not within(m, SIMULATION_MODULES)}
    assert not bad, f"{module} reaches: " + ", ".join(f"{m} (imported by {by})" for m, by in sorted(bad.items()))


@pytest.mark.parametrize("module", DATASET_FORMAT)
def test_the_dataset_format_the_robot_side_records_with_reaches_no_torch_or_simulator(module):
    seen = reachable(module, ())
    bad = [m for m in seen if m.split(".")[0] in HEAVY or within(m, TRAINING_SIDE) and not in_dataset_format(m)]
    assert not bad, f"{module} reaches {bad}"


def loaded_after_import(*modules: str) -> list[str]:
    code = ("import importlib, json, sys\n"
            f"for m in {list(modules)!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_robot_side_loads_no_training_code_or_simulator_in_a_fresh_interpreter():
    """A robot PC runs the policy, camera and speech nodes, `lapa say` and `lapa bringup`."""
    loaded = loaded_after_import("lapa_ros.policy_node", "lapa_ros.backends.franky_backend", "lapa_ros.camera_node",
                                 "lapa_ros.speech_node", "lapa_ros.say", "lapa_ros.bringup", "lapa_ros.control_core",
                                 "lapa_ros.console.node", "lapa_ros.console.recorder")
    bad = [m for m in loaded if within(m, TRAINING_SIDE) or m.split(".")[0] in HEAVY]
    assert not bad, bad


def test_the_sim_backend_brings_the_simulator():
    loaded = loaded_after_import("lapa_ros.backends.sim_backend")
    assert "lapa.sim.scene" in loaded
    assert "torch" not in loaded


def test_the_server_loads_no_torch_unless_the_torch_backend_is_chosen():
    loaded = loaded_after_import("policy_server.app", "policy_server.backends", "policy_server.client",
                                 "export.ort_policy", "export.trt_policy")
    bad = [m for m in loaded if within(m, TRAINING_SIDE) or m.split(".")[0] in HEAVY]
    assert not bad, bad
