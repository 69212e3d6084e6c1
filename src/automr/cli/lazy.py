"""Sub-commands imported only when used, so ``automr --help`` needs no torch.

A :class:`LazyGroup` knows its sub-commands as :class:`LazyCommand` entries (name, where the
command lives, a one-line help). Listing them (``automr --help``) reads only the entries;
invoking one, or asking for its own ``--help``, imports its module. Each loaded command is
handed to the group's ``on_load`` hooks (the run record, :mod:`automr.cli.record`).
"""

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import typer
import typer.core
import typer.main


@attrs.frozen
class LazyCommand:
    """Where a sub-command lives: ``"module:attribute"``, a Typer app or a command function."""

    target: str = attrs.field(validator=attrs.validators.matches_re(r"[\w.]+:\w+"))
    help: str = attrs.field(validator=attrs.validators.min_len(1))

    def load(self, name: str) -> Any:
        """The click command (a group for a Typer app) named ``name``."""
        module, attribute = self.target.split(":")
        value = getattr(importlib.import_module(module), attribute)
        if isinstance(value, typer.Typer):
            command = typer.main.get_group(value)
        else:
            single = typer.Typer(add_completion=False)
            single.command(name)(value)
            command = typer.main.get_command(single)
        command.name = name
        return command


class LazyGroup(typer.core.TyperGroup):
    """A Typer group whose sub-commands come from :attr:`registry`, imported on first use.

    Subclass it with ``registry`` and ``on_load`` set; pass the subclass as ``Typer(cls=...)``.
    """

    registry: Mapping[str, LazyCommand] = {}
    on_load: tuple[Callable[[Any], None], ...] = ()
    _listing = False

    def list_commands(self, ctx: Any) -> list[str]:
        return [*self.registry, *(name for name in self.commands if name not in self.registry)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in self.commands or cmd_name not in self.registry:
            return self.commands.get(cmd_name)
        entry = self.registry[cmd_name]
        if self._listing:  # a stand-in with the one-line help; nothing imported
            return typer.core.TyperCommand(name=cmd_name, help=entry.help)
        command = entry.load(cmd_name)
        for hook in self.on_load:
            hook(command)
        self.commands[cmd_name] = command
        return command

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None,
                     **extra: Any) -> Any:
        argv = [info_name or "automr", *args]
        ctx = super().make_context(info_name, args, parent=parent, **extra)
        ctx.meta.setdefault("automr.argv", argv)
        return ctx

    def load_all(self, ctx: Any = None) -> None:
        """Import every registered sub-command (docs checks, config validation)."""
        for name in self.list_commands(ctx):
            self.get_command(ctx, name)
