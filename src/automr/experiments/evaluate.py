"""``automr evaluate``: several methods on the same test samples, one results table.

Methods are named ``NAME`` or ``NAME:GROUNDER``:

- ``sasrec`` - the conventional baseline, trained here on the training period;
- ``base:GROUNDER`` - the untuned LM;
- ``bigrec:GROUNDER`` - the LM with the LoRA adapter of ``--finetuned``;
- ``automr:GROUNDER`` - BIGRec plus the memory of ``--memory`` and the trained retriever of
  ``--retriever``, joined at layer L by the combiner;
- ``random:GROUNDER`` / ``semantic:GROUNDER`` - the same with random (seeded) or semantic
  (cosine) retrieval instead of the trained retriever;
- ``rella:GROUNDER`` / ``trsr:GROUNDER`` - BIGRec fine-tuned and evaluated with the ReLLa or
  TRSR prompt context (the fine-tune of ``--rella`` / ``--trsr``; :mod:`automr.contexts`);

with GROUNDER one of ``l2`` (BIGRec's), ``constrained``, ``likelihood``.
"""

import json
import platform
from collections.abc import Sequence
from pathlib import Path

import attrs
import torch
from beartype import beartype

from automr.combiners import COMBINERS
from automr.data import PreparedDataset, Sample
from automr.data.subsets import seeded_subset
from automr.errors import AutomrError
from automr.evaluation.metrics import ranks_from_scores
from automr.evaluation.report import MetricReport, build_report, compare_reports
from automr.experiments.baselines import (
    CONTEXT_METHODS,
    context_runs,
    context_settings,
    sample_contexts,
)
from automr.experiments.generative import (
    build_grounder,
    catalog_embeddings,
    dataset_targets,
    rank_samples,
)
from automr.grounding import GROUNDER_KINDS
from automr.llm.loading import DEFAULT_MODEL, LoadedModel, load_model
from automr.memory import MemoryStore
from automr.recommenders.automr import MemoryRetrieval
from automr.recommenders.finetune import (
    base_fingerprint,
    check_memory_compatible,
    load_finetuned,
)
from automr.recommenders.sasrec import SASRecConfig, fit_sasrec
from automr.retrievers import build_retriever, load_retriever

GENERATIVE = ("base", "bigrec", "automr", "random", "semantic", *CONTEXT_METHODS)
WITH_MEMORY = ("automr", "random", "semantic")


@beartype
@attrs.frozen(kw_only=True)
class EvalConfig:
    """Which samples, and how methods run on them."""

    split: str = "test"
    max_samples: int | None = 200
    seed: int = 0
    batch_size: int = attrs.field(default=8, validator=attrs.validators.gt(0))
    layer: int = 15
    num_beams: int | None = None
    exclude_seen: bool = False
    ks: tuple[int, ...] = (1, 5, 10)
    n_resamples: int = 1000
    combiner: str = "append-token"
    k: int = attrs.field(default=1, validator=attrs.validators.gt(0))
    retrieval_seed: int | None = None
    """Seed of ``random:*`` retrieval only (``None``: ``seed``, which also picks the samples)."""

    @property
    def seed_for_retrieval(self) -> int:
        return self.seed if self.retrieval_seed is None else self.retrieval_seed


def parse_method(method: str) -> tuple[str, str | None]:
    name, _, grounder = method.partition(":")
    if name == "sasrec" and not grounder:
        return name, None
    if name in GENERATIVE and grounder in GROUNDER_KINDS:
        return name, grounder
    raise AutomrError(
        f"unknown method {method!r}; use sasrec or NAME:GROUNDER with NAME in "
        f"{', '.join(GENERATIVE)} and GROUNDER in {', '.join(GROUNDER_KINDS)}"
    )


def sample_ids(samples: Sequence[Sample]) -> list[str]:
    return [s.id for s in samples]


def evaluate_methods(
    dataset_dir: Path | str, methods: Sequence[str], out_dir: Path | str,
    config: EvalConfig = EvalConfig(), model: str = DEFAULT_MODEL,
    finetuned: Path | str | None = None, memory: Path | str | None = None,
    retriever: Path | str | None = None, device: str = "auto",
    cache_dir: Path | str | None = None, progress: bool = True,
    rella: Path | str | None = None, trsr: Path | str | None = None,
) -> dict[str, MetricReport]:
    """Rank the same seeded subset of samples with every method; write ranks and tables.

    Methods already ranked in ``out_dir`` with the same samples and settings are reused.
    """
    parsed = [parse_method(m) for m in methods]
    names = {name for name, _ in parsed}
    if names - {"sasrec", "base", *CONTEXT_METHODS} and finetuned is None:
        raise AutomrError("bigrec/automr/random/semantic methods need --finetuned RUN_DIR "
                          "(from `automr finetune`)")
    if names & set(WITH_MEMORY) and memory is None:
        raise AutomrError("automr/random/semantic methods need --memory DIR "
                          "(from `automr memory build`)")
    if "automr" in names and retriever is None:
        raise AutomrError("automr:* methods need --retriever DIR (from `automr retriever train`)")
    runs = context_runs(names, finetuned, rella, trsr)
    dataset = PreparedDataset.load(dataset_dir)
    samples = seeded_subset(dataset.samples(config.split), config.max_samples, config.seed)
    if not samples:
        raise AutomrError(f"the {config.split} split of {dataset_dir} has no samples")
    out = Path(out_dir)
    ids = sample_ids(samples)
    n_items = len(dataset.catalog)
    models: dict[str, LoadedModel] = {}
    contexts: dict[str, list[str | None]] = {}
    reports: dict[str, MetricReport] = {}
    for method, (name, grounder) in zip(methods, parsed, strict=True):
        saved = out / "ranks" / f"{method.replace(':', '-')}.json"
        used = {"model": name != "sasrec",
                "finetuned": name not in ("sasrec", "base", *CONTEXT_METHODS),
                "memory": name in WITH_MEMORY, "retriever": name == "automr",
                "rella": name == "rella", "trsr": name == "trsr"}
        inputs = {"model": model, "finetuned": finetuned, "memory": memory,
                  "retriever": retriever, "rella": rella, "trsr": trsr}
        settings = {"method": method, "samples": ids, "n_items": n_items,
                    **config_settings(config, name),
                    **{k: str(v) for k, v in inputs.items() if used[k] and v is not None}}
        if name in runs:
            settings["context"] = context_settings(runs[name])
        settings_file = saved.with_suffix(".settings.json")
        if saved.exists() and settings_file.exists() and \
                json.loads(settings_file.read_text()) == json.loads(json.dumps(settings)):
            reports[method] = MetricReport.load(saved)  # resume: ranked with these settings
            continue
        if name == "sasrec":
            ranks = rank_with_sasrec(dataset, samples, SASRecConfig(seed=config.seed), progress)
        else:
            kind = "base" if name == "base" else name if name in runs else "tuned"
            run = runs.get(name, finetuned)
            if kind not in models:
                models[kind] = (load_model(model, device=device, cache_dir=cache_dir)
                                if kind == "base" else
                                load_finetuned(run, device=device, cache_dir=cache_dir))
            loaded = models[kind]
            if name in runs and name not in contexts:
                contexts[name] = sample_contexts(
                    run, loaded, dataset, samples, ids, out / "contexts" / f"{name}.json",
                    cache_dir, config.batch_size, progress)
            retrieval = (memory_retrieval(name, finetuned, memory, retriever, config,
                                          str(loaded.model.device))
                         if name in WITH_MEMORY else None)
            base_fp = (loaded.fingerprint() if name == "base"
                       else base_fingerprint(run))
            targets = dataset_targets(loaded, dataset)
            embeddings = (catalog_embeddings(loaded, targets, base_fp, cache_dir, progress)
                          if grounder in ("l2", "constrained") else None)
            ranker = build_grounder(grounder, loaded, targets, embeddings, config.num_beams)
            layer = config.layer if retrieval is None else retrieval.store.layer
            ranks = rank_samples(loaded, dataset, samples, ranker, layer, config.batch_size,
                                 insert_for=None if retrieval is None else retrieval.insert_for,
                                 exclude_seen=config.exclude_seen, progress=progress,
                                 label=method, contexts=contexts.get(name))
            if retrieval is not None:
                save_retrieved(out / "retrieved" / f"{method.replace(':', '-')}.json", ids,
                               retrieval.retrieved)
        report = build_report(method, ids, torch.tensor(ranks), n_items, ks=config.ks,
                              n_resamples=config.n_resamples, seed=config.seed)
        report.save(saved)
        settings_file.write_text(json.dumps(settings) + "\n")
        reports[method] = report
    write_tables(reports, out, config, {
        "dataset": str(dataset_dir), "model": model,
        "finetuned": str(finetuned) if finetuned else None,
        "memory": str(memory) if memory else None, "retriever": str(retriever) if retriever
        else None, **{name: str(run) for name, run in runs.items()}})
    return reports


def memory_retrieval(name: str, finetuned: Path | str, memory: Path | str,
                     retriever: Path | str | None, config: EvalConfig,
                     device: str) -> MemoryRetrieval:
    """The memory (checked against the fine-tune's lower half), the retriever of method
    ``name`` and the combiner."""
    store = MemoryStore.open(memory, device=device)
    check_memory_compatible(finetuned, store.record.model_fingerprint, store.layer)
    if name == "automr":
        expect = {"model_fingerprint": str(store.record.model_fingerprint),
                  "layer": str(store.layer)}
        chosen = load_retriever(retriever, device=device, expect=expect,
                                hidden_size=store.hidden_size)
    else:
        chosen = build_retriever(name, store.hidden_size, seed=config.seed_for_retrieval)
    return MemoryRetrieval(store, chosen, COMBINERS[config.combiner](), k=config.k)


def config_settings(config: EvalConfig, name: str) -> dict:
    """``config`` as it enters method ``name``'s resume settings: ``retrieval_seed`` only where
    it changes the ranks (``random`` with a seed other than ``seed``), so folders written before
    it existed, and runs that leave it unset, still resume."""
    settings = attrs.asdict(config)
    del settings["retrieval_seed"]
    if name == "random" and config.seed_for_retrieval != config.seed:
        settings["retrieval_seed"] = config.retrieval_seed
    return settings


def save_retrieved(path: Path, ids: Sequence[str], retrieved: Sequence[Sequence[int]]) -> None:
    """Which memory elements (timeline positions) each sample retrieved, for analysis."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(zip(ids, retrieved, strict=True)), indent=0) + "\n")


def rank_with_sasrec(
    dataset: PreparedDataset, samples: Sequence[Sample], config: SASRecConfig, progress: bool
) -> list[int]:
    """Train SASRec on the training period (validation split for early stopping), rank all."""
    index = {item_id: i + 1 for i, item_id in enumerate(dataset.catalog.ids)}  # 0 = padding
    sequences: dict[str, list[int]] = {}
    for interaction in dataset.interactions:
        if dataset.boundaries.split_of(interaction.timestamp) == "train":
            sequences.setdefault(interaction.user, []).append(index[interaction.item])
    valid = [([index[i] for i in s.history], index[s.target]) for s in dataset.samples("valid")]
    model, _ = fit_sasrec(list(sequences.values()), valid, config, n_items=len(index),
                          quiet=not progress)
    ranks = []
    with torch.no_grad():
        for start in range(0, len(samples), 256):
            chunk = samples[start : start + 256]
            scores = model.score([[index[i] for i in s.history] for s in chunk])[:, 1:]
            targets = torch.tensor([index[s.target] - 1 for s in chunk])
            ranks += ranks_from_scores(scores, targets).tolist()
    return ranks


def write_tables(reports: dict[str, MetricReport], out: Path, config: EvalConfig,
                 sources: dict) -> None:
    """``results.json`` and ``results.md``: each metric's mean [95% CI] and paired differences
    against the reference (the first ``bigrec:*`` method, else the first method)."""
    names = list(reports)
    reference = next((m for m in names if m.startswith("bigrec")), names[0])
    metric_keys = list(next(iter(reports.values())).metrics)
    payload = {
        "config": attrs.asdict(config), **sources, "reference": reference,
        "samples": len(next(iter(reports.values())).ranks),
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
        "methods": {m: {k: attrs.asdict(v) for k, v in r.metrics.items()}
                    for m, r in reports.items()},
        "paired_vs_reference": {
            m: {k: attrs.asdict(v) for k, v in compare_reports(r, reports[reference]).items()}
            for m, r in reports.items() if m != reference
        },
    }
    (out / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"| method | {' | '.join(metric_keys)} |", "|---" * (len(metric_keys) + 1) + "|"]
    for method, report in reports.items():
        cells = [f"{iv.mean:.4f} [{iv.low:.4f}, {iv.high:.4f}]" for iv in report.metrics.values()]
        lines.append(f"| {method} | {' | '.join(cells)} |")
    lines += ["", f"Paired bootstrap difference vs `{reference}` (mean [95% CI]):", "",
              f"| method | {' | '.join(metric_keys)} |", "|---" * (len(metric_keys) + 1) + "|"]
    for method, diffs in payload["paired_vs_reference"].items():
        cells = [f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]" for d in diffs.values()]
        lines.append(f"| {method} | {' | '.join(cells)} |")
    retrieval = ("" if config.retrieval_seed is None
                 else f", random retrieval seed {config.retrieval_seed}")
    header = (f"{payload['samples']} {config.split} samples (seed {config.seed}{retrieval}), "
              f"full ranking over the catalog, {config.n_resamples} bootstrap resamples.\n\n")
    (out / "results.md").write_text(header + "\n".join(lines) + "\n")
