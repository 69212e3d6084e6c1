"""``automr rq2`` and ``automr rq3``: the paper's random-retrieval comparison and case study.

Library modules are imported inside the commands, so listing the CLI needs no torch.
"""

from pathlib import Path
from typing import Annotated

import attrs
import typer

from automr.cli.common import (
    CombinerOption,
    DataOption,
    FinetunedOption,
    MemoryOption,
    Runtime,
    checked_options,
    runtime_options,
    user_errors,
)


def parse_seeds(text: str) -> list[int]:
    """``"0-9"``, ``"1,5,7"`` or a mix (``"0-4,10"``) -> the seeds, in order."""
    from automr.errors import AutomrError

    seeds: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            low, dash, high = part.partition("-")
            if dash and int(high) < int(low):
                raise AutomrError(f"--seeds: the range {part} runs backwards; write {high}-{low}")
            seeds += list(range(int(low), int(high) + 1)) if dash else [int(part)]
    except ValueError:
        raise AutomrError(f"--seeds must be integers or ranges such as 0-9, got {text!r}") \
            from None
    if not seeds:
        raise AutomrError("--seeds is empty")
    return seeds


@user_errors
@runtime_options()
def rq2_command(
    data: DataOption,
    out: Annotated[Path, typer.Option(
        help="Folder for rq2.md/json/png/svg and one evaluation folder per run.")],
    finetuned: FinetunedOption,
    memory: MemoryOption,
    retriever: Annotated[list[Path], typer.Option(
        "--retriever", "--retrievers",
        help="Trained retriever folder; repeat it (e.g. retrievers trained with other "
             "seeds) to give AutoMR a distribution too.")],
    seeds: Annotated[str, typer.Option(
        help="Random retrieval seeds: comma-separated integers or ranges.")] = "0-9",
    grounder: Annotated[str, typer.Option(help="l2, constrained or likelihood.")] =
        "constrained",
    samples: Annotated[int, typer.Option(
        help="Seeded subset of the test samples (0 = all); the same for every run.")] = 200,
    seed: Annotated[int, typer.Option(
        help="Seed of the sample subset and the bootstrap (not of random retrieval).")] = 0,
    num_beams: Annotated[int, typer.Option(
        help="Beams (0 = grounder default: 4 for l2, 10 for constrained).")] = 0,
    combiner: CombinerOption = "concat",
    k: Annotated[int, typer.Option(help="Memory elements retrieved per sample.")] = 1,
    measure: Annotated[str, typer.Option(
        help="ranks (Recall/NDCG@K, the paper's) or likelihood (mean target "
             "log-likelihood; no decoding; needs --grounder likelihood; --dtype auto is then "
             "float32 on every device).")] = "ranks",
    exclude_seen: Annotated[bool, typer.Option(
        help="Remove the user's history items from the ranking.")] = False,
    batch_size: Annotated[int, typer.Option(help="Samples per forward.")] = 8,
    *, runtime: Runtime,
) -> None:
    """RQ2: BIGRec, AutoMR and random retrieval with several seeds on the same test samples;
    write the table and box plots (resumes: finished runs are read back)."""
    from automr.defaults import MEASURES
    from automr.errors import AutomrError
    from automr.experiments.eval_config import EvalConfig
    from automr.experiments.rq2 import run_rq2

    if measure not in MEASURES:  # the config's message names its field, measures
        raise AutomrError(f"--measure must be one of {', '.join(MEASURES)}, got {measure!r}")
    if measure == "likelihood":  # small differences of log-likelihoods: not in bf16
        runtime = attrs.evolve(runtime, exact=True)
    config = checked_options("rq2", lambda: EvalConfig(
        max_samples=samples or None, seed=seed, batch_size=batch_size,
        num_beams=num_beams or None, combiner=combiner, k=k, measures=(measure,),
        exclude_seen=exclude_seen), {"max_samples": "samples"})
    run_rq2(data, out, finetuned=finetuned, memory=memory, retrievers=retriever,
            seeds=parse_seeds(seeds), grounder=grounder, config=config, **runtime.keywords(),
            progress=runtime.progress,
            say=runtime.say)
    typer.echo((out / "rq2.md").read_text(encoding="utf-8"))


@user_errors
def rq3_command(
    results: Annotated[Path, typer.Option(
        help="Evaluation folder (`automr evaluate --out`) with ranks/ and retrieved/, or its "
             "export (`automr export`, e.g. under docs/results/).")],
    data: Annotated[Path, typer.Option(help="Prepared dataset the evaluation used.")],
    memory: Annotated[Path | None, typer.Option(
        help="Memory folder: read the retrieved positions against its index "
             "[default: the dataset's timelines].", show_default=False)] = None,
    reference: Annotated[str, typer.Option(help="The method without memory.")] =
        "bigrec:constrained",
    reference_results: Annotated[Path | None, typer.Option(
        help="Evaluation folder (or export) holding --reference's ranks [default: --results].",
        show_default=False)] = None,
    method: Annotated[str, typer.Option(help="The method with memory.")] =
        "automr:constrained",
    rows: Annotated[int, typer.Option(help="Samples drawn in the timeline figure.")] = 8,
    out: Annotated[Path | None, typer.Option(
        help="Folder for rq3.md/json and the figures [default: --results, when a folder].",
        show_default=False)] = None,
    measure: Annotated[str, typer.Option(
        help="ranks (memory helped = Recall@1 or rank improved) or likelihood (= the true "
             "title's log-likelihood rose; needs --measures likelihood runs).")] = "ranks",
) -> None:
    """RQ3: how far back the memory method retrieves; case-study timeline and age histograms."""
    from automr.experiments.rq3_report import run_rq3

    run_rq3(results, data, out, reference=reference, method=method, rows=rows, memory=memory,
            reference_dir=reference_results, measure=measure)
    typer.echo(((out or results) / "rq3.md").read_text(encoding="utf-8"))
