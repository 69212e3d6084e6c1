"""The run record: one JSON line in ``OUT/automr-runs.jsonl`` per successful command.

Every command with an ``--out`` option gets it (attached when :mod:`automr.cli.main` loads the
command): the argv, every parameter after the config file and the command line, where each
value came from, versions, the git commit of the automr source (when it runs from a git
checkout), the machine, UTC start and end, fingerprints of the inputs and the final metrics
(whatever mapping the command function returns; ``None`` when it returns none).
"""

import datetime as dt
import functools
import hashlib
import importlib.metadata
import json
import platform
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import automr
from automr import distributed
from automr.cli.common import user_errors
from automr.errors import AutomrError
from automr.paths import home_path
from automr.storage import RUNS_FILE, append_lines, sha256_of

INPUT_FOLDERS = ("finetuned", "memory", "retriever", "annotations", "rella", "trsr")
LIBRARIES = ("torch", "transformers", "peft")
SOURCES = {"COMMANDLINE": "command line", "DEFAULT_MAP": "config file", "DEFAULT": "default",
           "ENVIRONMENT": "environment", "PROMPT": "prompt"}


def attach_run_record(command: Any) -> None:
    """Make ``command`` (and every command under it) with an ``--out`` write its record."""
    for sub in getattr(command, "commands", {}).values():
        attach_run_record(sub)
    if not any(param.name == "out" for param in getattr(command, "params", ())):
        return
    invoke = command.invoke

    @functools.wraps(invoke)
    def recorded(ctx: Any) -> Any:
        started, clock = dt.datetime.now(dt.timezone.utc), time.perf_counter()
        git = git_state()  # the code that runs: a commit made during a long run is not it
        config = config_state(ctx)  # the file read, not the one edited while it runs
        result = invoke(ctx)
        out = ctx.params.get("out") or ctx.params.get("results")  # rq3 writes into --results
        if out is not None and distributed.is_main():  # one record for N processes
            record = run_record(ctx, started, time.perf_counter() - clock, git, config)
            record["metrics"] = _jsonable(result) if isinstance(result, Mapping) else None
            user_errors(append_record)(out=Path(out), record=record)  # a full disk: a line
        if distributed.launched():  # no process leaves (and may abort in torch's teardown,
            distributed.barrier()  # docs/distributed.md) before the main one has written all
        return result

    command.invoke = recorded


def file_sha256(path: Path) -> str | None:
    """The sha256 of the file at ``path``; None where there is none (any more)."""
    return sha256_of(path) if path.is_file() else None


def append_record(out: Path, record: dict[str, Any]) -> None:
    """Append ``record`` to ``out``'s run records; one that cannot be written is an error
    saying the work itself is done (the disk's usual "rerun: it resumes" sent a finished
    fine-tune's rerun into a refusal)."""
    try:
        append_lines(out / RUNS_FILE, [json.dumps(record)])
    except OSError as error:
        reason = error.strerror or str(error)
        raise AutomrError(f"the command's work is done in {out}, but its run record "
                          f"{out / RUNS_FILE} could not be written ({reason}); nothing needs "
                          f"to run again") from None


def config_state(ctx: Any) -> dict[str, Any]:
    """The ``--config`` file of ``ctx``'s command and the sha256 of its content now (its
    values are in the run record's ``params``, by ``sources``)."""
    config = ctx.find_root().params.get("config")
    return {"config_file": _jsonable(config),
            "config_sha256": None if config is None else file_sha256(home_path(config))}


def run_record(ctx: Any, started: dt.datetime, seconds: float,
               git: dict[str, Any] | None, config: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    """What ran, with what, where and how long (``ctx``: the finished command's context;
    ``git``: :func:`git_state` and ``config``: :func:`config_state` when it started)."""
    torch = sys.modules.get("torch")  # None when the command never needed it (data prepare)
    params = {name: _jsonable(value) for name, value in ctx.params.items()}
    return {
        "command": ctx.command_path,
        "argv": ctx.meta.get("automr.argv", list(sys.argv)),
        **(config_state(ctx) if config is None else config),
        "params": params,
        "sources": {name: _source(ctx.get_parameter_source(name)) for name in params},
        "versions": {"automr": automr.__version__,  # the code that runs, installed or not
                     **{name: _version(name) for name in LIBRARIES},
                     "python": platform.python_version()},
        "git": git,
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "processes": distributed.world_size() if distributed.launched() else 1,
        "cuda_device": _cuda_device(torch, ctx.params.get("device")),
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
        "fingerprints": fingerprints(ctx.params),
    }


def _cuda_device(torch: Any, device: str | None) -> str | None:
    """The name of the CUDA device a command's ``--device`` resolved to; None for a command
    on another device, without the option, or that never needed torch."""
    if torch is None or device is None or not torch.cuda.is_available():
        return None
    from automr.devices import resolve_device

    resolved = resolve_device(device)
    return torch.cuda.get_device_name(resolved) if resolved.type == "cuda" else None


def fingerprints(params: dict[str, Any]) -> dict[str, Any]:
    """The dataset fingerprint of ``data``; sha256 of each input folder's top-level JSON."""
    found: dict[str, Any] = {}
    if params.get("data") is not None:
        from automr.data.fingerprint import folder_fingerprint

        try:
            found["data"] = folder_fingerprint(params["data"])
        except (AutomrError, OSError, ValueError) as error:
            found["data"] = f"unavailable: {error}"
    for name in INPUT_FOLDERS:
        value = params.get(name)
        if isinstance(value, (list, tuple)):  # repeatable: rq2 --retriever, or NAME=FOLDER
            found[name] = {str(text): _json_hashes(Path(str(text).rpartition("=")[2]))
                           for text in value}
        elif value is not None:
            found[name] = _json_hashes(Path(value))
    return found


def git_state(folder: Path | None = None) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the git checkout the automr source (or ``folder``) is tracked
    in; None when it is not in one (an installed wheel) or git is missing."""
    folder = folder or Path(automr.__file__).resolve().parent

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                              timeout=10)

    try:
        tracked = git("ls-files", "--error-unmatch", "--", "__init__.py")
        head = git("rev-parse", "HEAD")
        if tracked.returncode or head.returncode:  # not a checkout, or the folder is untracked
            return None
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head.stdout.strip(),
            "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def _json_hashes(folder: Path) -> dict[str, str]:
    folder = home_path(folder)  # "~/r1", as the command itself reads it
    return {file.name: hashlib.sha256(file.read_bytes()).hexdigest()
            for file in sorted(folder.glob("*.json")) if file.is_file()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _source(source: Any) -> str | None:
    return None if source is None else SOURCES.get(source.name, source.name.lower())


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
