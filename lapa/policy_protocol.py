"""The one policy protocol every backend (torch, onnxruntime, tensorrt) implements.

The server, the benchmarks and the ROS side depend only on this; none of them imports a
training stack. Observations and replies are plain dicts of numpy arrays and strings so they
travel unchanged over msgpack.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from lapa.action import STATE_DIM
from lapa.state_history import MAX_STATE_FLOATS

OBS_IMAGE = "image"  # uint8 (H, W, 3) RGB, scene camera
OBS_WRIST_IMAGE = "wrist_image"  # uint8 (H, W, 3) RGB, hand camera: only for a model with cameras [scene, wrist]
OBS_INSTRUCTION = "instruction"  # str
OBS_STATE = "state"  # optional float32 (8,): EE xyz, EE rpy, finger positions (lapa/action.py STATE_NAMES);
#   (8 * (1 + H),) for a model with a state history: now, then each lag back (lapa/state_history.py)
REPLY_ACTIONS = "actions"  # float32 (K, 7): a chunk of delta-EE actions, first one to execute now
REPLY_MODEL_MS = "model_ms"  # float: time spent in the model for this call
# the PolicyInputError of a model with a proprio input (state_dim 8) given an observation without state
STATE_REQUIRED = ("this model takes the proprio state: send 'state', 8 floats [x, y, z, roll, pitch, yaw, "
                  "finger_left, finger_right] (EE position m, EE roll/pitch/yaw rad, each finger's position m: "
                  "half the gripper width); a model with a state_history (metadata) takes 8 more per lag: the "
                  "states that many control ticks ago, oldest last (lapa/state_history.py)")


class PolicyInputError(ValueError):
    """The observation is malformed (wrong shape, dtype, missing field): the caller's fault."""


@runtime_checkable
class Policy(Protocol):
    """`infer(obs) -> {"actions": float32[K, 7], "model_ms": float, ...}` and `reset()`."""

    @property
    def metadata(self) -> dict[str, Any]:
        """image_size [H, W], chunk_size K, action_dim 7, control_hz, model_hash, backend, ..."""
        ...

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]: ...

    def reset(self) -> None: ...


def check_observation(obs: dict[str, Any], image_size: tuple[int, int]) -> tuple[np.ndarray, str, np.ndarray | None]:
    """Validate an observation dict; returns (image, instruction, state) or raises PolicyInputError."""
    if not isinstance(obs, dict):
        raise PolicyInputError(f"observation must be a map, got {type(obs).__name__}")
    if OBS_IMAGE not in obs:
        raise PolicyInputError("observation has no 'image'")
    if OBS_INSTRUCTION not in obs:
        raise PolicyInputError("observation has no 'instruction'")
    image = obs[OBS_IMAGE]
    if not isinstance(image, np.ndarray):
        raise PolicyInputError(f"'image' must be an array, got {type(image).__name__}")
    h, w = image_size
    if image.dtype != np.uint8 or image.shape != (h, w, 3):
        raise PolicyInputError(f"'image' must be uint8 ({h}, {w}, 3), got {image.dtype} {tuple(image.shape)}")
    instruction = obs[OBS_INSTRUCTION]
    if not isinstance(instruction, str) or not instruction.strip():
        raise PolicyInputError("'instruction' must be a non-empty string")
    state = obs.get(OBS_STATE)
    if state is not None:
        state = np.asarray(state)
        if (state.ndim != 1 or not 0 < state.shape[0] <= MAX_STATE_FLOATS or state.shape[0] % STATE_DIM
                or not np.issubdtype(state.dtype, np.floating) or not np.all(np.isfinite(state))):
            raise PolicyInputError(f"'state' must be 8 finite floats (8 per state with a state history), "
                                   f"got {state.dtype} {tuple(state.shape)}")
        state = state.astype(np.float32)
    return image, instruction, state


def camera_images(obs: dict[str, Any], image: np.ndarray, cameras: list[str] | tuple[str, ...]) -> np.ndarray:
    """The model's image input: `image` (H, W, 3) for a scene-only model, the scene and hand images
    stacked (2, H, W, 3) for cameras [scene, wrist]; PolicyInputError when the hand image is missing
    or malformed."""
    if tuple(cameras) == ("scene",):
        return image
    wrist = obs.get(OBS_WRIST_IMAGE)
    if wrist is None:
        raise PolicyInputError(f"this model also takes the hand camera: send '{OBS_WRIST_IMAGE}', uint8 "
                               f"{tuple(image.shape)} like 'image'")
    if not isinstance(wrist, np.ndarray) or wrist.dtype != np.uint8 or wrist.shape != image.shape:
        got = f"{wrist.dtype} {tuple(wrist.shape)}" if isinstance(wrist, np.ndarray) else type(wrist).__name__
        raise PolicyInputError(f"'{OBS_WRIST_IMAGE}' must be uint8 {tuple(image.shape)} like 'image', got {got}")
    return np.stack([image, wrist])  # (2, H, W, 3)


def require_state(state: np.ndarray | None, state_dim: int) -> np.ndarray | None:
    """The state a model with `state_dim` inputs gets: None for a model without state input (a state
    sent anyway is ignored), the (8,) state for one with it; PolicyInputError when it is missing."""
    if not state_dim:
        return None
    if state is None:
        raise PolicyInputError(STATE_REQUIRED)
    if state.shape != (state_dim,):
        raise PolicyInputError(f"'state' must be {state_dim} floats, got {tuple(state.shape)}")
    return state
