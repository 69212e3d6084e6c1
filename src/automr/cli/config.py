"""``automr --config FILE.toml``: per-command defaults from a TOML file.

Each table names a command (``[finetune]``, ``[memory.build]``, ``[data.prepare.ml-100k]``)
and holds option values by option name (``train_samples`` or ``train-samples``). The file is
checked against the real commands, then handed to click as the context's ``default_map``: a
value from the file replaces the option's default, and an option given on the command line
wins over both. Paths are relative to the current directory, as on the command line, and a
leading ``~`` is the home folder.
"""

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer

from automr.errors import AutomrError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# An option's Python type -> the TOML value types it accepts (a bool is never a number).
_TOML_TYPES: dict[type, tuple[type, ...]] = {
    int: (int,), float: (int, float), bool: (bool,), str: (str,), Path: (str,),
}
_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
               Path: "a path (string)"}
# click's type names, for Typer versions whose options carry a click type instead.
_CLICK_TYPES = {"integer": int, "float": float, "boolean": bool, "text": str, "path": Path}


def read_toml(path: Path) -> dict[str, Any]:
    """The file's tables; a missing file or invalid TOML is an :class:`AutomrError`."""
    if not path.is_file():
        raise AutomrError(f"config file {path} does not exist (or is not a file).")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise AutomrError(f"config file {path} is not valid TOML: {error}.") from None


def default_map(path: Path, root: Any, ctx: Any) -> dict[str, Any]:
    """The file as a click ``default_map`` for ``root``, checked against its commands."""
    return _group_map(read_toml(path), root, ctx, path, ())


def _group_map(table: Mapping[str, Any], group: Any, ctx: Any, path: Path,
               where: tuple[str, ...]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in table.items():
        if where and not isinstance(value, dict):
            tables = ", ".join(f"[{'.'.join((*where, n))}]" for n in group.list_commands(ctx))
            raise AutomrError(f"config file {path}: {key} stands directly under "
                              f"[{'.'.join(where)}], a group of commands; put it in the table "
                              f"of one of them ({tables}).")
        command = group.get_command(ctx, key)
        if command is None:
            names = ", ".join(group.list_commands(ctx))
            raise AutomrError(f"config file {path}: [{'.'.join((*where, key))}] is not a "
                              f"command (commands here: {names}).")
        if not isinstance(value, dict):
            raise AutomrError(f"config file {path}: {'.'.join((*where, key))} must be a table "
                              f"[{'.'.join((*where, key))}] of option values, not a value.")
        if hasattr(command, "commands"):
            result[key] = _group_map(value, command, ctx, path, (*where, key))
        else:
            result[key] = _option_map(value, command, ctx, path, (*where, key))
    return result


def _option_map(table: Mapping[str, Any], command: Any, ctx: Any, path: Path,
                where: tuple[str, ...]) -> dict[str, Any]:
    options = {p.name: p for p in command.params
               if p.param_type_name == "option" and p.name and not p.hidden}
    section = f"config file {path}: [{'.'.join(where)}]"
    result: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        param = options.get(name)
        if param is None:
            known = ", ".join(n.replace("_", "-") for n in options)
            raise AutomrError(f"{section} {key}: no such option (options: {known}).")
        if isinstance(value, dict):
            raise AutomrError(f"{section} {key}: expected a value, got a table.")
        if name in result:
            raise AutomrError(f"{section} {key}: the option is set twice (as "
                              f"{name.replace('_', '-')} and {name}); keep one.")
        if getattr(param, "multiple", False):  # a repeatable option: a list of its values
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise AutomrError(f"{section} {key}: expected a list of strings (the option "
                                  f"repeats), got {value!r} ({type(value).__name__}).")
            result[name] = value
            continue
        kind = _option_type(param)
        expected = _TOML_TYPES.get(kind, (object,)) if kind is not None else (object,)
        if not isinstance(value, expected) or (isinstance(value, bool) and kind is not bool
                                               and kind is not None):
            raise AutomrError(f"{section} {key}: expected {_TYPE_NAMES.get(kind, kind)}, got "
                              f"{value!r} ({type(value).__name__}).")
        result[name] = value
    return result


def _option_type(param: Any) -> type | None:
    """The option's Python type (int, float, bool, str, Path), or None if it is another."""
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is not None:
        annotation = descriptor.annotation
        return annotation if annotation in _TOML_TYPES else None
    return _CLICK_TYPES.get(getattr(getattr(param, "type", None), "name", ""))


def check_config(path: Path) -> dict[str, Any]:
    """Validate a config file against the real ``automr`` commands; its ``default_map``."""
    from automr.cli.main import app

    group = typer.main.get_command(app)
    with group.make_context("automr", [], resilient_parsing=True) as ctx:
        return default_map(path, group, ctx)
