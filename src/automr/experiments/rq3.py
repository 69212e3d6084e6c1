"""RQ3 of the paper: does AutoMR use distant long-term history?

From an evaluation folder (``automr evaluate``, or an ``automr rq2`` run folder) holding the
ranks of a reference method (default ``bigrec:constrained``) and of a memory method (default
``automr:constrained``) with the elements it retrieved (``retrieved/METHOD.json``):

- the *case study* (the paper's Figure 3): samples whose Recall@1 improved with memory (target
  ranked first with it, not without); when there are none, samples whose target rank improved
  at all (said so in the figure title and in ``rq3.md``). For up to ``rows`` of them, the
  history before the sample on a time axis, the prompt's items shaded, the retrieved ones
  highlighted (``rq3-timeline.png/.svg``);
- the ages of the retrieved elements over *all* evaluated samples, in interactions and in days
  before the sample, beside what uniform random selection from the same memories gives
  (``rq3-ages.png/.svg``);
- ``rq3.json`` / ``rq3.md`` with the numbers.

Positions. A retrieved element is stored as its position in the user's timeline (the
:class:`~automr.memory.MemoryStore`'s absolute element index: the user's lines of
``interactions.jsonl``, from 0). For a sample at time ``t`` with ``R`` recent and ``M`` memory
items, let ``end`` be the number of the user's interactions strictly before ``t``: its recent
items are positions ``end-R .. end-1`` and its memory ``end-R-M .. end-R-1``. Element ``p`` is
``end - p`` interactions back (1 = the latest history item, so a memory element is at least
``R + 1`` back) and ``(t - time[p]) / 86400`` days back.
"""

import bisect
import json
import statistics
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy
from beartype import beartype

from automr.data import PreparedDataset, Sample
from automr.errors import AutomrError
from automr.evaluation.report import MetricReport
from automr.experiments.evaluate import parse_method, sample_ids
from automr.experiments.plotting import new_figure, require_matplotlib, save_figure
from automr.memory.shards import MemoryIndex

DAY = 86_400
OLDER_THAN_DAYS = (1, 7, 30, 90)
Timeline = tuple[Sequence[str], Sequence[int]]
"""One user's ``(items, timestamps)`` in timeline order."""


@beartype
@attrs.frozen
class RetrievedElement:
    """One retrieved memory element of a sample, located in the user's timeline.

    ``quantile`` is its place in the sample's memory, ``(i + 0.5) / M`` for the i-th of ``M``
    elements (oldest first): near 0 = the oldest, near 1 = the newest; 0.5 on average under
    uniform selection.
    """

    position: int
    item: str
    timestamp: int
    back: int
    days: float
    quantile: float


@beartype
def locate_retrieved(
    sample: Sample, timeline: Timeline, positions: Sequence[int]
) -> tuple[RetrievedElement, ...]:
    """Map retrieved timeline ``positions`` of ``sample`` to items, times and ages (module
    docstring). Refuses a timeline that does not hold the sample's history, or a position
    outside the sample's memory."""
    items, times = timeline
    end = bisect.bisect_left(times, sample.timestamp)
    recent_start = end - len(sample.recent)
    start = recent_start - len(sample.memory)
    if start < 0 or tuple(items[start:end]) != sample.history:
        raise AutomrError(f"the timeline of user {sample.user!r} does not hold the history of "
                          f"its sample at time {sample.timestamp}; were the evaluation and the "
                          f"memory made from this dataset?")
    found = []
    for p in positions:
        if not start <= p < recent_start:
            raise AutomrError(f"position {p} retrieved for user {sample.user!r} at time "
                              f"{sample.timestamp} is outside the sample's memory (positions "
                              f"{start}..{recent_start - 1}); wrong dataset or memory?")
        found.append(RetrievedElement(position=p, item=items[p], timestamp=times[p],
                                      back=end - p, days=(sample.timestamp - times[p]) / DAY,
                                      quantile=(p - start + 0.5) / len(sample.memory)))
    return tuple(found)


@beartype
@attrs.frozen
class SampleRetrieval:
    """One evaluated sample, its ranks without (reference) and with memory, and what it
    retrieved."""

    sample_id: str
    sample: Sample
    reference_rank: int
    method_rank: int
    retrieved: tuple[RetrievedElement, ...]

    @property
    def history_days(self) -> tuple[float, ...]:
        """Days before the sample of each history item, memory then recent (oldest first)."""
        return tuple((self.sample.timestamp - t) / DAY for t in self.sample.history_timestamps)


@beartype
@attrs.frozen
class AgeSummary:
    """Ages of the retrieved elements of a set of samples, and what uniform random selection
    of as many elements from the same memories would give on average (``uniform_*``)."""

    samples: int
    elements: int
    back_median: float
    back_mean: float
    back_max: int
    days_median: float
    days_mean: float
    days_max: float
    before_recent_window: float
    older_than_days: dict[str, float]
    quantile_mean: float
    uniform_back_mean: float
    uniform_days_mean: float


@beartype
def summarize_ages(rows: Sequence[SampleRetrieval]) -> AgeSummary | None:
    """The :class:`AgeSummary` of ``rows`` (None when nothing was retrieved).

    ``before_recent_window`` is the share of elements strictly older than the prompt's oldest
    item (equal times do not count); ``older_than_days[D]`` the share more than D days back.
    """
    rows = [r for r in rows if r.retrieved]
    elements = [e for r in rows for e in r.retrieved]
    if not elements:
        return None
    back = [e.back for e in elements]
    days = [e.days for e in elements]
    before = sum(e.timestamp < r.sample.recent_timestamps[0]
                 for r in rows for e in r.retrieved)
    uniform_back = uniform_days = 0.0
    for r in rows:
        end = len(r.sample.history)
        memory = range(len(r.sample.memory))
        weight = len(r.retrieved) / len(memory)
        uniform_back += weight * sum(end - i for i in memory)
        uniform_days += weight * sum(r.history_days[i] for i in memory)
    return AgeSummary(
        samples=len(rows), elements=len(elements),
        back_median=float(statistics.median(back)), back_mean=statistics.fmean(back),
        back_max=max(back), days_median=float(statistics.median(days)),
        days_mean=statistics.fmean(days), days_max=max(days),
        before_recent_window=before / len(elements),
        older_than_days={str(d): sum(x > d for x in days) / len(elements)
                         for d in OLDER_THAN_DAYS},
        quantile_mean=statistics.fmean(e.quantile for e in elements),
        uniform_back_mean=uniform_back / len(elements),
        uniform_days_mean=uniform_days / len(elements),
    )


RECALL_CRITERION = "recall@1"
RANK_CRITERION = "rank"


@beartype
def select_improved(rows: Sequence[SampleRetrieval]) -> tuple[str, list[SampleRetrieval]]:
    """Samples that retrieved something and improved with memory, best improvement first (ties
    in evaluation order): Recall@1 improved (``"recall@1"``: rank 0 with memory, > 0 without)
    or, when no sample did, the target rank improved at all (``"rank"``)."""
    rows = [r for r in rows if r.retrieved]
    chosen = [r for r in rows if r.method_rank == 0 < r.reference_rank]
    criterion = RECALL_CRITERION
    if not chosen:
        chosen = [r for r in rows if r.method_rank < r.reference_rank]
        criterion = RANK_CRITERION
    order = sorted(range(len(chosen)),
                   key=lambda i: (chosen[i].method_rank - chosen[i].reference_rank, i))
    return criterion, [chosen[i] for i in order]


@beartype
@attrs.frozen
class RQ3Result:
    """Everything ``rq3.json`` holds (plus the rows, for the figures)."""

    results: str
    reference: str
    method: str
    split: str
    criterion: str
    criterion_text: str
    counts: dict[str, int]
    all_ages: AgeSummary | None
    improved_ages: AgeSummary | None
    shown: tuple[SampleRetrieval, ...]
    evaluated: tuple[SampleRetrieval, ...]

    def to_json(self, dataset: PreparedDataset) -> dict:
        def row(r: SampleRetrieval) -> dict:
            s = r.sample
            return {"sample": r.sample_id, "user": s.user, "target": s.target,
                    "target_title": dataset.catalog.title(s.target),
                    "reference_rank": r.reference_rank, "method_rank": r.method_rank,
                    "history": len(s.history), "recent": len(s.recent),
                    "recent_oldest_days": r.history_days[len(s.memory)],
                    "retrieved": [{**attrs.asdict(e), "title": dataset.catalog.title(e.item)}
                                  for e in r.retrieved]}

        return {
            "format": "automr.rq3/1", "results": self.results, "reference": self.reference,
            "method": self.method, "split": self.split, "criterion": self.criterion,
            "criterion_text": self.criterion_text, "counts": self.counts,
            "ages": {"all": _maybe(self.all_ages), "improved": _maybe(self.improved_ages)},
            "shown": [row(r) for r in self.shown],
            "retrieved": {r.sample_id: [[e.back, e.days] for e in r.retrieved]
                          for r in self.evaluated},
        }


def _maybe(summary: AgeSummary | None) -> dict | None:
    return None if summary is None else attrs.asdict(summary)


def run_rq3(
    results_dir: Path | str, dataset_dir: Path | str, out_dir: Path | str | None = None, *,
    reference: str = "bigrec:constrained", method: str = "automr:constrained", rows: int = 8,
    memory: Path | str | None = None, reference_dir: Path | str | None = None,
) -> RQ3Result:
    """Write ``rq3.json``, ``rq3.md``, ``rq3-timeline.png/.svg`` and ``rq3-ages.png/.svg`` into
    ``out_dir`` (default: ``results_dir``).

    The reference's ranks are read from ``reference_dir`` when given (e.g. ``OUT/bigrec`` of
    :func:`~automr.experiments.rq2.run_rq2`, with ``results_dir`` one of its ``OUT/automr-I``),
    else from ``results_dir``; both must cover the same samples.

    Retrieved positions are read against the dataset's user timelines, or against the memory
    folder's index when ``memory`` is given (the same positions unless interactions were
    appended to the memory later).
    """
    if rows < 1:
        raise AutomrError(f"--rows must be at least 1, got {rows}")
    if parse_method(method)[0] not in ("automr", "random", "semantic"):
        raise AutomrError(f"{method!r} retrieves no memory; use automr:G, random:G or semantic:G")
    parse_method(reference)
    require_matplotlib()
    results = Path(results_dir)
    ref_report = load_ranks(results if reference_dir is None else Path(reference_dir),
                            reference)
    method_report = load_ranks(results, method)
    retrieved = load_retrieved(results, method)
    split = evaluated_split(results, method)
    dataset = PreparedDataset.load(dataset_dir)
    evaluated = match_samples(dataset, split, ref_report, method_report, retrieved,
                              timelines(dataset, memory), results)
    criterion, improved = select_improved(evaluated)
    shown = tuple(improved[:rows])
    with_memory = [r for r in evaluated if r.retrieved]
    counts = {
        "evaluated": len(evaluated), "retrieved": len(with_memory),
        "recall1_improved": sum(r.method_rank == 0 < r.reference_rank for r in with_memory),
        "recall1_worse": sum(r.reference_rank == 0 < r.method_rank for r in with_memory),
        "rank_improved": sum(r.method_rank < r.reference_rank for r in with_memory),
        "rank_same": sum(r.method_rank == r.reference_rank for r in with_memory),
        "rank_worse": sum(r.method_rank > r.reference_rank for r in with_memory),
        "selected": len(improved), "shown": len(shown),
    }
    result = RQ3Result(
        results=str(results), reference=reference, method=method, split=split,
        criterion=criterion, criterion_text=criterion_text(criterion, counts),
        counts=counts, all_ages=summarize_ages(evaluated), improved_ages=summarize_ages(improved),
        shown=shown, evaluated=tuple(evaluated))
    out = results if out_dir is None else Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rq3.json").write_text(json.dumps(result.to_json(dataset), indent=1) + "\n")
    (out / "rq3.md").write_text(rq3_markdown(result, dataset))
    plot_timeline(result, dataset, out / "rq3-timeline")
    plot_ages(result, out / "rq3-ages")
    return result


def criterion_text(criterion: str, counts: Mapping[str, int]) -> str:
    n, selected = counts["retrieved"], counts["selected"]
    if criterion == RECALL_CRITERION:
        return f"Recall@1 improved with memory ({selected} of {n} samples)"
    if selected:
        return (f"no sample's Recall@1 improved with memory; showing samples whose target rank "
                f"improved instead ({selected} of {n})")
    return f"no sample improved with memory ({n} samples)"


def load_ranks(results: Path, method: str) -> MetricReport:
    path = results / "ranks" / f"{method.replace(':', '-')}.json"
    if not path.is_file():
        raise AutomrError(f"{results} holds no ranks of {method} ({path} is missing); evaluate "
                          f"it with `automr evaluate --methods {method} --out {results} ...`")
    return MetricReport.load(path)


def load_retrieved(results: Path, method: str) -> dict[str, list[int]]:
    path = results / "retrieved" / f"{method.replace(':', '-')}.json"
    if not path.is_file():
        raise AutomrError(f"{path} is missing: {results} has no record of what {method} "
                          f"retrieved (evaluate it again with this version of automr)")
    return {str(k): [int(p) for p in v] for k, v in json.loads(path.read_text()).items()}


def evaluated_split(results: Path, method: str) -> str:
    """The split the evaluation ranked (its settings, else ``results.json``, else test)."""
    for path, key in ((results / "ranks" / f"{method.replace(':', '-')}.settings.json", None),
                      (results / "results.json", "config")):
        if path.is_file():
            data = json.loads(path.read_text())
            data = data.get(key, {}) if key else data
            if "split" in data:
                return str(data["split"])
    return "test"


def timelines(dataset: PreparedDataset, memory: Path | str | None) -> dict[str, Timeline]:
    """Every user's timeline: the memory index's when given, else the dataset's (the order the
    memory was built in)."""
    if memory is not None:
        index = MemoryIndex.read(Path(memory))
        return {u: (e.items, e.timestamps) for u, e in index.users.items()}
    out: dict[str, tuple[list[str], list[int]]] = {}
    for inter in dataset.interactions:
        items, times = out.setdefault(inter.user, ([], []))
        items.append(inter.item)
        times.append(inter.timestamp)
    return out  # type: ignore[return-value]


def match_samples(
    dataset: PreparedDataset, split: str, reference: MetricReport, method: MetricReport,
    retrieved: Mapping[str, Sequence[int]], users: Mapping[str, Timeline], results: Path,
) -> list[SampleRetrieval]:
    """Every sample of ``method``'s report (in its order) with both ranks and its retrieval."""
    ref = dict(zip(reference.sample_ids, reference.ranks, strict=True))
    if set(ref) != set(method.sample_ids):
        raise AutomrError(f"{reference.method} and {method.method} in {results} ranked "
                          f"different samples; evaluate both on the same samples")
    by_id = dict(zip(sample_ids(dataset.samples(split)), dataset.samples(split), strict=True))
    rows = []
    for sample_id, rank in zip(method.sample_ids, method.ranks, strict=True):
        sample = by_id.get(sample_id)
        if sample is None:
            raise AutomrError(f"sample {sample_id} of {results} is not a {split} sample of "
                              f"{dataset.path}; was it evaluated on another dataset?")
        positions = retrieved.get(sample_id, [])
        found = (locate_retrieved(sample, users.get(sample.user, ((), ())), positions)
                 if positions else ())
        rows.append(SampleRetrieval(sample_id=sample_id, sample=sample,
                                    reference_rank=ref[sample_id], method_rank=rank,
                                    retrieved=found))
    return rows


def rq3_markdown(result: RQ3Result, dataset: PreparedDataset) -> str:
    c = result.counts
    lines = [
        f"# RQ3: how far back does `{result.method}` retrieve?", "",
        f"Evaluation `{result.results}`: {c['evaluated']} {result.split} samples, "
        f"{c['retrieved']} of which retrieved at least one memory element; reference "
        f"`{result.reference}` (the same model without memory).", "",
        f"Criterion for the case study: **{result.criterion_text}**. Samples are ordered by "
        f"how much the target's rank improved; the first {c['shown']} are drawn in "
        "`rq3-timeline.png`.", "",
        "| samples with memory | Recall@1 improved | Recall@1 lost | rank improved | "
        "rank same | rank worse | shown |",
        "|---|---|---|---|---|---|---|",
        f"| {c['retrieved']} | {c['recall1_improved']} | {c['recall1_worse']} | "
        f"{c['rank_improved']} | {c['rank_same']} | {c['rank_worse']} | {c['shown']} |", "",
        "Ages of the retrieved elements (\"back\": interactions before the sample, 1 = the "
        "latest; the prompt holds the latest "
        f"{dataset.protocol.recent_k}). `uniform` is the expectation under uniform random "
        "selection from the same memories.", "",
        "| | all samples | case-study samples |", "|---|---|---|",
    ]
    summaries = (result.all_ages, result.improved_ages)
    fields = [
        ("samples / elements", lambda s: f"{s.samples} / {s.elements}"),
        ("back: median / mean / max",
         lambda s: f"{s.back_median:g} / {s.back_mean:.1f} / {s.back_max}"),
        ("back, uniform: mean", lambda s: f"{s.uniform_back_mean:.1f}"),
        ("days: median / mean / max",
         lambda s: f"{s.days_median:.1f} / {s.days_mean:.1f} / {s.days_max:.1f}"),
        ("days, uniform: mean", lambda s: f"{s.uniform_days_mean:.1f}"),
        ("strictly older than the prompt's oldest item",
         lambda s: f"{s.before_recent_window:.0%}"),
        *[(f"more than {d} day{'s' * (d > 1)} back",
           lambda s, d=d: f"{s.older_than_days[str(d)]:.0%}")
          for d in OLDER_THAN_DAYS],
        ("place in memory (0 oldest, 1 newest; uniform 0.5)",
         lambda s: f"{s.quantile_mean:.2f}"),
    ]
    for name, show in fields:
        cells = ["-" if s is None else show(s) for s in summaries]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    if result.shown:
        lines += ["", "Case-study samples:", "",
                  f"| sample | target | rank {result.reference} -> {result.method} | "
                  "retrieved (back, days) | prompt reaches back (days) |",
                  "|---|---|---|---|---|"]
        for r in result.shown:
            got = "; ".join(f"{dataset.catalog.title(e.item)} ({e.back}, {e.days:.1f})"
                            for e in r.retrieved)
            lines.append(f"| {r.sample_id} | {dataset.catalog.title(r.sample.target)} | "
                         f"{r.reference_rank} -> {r.method_rank} | {got} | "
                         f"{r.history_days[len(r.sample.memory)]:.1f} |")
    return "\n".join(lines) + "\n"


def plot_timeline(result: RQ3Result, dataset: PreparedDataset, stem: Path) -> tuple[Path, Path]:
    """Figure 1: one row per case-study sample, history as dots on a days-before axis."""
    rows = result.shown
    figure = new_figure(9.0, 1.2 + 0.45 * max(len(rows), 2))
    ax = figure.subplots()
    span = max((max(r.history_days) for r in rows), default=1.0) or 1.0
    for y, r in enumerate(rows):
        days = r.history_days
        n_memory = len(r.sample.memory)
        oldest, newest = days[n_memory], days[-1]
        ax.barh(y, oldest - newest, left=-oldest, height=0.6,
                color="tab:blue", alpha=0.15, label="prompt (recent items)" if y == 0 else None)
        ax.scatter([-d for d in days[:n_memory]], [y] * n_memory, s=10, color="tab:gray",
                   label="memory (long-term history)" if y == 0 else None, zorder=2)
        ax.scatter([-d for d in days[n_memory:]], [y] * (len(days) - n_memory), s=10,
                   color="tab:blue", zorder=2)
        ax.scatter([-e.days for e in r.retrieved], [y] * len(r.retrieved), s=90,
                   facecolors="none", edgecolors="tab:orange", linewidths=2, zorder=3,
                   label=f"retrieved by {result.method}" if y == 0 else None)
    ax.set_yticks(range(len(rows)),
                  [f"user {r.sample.user}: rank {r.reference_rank}→{r.method_rank}"
                   for r in rows])
    ax.set_ylim(max(len(rows), 1) - 0.5, -0.5)
    time_axis(ax, span, negative=True)
    ax.set_xlim(-1.3 * span, 0.3 * MINUTE)
    ax.set_xlabel("time before the sample (symmetric log scale)")
    if rows:
        ax.legend(loc="lower left", fontsize="small", frameon=False)
    else:
        ax.text(0.5, 0.5, "no case to show", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(textwrap.fill(f"{result.method}: {result.criterion_text}", 90),
                 fontsize="medium")
    return save_figure(figure, stem)


TIME_TICKS = ((0.0, "0"), (1 / 1440, "1 min"), (1 / 24, "1 h"), (1.0, "1 d"), (7.0, "1 wk"),
              (30.0, "30 d"), (180.0, "180 d"), (365.0, "1 yr"), (1825.0, "5 yr"))
MINUTE = 1 / 1440


def time_axis(ax: Any, span: float, negative: bool = False) -> None:
    """A days axis on a symmetric log scale (linear below one minute), so sessions of minutes
    and months-old history both stay readable; ticks from 1 minute to years."""
    ax.set_xscale("symlog", linthresh=MINUTE, linscale=0.5)
    ticks = [(d, label) for d, label in TIME_TICKS if d <= max(span, MINUTE) * 1.5]
    sign = -1 if negative else 1
    ax.set_xticks([sign * d for d, _ in ticks], [label for _, label in ticks])
    ax.minorticks_off()
    ax.grid(axis="x", alpha=0.3)


def plot_ages(result: RQ3Result, stem: Path) -> tuple[Path, Path]:
    """Figure 2: histograms of the retrieved elements' ages over all evaluated samples, with
    the uniform-selection expectation as an outline."""
    rows = [r for r in result.evaluated if r.retrieved]
    figure = new_figure(10.0, 3.6)
    axes = figure.subplots(1, 2)
    for ax, unit, label in ((axes[0], "back", "interactions before the sample"),
                            (axes[1], "days", "time before the sample (symmetric log)")):
        values = [getattr(e, unit) for r in rows for e in r.retrieved]
        uniform, weights = [], []
        for r in rows:
            n_memory = len(r.sample.memory)
            ages = (range(len(r.sample.history), len(r.sample.recent), -1) if unit == "back"
                    else r.history_days[:n_memory])
            uniform += list(ages)
            weights += [len(r.retrieved) / n_memory] * n_memory
        if values:
            top = max(uniform)
            if unit == "days":
                bins = [0.0, *numpy.geomspace(MINUTE, max(top, MINUTE) * 1.01, 25).tolist()]
                time_axis(ax, top)
            elif top <= 60:
                bins = list(range(0, int(top) + 2))
            else:
                bins = numpy.linspace(0, top + 1, 31).tolist()
            _, edges, _ = ax.hist(values, bins=bins, color="tab:orange", alpha=0.8,
                                  label="retrieved")
            ax.hist(uniform, bins=edges, weights=weights, histtype="step", color="tab:gray",
                    linewidth=1.5, label="uniform over the memory")
            ax.axvline(statistics.median(values), color="black", linestyle="--", linewidth=1,
                       label="median")
            ax.legend(fontsize="small", frameon=False)
        else:
            ax.text(0.5, 0.5, "nothing retrieved", ha="center", va="center",
                    transform=ax.transAxes)
        ax.set_xlabel(label)
        ax.set_ylabel("retrieved elements")
    figure.suptitle(f"Age of the memory elements {result.method} retrieved "
                    f"({len(rows)} samples)")
    return save_figure(figure, stem)
