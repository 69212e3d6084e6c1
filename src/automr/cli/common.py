"""Shared CLI plumbing: options every command takes and one-line user errors."""

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer

from automr.errors import AutomrError

P = ParamSpec("P")
R = TypeVar("R")

DeviceOption = Annotated[str, typer.Option(help="auto, cpu, mps or cuda[:N].")]
DtypeOption = Annotated[str, typer.Option(
    help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16.")]
LayerOption = Annotated[int, typer.Option(help="Split layer L (layer-L states are joined).")]
QuietOption = Annotated[bool, typer.Option(help="No progress bars.")]
ModelOption = Annotated[str, typer.Option(
    help="Base model: a Hugging Face id or folder [default: the embedded SmolLM2-135M].")]
DataOption = Annotated[Path, typer.Option(help="Prepared dataset folder.")]

CacheDirOption = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help="Folder for downloads and converted files "
        "[default: $AUTOMR_CACHE, else $XDG_CACHE_HOME/automr, else ~/.cache/automr].",
        show_default=False,
    ),
]


def user_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn an :class:`AutomrError` into one line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except AutomrError as error:
            typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
            raise typer.Exit(code=2) from None

    return wrapper
