"""``automr evaluate``: named methods on the same seeded test samples, one results table.

Methods are named ``KIND`` or ``KIND:GROUNDER`` (:data:`automr.methods.METHODS`):

- ``sasrec`` - the conventional baseline, trained here on the training period;
- ``base:GROUNDER`` - the untuned LM;
- ``bigrec:GROUNDER`` - the LM with the LoRA adapter of ``--finetuned``;
- ``automr:GROUNDER`` - BIGRec plus the memory of ``--memory`` and the trained retriever of
  ``--retriever``, joined at layer L by the combiner;
- ``random:GROUNDER`` / ``semantic:GROUNDER`` - the same with random (seeded) or semantic
  (cosine) retrieval instead of the trained retriever;
- ``rella:GROUNDER`` / ``trsr:GROUNDER`` - BIGRec fine-tuned and evaluated with the ReLLa or
  TRSR prompt context (the fine-tune of ``--rella`` / ``--trsr``; :mod:`automr.contexts`);

with GROUNDER one of ``l2`` (BIGRec's), ``constrained``, ``likelihood``. The samples, resume,
reports and tables are :func:`automr.evaluation.evaluate`'s; this module only maps names to
methods. Its shards of samples are whole batches (about 64 samples), so a run under
``torchrun`` ranks every sample in the batch a single process would.
"""

from collections.abc import Sequence
from pathlib import Path

import attrs

from automr import distributed
from automr.data import PreparedDataset
from automr.data.subsets import seeded_subset
from automr.errors import AutomrError
from automr.evaluation.folder import EvaluationFolder
from automr.evaluation.run import Evaluation, evaluate
from automr.experiments.eval_config import EvalConfig
from automr.grounding.likelihood import LoweredBatches
from automr.methods.registry import (
    METHODS,
    TUNED_GROUNDERS,
    Artifacts,
    SharedModels,
    Workspace,
    build_method,
    lower_halves_shared,
    parse_method,
)


def evaluate_methods(
    dataset_dir: Path | str, methods: Sequence[str], out_dir: Path | str,
    config: EvalConfig = EvalConfig(), artifacts: Artifacts | None = None,
    device: str = "auto", cache_dir: Path | str | None = None, progress: bool = True,
    dtype: str = "auto", shared: SharedModels | None = None,
) -> Evaluation:
    """Measure the same seeded subset of samples with every named method; write the values
    and tables.

    Methods already ranked in ``out_dir`` with the same samples and settings are reused.
    ``shared``: models loaded by an earlier call, and its kept lower-half passes (several
    evaluations of one model load it once, and share the lower half of their likelihood
    batches where its ``lowered`` keeps them for later: ``keep_for_later``).
    """
    grounders = [parse_method(method)[1] for method in methods]  # every name, before any work
    named = [m for m, g in zip(methods, grounders, strict=True) if g not in (None, "likelihood")]
    if "ranks" not in config.measures and named:  # a -pop grounder still tuned its gamma
        raise AutomrError(f"the likelihood measure scores the true title and decodes nothing, "
                          f"so the grounder of {', '.join(named)} would only name it: name "
                          f"{'them' if len(named) > 1 else 'it'} KIND:likelihood, or measure "
                          f"ranks too")
    if config.num_beams is not None and not (
            "ranks" in config.measures and any(g not in (None, "likelihood") for g in grounders)):
        raise AutomrError(f"--num-beams {config.num_beams} has no use here: no method decodes "
                          f"(the likelihood grounder and the likelihood measure score titles, "
                          f"methods without a grounder have no beams); leave it out")
    tuned = [m for m, g in zip(methods, grounders, strict=True) if g in TUNED_GROUNDERS]
    if config.split == "valid" and tuned:
        raise AutomrError(f"{', '.join(tuned)} tune gamma on validation samples, the samples "
                          f"measured here: evaluate them on the test split")
    if out_dir is not None:
        EvaluationFolder(out_dir).check_target()
    repeated = sorted({m for m in methods if list(methods).count(m) > 1})
    if repeated:
        raise AutomrError(f"--methods names {', '.join(repeated)} more than once")
    dataset = PreparedDataset.load(dataset_dir)
    samples = seeded_subset(dataset.samples(config.split), config.max_samples, config.seed)
    if not samples:
        raise AutomrError(f"the {config.split} split of {dataset_dir} has no samples")
    artifacts = artifacts or Artifacts()
    if shared is None:  # each method is built as it first runs: passes kept for those after
        shared = SharedModels(lowered=LoweredBatches(
            keep_for_later=lower_halves_shared(methods)))
    space = Workspace(dataset, artifacts, config.method_options(), device=device,
                      cache_dir=cache_dir, progress=progress and distributed.is_main(),
                      dtype=dtype, kept=None if out_dir is None else EvaluationFolder(out_dir),
                      shared=shared, measured=[s.id for s in samples])
    built = {m: build_method(m, space) for m in methods}
    retrieval = ("" if config.retrieval_seed is None
                 else f", random retrieval seed {config.retrieval_seed}")
    units = "" if config.resample == "samples" else f" of the {config.resample}"
    header = (f"{len(samples)} {config.split} samples (seed {config.seed}{retrieval}), "
              f"full ranking over the catalog, {config.n_resamples} bootstrap resamples"
              f"{units}.")
    if "ranks" not in config.measures:
        header = header.replace("full ranking over the catalog", "target log-likelihoods")
    used = {a for m in methods for a in METHODS[parse_method(m)[0]].artifacts}
    if "model" in used:  # the model base:* ran, resolved
        artifacts = attrs.evolve(artifacts, model=space.base_model)
    record = {"config": attrs.asdict(config), "dataset": str(dataset_dir),  # artifacts as used
              **{k: None if v is None or k not in used else str(v)
                 for k, v in attrs.asdict(artifacts).items()}}
    return evaluate(built, samples, len(dataset.catalog), out=out_dir, ks=config.ks,
                    reference=config.reference,
                    measures=config.measures, n_resamples=config.n_resamples, seed=config.seed,
                    resample=config.resample, record=record, header=header,
                    shard_size=config.batch_size * max(1, 64 // config.batch_size))

