"""``automr context``: look at the ReLLa/TRSR prompt contexts and precompute TRSR summaries."""

from pathlib import Path
from typing import Annotated

import typer

from automr.cli.common import (
    DataOption,
    ModelOption,
    Runtime,
    SampleSeedOption,
    SplitOption,
    command_group,
    runtime_options,
    user_errors,
)
from automr.cli.finetune import TrsrOptions, context_defaults, context_spec_option, trsr_options
from automr.contexts.spec import CONTEXT_KINDS
from automr.data import PreparedDataset
from automr.defaults import DEFAULT_MODEL
from automr.errors import AutomrError

app = command_group("Prompt contexts of the ReLLa and TRSR baselines.")

BatchSize = Annotated[int, typer.Option(min=1, help="Summaries generated per batch.")]


def _samples(data: Path, split: str, count: int, seed: int):
    from automr.data.subsets import seeded_subset

    dataset = PreparedDataset.load(data)
    samples = seeded_subset(dataset.samples(split), count or None, seed)
    if not samples:
        raise AutomrError(f"the {split} split of {data} has no samples")
    return dataset, samples


@app.command("show")
@user_errors
@trsr_options
@runtime_options()
def show_command(
    data: DataOption,
    kind: Annotated[str, typer.Option(help=f"{' or '.join(CONTEXT_KINDS)}.")],
    split: SplitOption = "test",
    samples: Annotated[int, typer.Option(help="Seeded samples to show (0 = all).")] = 3,
    seed: SampleSeedOption = 0,
    model: ModelOption = DEFAULT_MODEL,
    context_k: Annotated[int, typer.Option(
        help="ReLLa: long-term items listed in the prompt.")] = context_defaults.k,
    *, trsr: TrsrOptions,
    batch_size: BatchSize = 8,
    runtime: Runtime,
) -> None:
    """Print the prompt context of a few samples (what the LM wrote, for TRSR)."""
    from automr.contexts import build_context

    spec = context_spec_option(kind, context_k, trsr, kind_option="kind")
    if spec is None:
        raise AutomrError(f"--kind must be one of {', '.join(CONTEXT_KINDS)}")
    dataset, chosen = _samples(data, split, samples, seed)
    loaded = runtime.load_model(model)
    context = build_context(spec, loaded, dataset, loaded.fingerprint(), runtime.cache_dir,
                            batch_size=batch_size, progress=runtime.progress)
    catalog, words = dataset.catalog, dataset.prompt_config
    for sample, text in zip(chosen, context.texts(chosen), strict=True):
        typer.echo(f"user {sample.user} at {sample.timestamp}: {len(sample.memory)} long-term, "
                   f"{len(sample.recent)} recent items; next: {catalog.title(sample.target)}")
        none = ("(none: no long-term history)" if not sample.memory else
                "(none: the summary came out empty)")
        typer.echo(f"  context: {text if text else none}")
        recent = ", ".join(words.title_format.format(title=t)
                           for t in catalog.titles(sample.recent))
        typer.echo(f"  recent:  {recent}\n")


@app.command("trsr")
@user_errors
@trsr_options
@runtime_options()
def trsr_command(
    data: DataOption,
    split: SplitOption = "train",
    samples: Annotated[int, typer.Option(
        help="Seeded subset of the split (0 = all); `automr finetune` uses --train-samples "
             "of train and --valid-samples of valid with its --seed.")] = 512,
    seed: SampleSeedOption = 0,
    model: ModelOption = DEFAULT_MODEL,
    *, trsr: TrsrOptions,
    batch_size: BatchSize = 8,
    runtime: Runtime,
) -> None:
    """Write (and cache) the TRSR summaries of a split's samples before fine-tuning or evaluation.

    Rerunning, or running it cut short and again, only generates what is missing."""
    from automr import distributed
    from automr.contexts import trsr_context

    spec = context_spec_option("trsr", context_defaults.k, trsr)
    dataset, chosen = _samples(data, split, samples, seed)
    loaded = runtime.load_model(model)
    context = trsr_context(loaded, dataset.catalog, dataset.prompt_config, loaded.fingerprint(),
                           spec, runtime.cache_dir, batch_size=batch_size,
                           progress=runtime.progress)
    before = len(context.cache.entries)
    distributed.barrier()  # under torchrun: no process writes before every one has counted
    context.precompute(chosen)  # under torchrun: each process writes its share
    texts = context.texts(chosen)
    written = len(context.cache.entries) - before
    typer.echo(f"{sum(t is not None for t in texts)} of {len(chosen)} {split} samples have a "
               f"summary ({written} prompts generated, the rest cached) in "
               f"{', '.join(str(f) for f in context.cache.files if f.exists())}")
