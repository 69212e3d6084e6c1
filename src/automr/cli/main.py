"""The ``automr`` Typer application: one sub-command group per pipeline step."""

import typer

from automr.cli import bench, data, model
from automr.cli.evaluate import evaluate_command
from automr.cli.finetune import finetune_command
from automr.cli.pipeline import (
    annotate_command,
    demo_command,
    memory_app,
    recommend_command,
    retriever_app,
)

app = typer.Typer(
    name="automr",
    help="AutoMR: memory retrieval for LLM-based generative recommenders.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def quiet_libraries() -> None:
    """AutoMR: memory retrieval for LLM-based generative recommenders."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bars say what is happening
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")


app.command("demo")(demo_command)
app.add_typer(model.app, name="model")
app.add_typer(data.app, name="data")
app.command("finetune")(finetune_command)
app.add_typer(memory_app, name="memory")
app.command("annotate")(annotate_command)
app.add_typer(retriever_app, name="retriever")
app.command("evaluate")(evaluate_command)
app.command("recommend")(recommend_command)
app.add_typer(bench.app, name="bench")


if __name__ == "__main__":
    app()
