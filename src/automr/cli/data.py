"""``automr data ...`` (filled in by the data issue)."""

import typer

app = typer.Typer(help="Prepare datasets under the paper's protocol.", no_args_is_help=True)
