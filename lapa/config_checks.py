"""Validation and dict I/O shared by the frozen hyper-parameter dataclasses (LAQConfig, VLAConfig)."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any, TypeVar

C = TypeVar("C")

PRECISIONS = ("auto", "fp32", "bf16")  # training autocast; auto: bf16 on GPUs that support it, fp32 elsewhere


def check_positive_ints(config: Any, names: tuple[str, ...]) -> None:
    """Each named field must be an int >= 1 (bools are not ints here)."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{type(config).__name__}.{name} must be a positive int, got {value!r}")


def check_patch_grid(image_size: int, patch_size: int) -> None:
    """Whole patches per image side."""
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}")


def from_preset(presets: dict[str, C], kind: str, name: str, overrides: dict[str, Any]) -> C:
    """presets[name] with `overrides` applied (validated again); `kind` names the model in the error."""
    if name not in presets:
        raise ValueError(f"unknown {kind} preset {name!r}; choose from {sorted(presets)}")
    return replace(presets[name], **overrides)


def from_known_keys(cls: type[C], data: dict[str, Any]) -> C:
    """cls(**data), refusing keys that are not fields of cls."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {unknown}")
    return cls(**data)
