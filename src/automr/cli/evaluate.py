"""``automr evaluate``: methods side by side on the same samples, with intervals."""

from pathlib import Path
from typing import Annotated

import attrs
import typer

from automr.cli.common import (
    CombinerOption,
    DataOption,
    ResampleOption,
    Runtime,
    SplitOption,
    checked_options,
    comma_list,
    runtime_options,
    user_errors,
)
from automr.defaults import DEFAULT_LAYER, DEFAULT_MODEL
from automr.errors import AutomrError
from automr.experiments.eval_config import EvalConfig
from automr.paths import home_path

defaults = EvalConfig()


@user_errors
@runtime_options()
def evaluate_command(
    data: DataOption,
    out: Annotated[Path, typer.Option(help="Folder for results.md, results.json, ranks/.")],
    methods: Annotated[str, typer.Option(
        help="Comma-separated: sasrec, pop, cooc, or NAME:G with NAME in base, bigrec, "
             "automr, random, semantic, rella, trsr and G in l2, constrained, likelihood, "
             "l2-pop, l2-sasrec, constrained-pop.")] =
        "sasrec,base:l2,bigrec:l2",
    finetuned: Annotated[Path | None, typer.Option(
        help="Run folder of `automr finetune` (all but sasrec and base).")] = None,
    memory: Annotated[Path | None, typer.Option(
        help="Memory folder (automr, random, semantic).")] = None,
    retriever: Annotated[Path | None, typer.Option(
        help="Trained retriever folder (automr).")] = None,
    rella: Annotated[Path | None, typer.Option(
        help="Run folder of `automr finetune --context rella` (rella).")] = None,
    trsr: Annotated[Path | None, typer.Option(
        help="Run folder of `automr finetune --context trsr` (trsr).")] = None,
    combiner: CombinerOption = defaults.combiner,
    k: Annotated[int, typer.Option(help="Memory elements retrieved per sample.")] = defaults.k,
    model: Annotated[str | None, typer.Option(
        help=f"The untuned LM of base:G: the embedded name, a Hugging Face id or a folder "
             f"[default: the fine-tune's base model (--finetuned, else --rella, else "
             f"--trsr), else {DEFAULT_MODEL}].",
        show_default=False)] = None,
    split: SplitOption = defaults.split,
    samples: Annotated[int, typer.Option(
        help="Seeded subset of the split's samples (0 = all).")] = defaults.max_samples or 0,
    batch_size: Annotated[int, typer.Option(help="Samples per forward.")] = defaults.batch_size,
    layer: Annotated[int | None, typer.Option(
        help=f"Split layer L [default: the memory's when given, else {DEFAULT_LAYER}].",
        show_default=False)] = None,
    num_beams: Annotated[int, typer.Option(
        help="Beams (0 = grounder default: 4 for l2, 10 for constrained).")] = 0,
    measures: Annotated[str, typer.Option(
        help="Comma-separated: ranks (Recall/NDCG) and/or likelihood (the LM methods' target "
             "log-likelihood; no decoding; --dtype auto is then float32 on every device).")
    ] = "ranks",
    exclude_seen: Annotated[bool, typer.Option(
        help="Remove the user's history items from the ranking, the target excepted (sasrec "
             "always does, as its original evaluation).")] = False,
    seed: Annotated[int, typer.Option(
        help="Seed of the sample subset, SASRec, random retrieval and the bootstrap.")] =
        defaults.seed,
    retrieval_seed: Annotated[int | None, typer.Option(
        help="Seed of random retrieval only [default: --seed].", show_default=False)] = None,
    sasrec_loss: Annotated[str, typer.Option(
        help="SASRec's training loss (sasrec, l2-sasrec): ce (softmax over the catalog) or "
             "bce (the paper's: one sampled negative per position).")] = defaults.sasrec_loss,
    tune_samples: Annotated[int, typer.Option(
        help="Validation samples on which l2-pop / l2-sasrec / constrained-pop choose the "
             "prior's weight gamma.")] = defaults.tune_samples,
    reference: Annotated[str | None, typer.Option(
        help="The method every other is paired with [default: the first bigrec method, else "
             "the first].", show_default=False)] = None,
    resample: ResampleOption = defaults.resample,
    *, runtime: Runtime,
) -> dict[str, dict[str, float]]:
    """Rank the same test samples with every method; print and write the results table.

    With --measures likelihood, the LM methods also score the true titles. Returns each
    method's metric means (kept in the run record)."""
    from automr import distributed
    from automr.experiments.evaluate import evaluate_methods
    from automr.methods.registry import Artifacts

    if num_beams < 0:
        raise AutomrError(f"--num-beams must be >= 0 (0: the grounder's default), got "
                          f"{num_beams}")
    config = checked_options("evaluation", lambda: EvalConfig(
        split=split, max_samples=samples or None, seed=seed, batch_size=batch_size,
        layer=layer, num_beams=num_beams or None, exclude_seen=exclude_seen, combiner=combiner,
        k=k, measures=comma_list(measures), sasrec_loss=sasrec_loss,
        retrieval_seed=retrieval_seed, tune_samples=tune_samples, reference=reference,
        resample=resample),
        {"max_samples": "samples"})
    if "likelihood" in config.measures:  # small differences of log-likelihoods: not in bf16
        runtime = attrs.evolve(runtime, exact=True)
    artifacts = Artifacts(model=model, finetuned=finetuned, memory=memory,
                          retriever=retriever, rella=rella, trsr=trsr)
    evaluation = evaluate_methods(data, list(comma_list(methods)),
                                  out, config, artifacts, progress=runtime.progress,
                                  **runtime.keywords())
    typer.echo(evaluation.markdown())  # results.md's (read back, another run's at once)
    if evaluation.reused and distributed.is_main():  # under a launcher, once
        typer.echo(f"Read back from {out} (saved with the same samples and settings), not "
                   f"computed again: {', '.join(evaluation.reused)}", err=True)
    means: dict[str, dict[str, float]] = {}
    for reports in (evaluation.reports, evaluation.likelihoods):
        for method, report in reports.items():
            means.setdefault(method, {}).update({k: v.mean for k, v in report.metrics.items()})
    return means


@user_errors
def compare_command(
    out: Annotated[Path, typer.Option(help="Folder for results.md, results.json and the "
                                           "methods' values under their new names.")],
    method: Annotated[list[str], typer.Option(
        "--method", help="NAME=FOLDER/METHOD: METHOD as evaluated into FOLDER (automr "
                         "evaluate --out, or an exported .json such as docs/results/'s), "
                         "shown as NAME; repeat for each. All on the same samples (same "
                         "--split, --samples, --seed).")],
    reference: Annotated[str | None, typer.Option(
        help="The NAME every other is paired with [default: the first].",
        show_default=False)] = None,
    seed: Annotated[int, typer.Option(
        help="Seed of the bootstrap behind every interval (as automr evaluate --seed).")] = 0,
    resample: ResampleOption = "samples",
) -> None:
    """Methods of several evaluation folders side by side, paired on the same samples
    (e.g. two fine-tuned recommenders); nothing is recomputed."""
    from automr.evaluation import combine_folders
    from automr.methods.registry import check_current

    sources: dict[str, tuple[str, str]] = {}
    for text in method:
        name, sep, where = text.partition("=")
        folder, slash, evaluated = where.rpartition("/")
        if not sep or not name or not slash or not evaluated:
            raise AutomrError(f"--method takes NAME=FOLDER/METHOD, got {text!r}")
        if name in sources:
            raise AutomrError(f"--method names {name!r} twice")
        sources[name] = (str(home_path(folder)), evaluated)  # as --out's ~
        check_current(*sources[name])
    evaluation = combine_folders(sources, out=out, reference=reference, seed=seed,
                                 resample=resample)
    typer.echo(evaluation.markdown())


def _check_export_file(file: Path) -> None:
    """Refuse to write an export over a folder or over a file that is not an earlier export
    (another artifact's record, or the evaluation's own results.json)."""
    import json

    from automr.evaluation.folder import EXPORT_FORMAT

    if file.is_dir() or file.name in ("", ".."):
        raise AutomrError(f"cannot use {file}: it is a folder, not a file")
    if not file.exists():
        return
    try:
        found = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        found = None
    if not isinstance(found, dict) or found.get("format") != EXPORT_FORMAT:
        raise AutomrError(f"{file} exists and is not an export (automr export writes over an "
                          f"earlier one only); give the path of a new file")


@user_errors
def export_command(
    folder: Annotated[Path, typer.Argument(help="Evaluation folder (automr evaluate or "
                                                "compare --out).")],
    file: Annotated[Path, typer.Argument(help="JSON file to write, e.g. under docs/results/.")],
) -> None:
    """Write an evaluation folder as one JSON file: its tables, every method's per-sample
    ranks and target log-likelihoods keyed by sample id, and the commands that made it."""
    from automr.evaluation import EvaluationFolder
    from automr.methods.registry import check_current
    from automr.storage import write_json_atomic

    _check_export_file(file)
    exported = EvaluationFolder(folder).export()
    for kind in ("ranks", "loglik"):  # an export keeps no settings: what compare and rq3
        for method in exported[kind]:  # refuse in the folder would pass through it
            check_current(folder, method, (kind,))
    write_json_atomic(file, exported, indent=0)
    typer.echo(f"{file}: {len(exported['ranks'])} ranked and {len(exported['loglik'])} "
               f"likelihood method(s), {exported['results'].get('samples')} samples, "
               f"{len(exported['commands'])} command(s)")
