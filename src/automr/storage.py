"""Reading and writing artifacts: one way each.

- :func:`atomic_dir` / :func:`write_text_atomic` / :func:`write_json_atomic` /
  :func:`save_safetensors`: nothing half-written is ever left under the final name, and a
  failed write leaves no temporary file. Weights files get the permissions the umask gives
  every other file (safetensors alone writes them 0600).
- :func:`read_json` / :func:`read_safetensors`: every artifact read goes through these, so a
  missing, truncated or garbage file ends in one :class:`~automr.errors.AutomrError` line that
  names the file and says which command makes it, never a raw traceback.
- :func:`save_component` / :func:`load_component`: one folder per stateful component,
  ``config.json`` (``format``, settings, ``provenance``) + one safetensors file whose metadata
  repeats format and provenance (so the weights file alone says what it belongs to).
- :func:`check_provenance`: refuse a component built with another model or layer.
- :func:`files_digest`: what a folder's files hold, for keys that must change when an artifact
  is made again in the same place.
- :func:`folder_lock`: one process at a time writes a folder whose command would otherwise be
  defeated by a second one (a demo, a memory build or append).
"""

import contextlib
import errno
import glob
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

from automr.errors import AutomrError
from automr.paths import home_path

try:
    import fcntl
except ImportError:  # Windows: no lock, as before
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from torch import Tensor, nn

    M = TypeVar("M", bound=nn.Module)

CONFIG_FILE = "config.json"
RUNS_FILE = "automr-runs.jsonl"
"""The run records every command with an ``--out`` appends to (:mod:`automr.cli.record`)."""


def read_run_records(folder: Path) -> list[dict[str, Any]]:
    """The run records in ``folder``'s :data:`RUNS_FILE`, oldest first (none without one; a
    line cut by a stop, or not a record, is skipped)."""
    path = folder / RUNS_FILE
    records = []
    text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def append_lines(path: Path, lines: Sequence[str]) -> None:
    """Append ``lines``, each ended by a newline, to ``path`` (created with its parents), in
    one write. A last line a stopped write cut short is ended first: glued onto it, the first
    new line would be skipped with it by every reader (:func:`read_run_records`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open_own(path, "a+b") as file:
        if file.tell() > 0:
            file.seek(-1, os.SEEK_END)
            if file.read(1) != b"\n":
                file.write(b"\n")
        file.write("".join(line + "\n" for line in lines).encode())


def open_own(path: Path, mode: str) -> IO[Any]:
    """``path`` opened to append (``mode``: ``a`` or ``a+``, text or ``b``), created where
    missing, but never through a link: a folder received from someone else could link its
    lock or record file to any file of the user's, which automr would then empty or write."""
    flags = os.O_CREAT | os.O_APPEND | (os.O_RDWR if "+" in mode else os.O_WRONLY)
    try:
        descriptor = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as error:
        if not path.is_symlink():
            raise
        raise AutomrError(f"{path} is a link (to {os.readlink(path)}): automr writes its own "
                          f"file there and follows no link; remove it") from error
    return os.fdopen(descriptor, mode, encoding=None if "b" in mode else "utf-8")


LOCK_FILE = ".automr-lock"
"""The file :func:`folder_lock` locks, in the folder it guards (hidden: no stranger's file)."""


@contextlib.contextmanager
def folder_lock(folder: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (created with its parents) while ``what`` writes
    it; a second process that asks for it meanwhile is refused in one line naming the holder.
    The lock (``flock`` on :data:`LOCK_FILE`) goes with its process, however that ends: no
    stale lock is left. A folder it made that holds nothing but the lock at the end (the
    command refused before writing) is removed, with the parents it made. A path that is a
    file is not locked (its command refuses it), nor a folder on a file system that has no
    locks."""
    if fcntl is None or (folder.exists() and not folder.is_dir()):
        yield
        return
    made = [path for path in (folder, *folder.parents) if not path.exists()]  # deepest first
    file, locked = _locked_file(folder, what)
    with file:
        if locked:
            file.truncate(0)
            file.write(f"process {os.getpid()} on {HOST}\n")
            file.flush()
        try:
            yield
        finally:
            if locked and made and os.listdir(folder) == [LOCK_FILE]:
                _remove_made(folder, made)
            if locked:
                fcntl.flock(file, fcntl.LOCK_UN)


@contextlib.contextmanager
def taking_turns(lock: Path) -> Iterator[None]:
    """Hold ``lock`` (a file, created with its parents) exclusively while a few files are
    written or read together: another process asking meanwhile waits for its turn (unlike
    :func:`folder_lock`, for steps that take moments). Unlocked on a file system without
    locks."""
    if fcntl is None:
        yield
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open_own(lock, "a") as file:
        with contextlib.suppress(OSError):  # a file system without locks (ENOLCK)
            fcntl.flock(file, fcntl.LOCK_EX)
        yield  # unlocked as the file closes


def _locked_file(folder: Path, what: str) -> tuple[IO[str], bool]:
    """``folder``'s lock file, opened and locked (False: a file system without locks). A holder
    that ends removes the folder it made when it holds nothing but the lock: a file opened
    before that and locked after is no longer the folder's, so it is opened again (locked,
    it let a third process hold the folder beside this one)."""
    assert fcntl is not None
    while True:
        folder.mkdir(parents=True, exist_ok=True)
        file = open_own(folder / LOCK_FILE, "a+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "a process"
            file.close()
            raise AutomrError(f"{folder} is in use by another automr command ({holder}); wait "
                              f"for it to end, or give the {what} another folder") from None
        except OSError:  # a file system without locks (ENOLCK): unlocked, as before
            return file, False
        opened = os.fstat(file.fileno())
        try:
            current = os.stat(folder / LOCK_FILE)
        except FileNotFoundError:
            current = None
        if current is not None and (current.st_dev, current.st_ino) == (opened.st_dev,
                                                                       opened.st_ino):
            return file, True
        file.close()  # releases the lock on the removed file


def _remove_made(folder: Path, made: Sequence[Path]) -> None:
    """Remove ``folder``'s lock file and the folders ``made`` for it (deepest first) while
    they are empty."""
    (folder / LOCK_FILE).unlink()
    for path in made:
        try:
            path.rmdir()
        except OSError:  # something else was written there meanwhile
            return


def atomic_dir(target: Path | str, keep_existing: bool = False) -> "_AtomicDir":
    """Context manager: build a folder under a temporary name, rename it into place on success.

    Nothing half-written is left at ``target`` if the body raises. A folder another process
    put at ``target`` while this one built is kept: with ``keep_existing`` (the other process
    built the same deterministic folder) this build is discarded, so a process already reading
    it is not cut off; without, this build is refused in one line (two commands wrote one
    folder at once).
    A ``target`` that is a symlink stays one: the folder it points to is the one replaced.
    An existing ``target`` is renamed aside before the new folder takes its name and deleted
    after, so a process killed while replacing it leaves one of the two whole, never a
    half-deleted folder: cut between the two renames, ``target`` is missing and
    :func:`restore_replaced` (which the next ``atomic_dir`` of it runs first) puts the older
    folder back. The current folder, or one holding it, is refused (``--out .``): replacing
    it would leave the shell that ran the command in a deleted folder.
    """
    target = Path(os.path.abspath(target))  # "." and ".." have no name to build beside
    here, real = Path.cwd(), Path(os.path.realpath(target))  # a link to it too
    if real == here or real in here.parents:
        raise AutomrError(f"{target} is the current folder or holds it: a build replaces the "
                          f"folder it makes whole, so give the path of a new folder (e.g. "
                          f"{target / 'out'})")
    try:
        return _AtomicDir(target.resolve() if target.is_symlink() else target, keep_existing)
    except RuntimeError:  # pathlib before 3.13 ("Symlink loop"); OSError ELOOP after
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(target)) from None


HOST = socket.gethostname()
WINDOWS = os.name == "nt"


def partial_path(target: Path) -> Path:
    """The temporary sibling this process writes ``target`` into before renaming it
    (``.NAME.partial-HOST-PID``: a folder several nodes share tells whose it is); a thread
    other than the main one adds its own suffix (``-PID-THREAD``: two threads writing one
    file removed each other's before its rename)."""
    thread = ("" if threading.current_thread() is threading.main_thread()
              else f"-{threading.get_ident() & 0xFFFFFFFF:08x}")
    return target.with_name(f".{target.name}.partial-{HOST}-{os.getpid()}{thread}")


def fresh_partial(target: Path) -> Path:
    """:func:`partial_path` of ``target``, with whatever stands there removed (never followed):
    one a killed process left under this PID (a container restarted with its host name and
    PID), or a link a received folder planted, would be written through."""
    path = partial_path(target)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    return path


def replaced_path(target: Path) -> Path:
    """Where :func:`atomic_dir` moves the folder it replaces while the new one takes its name
    (``.NAME.replaced-HOST-PID``); deleted once the new one is in place."""
    return target.with_name(f".{target.name}.replaced-{HOST}-{os.getpid()}")


def restore_replaced(target: Path | str) -> None:
    """Undo what a process of this host, killed while :func:`atomic_dir` replaced ``target``,
    left: the older folder it had moved aside is put back when ``target`` is missing (cut
    between the two renames), else deleted. A running process's, and another host's, are left
    alone; one bearing this process's own PID is a killed one's (a container restarted with
    its hostname and PID): no replacement of this process is under way while this runs. A
    command that resumes from such a folder runs this before it looks."""
    target = Path(target)
    target = target.resolve() if target.is_symlink() else target
    prefix = f".{target.name}.replaced-{HOST}-"
    for aside in sorted(target.parent.glob(f"{glob.escape(prefix)}*")):
        pid = aside.name.removeprefix(prefix)
        if not pid.isdecimal() or (int(pid) != os.getpid() and _running(int(pid))):
            continue
        if not target.exists():
            with contextlib.suppress(OSError):  # another process of the command was first
                os.rename(aside, target)
        else:
            shutil.rmtree(aside, ignore_errors=True)


def remove_stale_partials(target: Path) -> None:
    """Remove the temporary siblings of ``target`` that processes of this host which are no
    longer running left behind (killed before their rename: a memory shard's can take GBs).
    Another host's, and a running process's, are left alone."""
    prefix = f".{target.name}.partial-{HOST}-"
    for stale in target.parent.glob(f"{glob.escape(prefix)}*"):
        # PID, a thread's PID-THREAD, a scratch's PID[-THREAD]-RANDOM; not another host's
        # HOST-N-PID (N is no PID here)
        named = re.fullmatch(r"(\d+)(?:-[0-9a-f]{8}){0,2}", stale.name.removeprefix(prefix))
        pid = named[1] if named else ""
        if not pid.isdecimal() or int(pid) == os.getpid() or _running(int(pid)):
            continue
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


@contextlib.contextmanager
def scratch_dir(target: Path) -> Iterator[Path]:
    """A folder beside ``target`` for work towards it (a download, an unpacked file), deleted
    on exit. Named as :func:`partial_path` names, with a random suffix (two containers may
    share a host name and a PID), so that the next scratch of ``target`` removes a killed
    process's first (:func:`remove_stale_partials`; a random temporary name stayed behind a
    killed process for good). One a killed process left under this process's own PID (a
    container restarted with its host name and PID) is left: it cannot be told from a live
    one of another container."""
    remove_stale_partials(target)
    scratch = partial_path(target).with_name(f"{partial_path(target).name}-"
                                             f"{secrets.token_hex(4)}")
    scratch.mkdir(parents=True)
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _running(pid: int) -> bool:
    """Whether process ``pid`` of this host runs; on Windows always taken as running, so that
    nothing of it is removed (``os.kill(pid, 0)`` sends a Ctrl+C there, it checks nothing)."""
    if WINDOWS:
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # past a C int: no process's
        return False
    except PermissionError:  # another user's: running
        return True
    return True


class _AtomicDir:
    def __init__(self, target: Path, keep_existing: bool = False) -> None:
        self.target = target
        self.keep_existing = keep_existing
        self.tmp = partial_path(target)
        self.before: tuple[int, int] | None = None  # the folder at target when the build began

    def __enter__(self) -> Path:
        restore_replaced(self.target)
        remove_stale_partials(self.target)
        fresh_partial(self.target)
        self.tmp.mkdir(parents=True)
        self.before = _identity(self.target)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        mode = file_mode(self.tmp)
        for weights in self.tmp.rglob("*.safetensors"):  # save_pretrained writes them 0600
            weights.chmod(mode)
        try:
            if _identity(self.target) != self.before:  # another process's folder came
                if self.keep_existing:
                    return
                self._taken()
            if self.target.exists():
                aside = replaced_path(self.target)
                shutil.rmtree(aside, ignore_errors=True)
                os.rename(self.target, aside)  # killed from here on, one folder is whole
                try:
                    os.replace(self.tmp, self.target)
                except OSError:
                    if not self.target.exists():
                        os.rename(aside, self.target)
                        raise
                    shutil.rmtree(aside, ignore_errors=True)  # another process's new one
                    if not self.keep_existing:  # took the name meanwhile (else: kept)
                        self._taken()
                    return
                shutil.rmtree(aside, ignore_errors=True)
            else:
                try:
                    os.replace(self.tmp, self.target)  # fails onto a folder that is not empty
                except OSError:
                    if not self.target.exists():
                        raise
                    if not self.keep_existing:  # else another process's folder: kept
                        self._taken()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)  # gone already unless it failed

    def _taken(self) -> None:
        raise AutomrError(f"{self.target} was written by another process at the same time (its "
                          f"folder is kept, not this one's); run one at a time") from None


def _identity(path: Path) -> tuple[int, int] | None:
    """Which folder stands at ``path`` (device and inode), None where none does."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


def file_mode(folder: Path) -> int:
    """The permissions a new file in ``folder`` gets under the umask (0644 under 022), read
    off a probe file (reading the umask itself would set it for a moment: not thread-safe)."""
    probe = folder / f".mode-probe-{os.getpid()}-{threading.get_ident()}"
    descriptor = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    try:
        return os.fstat(descriptor).st_mode & 0o777
    finally:
        os.close(descriptor)
        probe.unlink()


def write_text_atomic(path: Path | str, text: str) -> None:
    """Write ``text`` to a temporary sibling, then rename it over ``path`` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    tmp = fresh_partial(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_safetensors(path: Path | str, tensors: Mapping[str, "Tensor"],
                     metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` (contiguous, on the CPU) as a safetensors file at ``path``, atomically
    and with the permissions of the project's other files (see :func:`file_mode`). The same
    tensors and metadata give the same bytes (:func:`_sort_header`), so a file's digest says
    what it holds."""
    from safetensors.torch import save_file

    path = Path(path)
    remove_stale_partials(path)
    # safetensors (0.8) writes through a temporary file of its own (.tmpXXXXXX) beside the
    # file it is given: in a partial folder, what a killed process leaves is that folder
    work = fresh_partial(path)
    work.mkdir()
    tmp = work / path.name
    try:
        try:
            save_file(dict(tensors), tmp, metadata=None if metadata is None else dict(metadata))
        except Exception as error:  # safetensors' error around the OS's: an OSError again,
            code = wrapped_errno(error)  # which callers handle
            if code is None:
                raise
            raise OSError(code, os.strerror(code), str(path)) from error
        _sort_header(tmp)
        tmp.chmod(file_mode(path.parent))
        os.replace(tmp, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def wrapped_errno(error: Exception) -> int | None:
    """The OS error number that a Rust library's error (safetensors', tokenizers') carries in
    its message, ``... (os error 28)``; None where it carries none."""
    found = re.search(r"\(os error (\d+)\)", str(error))
    return None if found is None else int(found[1])


def _sort_header(path: Path) -> None:
    """Rewrite a safetensors file's JSON header in place with its keys sorted. safetensors
    writes the header's maps (tensor names, metadata) in an order that changes from one write
    to the next; sorted, the same content is the same bytes. The header keeps its length (the
    same keys and values, compact, padded with spaces as safetensors pads it), so the data and
    its offsets do not move."""
    with path.open("r+b") as file:
        length = int.from_bytes(file.read(8), "little")
        header = json.loads(file.read(length))
        ordered = json.dumps(header, sort_keys=True, separators=(",", ":"),
                             ensure_ascii=False).encode()
        if len(ordered) <= length:
            file.seek(8)
            file.write(ordered.ljust(length, b" "))


def safetensors_intact(path: Path | str) -> bool:
    """Whether ``path`` is a whole safetensors file (its header parses and its data is all
    there): how a resumed command tells a finished shard from a damaged one."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, "pt"):
            return True
    except (SafetensorError, OSError):
        return False


def write_json_atomic(path: Path | str, data: object, indent: int | None = 1) -> None:
    """``data`` as JSON (one trailing newline), written atomically."""
    write_text_atomic(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


def read_json(path: Path | str, made_by: str = "the command that wrote it",
              format: str | None = None) -> Any:
    """Parsed JSON of ``path``; a missing or unparsable file is one clear error naming it, and
    so, given a ``format``, is one that is not a JSON object of that ``"format"``."""
    path = Path(path)
    if not path.is_file():
        raise AutomrError(f"{path} is missing; it comes from {made_by}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AutomrError(f"{path} is not valid JSON ({error}); it is damaged: it comes "
                          f"from {made_by}") from None
    found = data.get("format") if isinstance(data, dict) else None
    if format is not None and found != format:
        raise AutomrError(f"{path} has format {found!r}, expected {format!r}: it is another "
                          f"kind of file; pass one written by {made_by}")
    return data


def read_safetensors(
    path: Path | str, made_by: str = "the command that wrote it", device: str = "cpu"
) -> dict[str, "Tensor"]:
    """Every tensor of a safetensors file; a missing or damaged file is one clear error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise AutomrError(f"{path} is missing; it comes from {made_by}")
    try:
        return load_file(path, device=device)
    except (SafetensorError, OSError) as error:
        raise AutomrError(f"{path} is not a readable safetensors file ({error}); it is "
                          f"damaged: it comes from {made_by}") from None


def save_component(
    directory: Path | str, format: str, config: Mapping[str, Any],
    tensors: Mapping[str, "Tensor"] | None = None, weights_file: str = "model.safetensors",
    provenance: Mapping[str, str] | None = None,
) -> Path:
    """Write ``config.json`` (``format``, ``config``'s keys, ``provenance``) and, when there are
    tensors, ``weights_file`` whose metadata repeats the format, ``config``'s scalar values and
    the provenance (so the weights file alone says what it belongs to). A stale weights file
    from an earlier save is removed when there are none, and the earlier config before the
    weights are written (cut in between, the folder is one without a config, refused on load
    and saved again in place). Returns the folder."""
    directory = home_path(directory)  # as load_component reads it
    check_save_target(directory, format, weights_file)
    directory.mkdir(parents=True, exist_ok=True)
    provenance = dict(provenance or {})
    weights = directory / weights_file
    (directory / CONFIG_FILE).unlink(missing_ok=True)  # a cut save must not pass for the
    if tensors:  # older config's (its settings and provenance over these weights)
        state = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
        scalars = {k: str(v) for k, v in config.items() if isinstance(v, str | int | float)}
        save_safetensors(weights, state, metadata={
            "format": format, **scalars,
            **{f"provenance.{k}": v for k, v in provenance.items()}})
    elif weights.exists():
        weights.unlink()  # it would contradict config.json
    write_json_atomic(directory / CONFIG_FILE,
                      {"format": format, **config, "provenance": provenance})
    return directory


def check_save_target(directory: Path, format: str, weights_file: str) -> None:
    """Refuse to save into a folder that holds something else (another artifact's
    ``config.json``, or files and no config beside a save of ours cut before its config, run
    records aside): it would be overwritten or mixed in. :func:`save_component` checks; a
    command that works long before it saves checks first."""
    what = format.split("/")[0].removeprefix("automr.")
    config = directory / CONFIG_FILE
    if config.is_file():
        try:
            held = json.loads(config.read_text(encoding="utf-8")).get("format")
        except (ValueError, AttributeError, UnicodeDecodeError):
            held = None
        if held != format:
            raise AutomrError(f"{directory} holds another artifact ({CONFIG_FILE} of format "
                              f"{held!r}); save the {what} into a new folder")
    elif directory.is_dir() and any(p.name not in (weights_file, RUNS_FILE)
                                    and not p.name.startswith(".") for p in directory.iterdir()):
        raise AutomrError(f"{directory} holds other files and no {what}; save the {what} into "
                          f"a new or empty folder")


def check_own_folder(out: Path, what: str, prefixes: Sequence[str]) -> None:
    """Refuse a file, or a folder holding files whose names start with none of ``prefixes``
    (run records and hidden files aside): ``what`` goes into a new or empty folder, or one it
    wrote before, never beside another artifact's files."""
    if out.exists() and not out.is_dir():
        raise AutomrError(f"{out} is a file; write the {what} into a new or empty folder")
    other = sorted(p.name for p in out.iterdir() if not p.name.startswith(
        (*prefixes, RUNS_FILE, "."))) if out.is_dir() else []
    if other:
        raise AutomrError(f"{out} holds other files ({', '.join(other[:4])}); write the {what} "
                          f"into a new or empty folder")


def load_component(
    directory: Path | str, format: str, weights_file: str | None = "model.safetensors",
    made_by: str = "the command that wrote it", device: str = "cpu",
) -> tuple[dict[str, Any], dict[str, "Tensor"]]:
    """``config.json`` (format checked) and the tensors of a folder written by
    :func:`save_component` (empty when it saved none, or ``weights_file`` is None)."""
    directory = home_path(directory)
    path = directory / CONFIG_FILE
    if not path.is_file():
        what = format.split("/")[0].removeprefix("automr.")
        raise AutomrError(f"{directory} is not a saved {what}: {CONFIG_FILE} is missing; it "
                          f"comes from {made_by}")
    config = read_json(path, made_by, format)
    weights = None if weights_file is None else directory / weights_file
    tensors = (read_safetensors(weights, made_by, device)
               if weights is not None and weights.is_file() else {})
    return config, tensors


@contextlib.contextmanager
def fields_of(path: Path | str, made_by: str) -> Iterator[None]:
    """Inside, what reading a parsed file's fields raises (a field missing, or of another
    type: a file edited by hand or damaged) is one line naming ``path`` and ``made_by``."""
    from beartype.roar import BeartypeCallHintViolation

    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError,
            BeartypeCallHintViolation) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0].strip()
        raise AutomrError(f"{path} is damaged ({type(error).__name__}: {reason}); write it "
                          f"again with {made_by}") from None


def whole(value: object) -> int:
    """A JSON integer as written (``int()`` took ``1.9`` for 1 and ``"2"`` for 2)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{value!r} is not a whole number")
    return value


def loaded_module(directory: Path | str, what: str, weights_file: str, remedy: str,
                  build: "Callable[[], M]", tensors: dict[str, "Tensor"]) -> "M":
    """``build()`` (the module its ``config.json`` describes) with ``tensors`` loaded, in their
    dtype when they share one (a module saved in bfloat16 loads in bfloat16, not in the
    float32 ``build`` makes); a config without a setting or weights that do not fit it (copied
    from another save) is one line naming ``directory``, ending in ``remedy``."""
    import torch
    from beartype.roar import BeartypeCallHintViolation

    try:
        with torch.device("meta"):  # no memory until the weights fit: a config of someone
            module = build()        # else's could claim any size
        module.load_state_dict(tensors, assign=True)
        dtypes = {t.dtype for t in tensors.values() if t.is_floating_point()}
        module.to(dtypes.pop() if len(dtypes) == 1 else torch.get_default_dtype())
    except (KeyError, TypeError, ValueError, RuntimeError,  # RuntimeError: another's weights
            BeartypeCallHintViolation, AutomrError) as error:  # AutomrError: its config's
        reason = (str(error).strip().splitlines() or [type(error).__name__])[-1].strip()
        raise AutomrError(f"{directory} holds a damaged {what} ({reason}): its {weights_file} "
                          f"and {CONFIG_FILE} do not match; {remedy}") from None
    return module


def setting_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``name was OLD, now NEW`` for each setting that differs between two JSON-like records
    of how an artifact was made (nested ones by dotted name; a list by its length, or as
    other entries of the same length): what a refusal to resume names."""
    found = []
    for key in sorted(old.keys() | new.keys()):
        was, now = old.get(key), new.get(key)
        if isinstance(was, dict) and isinstance(now, dict):
            found += setting_differences(was, now, f"{prefix}{key}.")
        elif was != now:
            if isinstance(was, list) and isinstance(now, list) and len(was) == len(now):
                found.append(f"{prefix}{key} holds other entries ({len(now)})")
                continue
            shown = [f"{len(v)} entries" if isinstance(v, list) else repr(v) for v in (was, now)]
            found.append(f"{prefix}{key} was {shown[0]}, now {shown[1]}")
    return found


def check_provenance(
    what: str, saved: Mapping[str, str], expect: Mapping[str, str] | None, remedy: str
) -> None:
    """Refuse ``what`` when a key of ``expect`` (e.g. the model fingerprint or layer in use)
    was recorded with another value; keys it did not record are not checked."""
    for key, value in (expect or {}).items():
        if key in saved and str(saved[key]) != str(value):
            raise AutomrError(f"{what} was built with {key}={saved[key]!r}, but {value!r} is in "
                              f"use: {remedy}")


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def files_digest(folder: Path | str, names: Sequence[str]) -> str:
    """sha256 over the name and content of each of ``names`` in ``folder`` (a missing one
    counts as missing): equal digests, equal files, wherever the folder lies."""
    digest = hashlib.sha256()
    for name in names:
        path = home_path(folder) / name
        digest.update(f"{name}:{sha256_of(path) if path.is_file() else 'missing'}\n".encode())
    return digest.hexdigest()
