"""The prompt-context baselines in ``automr evaluate``: ``rella:G`` and ``trsr:G``.

Each is BIGRec fine-tuned with its context in the prompt (``automr finetune --context``) and
evaluated with the same context, rebuilt from the spec its ``finetune.json`` records.
"""

import json
from collections.abc import Collection, Sequence
from pathlib import Path

from automr.contexts import build_context
from automr.data import PreparedDataset, Sample
from automr.errors import AutomrError
from automr.llm.loading import LoadedModel
from automr.recommenders.finetune import base_fingerprint, context_spec

CONTEXT_METHODS = ("rella", "trsr")


def context_runs(
    names: Collection[str], finetuned: Path | str | None, rella: Path | str | None,
    trsr: Path | str | None,
) -> dict[str, Path]:
    """The fine-tune folder of each context method in ``names``, checked to hold a finished
    fine-tune with the matching context; ``finetuned`` (plain BIGRec and memory methods) is
    checked to hold none."""
    given = {"rella": rella, "trsr": trsr}
    runs: dict[str, Path] = {}
    for name in CONTEXT_METHODS:
        if name not in names:
            continue
        if given[name] is None:
            raise AutomrError(f"{name}:* methods need --{name} RUN_DIR (from `automr finetune "
                              f"--context {name}`)")
        run = Path(given[name])
        spec = context_spec(run)
        if spec is None or spec.kind != name:
            how = "without a prompt context" if spec is None else f"with a {spec.kind} context"
            raise AutomrError(f"{run} was fine-tuned {how}; {name}:* methods need a fine-tune "
                              f"from `automr finetune --context {name}`")
        runs[name] = run
    if finetuned is not None and set(names) - {"sasrec", "base", *CONTEXT_METHODS}:
        spec = context_spec(finetuned)
        if spec is not None:
            raise AutomrError(f"{finetuned} was fine-tuned with a {spec.kind} context; evaluate "
                              f"it as {spec.kind}:G with --{spec.kind} {finetuned} and give "
                              f"--finetuned a fine-tune without --context")
    return runs


def context_settings(run: Path | str) -> dict:
    """The recorded context spec of ``run``, as it enters a method's resume settings."""
    spec = context_spec(run)
    if spec is None:
        raise AutomrError(f"{run} was fine-tuned without a prompt context")
    return spec.to_json()


def sample_contexts(
    run: Path | str, loaded: LoadedModel, dataset: PreparedDataset, samples: Sequence[Sample],
    ids: Sequence[str], save_to: Path | None = None, cache_dir: Path | str | None = None,
    batch_size: int = 8, progress: bool = True,
) -> list[str | None]:
    """Each sample's prompt context, rebuilt from ``run``'s recorded spec with its base model;
    also written to ``save_to`` (sample id -> text) for inspection."""
    spec = context_spec(run)
    if spec is None:
        raise AutomrError(f"{run} was fine-tuned without a prompt context")
    context = build_context(spec, loaded, dataset, base_fingerprint(run), cache_dir,
                            batch_size=batch_size, progress=progress)
    texts = context.texts(samples)
    if save_to is not None:
        save_to.parent.mkdir(parents=True, exist_ok=True)
        save_to.write_text(json.dumps(dict(zip(ids, texts, strict=True)), indent=0) + "\n")
    return texts
