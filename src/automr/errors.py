"""User-facing errors.

Raise :class:`AutomrError` for anything a user can fix (a missing file, a wrong model for a
memory, bad input data). Its message says what was wrong, where, and how to fix it; the CLI
prints it on one line and exits with code 2 instead of showing a traceback.
"""


class AutomrError(Exception):
    """A mistake the user can fix; the message explains what, where and how."""


class WrongTypeError(AutomrError, TypeError):
    """A value of the wrong type given to a function, method or config of automr (beartype's
    check of a parameter's type hint, or a config field's own check): an :class:`AutomrError`,
    and a ``TypeError`` too."""
