"""``automr bench encode|annotate|ground|finetune``: throughput beside the naive way, printed and
saved."""

from pathlib import Path
from typing import Annotated

import typer

from automr.cli.common import (
    CombinerOption,
    LayerOption,
    ModelOption,
    Runtime,
    comma_list,
    command_group,
    runtime_options,
    user_errors,
)
from automr.defaults import DEFAULT_LAYER, DEFAULT_MODEL
from automr.errors import AutomrError

app = command_group("Measure throughput beside the naive way (JSON + markdown).")

OutOption = Annotated[Path, typer.Option(help="Folder for NAME.json and NAME.md.")]
RepeatsOption = Annotated[int, typer.Option(
    help="Interleaved rounds after a warm-up; ratios are the median over rounds [min, max].")]


def _save(result: dict, out: Path, kind: str) -> None:
    """``OUT/KIND-DEVICE.json`` and ``.md``, DEVICE the device's type (``cuda``, not
    ``cuda:0``: no colon in a file name)."""
    from automr import distributed
    from automr.experiments.bench import write_result

    name = f"{kind}-{str(result['device']).split(':')[0]}"
    if distributed.is_main():  # under a launcher, rank 0's result (it has every process's)
        typer.echo(write_result(result, out, name))


def _say(result: dict, line: str) -> None:
    """A summary line, printed once; under a launcher its figures are process 0's (every
    process's rates are in per_process, their sums in total_*)."""
    from automr import distributed

    if distributed.is_main():
        processes = result.get("processes", 1)
        typer.echo((f"process 0 of {processes}: " if processes > 1 else "") + line)


def _spread(result: dict, key: str) -> str:
    """``1.84x [1.71, 1.90]``: a ratio's median over the rounds and its [min, max] (saved as
    ``KEY_min`` and ``KEY_max``, or as one ``KEY_min_max`` pair)."""
    low, high = result.get(f"{key}_min_max") or (result[f"{key}_min"], result[f"{key}_max"])
    return f"{result[key]:.2f}x [{low:.2f}, {high:.2f}]"


@app.command()
@user_errors
@runtime_options(quiet=False)
def annotate(
    out: OutOption = Path("benchmarks/results"),
    *, model: ModelOption = DEFAULT_MODEL, runtime: Runtime,
    layer: LayerOption = DEFAULT_LAYER,
    prompt_tokens: Annotated[int, typer.Option(help="Tokens of the seeded prompt.")] = 150,
    target_tokens: Annotated[int, typer.Option(help="Tokens of the seeded target title.")] = 10,
    elements: Annotated[int, typer.Option(help="Memory elements of the sample.")] = 90,
    combiner: CombinerOption = "concat",
    element_subset: Annotated[int, typer.Option(
        help="Also time annotating a seeded subset of this many elements (0 = no).")] = 0,
    element_prefix: Annotated[int, typer.Option(
        help="concat: tokens every element starts with (a window memory's template header).")]
        = 1,
    repeats: RepeatsOption = 3,
    label: Annotated[str | None, typer.Option(
        help="Name the files annotate-COMBINER-LABEL-DEVICE.* (letters, digits, '-').")] = None,
) -> None:
    """Annotation samples/s vs a full forward per element, and the ratio the work allows.

    The annotator runs the upper half only, sharing what the layout allows; each way's
    multiply-adds are counted."""
    from automr.experiments.bench import bench_annotate

    if label and not label.replace("-", "").isalnum():
        raise AutomrError(f"--label {label!r}: use letters, digits and '-' only")
    loaded = runtime.load_model(model)
    result = bench_annotate(loaded, layer, prompt_tokens, target_tokens, elements, combiner,
                            repeats=repeats, element_subset=element_subset or None,
                            element_prefix=element_prefix)
    _save(result, out, f"annotate-{combiner}" + (f"-{label}" if label else ""))
    _say(result, f"speedup over the naive way: {_spread(result, 'speedup')} (work ratio "
                 f"{result['work_ratio']:.2f}x), labels equal within "
                 f"{result['max_abs_logprob_diff']:.1e}; over the plain path: "
                 f"{_spread(result, 'speedup_over_plain')} (work ratio "
                 f"{result['work_ratio_over_plain']:.2f}x)")
    if element_subset:
        _say(result, f"{result['element_subset']} of {elements} elements: "
                     f"{result['subset_samples_per_s']:.3f} samples/s, "
                     f"{_spread(result, 'subset_speedup')} the naive way's (work ratio "
                     f"{result['subset_work_ratio']:.2f}x), labels equal within "
                     f"{result['max_abs_logprob_diff_subset']:.1e}")


@app.command()
@user_errors
@runtime_options(quiet=False)
def encode(
    data: Annotated[Path, typer.Option(help="Prepared dataset (prompts of real samples).")],
    out: OutOption = Path("benchmarks/results"),
    *, model: ModelOption = DEFAULT_MODEL, runtime: Runtime,
    layer: LayerOption = DEFAULT_LAYER,
    texts: Annotated[int, typer.Option(help="Window prompts encoded per round.")] = 32,
    batch_size: Annotated[int, typer.Option(help="Prompts per forward.")] = 16,
    repeats: RepeatsOption = 3,
) -> None:
    """Memory-encoding tokens/s vs a raw lower-half forward, and the split's overhead."""
    from automr.data import PreparedDataset
    from automr.experiments.bench import bench_encode

    loaded = runtime.load_model(model)
    result = bench_encode(loaded, PreparedDataset.load(data), layer, texts, batch_size,
                          repeats)
    _save(result, out, "encode")
    _say(result, f"encoder vs raw lower half: {result['encoder_speedup_over_raw_lower']:.2f}x; "
                 f"prefix sharing vs the same encoder without: "
                 f"{_spread(result, 'sharing_speedup')}; "
                 f"split overhead over a plain forward: {100 * result['split_overhead']:+.1f}% "
                 f"[{100 * result['split_overhead_min']:+.1f}%, "
                 f"{100 * result['split_overhead_max']:+.1f}%] (median [min, max] of {repeats}); "
                 f"keys with vs without sharing within {result['max_abs_key_diff_sharing']:.1e}, "
                 f"split vs plain logits within {result['max_abs_diff_split']:.1e}")


@app.command()
@user_errors
@runtime_options(quiet=False)
def ground(
    data: Annotated[Path, typer.Option(help="Prepared dataset (its test prompts are used).")],
    out: OutOption = Path("benchmarks/results"),
    *, model: ModelOption = DEFAULT_MODEL, runtime: Runtime,
    grounders: Annotated[str, typer.Option(help="Comma-separated: constrained, l2, "
                                                 "likelihood.")] = "constrained,l2",
    samples: Annotated[int, typer.Option(help="Test prompts per round.")] = 8,
    batch_size: Annotated[int, typer.Option(help="Prompts per generation batch.")] = 8,
    layer: LayerOption = DEFAULT_LAYER,
    repeats: RepeatsOption = 3,
) -> None:
    """Generation + grounding samples/s of each grounder (the whole catalog ranked).

    The constrained search is timed beside its plain implementation and transformers'
    generate."""
    from automr.data import PreparedDataset
    from automr.experiments.bench import bench_ground
    from automr.grounding import GROUNDER_KINDS

    kinds = comma_list(grounders)
    if not kinds:
        raise AutomrError("--grounders names no grounder; give e.g. constrained,l2")
    if unknown := [kind for kind in kinds if kind not in GROUNDER_KINDS]:  # before the load
        raise AutomrError(f"--grounders: unknown {', '.join(unknown)}; choose from "
                          f"{', '.join(GROUNDER_KINDS)}")
    loaded = runtime.load_model(model)
    result = bench_ground(loaded, PreparedDataset.load(data), kinds, samples, batch_size,
                          layer, cache_dir=runtime.cache_dir, repeats=repeats)
    _save(result, out, "ground")
    for key in list(result):
        if "_speedup_vs_" in key and not key.endswith("_min_max"):
            kind, engine = key.split("_speedup_vs_")
            typer.echo(f"{kind} vs {engine}: {_spread(result, key)} faster; "
                       f"{result[f'{kind}_rank_differences_vs_{engine}']} target ranks differ")


@app.command()
@user_errors
@runtime_options(quiet=False)
def finetune(
    data: Annotated[Path, typer.Option(help="Prepared dataset (its training samples are used).")],
    out: OutOption = Path("benchmarks/results"),
    *, model: ModelOption = DEFAULT_MODEL, runtime: Runtime,
    layer: Annotated[int, typer.Option(help="The upper-layers variant tunes layers >= this.")] =
        DEFAULT_LAYER,
    steps: Annotated[int, typer.Option(help="Optimizer steps per way and round.")] = 8,
    batch_size: Annotated[int, typer.Option(help="Samples per step.")] = 8,
    repeats: RepeatsOption = 3,
) -> None:
    """LoRA training seconds per step three ways, on the same batches.

    All layers; only the layers above the split (the lower half under no_grad each step); the
    same with the lower half's states computed once."""
    from automr.data import PreparedDataset
    from automr.experiments.bench import bench_finetune

    result = bench_finetune(model, PreparedDataset.load(data), layer, steps, batch_size,
                            device=runtime.device, dtype=runtime.dtype,
                            cache_dir=runtime.cache_dir,
                            repeats=repeats)
    _save(result, out, "finetune")
    for key, what in (("upper_layers_speedup", f"LoRA on layers >= {layer} vs all layers"),
                      ("cached_speedup_over_plain", "cached layer-L states vs plain")):
        typer.echo(f"{what}: {_spread(result, key)} faster per step")
    typer.echo(f"max |loss difference| cached vs plain: "
               f"{result['max_abs_loss_diff_cached_vs_plain']:.2e}")
