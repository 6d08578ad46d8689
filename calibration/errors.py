"""The one error type of the calibration package."""

from lapa.errors import UserError


class CalibrationError(UserError, ValueError):
    """A malformed calibration file, too little data, or a degenerate input: one clear line for the user."""
