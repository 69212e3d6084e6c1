"""``automr ablate``: memory encoder x layer x combiner x retriever, by the eq. 5 gain."""

from pathlib import Path
from typing import Annotated

import typer

from automr.cli.common import (
    DataOption,
    LabelFormOption,
    LabelTemperatureOption,
    ResampleOption,
    Runtime,
    checked_options,
    comma_list,
    runtime_options,
    user_errors,
)
from automr.defaults import DEFAULT_LAYER


@user_errors
@runtime_options(exact=True)
def ablate_command(
    data: DataOption,
    finetuned: Annotated[Path, typer.Option(
        help="Run folder of `automr finetune`; its LoRA must start at or above every layer.")],
    out: Annotated[Path, typer.Option(
        help="Folder for ablation.md/json and every cell's memory, annotations, retriever.")],
    encoders: Annotated[str, typer.Option(help="Comma-separated memory encoders: item, "
                                               "window.")] = "item",
    layers: Annotated[str, typer.Option(help="Comma-separated split layers L.")] = str(
        DEFAULT_LAYER),
    combiners: Annotated[str, typer.Option(
        help="Comma-separated: append-token, prepend-token, concat.")] =
        "append-token,prepend-token,concat",
    retrievers: Annotated[str, typer.Option(
        help="Comma-separated: mlp (trained, eq. 6), semantic, random (exact expectation), "
             "oracle (best element).")] = "mlp,semantic,random,oracle",
    train_samples: Annotated[int, typer.Option(
        help="Annotated training samples per cell (for the mlp retriever).")] = 128,
    test_samples: Annotated[int, typer.Option(
        help="Seeded test samples per cell, every memory element annotated.")] = 64,
    label_form: LabelFormOption = "log",
    temperature: LabelTemperatureOption = 1.0,
    seed: Annotated[int, typer.Option(
        help="Seed of the sample subsets and retriever training.")] = 0,
    resample: ResampleOption = "samples",
    *, runtime: Runtime,
) -> None:
    """Score every (encoder, L, combiner, retriever) cell by how much the retrieved element
    raises the true title's log-likelihood on held-out test samples; print the table."""
    from automr.errors import AutomrError
    from automr.experiments.ablation import AblationConfig, run_ablation

    try:
        layer_values = tuple(int(v) for v in comma_list(layers))
    except ValueError:
        raise AutomrError(f"--layers must be comma-separated integers, got {layers!r}") from None
    config = checked_options("ablation", lambda: AblationConfig(
        encoders=comma_list(encoders), layers=layer_values, combiners=comma_list(combiners),
        retrievers=comma_list(retrievers), train_samples=train_samples, test_samples=test_samples,
        label_form=label_form, temperature=temperature, seed=seed, resample=resample))
    run_ablation(data, finetuned, out, config, **runtime.keywords(), progress=runtime.progress,
                 say=runtime.say)
    typer.echo((out / "ablation.md").read_text(encoding="utf-8"))
