"""RQ3 of the paper: does AutoMR use distant long-term history?

From an evaluation folder (``automr evaluate``, or an ``automr rq2`` run folder) holding the
ranks of a reference method (default ``bigrec:constrained``) and of a memory method (default
``automr:constrained``) with the elements it retrieved (``retrieved/METHOD.json``):

- the *case study* (the paper's Figure 3): samples whose Recall@1 improved with memory (target
  ranked first with it, not without); when there are none, samples whose target rank improved
  at all (said so in the figure title and in ``rq3.md``). With ``measure="likelihood"`` the
  methods' target log-likelihoods (``loglik/``) decide instead: samples whose true title
  became more likely with memory. For up to ``rows`` of them, the
  history before the sample on a time axis, the prompt's items shaded, the retrieved ones
  highlighted (``rq3-timeline.png/.svg``);
- the ages of the retrieved elements over *all* evaluated samples, in interactions and in days
  before the sample, beside what uniform random selection from the same memories gives
  (``rq3-ages.png/.svg``);
- ``rq3.json`` / ``rq3.md`` with the numbers.

This module computes the numbers; :mod:`automr.experiments.rq3_report` writes them and draws
the figures.

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
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs

from automr.checks import beartype
from automr.data import PreparedDataset, Sample
from automr.data.fingerprint import dataset_fingerprint
from automr.defaults import MEASURES
from automr.errors import AutomrError
from automr.evaluation.folder import open_evaluation
from automr.evaluation.likelihood import LikelihoodReport
from automr.evaluation.report import MetricReport
from automr.memory.shards import MemoryIndex
from automr.methods.registry import check_current, parse_method

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
    """One evaluated sample, how the true item fared without (reference) and with memory, and
    what it retrieved. The losses are the target's rank (measure ``ranks``) or its negative
    log-likelihood in nats (measure ``likelihood``): lower is better either way."""

    sample_id: str
    sample: Sample
    reference_loss: float
    method_loss: float
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
LIKELIHOOD_CRITERION = "likelihood"


@beartype
def select_improved(rows: Sequence[SampleRetrieval], measure: str = "ranks"
                    ) -> tuple[str, list[SampleRetrieval]]:
    """Samples that retrieved something and improved with memory, best improvement first (ties
    in evaluation order). Ranks: Recall@1 improved (``"recall@1"``: rank 0 with memory, > 0
    without) or, when no sample did, the target rank improved at all (``"rank"``). Likelihood:
    the true title's log-likelihood rose (``"likelihood"``)."""
    rows = [r for r in rows if r.retrieved]
    if measure == "likelihood":
        chosen = [r for r in rows if r.method_loss < r.reference_loss]
        criterion = LIKELIHOOD_CRITERION
    else:
        chosen = [r for r in rows if r.method_loss == 0 < r.reference_loss]
        criterion = RECALL_CRITERION
        if not chosen:
            chosen = [r for r in rows if r.method_loss < r.reference_loss]
            criterion = RANK_CRITERION
    order = sorted(range(len(chosen)),
                   key=lambda i: (chosen[i].method_loss - chosen[i].reference_loss, i))
    return criterion, [chosen[i] for i in order]


@beartype
@attrs.frozen
class RQ3Result:
    """Everything ``rq3.json`` holds (plus the rows, for the figures)."""

    results: str
    reference: str
    method: str
    split: str
    measure: str
    criterion: str
    criterion_text: str
    counts: dict[str, int]
    all_ages: AgeSummary | None
    improved_ages: AgeSummary | None
    shown: tuple[SampleRetrieval, ...]
    evaluated: tuple[SampleRetrieval, ...]

    @property
    def loss_name(self) -> str:
        """What the losses are: the target's 0-based rank, or its NLL (nats)."""
        return "rank (0 = first)" if self.measure == "ranks" else "NLL"

    def losses(self, r: SampleRetrieval) -> dict[str, int | float]:
        """``reference_rank``/``method_rank`` (ranks, integers) or ``reference_nll``/
        ``method_nll`` (likelihood) of one sample."""
        if self.measure == "ranks":
            return {"reference_rank": int(r.reference_loss), "method_rank": int(r.method_loss)}
        return {"reference_nll": r.reference_loss, "method_nll": r.method_loss}

    def to_json(self, dataset: PreparedDataset) -> dict:
        def row(r: SampleRetrieval) -> dict:
            s = r.sample
            return {"sample": r.sample_id, "user": s.user, "target": s.target,
                    "target_title": dataset.catalog.title(s.target),
                    **self.losses(r),
                    "history": len(s.history), "recent": len(s.recent),
                    "recent_oldest_days": r.history_days[len(s.memory)],
                    "retrieved": [{**attrs.asdict(e), "title": dataset.catalog.title(e.item)}
                                  for e in r.retrieved]}

        return {
            "format": "automr.rq3/1", "results": self.results, "reference": self.reference,
            "method": self.method, "split": self.split, "measure": self.measure,
            "criterion": self.criterion,
            "criterion_text": self.criterion_text, "counts": self.counts,
            "ages": {"all": _maybe(self.all_ages), "improved": _maybe(self.improved_ages)},
            "shown": [row(r) for r in self.shown],
            "retrieved": {r.sample_id: [[e.back, e.days] for e in r.retrieved]
                          for r in self.evaluated},
        }


def _maybe(summary: AgeSummary | None) -> dict | None:
    return None if summary is None else attrs.asdict(summary)


def _rq2_advice(rq2: Path, results_dir: Path | str, method: str, reference: str,
                measure: str, reference_given: bool) -> str | None:
    """What to give rq3 for a run of `automr rq2` (``rq2/rq2.json``): BIGRec's values are in
    ``rq2/bigrec``, and the methods are named by the grounder rq2 ran and hold the measures it
    measured (an empty or older ``rq2.json`` says neither). With ``--reference-results`` given,
    only the measure can be what is wrong (None: nothing to add)."""
    try:
        ran = json.loads((rq2 / "rq2.json").read_text(encoding="utf-8"))
        grounder, measures = ran.get("grounder"), ran.get("config", {}).get("measures")
    except (OSError, ValueError, AttributeError):
        grounder = measures = None
    if isinstance(measures, list) and measures and measure not in measures:
        again = "likelihood --grounder likelihood" if measure == "likelihood" else measure
        return (f"{results_dir} is a run of `automr rq2` that measured "
                f"{', '.join(map(str, measures))}, not {measure}: give --measure {measures[0]}, "
                f"or run rq2 again with --measure {again}")
    if reference_given:
        return None
    named = {parse_method(method)[1], parse_method(reference)[1]}
    if isinstance(grounder, str) and named != {grounder}:
        return (f"{results_dir} is a run of `automr rq2` with grounder {grounder}, whose "
                f"methods are NAME:{grounder} (BIGRec's in {rq2 / 'bigrec'}), not {method} and "
                f"{reference}: give --method {parse_method(method)[0]}:{grounder} --reference "
                f"bigrec:{grounder} --reference-results {rq2 / 'bigrec'}")
    return (f"{results_dir} is a run of `automr rq2`, which keeps {reference} apart: give "
            f"--reference-results {rq2 / 'bigrec'}")


def analyze_rq3(
    results_dir: Path | str, dataset: PreparedDataset, *, reference: str = "bigrec:constrained",
    method: str = "automr:constrained", rows: int = 8, memory: Path | str | None = None,
    reference_dir: Path | str | None = None, measure: str = "ranks",
) -> RQ3Result:
    """The numbers of RQ3 from an evaluation folder (see :func:`run_rq3` for the arguments).
    ``measure``: ``ranks`` (the paper's: Recall@1 / rank improved) or ``likelihood`` (the
    true title's log-likelihood rose; needs both methods' ``loglik/`` values and the memory
    method's ``retrieved/`` from the same evaluation)."""
    if rows < 1:
        raise AutomrError(f"--rows must be at least 1, got {rows}")
    if measure not in MEASURES:
        raise AutomrError(f"--measure must be one of {', '.join(MEASURES)}, got {measure!r}")
    if parse_method(method)[0] not in ("automr", "random", "semantic"):
        raise AutomrError(f"{method!r} retrieves no memory; use automr:G, random:G or semantic:G")
    parse_method(reference)
    results = open_evaluation(results_dir)
    references = open_evaluation(reference_dir or results_dir)
    kinds = ("ranks",) if measure == "ranks" else ("loglik",)  # the values it reads
    check_current(results_dir, method, kinds)  # made otherwise by an earlier automr: not read
    check_current(reference_dir or results_dir, reference, kinds)
    try:
        ref_ids, ref_losses = (_ranks(references.report(reference)) if measure == "ranks" else
                               _nlls(references.likelihoods(reference)))
    except AutomrError:
        rq2 = Path(results_dir).parent
        advice = _rq2_advice(rq2, results_dir, method, reference, measure,
                             reference_dir is not None) if (rq2 / "rq2.json").is_file() else None
        if advice is not None:
            raise AutomrError(advice) from None
        raise
    ids, losses = (_ranks(results.report(method)) if measure == "ranks" else
                   _nlls(results.likelihoods(method)))
    retrieved = {str(k): [int(p) for p in v] for k, v in results.details(
        "retrieved", method, "ranks" if measure == "ranks" else "loglik").items()}
    split = results.split(method)
    fingerprint = dataset_fingerprint(dataset)
    for folder, name in ((results, method), (references, reference)):
        made_on = folder.setting(name, "data")
        if made_on is not None and made_on != fingerprint:  # its sample ids may still match
            raise AutomrError(f"{name} in {folder.path} was evaluated on another dataset than "
                              f"{dataset.path or 'the one given'} (other data, prompt domain, "
                              f"protocol or catalog): give the --data it was evaluated on")
    where = (results.path if reference_dir is None
             else f"{results.path} and {references.path}")
    evaluated = match_samples(dataset, split, dict(zip(ref_ids, ref_losses, strict=True)),
                              list(zip(ids, losses, strict=True)), retrieved,
                              timelines(dataset, memory), where, f"{reference} and {method}")
    criterion, improved = select_improved(evaluated, measure)
    shown = tuple(improved[:rows])
    with_memory = [r for r in evaluated if r.retrieved]
    counts = {"evaluated": len(evaluated), "retrieved": len(with_memory)}
    prefix = "rank" if measure == "ranks" else "likelihood"
    if measure == "ranks":
        counts |= {
            "recall1_improved": sum(r.method_loss == 0 < r.reference_loss for r in with_memory),
            "recall1_worse": sum(r.reference_loss == 0 < r.method_loss for r in with_memory)}
    counts |= {
        f"{prefix}_improved": sum(r.method_loss < r.reference_loss for r in with_memory),
        f"{prefix}_same": sum(r.method_loss == r.reference_loss for r in with_memory),
        f"{prefix}_worse": sum(r.method_loss > r.reference_loss for r in with_memory),
        "selected": len(improved), "shown": len(shown),
    }
    return RQ3Result(
        results=str(results.path), reference=reference, method=method, split=split,
        measure=measure, criterion=criterion, criterion_text=criterion_text(criterion, counts),
        counts=counts, all_ages=summarize_ages(evaluated), improved_ages=summarize_ages(improved),
        shown=shown, evaluated=tuple(evaluated))


def _ranks(report: MetricReport) -> tuple[tuple[str, ...], list[float]]:
    return report.sample_ids, [float(r) for r in report.ranks]


def _nlls(report: LikelihoodReport) -> tuple[tuple[str, ...], list[float]]:
    return report.sample_ids, [-v for v in report.log_likelihoods]


def criterion_text(criterion: str, counts: Mapping[str, int]) -> str:
    n, selected = counts["retrieved"], counts["selected"]
    if criterion == LIKELIHOOD_CRITERION:
        return (f"the true title's log-likelihood rose with memory ({selected} of {n} "
                f"samples)")
    if criterion == RECALL_CRITERION:
        return f"Recall@1 improved with memory ({selected} of {n} samples)"
    if selected:
        return (f"no sample's Recall@1 improved with memory; showing samples whose target rank "
                f"improved instead ({selected} of {n})")
    return f"no sample improved with memory ({n} samples)"


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
    dataset: PreparedDataset, split: str, reference: Mapping[str, float],
    method: Sequence[tuple[str, float]], retrieved: Mapping[str, Sequence[int]],
    users: Mapping[str, Timeline], results: Path | str, names: str,
) -> list[SampleRetrieval]:
    """Every sample of ``method`` (``(id, loss)`` in evaluation order) with the reference's loss
    and its retrieval."""
    if set(reference) != {sample_id for sample_id, _ in method}:
        raise AutomrError(f"{names} in {results} were evaluated on different samples; "
                          f"evaluate both on the same samples")
    by_id = {s.id: s for s in dataset.samples(split)}
    rows = []
    for sample_id, loss in method:
        sample = by_id.get(sample_id)
        if sample is None:
            raise AutomrError(f"sample {sample_id} of {results} is not a {split} sample of "
                              f"{dataset.path}; was it evaluated on another dataset?")
        positions = retrieved.get(sample_id, [])
        found = (locate_retrieved(sample, users.get(sample.user, ((), ())), positions)
                 if positions else ())
        rows.append(SampleRetrieval(sample_id=sample_id, sample=sample,
                                    reference_loss=reference[sample_id], method_loss=loss,
                                    retrieved=found))
    return rows
