"""Errors that reach the user as one clear line instead of a traceback."""


class UserError(Exception):
    """Bad input from the user (a path, a name, a value): printed as one line, exit code 2."""
