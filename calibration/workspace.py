"""The workspace box and the action frame, as a YAML file.

```yaml
workspace_min_m: [0.25, -0.35, 0.005]   # box corners x, y, z in the action frame (metres)
workspace_max_m: [0.80, 0.35, 0.45]
action_frame: base                      # frame of the action's translation and rotation deltas
ee_frame: tcp                           # the point the actions move and the box contains
```
The box feeds `lapa_ros.safety.SafetyLimits(workspace_min_m=..., workspace_max_m=...)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import yaml

from calibration.errors import CalibrationError

# docs/design.md: actions are deltas in the robot base frame; no other frame is implemented downstream.
ACTION_FRAMES = ("base",)
SIM_WORKSPACE_FILE = "sim_workspace.yaml"
_KEYS = ("workspace_min_m", "workspace_max_m", "action_frame", "ee_frame")


@dataclass(frozen=True)
class Workspace:
    """Axis-aligned box (metres) in `action_frame` that `ee_frame` must stay inside."""

    workspace_min_m: tuple[float, float, float]
    workspace_max_m: tuple[float, float, float]
    action_frame: str = "base"
    ee_frame: str = "tcp"

    def __post_init__(self) -> None:
        for name in ("workspace_min_m", "workspace_max_m"):
            value = getattr(self, name)
            if (isinstance(value, str | bytes) or not hasattr(value, "__len__") or len(value) != 3
                    or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)):
                raise CalibrationError(f"{name} must be three numbers x, y, z in metres, got {value!r}")
            if not all(math.isfinite(v) for v in value):
                raise CalibrationError(f"{name} must be finite, got {list(value)}")
            object.__setattr__(self, name, tuple(float(v) for v in value))
        for axis, lo, hi in zip("xyz", self.workspace_min_m, self.workspace_max_m, strict=True):
            if not lo < hi:
                raise CalibrationError(f"workspace_min_m must be below workspace_max_m on every axis; "
                                       f"on {axis}: {lo} >= {hi}")
        if self.action_frame not in ACTION_FRAMES:
            raise CalibrationError(f"action_frame must be one of {ACTION_FRAMES} (actions are deltas in the robot "
                                   f"base frame), got {self.action_frame!r}")
        if not isinstance(self.ee_frame, str) or not self.ee_frame:
            raise CalibrationError(f"ee_frame must be a non-empty frame name, got {self.ee_frame!r}")

    def contains(self, point_m: np.ndarray) -> bool:
        p = np.asarray(point_m, dtype=float)
        return bool(np.all(p >= self.workspace_min_m) and np.all(p <= self.workspace_max_m))

    def safety_kwargs(self) -> dict[str, tuple[float, float, float]]:
        """Keyword arguments for `SafetyLimits`."""
        return {"workspace_min_m": self.workspace_min_m, "workspace_max_m": self.workspace_max_m}

    def to_yaml_dict(self) -> dict:
        return {"workspace_min_m": list(self.workspace_min_m), "workspace_max_m": list(self.workspace_max_m),
                "action_frame": self.action_frame, "ee_frame": self.ee_frame}

    @classmethod
    def from_yaml_dict(cls, doc: object, source: str = "<dict>") -> Workspace:
        if not isinstance(doc, dict):
            raise CalibrationError(f"{source}: expected a mapping with keys {list(_KEYS)}")
        missing = [k for k in _KEYS if k not in doc]
        unknown = sorted(set(doc) - set(_KEYS))
        if missing or unknown:
            raise CalibrationError(f"{source}: missing keys {missing}, unknown keys {unknown}; expected {list(_KEYS)}")
        try:
            return cls(**{k: doc[k] for k in _KEYS})
        except CalibrationError as err:
            raise CalibrationError(f"{source}: {err}") from None


def load_workspace(path: str | Path) -> Workspace:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise CalibrationError(f"cannot read workspace file {path}: {err.strerror or err}") from None
    return _parse(text, str(path))


def save_workspace(workspace: Workspace, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(workspace.to_yaml_dict(), sort_keys=False, default_flow_style=None))
    return path


def sim_workspace() -> Workspace:
    """The workspace shipped for the simulated Franka (`calibration/sim_workspace.yaml`)."""
    text = resources.files("calibration").joinpath(SIM_WORKSPACE_FILE).read_text()
    return _parse(text, SIM_WORKSPACE_FILE)


def _parse(text: str, source: str) -> Workspace:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise CalibrationError(f"{source}: not valid YAML: {str(err).splitlines()[0]}") from None
    return Workspace.from_yaml_dict(doc, source)
