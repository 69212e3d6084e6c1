"""RQ2 of the paper: are the memory elements AutoMR retrieves better than random ones?

BIGRec, AutoMR and random retrieval (``random:G``) run on the same seeded test samples; random
retrieval once per retrieval seed (the samples stay fixed: only
:attr:`~automr.experiments.eval_config.EvalConfig.retrieval_seed` changes), AutoMR once per
trained retriever given (e.g. retrievers trained with different seeds), so both sides can have
a distribution. Every run is an ordinary evaluation folder, so an interrupted RQ2 resumes and
seeds can be added later::

    OUT/bigrec/              bigrec:G                       (automr evaluate layout)
    OUT/automr-I/            automr:G with the I-th retriever (0-based, in the given order)
    OUT/random-seed-S/       random:G with retrieval seed S
    OUT/rq2.json             every run's metrics, summaries, AutoMR-vs-random counts
    OUT/rq2.md               the same as tables
    OUT/rq2.png, rq2.svg     box plots, one panel per metric (:func:`plot_rq2`)
"""

import json
import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from automr.checks import beartype
from automr.errors import AutomrError
from automr.evaluation.likelihood import LikelihoodReport
from automr.evaluation.report import MetricReport
from automr.experiments.evaluate import EvalConfig, evaluate_methods
from automr.experiments.plotting import metric_label, new_figure, require_matplotlib, save_figure
from automr.experiments.recommend import RECOMMEND_GROUNDERS
from automr.grounding.likelihood import LoweredBatches
from automr.llm.loading import DEFAULT_MODEL, dtype_used
from automr.memory import MemoryRecord
from automr.methods.registry import Artifacts, SharedModels
from automr.paths import home_path
from automr.recommenders.automr import load_retriever_for
from automr.recommenders.runs import FinetunedRun
from automr.storage import check_own_folder, read_json, write_text_atomic

RQ2_METRICS = ("recall@1", "recall@5", "ndcg@5", "recall@10", "ndcg@10")
"""The metrics of the paper's Figure 2, in its order (those the evaluation's ``ks`` give).
With ``measures=("likelihood",)`` the runs are compared by mean target log-likelihood (per
sample and per token) instead: no decoding, so many seeds are affordable."""

RQ2_FORMAT = "automr.rq2/1"

RQ2_FILES = ("bigrec", "automr-", "random-seed-", "rq2.")
"""What an RQ2 folder holds: its runs' evaluation folders (by prefix) and its table and plots."""


@beartype
@attrs.frozen
class RQ2Run:
    """One evaluated run: ``group`` is ``bigrec``, ``automr`` or ``random``; ``source`` the
    retriever folder (AutoMR) or the retrieval seed (random)."""

    group: str
    method: str
    folder: str
    source: str | None
    metrics: dict[str, float]


@beartype
@attrs.frozen
class Spread:
    """Mean, sample standard deviation (0 for one run), min and max over ``n`` runs."""

    n: int
    mean: float
    std: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "Spread":
        return cls(n=len(values), mean=statistics.fmean(values),
                   std=statistics.stdev(values) if len(values) > 1 else 0.0,
                   min=min(values), max=max(values))


@beartype
@attrs.frozen
class Wins:
    """AutoMR-vs-random comparisons over every (AutoMR run, random seed) pair."""

    wins: int
    ties: int
    losses: int

    @property
    def pairs(self) -> int:
        return self.wins + self.ties + self.losses


def _equal_means(a: float, b: float) -> bool:
    """Means of one metric equal but for float summation order (the same per-sample values
    on other samples: e.g. two runs' NDCG of ranks [.., 3, 5] and [.., 5, 3]); a real
    difference of one rank among a million samples is over 1e-9 of the mean."""
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)


@beartype
@attrs.frozen
class RQ2Result:
    """All runs of one RQ2 (what ``rq2.json`` holds)."""

    grounder: str
    samples: int
    config: dict
    metrics: tuple[str, ...]
    runs: tuple[RQ2Run, ...]
    dtype: str | None = None  # the model's, as every run used it (None: an older rq2.json)

    def group(self, name: str) -> tuple[RQ2Run, ...]:
        return tuple(r for r in self.runs if r.group == name)

    def spread(self, group: str, metric: str) -> Spread:
        return Spread.of([r.metrics[metric] for r in self.group(group)])

    def automr_vs_random(self, metric: str) -> Wins:
        pairs = [(a.metrics[metric], r.metrics[metric])
                 for a in self.group("automr") for r in self.group("random")]
        outcomes = [0 if _equal_means(a, r) else 1 if a > r else -1 for a, r in pairs]
        return Wins(wins=outcomes.count(1), ties=outcomes.count(0), losses=outcomes.count(-1))

    def to_json(self) -> dict:
        return {
            "format": RQ2_FORMAT, "grounder": self.grounder, "samples": self.samples,
            "config": self.config, "dtype": self.dtype, "metrics": list(self.metrics),
            "runs": [attrs.asdict(r) for r in self.runs],
            "summary": {g: {m: attrs.asdict(self.spread(g, m)) for m in self.metrics}
                        for g in ("bigrec", "automr", "random")},
            "automr_vs_random": {m: {**attrs.asdict(w), "pairs": w.pairs}
                                 for m in self.metrics
                                 for w in [self.automr_vs_random(m)]},
        }

    @classmethod
    def load(cls, path: Path | str) -> "RQ2Result":
        data = read_json(path, "`automr rq2`", RQ2_FORMAT)
        return cls(grounder=data["grounder"], samples=data["samples"], config=data["config"],
                   metrics=tuple(data["metrics"]),
                   runs=tuple(RQ2Run(**r) for r in data["runs"]), dtype=data.get("dtype"))


def run_rq2(
    dataset_dir: Path | str, out_dir: Path | str, *, finetuned: Path | str,
    memory: Path | str, retrievers: Sequence[Path | str], seeds: Sequence[int] = range(10),
    grounder: str = "constrained", config: EvalConfig | None = None,
    model: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto",
    cache_dir: Path | str | None = None, progress: bool = True,
    say: Callable[[str], None] = print,
) -> RQ2Result:
    """Evaluate BIGRec, AutoMR (per retriever) and random retrieval (per seed) on the same
    samples into ``out_dir``; write ``rq2.json``, ``rq2.md`` and the box plots.

    ``config`` (default :class:`EvalConfig`) picks the samples (``seed``, ``max_samples``)
    and how every method runs; its ``layer`` is replaced by the memory's and its
    ``retrieval_seed`` by each of ``seeds``. Runs already in ``out_dir`` with the same
    settings are read back, not recomputed.
    """
    # every run splits at the memory's layer, BIGRec included (its ranks do not depend on it)
    config = attrs.evolve(config or EvalConfig(), layer=MemoryRecord.read(Path(memory)).layer)
    seeds, retrievers = list(seeds), [Path(r) for r in retrievers]
    if not seeds or len(set(seeds)) != len(seeds):
        raise AutomrError(f"RQ2 needs distinct random retrieval seeds, got {seeds}")
    if not retrievers:
        raise AutomrError("RQ2 needs at least one trained retriever (--retriever)")
    resolved = [home_path(r).resolve() for r in retrievers]
    twice = sorted({str(r) for r, key in zip(retrievers, resolved, strict=True)
                    if resolved.count(key) > 1})
    if twice:  # its runs would count as several retrievers in AutoMR's box and pair counts
        raise AutomrError(f"RQ2 needs distinct retrievers; {', '.join(twice)} is given more "
                          f"than once")
    if grounder not in RECOMMEND_GROUNDERS:  # before any work
        raise AutomrError(f"--grounder {grounder!r}: choose one of "
                          f"{', '.join(RECOMMEND_GROUNDERS)}")
    if "ranks" not in config.measures and grounder != "likelihood":
        raise AutomrError(f"the likelihood measure scores the true title and decodes nothing, "
                          f"so grounder {grounder!r} would only name its runs; give grounder "
                          f"likelihood (--grounder likelihood)")
    used_dtype = dtype_used(dtype, device)  # an unknown one refused before any work
    require_matplotlib()
    out = Path(out_dir)
    check_own_folder(out, "RQ2 runs", RQ2_FILES)  # a resumed one, or new
    store = FinetunedRun.open(finetuned).open_memory(memory)  # a mismatch, before BIGRec runs
    for retriever_dir in retrievers:
        load_retriever_for(store, retriever_dir, config.combiner)
    del store
    plan: list[tuple[str, Path, str | None, Path | None, EvalConfig]] = [
        ("bigrec", out / "bigrec", None, None, config)]
    plan += [("automr", out / f"automr-{i}", str(r), r, config) for i, r in enumerate(retrievers)]
    plan += [("random", out / f"random-seed-{s}", str(s), None,
              attrs.evolve(config, retrieval_seed=s)) for s in seeds]
    runs: list[RQ2Run] = []
    ids: tuple[str, ...] = ()
    # the model loaded once; the likelihoods' lower half run once, kept for the evaluations after
    shared = SharedModels(lowered=LoweredBatches(keep_for_later=True))
    for group, folder, source, retriever, run_config in plan:
        method = f"{group}:{grounder}"
        say(f"[rq2] {method}" + (f" ({source})" if source else "") + f" -> {folder}")
        evaluation = evaluate_methods(
            dataset_dir, [method], folder, run_config,
            Artifacts(model=model, finetuned=finetuned,
                      memory=memory if group != "bigrec" else None, retriever=retriever),
            device=device, dtype=dtype, cache_dir=cache_dir, progress=progress, shared=shared)
        report = (evaluation.reports if "ranks" in config.measures
                  else evaluation.likelihoods)[method]
        ids = ids if runs else report.sample_ids
        if report.sample_ids != ids:
            raise AutomrError(f"{folder} ranked other samples than {out / 'bigrec'}")
        runs.append(run_of(group, folder, source, report))
    first = runs[0].metrics
    metrics = tuple(m for m in RQ2_METRICS if m in first) or tuple(first)
    result = RQ2Result(grounder=grounder, samples=len(ids),
                       config=json.loads(json.dumps(attrs.asdict(config))),
                       metrics=metrics, runs=tuple(runs), dtype=used_dtype)
    write_rq2(result, out)
    return result


def run_of(group: str, folder: Path, source: str | None,
           report: MetricReport | LikelihoodReport) -> RQ2Run:
    return RQ2Run(group=group, method=report.method, folder=str(folder), source=source,
                  metrics={k: iv.mean for k, iv in report.metrics.items()})


def write_rq2(result: RQ2Result, out: Path) -> None:
    """``rq2.json``, ``rq2.md`` and the figure."""
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "rq2.json", json.dumps(result.to_json(), indent=1) + "\n")
    write_text_atomic(out / "rq2.md", rq2_markdown(result))
    plot_rq2(out)


def rq2_markdown(result: RQ2Result) -> str:
    names = [metric_label(m) for m in result.metrics]
    config, seeds = result.config, [r.source for r in result.group("random")]
    lines = [
        "# RQ2: AutoMR against random retrieval", "",
        f"{result.samples} {config['split']} samples (seed {config['seed']}), grounder "
        f"`{result.grounder}`, k = {config['k']}, combiner `{config['combiner']}`; random "
        f"retrieval with {len(seeds)} seeds ({', '.join(map(str, seeds))}), AutoMR with "
        f"{len(result.group('automr'))} trained retriever(s)"
        f"{'' if result.dtype is None else f'; the model in {result.dtype}'}.", "",
        "Mean ± sample standard deviation over runs [min, max]:", "",
        f"| method | runs | {' | '.join(names)} |", "|---" * (len(names) + 2) + "|",
    ]
    for group, label in (("bigrec", "BIGRec"), ("automr", "AutoMR"), ("random", "random")):
        cells = []
        for metric in result.metrics:
            s = result.spread(group, metric)
            cells.append(f"{s.mean:.4f}" if s.n == 1 else
                         f"{s.mean:.4f} ± {s.std:.4f} [{s.min:.4f}, {s.max:.4f}]")
        lines.append(f"| {label} | {len(result.group(group))} | {' | '.join(cells)} |")
    lines += ["", "How often AutoMR is above random retrieval (over every pair of an AutoMR run "
              "and a random seed; ties are equal means):", "",
              "| metric | AutoMR higher | equal | random higher | pairs |",
              "|---|---|---|---|---|"]
    for metric, name in zip(result.metrics, names, strict=True):
        w = result.automr_vs_random(metric)
        lines.append(f"| {name} | {w.wins} | {w.ties} | {w.losses} | {w.pairs} |")
    lines += ["", "Every run:", "", f"| run | {' | '.join(names)} |",
              "|---" * (len(names) + 1) + "|"]
    for run in result.runs:
        label = {"bigrec": "BIGRec", "automr": f"AutoMR ({run.source})",
                 "random": f"random seed {run.source}"}.get(run.group, run.group)
        lines.append(f"| {label} | "
                     f"{' | '.join(f'{run.metrics[m]:.4f}' for m in result.metrics)} |")
    return "\n".join(lines) + "\n"


def plot_rq2(out_dir: Path | str) -> tuple[Path, Path]:
    """Draw ``rq2.png`` / ``rq2.svg`` from ``OUT/rq2.json`` (:func:`rq2_figure`)."""
    out = Path(out_dir)
    return save_figure(rq2_figure(RQ2Result.load(out / "rq2.json")), out / "rq2")


def rq2_figure(result: RQ2Result) -> Any:
    """Per metric, random seeds as a box with their points, AutoMR as a box (several
    retrievers) or a marker, BIGRec as a line (a matplotlib ``Figure``)."""
    figure = new_figure(2.6 * len(result.metrics) + 0.6, 3.6)
    axes = figure.subplots(1, len(result.metrics), squeeze=False)[0]
    for ax, metric in zip(axes, result.metrics, strict=True):
        random = [r.metrics[metric] for r in result.group("random")]
        automr = [r.metrics[metric] for r in result.group("automr")]
        boxes = [(1, random, "tab:blue")] + ([(2, automr, "tab:orange")] if len(automr) > 1
                                             else [])
        for x, values, color in boxes:
            ax.boxplot([values], positions=[x], widths=0.5, showfliers=False,
                       medianprops={"color": color}, boxprops={"color": color},
                       whiskerprops={"color": color}, capprops={"color": color})
            offsets = [0.18 * ((i % 5) - 2) / 2 for i in range(len(values))]
            ax.scatter([x + o for o in offsets], values, s=12, color=color, alpha=0.7, zorder=3)
        if len(automr) == 1:
            ax.scatter([2], automr, marker="*", s=140, color="tab:orange", zorder=4)
        for value in (r.metrics[metric] for r in result.group("bigrec")):
            ax.axhline(value, color="tab:gray", linestyle="--", linewidth=1.2)
        ax.set_xticks([1, 2], ["random", "AutoMR"])
        ax.set_xlim(0.4, 2.6)
        ax.set_title(metric_label(metric))
        ax.grid(axis="y", alpha=0.3)
    axes[0].plot([], [], color="tab:gray", linestyle="--", label="BIGRec")
    axes[0].legend(loc="best", fontsize="small", frameon=False)
    figure.suptitle(f"AutoMR vs random retrieval\n{len(result.group('random'))} seeds, "
                    f"{result.samples} samples, grounder {result.grounder}")
    return figure
