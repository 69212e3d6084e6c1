"""The ``automr`` Typer application: one sub-command (or group) per pipeline step.

Sub-commands are imported only when used (:mod:`automr.cli.lazy`), so ``automr --help``
stays fast. To add a command, add one entry to :data:`COMMANDS` below - nothing else.
"""

import contextlib
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, final

import typer
import typer.core
import typer.main

from automr.cli.common import expand_home, user_errors
from automr.cli.lazy import LazyCommand, LazyGroup
from automr.errors import AutomrError
from automr.paths import home_path

# The one place where sub-commands are registered: name -> where it lives ("module:attribute",
# a Typer app or a command function) and the one-line help `automr --help` shows. Order is
# the listing order (the pipeline's). tests/test_cli_infra.py checks every entry resolves and
# that its help matches the command's own first line.
COMMANDS: dict[str, LazyCommand] = {
    "demo": LazyCommand(
        "automr.cli.pipeline:demo_command",
        "The main job: the whole pipeline on the embedded default, ending with a results "
        "table."),
    "model": LazyCommand("automr.cli.model:app", "Fetch and inspect causal LMs."),
    "data": LazyCommand("automr.cli.data:app", "Prepare datasets under the paper's protocol."),
    "finetune": LazyCommand(
        "automr.cli.finetune:finetune_command",
        "Fine-tune the LM with LoRA to generate the next item's title (BIGRec)."),
    "memory": LazyCommand("automr.cli.pipeline:memory_app", "Build per-user layer-L memories."),
    "annotate": LazyCommand(
        "automr.cli.pipeline:annotate_command",
        "Eq. 5: each memory element's effect on the true next item's likelihood."),
    "retriever": LazyCommand("automr.cli.pipeline:retriever_app",
                             "Train and score retrievers on annotations."),
    "evaluate": LazyCommand(
        "automr.cli.evaluate:evaluate_command",
        "Rank the same test samples with every method; print and write the results table."),
    "compare": LazyCommand(
        "automr.cli.evaluate:compare_command",
        "Methods of several evaluation folders side by side, paired on the same samples "
        "(e.g. two fine-tuned recommenders); nothing is recomputed."),
    "export": LazyCommand(
        "automr.cli.evaluate:export_command",
        "Write an evaluation folder as one JSON file: its tables, every method's per-sample "
        "ranks and target log-likelihoods keyed by sample id, and the commands that made it."),
    "recommend": LazyCommand(
        "automr.cli.pipeline:recommend_command",
        "Users' top items from AutoMR and the memory elements it retrieved (item, date)."),
    "bench": LazyCommand(
        "automr.cli.bench:app", "Measure throughput beside the naive way (JSON + markdown)."),
    "context": LazyCommand(
        "automr.cli.context:app",
        "Prompt contexts of the ReLLa and TRSR baselines."),
    "rq2": LazyCommand(
        "automr.cli.figures:rq2_command",
        "RQ2: BIGRec, AutoMR and random retrieval with several seeds on the same test samples; "
        "write the table and box plots (resumes: finished runs are read back)."),
    "rq3": LazyCommand(
        "automr.cli.figures:rq3_command",
        "RQ3: how far back the memory method retrieves; case-study timeline and age histograms."),
    "ablate": LazyCommand(
        "automr.cli.ablate:ablate_command",
        "Score every (encoder, L, combiner, retriever) cell by how much the retrieved element "
        "raises the true title's log-likelihood on held-out test samples; print the table."),
}


def _attach_run_record(command: object) -> None:
    from automr.cli.record import attach_run_record

    attach_run_record(command)


def _plain_help(command: object) -> None:
    """Help texts are plain text: Typer reads them as rich markup, where a bracketed part
    (``[default: the first]``, ``[min, max]``) is a style tag and vanished from ``--help``."""
    if not typer.core.HAS_RICH:
        return
    from rich.markup import escape

    for part in [command, *getattr(command, "params", ())]:
        if getattr(part, "help", None):
            part.help = escape(part.help)
    for sub in getattr(command, "commands", {}).values():
        _plain_help(sub)


HELP_WIDTH_OFF_A_TERMINAL = 120
"""Columns of ``--help`` written to a pipe or a file (rich's default there, 80, cut long
option names: ``--min-item-interact…``)."""


@contextlib.contextmanager
def _help_width(argv: Sequence[str]) -> Iterator[None]:
    """Lay help out :data:`HELP_WIDTH_OFF_A_TERMINAL` wide while inside, when ``argv`` asks
    for it (``--help``, or nothing: the root's help) on a stdout that is no terminal and
    neither ``COLUMNS`` nor Typer's ``TERMINAL_WIDTH`` says a width. Not for another command:
    its usage errors go to stderr, a terminal of its own width (``automr x --typo > out``)."""
    if not typer.core.HAS_RICH or sys.stdout.isatty() or (
            {"COLUMNS", "TERMINAL_WIDTH"} & set(os.environ)) or (
            argv and "--help" not in argv):
        yield
        return
    from typer import rich_utils

    before, rich_utils.MAX_WIDTH = rich_utils.MAX_WIDTH, HELP_WIDTH_OFF_A_TERMINAL
    try:
        yield
    finally:
        rich_utils.MAX_WIDTH = before


@final
class AutomrGroup(LazyGroup):
    """The root group: :data:`COMMANDS`, each with a run record when it has ``--out``; an
    interrupted command says how to resume."""

    registry = COMMANDS
    on_load = (_attach_run_record, expand_home, _plain_help)  # paths expanded for the record

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """The command line's entry: ``--help`` off a terminal wide enough first."""
        argv = kwargs.get("args", args[0] if args else None)
        with _help_width(sys.argv[1:] if argv is None else list(argv)):
            return super().main(*args, **kwargs)

    def invoke(self, ctx: typer.Context) -> object:
        """Run the sub-command; Ctrl-C (exit 130) and SIGTERM (exit 143: a scheduler's time
        limit, ``kill``) end with one line saying how to go on, after the command's own
        clean-up (Python's default SIGTERM ends a process without it)."""
        with _sigterm_raises():
            try:
                return super().invoke(ctx)
            except KeyboardInterrupt:
                typer.echo("\ninterrupted; rerun the same command to resume", err=True)
                raise typer.Exit(code=130) from None
            except Terminated:
                typer.echo("\nterminated; rerun the same command to resume", err=True)
                raise typer.Exit(code=143) from None


class Terminated(BaseException):
    """Raised by SIGTERM while a command runs (a ``BaseException``, as ``KeyboardInterrupt``:
    no ``except Exception`` swallows it)."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` in the main thread while inside; the handler before
    is restored after. Elsewhere than the main thread, and under a launcher, nothing changes:
    a process waiting in a collective for a peer that failed runs no Python handler until the
    wait ends, so the launcher's SIGTERM must end it at once, as by default."""
    from automr import distributed

    if threading.current_thread() is not threading.main_thread() or distributed.launched():
        yield
        return

    def terminated(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        # None: a handler set outside Python (an embedding program), which cannot be put back
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


app = typer.Typer(
    name="automr",
    cls=AutomrGroup,
    help="AutoMR: memory retrieval for LLM-based generative recommenders.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def quiet_libraries() -> None:
    """No Hugging Face progress bars (ours say what is happening), without importing it."""
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    if "transformers" in sys.modules or "huggingface_hub" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    else:  # read by huggingface_hub, and through it transformers, when first imported
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"


SHARED_BY_A_LAUNCHER = ("finetune", "memory build", "annotate", "evaluate", "bench encode",
                        "bench annotate", "context trsr")
"""The commands whose work a launcher's processes share (docs/distributed.md); the others run
in one process."""


def join_launcher(ctx: typer.Context) -> None:
    """Under ``torchrun`` / ``accelerate launch`` (N > 1 processes): refuse a command that runs
    in one process (every process would do all its work into the same files), join the
    process group before any model is placed, and print only from the main process (errors
    still reach stderr from every process)."""
    from automr import distributed

    if not distributed.launched():
        return
    argv = ctx.meta.get("automr.argv", sys.argv)
    words = [w for i, w in enumerate(argv[1:]) if not w.startswith("-")
             and not (i and argv[i] == "--config")][:2]  # the command, after root options
    if words and "--help" not in argv:
        group = ctx.command.get_command(ctx, words[0])
        command = " ".join(words if hasattr(group, "commands") else words[:1])
        if command not in SHARED_BY_A_LAUNCHER:
            raise AutomrError(f"`automr {command}` runs in one process: start it without a "
                              f"launcher (a launcher shares the work of: "
                              f"{', '.join(SHARED_BY_A_LAUNCHER)})")
    distributed.init()
    started = distributed.gather(invocation(argv))
    differing = [rank for rank, other in enumerate(started) if other != started[0]]
    if differing:
        raise AutomrError(
            f"the {len(started)} processes were started with different arguments (process 0: "
            f"`{' '.join(started[0][0])}`; process {differing[0]}: "
            f"`{' '.join(started[differing[0]][0])}`"
            + (", or --config files" if started[0][0] == started[differing[0]][0] else "")
            + "): start every process with the same command")
    if not distributed.is_main():
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - process-long


def invocation(argv: list[str]) -> tuple[list[str], list[str | None]]:
    """What decides a command's work: its arguments (not the program's path) and the
    sha256 of each ``--config`` file given (click reads the last)."""
    from automr.cli.record import file_sha256

    words = argv[1:]
    configs = [words[i + 1] if w == "--config" else w.removeprefix("--config=")
               for i, w in enumerate(words) if w.startswith("--config")
               and (w != "--config" or i + 1 < len(words))]
    return words, [file_sha256(home_path(config)) for config in configs]


def show_version(wanted: bool) -> None:
    """``automr --version``: automr's version and those of the libraries its numbers depend
    on (what a bug report needs), read from the installed metadata without importing them."""
    if not wanted:
        return
    from importlib.metadata import PackageNotFoundError, version

    import automr

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    libraries = ", ".join(f"{name} {installed(name)}" for name in VERSIONED_LIBRARIES)
    typer.echo(f"automr {automr.__version__} (Python {sys.version.split()[0]}; {libraries})")
    raise typer.Exit


VERSIONED_LIBRARIES = ("torch", "transformers", "peft")


@app.callback()
@user_errors
def root(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option(
        "--version", help="Print automr's version and those of torch, transformers and peft.",
        callback=show_version, is_eager=True)] = False,
    config: Annotated[Path | None, typer.Option(
        "--config", help="TOML file of defaults, one table per command (finetune, memory.build, "
        "...); options given on the command line win.", show_default=False)] = None,
) -> None:
    """AutoMR: memory retrieval for LLM-based generative recommenders."""
    quiet_libraries()
    join_launcher(ctx)
    if config is not None:
        from automr.cli.config import default_map

        ctx.default_map = default_map(home_path(config), ctx.command, ctx)


def command_tree() -> typer.core.TyperGroup:
    """The root click group with every sub-command imported (for docs checks)."""
    group = typer.main.get_command(app)
    assert isinstance(group, LazyGroup)
    group.load_all()
    return group


if __name__ == "__main__":
    app()
