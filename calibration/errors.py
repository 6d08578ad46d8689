"""The one error type of the calibration package, and reading its YAML files with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lapa.errors import UserError


class CalibrationError(UserError, ValueError):
    """A malformed calibration file, too little data, or a degenerate input: one clear line for the user."""


def read_yaml(path: str | Path, what: str) -> Any:
    """`path` parsed with yaml.safe_load (never arbitrary objects); CalibrationError naming `what` otherwise."""
    import yaml

    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except OSError as err:
        raise CalibrationError(f"cannot read {what} {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise CalibrationError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
