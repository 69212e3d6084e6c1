"""Paths as users type them: a leading ``~`` is the home folder wherever automr reads a path
(the CLI's options, a config file's values, the library's arguments, recorded folders)."""

from pathlib import Path

from automr.errors import AutomrError


def home_path(path: Path | str) -> Path:
    """``path`` with a leading ``~`` (or ``~NAME``) read as the home folder (NAME's); one line
    where there is none (``~NAME`` of no user, or no home folder at all: pathlib raises a bare
    ``RuntimeError``)."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        user = Path(path).parts[0][1:]
        raise AutomrError(f"{path}: there is no user {user!r} whose home folder ~{user} is"
                          if user else f"{path}: no home folder is known ($HOME is not set)"
                          ) from None


def home_folder() -> Path:
    """The home folder; one line where none is known (no ``$HOME``, and a user id without an
    entry in the password database, as in containers run under an arbitrary id)."""
    try:
        return Path.home()
    except RuntimeError:
        raise AutomrError("no home folder is known ($HOME is not set and this user has "
                          "none): set HOME, or AUTOMR_CACHE (or --cache-dir) for automr's "
                          "cache") from None
