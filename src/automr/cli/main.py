"""The ``automr`` Typer application: one sub-command group per pipeline step."""

import typer

from automr.cli import data, model
from automr.cli.evaluate import evaluate_command
from automr.cli.finetune import finetune_command

app = typer.Typer(
    name="automr",
    help="AutoMR: memory retrieval for LLM-based generative recommenders.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(model.app, name="model")
app.add_typer(data.app, name="data")
app.command("finetune")(finetune_command)
app.command("evaluate")(evaluate_command)


if __name__ == "__main__":
    app()
