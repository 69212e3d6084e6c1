"""``automr.evaluate``: any methods on the same samples, with intervals and paired tables.

::

    evaluation = automr.evaluate({"bigrec": bigrec, "mine": mine}, samples, n_items, out="runs/x")
    print(evaluation.markdown())

Each method is a :class:`~automr.interfaces.Method`; the names are yours. Two measures:
``ranks`` (full-ranking Recall/NDCG@K, the headline) and ``likelihood`` (the true title's
log-likelihood, for :class:`~automr.interfaces.LikelihoodMethod` s: no decoding, so it is cheap
on thousands of samples and resolves small paired effects). With ``out``, each method's
values are saved there (:class:`~automr.evaluation.folder.EvaluationFolder`) and a rerun
reuses those of every method whose ``settings`` are unchanged.

Each method runs over shards of samples (:mod:`automr.evaluation.shards`): a cut run resumes
per shard, and under a launcher (``torchrun``, ``accelerate launch``) every process takes its
share; the main process writes the folder. Every process returns the same :class:`Evaluation`.
"""

import json
import math
import numbers
import os
import platform
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence, Set
from pathlib import Path
from typing import Any

import attrs
import torch

from automr import distributed
from automr.checks import require_int
from automr.data.records import Sample
from automr.defaults import MEASURES
from automr.errors import AutomrError, WrongTypeError
from automr.evaluation.bootstrap import (
    DEFAULT_RESAMPLES,
    PairedDifference,
    check_resample,
    check_seed,
)
from automr.evaluation.folder import EVALUATION_KEYS, EvaluationFolder, evaluated_settings
from automr.evaluation.likelihood import (
    POSITIVE_TOLERANCE,
    LikelihoodReport,
    build_likelihood_report,
    compare_likelihoods,
)
from automr.evaluation.metrics import DEFAULT_KS, check_ks
from automr.evaluation.report import MetricReport, build_report, compare_reports
from automr.evaluation.shards import DEFAULT_SHARD_SIZE, run_sharded
from automr.interfaces import LikelihoodMethod, Method


@attrs.frozen
class Evaluation:
    """Every method's reports on the same samples, and paired differences against
    ``reference``: ``reports`` (ranks) and ``likelihoods`` (LM methods' target
    log-likelihoods), either possibly empty."""

    reports: dict[str, MetricReport]
    reference: str
    likelihoods: dict[str, LikelihoodReport] = attrs.field(factory=dict)
    samples: int = 0
    n_resamples: int = DEFAULT_RESAMPLES
    seed: int = 0
    reused: tuple[str, ...] = ()
    """``measure:method`` values read back from the folder (saved with the same samples and
    settings), not computed in this call."""
    resample: str = "samples"
    """What every interval and paired difference resamples: ``samples`` or ``users``."""
    header: str | None = None
    """The text above the tables (:meth:`markdown`'s, ``results.md``'s), when given."""
    _paired: dict[str, dict[str, dict[str, PairedDifference]]] = attrs.field(
        factory=dict, init=False, eq=False, repr=False)
    """Each measure's paired differences once computed (the JSON and the tables read them:
    a paired bootstrap of 100k samples takes a minute here)."""

    def paired(self) -> dict[str, dict[str, PairedDifference]]:
        """Each other method minus the reference, per ranking metric (paired bootstrap)."""
        if "ranks" not in self._paired:
            reference = self.reports.get(self.reference)
            self._paired["ranks"] = {} if reference is None else {
                m: compare_reports(r, reference, n_resamples=self.n_resamples, seed=self.seed,
                                   resample=self.resample)
                for m, r in self.reports.items() if m != self.reference}
        return dict(self._paired["ranks"])

    def paired_likelihoods(self) -> dict[str, dict[str, PairedDifference]]:
        """Each other LM method minus the reference, per likelihood metric."""
        if "likelihood" not in self._paired:
            reference = self.likelihoods.get(self.reference)
            self._paired["likelihood"] = {} if reference is None else {
                m: compare_likelihoods(r, reference, n_resamples=self.n_resamples,
                                       seed=self.seed, resample=self.resample)
                for m, r in self.likelihoods.items() if m != self.reference}
        return dict(self._paired["likelihood"])

    def to_json(self, record: Mapping[str, Any] = {}) -> dict[str, Any]:
        """The tables as JSON, after ``record`` (what the caller wants to keep with them)."""
        def table(reports) -> dict:
            return {m: {k: attrs.asdict(v) for k, v in r.metrics.items()}
                    for m, r in reports.items()}

        def diffs(paired) -> dict:
            return {m: {k: attrs.asdict(v) for k, v in d.items()} for m, d in paired.items()}

        payload = {
            **record, "reference": self.reference, "samples": self.samples,
            "machine": {"platform": platform.platform(), "torch": torch.__version__,
                        "threads": torch.get_num_threads()},
            "methods": table(self.reports), "paired_vs_reference": diffs(self.paired()),
        }
        if self.likelihoods:
            payload["likelihood"] = table(self.likelihoods)
            payload["likelihood_paired_vs_reference"] = diffs(self.paired_likelihoods())
        return payload

    def markdown(self, header: str | None = None) -> str:
        """Each metric's mean [95% CI], then the paired differences against the reference;
        the same for the target log-likelihood when it was measured."""
        measured = "full ranking over the catalog" if self.reports else "target log-likelihoods"
        units = "" if self.resample == "samples" else f" of the {self.resample}"
        header = header or self.header or (f"{self.samples} samples, {measured}, "
                                           f"{self.n_resamples} bootstrap resamples{units}.")
        parts = [header, ""]
        if self.reports:
            parts += _tables(self.reports, self.paired(), self.reference, "{:.4f}")
        if self.likelihoods:
            scored = len(next(iter(self.likelihoods.values())).sample_ids)
            count = f"; {scored} samples" if self.reports and scored != self.samples else ""
            parts += ["Target log-likelihood (nats; per sample and per target token; higher "
                      f"is better{count}):", ""]
            parts += _tables(self.likelihoods, self.paired_likelihoods(), self.reference,
                             "{:.3f}")
        return "\n".join(parts)


def markdown_cell(text: str) -> str:
    """``text`` as one cell of a markdown table: ``|`` escaped and line breaks as spaces (an
    Amazon title such as "Game | Nintendo Switch" added cells and shifted the columns)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _tables(reports, paired, reference: str, number: str) -> list[str]:
    keys = list(next(iter(reports.values())).metrics)
    rule = "|---" * (len(keys) + 1) + "|"
    lines = [f"| method | {' | '.join(keys)} |", rule]
    for method, report in reports.items():
        cells = [f"{number.format(iv.mean)} [{number.format(iv.low)}, "
                 f"{number.format(iv.high)}]" for iv in report.metrics.values()]
        lines.append(f"| {markdown_cell(method)} | {' | '.join(cells)} |")
    lines.append("")
    if len(reports) > 1 and reference not in reports:
        lines += [f"No paired differences: the reference `{reference}` has no values here "
                  f"(--reference names another).", ""]
    if paired:
        signed = number.replace("{:", "{:+")
        lines += [f"Paired bootstrap difference vs `{reference}` (mean [95% CI]):", "",
                  f"| method | {' | '.join(keys)} |", rule]
        for method, diffs in paired.items():
            cells = [f"{signed.format(d.mean)} [{signed.format(d.low)}, "
                     f"{signed.format(d.high)}]" for d in diffs.values()]
            lines.append(f"| {markdown_cell(method)} | {' | '.join(cells)} |")
        lines.append("")
    return lines


def evaluate(
    methods: Mapping[str, Method], samples: Iterable[Sample], n_items: int, *,
    out: Path | str | None = None, reference: str | None = None,
    measures: Collection[str] = ("ranks",), ks: Sequence[int] = DEFAULT_KS,
    n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0, record: Mapping[str, Any] = {},
    header: str | None = None, shard_size: int = DEFAULT_SHARD_SIZE, resample: str = "samples",
) -> Evaluation:
    """Measure ``samples`` (any iterable, read once) with every method (``{name: method}``)
    over a catalog of ``n_items``; bootstrap each metric; pair each method with
    ``reference`` (default: the first method whose name starts with ``bigrec``, else the
    first).

    ``measures``: ``ranks`` (every method ranks the catalog) and/or ``likelihood`` (every
    :class:`~automr.interfaces.LikelihoodMethod` scores the true titles; others are skipped).
    With ``out`` (a new or empty folder, or an evaluation folder; anything else, and a folder
    `automr compare` wrote, is refused):
    values, settings and details are saved per method as it finishes (values
    saved with equal settings are not computed again; a method whose ``settings`` are empty
    is computed again every time, as nothing tells it from another one under its name), then
    ``results.json`` (after ``record``, whose ``config`` gains the ``ks``, ``n_resamples`` and
    ``seed`` of the tables, so that an export reads them back) and ``results.md`` (after
    ``header``). ``shard_size``: samples per shard
    (the unit of resuming and of sharing among processes; a multiple of the methods' batch
    sizes keeps their batches those of one pass).

    ``ks``: the cut-offs K of Recall@K and NDCG@K (default 1, 5, 10; positive and distinct;
    the ranks measure only). ``n_resamples`` (default 1000, >= 1) and ``seed``: the bootstrap
    of every interval and paired difference (all metrics share one set of resamples of
    ``seed``); they seed nothing in the methods. ``resample``: what the bootstrap draws,
    ``samples`` (the default) or ``users`` (all of a drawn user's samples: samples of one user
    share their history, so their values are correlated). Saved values are summarised again
    (not computed again) when ``ks``, ``n_resamples``, ``seed`` or ``resample`` differ from
    those they were saved with.

    Raises :class:`~automr.errors.AutomrError` before any method runs when ``methods`` is
    not a non-empty dict of :class:`~automr.interfaces.Method` s under str names, ``n_items``
    is not an int >= 1, there are no samples (or what is not a Sample among them) or their ids
    repeat, ``measures`` is empty or unknown,
    ``reference`` is not a method, only ``likelihood`` is measured and no method is a
    :class:`~automr.interfaces.LikelihoodMethod`, ``out`` (or a method's name) cannot hold
    the evaluation, a method's ``settings`` are not JSON, ``ks`` are not distinct positive
    ints (when ranks are measured), ``n_resamples`` or ``shard_size`` is not an int >= 1,
    ``seed`` is not an int, ``resample`` is neither ``samples`` nor ``users``, or (with
    ``out``) ``header`` is not a str or ``record`` not a JSON dict.
    Then, method by method: when it returns a wrong number of values, a rank that is not
    an int in ``[0, n_items]`` or a log-likelihood that is not finite, or a saved file is
    damaged.
    """
    if not isinstance(methods, Mapping):
        raise WrongTypeError(f"evaluate takes the methods as a dict {{name: method}}, not a "
                             f"{type(methods).__name__}")
    if not methods:
        raise AutomrError("evaluate needs at least one method")
    if unnamed := [name for name in methods if not isinstance(name, str)]:
        raise WrongTypeError(f"evaluate takes the methods as {{name: method}} with str names "
                             f"(they name its tables and files); got the name {unnamed[0]!r}")
    if isinstance(n_items, bool) or not isinstance(n_items, numbers.Integral) or n_items < 1:
        shown = repr(n_items) if isinstance(n_items, numbers.Number) else (
            f"a {type(n_items).__name__}")
        wrong = (AutomrError if isinstance(n_items, numbers.Integral)
                 and not isinstance(n_items, bool) else WrongTypeError)
        raise wrong(f"n_items is the catalog's size, an int >= 1 (e.g. len(dataset.catalog)); "
                    f"got {shown}")
    n_items = int(n_items)
    if not isinstance(samples, Iterable):
        raise WrongTypeError(f"evaluate takes an iterable of Samples (e.g. "
                             f"dataset.samples('test')); got a {type(samples).__name__}")
    samples = list(samples)  # any iterable, read once
    if not samples:
        raise AutomrError("evaluate needs at least one sample")
    stray = next((s for s in samples if not isinstance(s, Sample)), None)
    if stray is not None:
        raise WrongTypeError(f"evaluate takes Samples (e.g. dataset.samples('test')); got a "
                             f"{type(stray).__name__} among them")
    if isinstance(measures, str):
        measures = (measures,)
    if not isinstance(measures, Iterable):
        raise WrongTypeError(f"measures are a tuple among {', '.join(MEASURES)}; got "
                             f"{measures!r}")
    measures = tuple(measures)
    unknown = set(measures) - set(MEASURES)
    if unknown or not measures:
        raise AutomrError(f"measures must be among {', '.join(MEASURES)}; got {sorted(measures)}")
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        raise AutomrError("the samples to evaluate repeat an id (user@timestamp:target)")
    if reference is not None and not isinstance(reference, str):
        raise WrongTypeError(f"reference is a method's name (a str), got {reference!r}")
    if out is not None and not isinstance(out, str | os.PathLike):
        raise WrongTypeError(f"out is a folder (a path or str), got {out!r}")
    names = list(methods)
    reference = reference or next((m for m in names if m.startswith("bigrec")), names[0])
    if reference not in methods:
        raise AutomrError(f"the reference {reference!r} is not among the methods {names}")
    if "ranks" not in measures and not any(isinstance(m, LikelihoodMethod)
                                           for m in methods.values()):
        raise AutomrError(f"the likelihood measure scores the true title with an LM; none of "
                          f"{', '.join(names)} does: add one or measure ranks")
    folder = None if out is None else EvaluationFolder(out)
    if folder is not None:
        folder.check_target()
        folder.check_not_combination()
        folder.check_names(names)
    reports: dict[str, MetricReport] = {}
    likelihoods: dict[str, LikelihoodReport] = {}
    reused: list[str] = []
    for name, method in methods.items():  # every argument checked before any method runs
        if isinstance(method, type):
            raise AutomrError(f"{name} is the class {method.__name__}, not an instance of it: "
                              f"pass {method.__name__}(...)")
        if not isinstance(method, Method) or not isinstance(method.settings, Mapping):
            raise WrongTypeError(f"{name} is not a Method: it needs rank(samples) and settings, "
                                 f"a dict of what decides its ranks (got a "
                                 f"{type(method).__name__})")
        try:  # they are saved with the values, and decide what a rerun reuses
            json.dumps(dict(method.settings), sort_keys=True)  # sorted, as they are saved
            named = [key for key in method.settings if not isinstance(key, str)]
            if named:  # sorted among the names the evaluation adds (method, samples, ...)
                raise TypeError(f"its keys must be strings, got {named[0]!r}")
        except (TypeError, ValueError) as error:
            raise AutomrError(f"the settings of {name} are not JSON ({error}): give "
                              f"strings, numbers, lists and dicts") from None
        taken = [key for key in EVALUATION_KEYS if key in method.settings]
        if taken:  # the evaluation's value would replace it: two methods, one set of settings
            raise AutomrError(f"the settings of {name} hold {taken[0]!r}, a key the evaluation "
                              f"adds itself ({', '.join(EVALUATION_KEYS)}): name it otherwise")
    if "ranks" in measures:  # numpy's integers, as Python ints
        ks = check_ks(ks)
    n_resamples = require_int(n_resamples, "n_resamples", 1)
    shard_size = require_int(shard_size, "shard_size", 1)
    seed = check_seed(seed)
    check_resample(resample)
    if out is not None:  # what results.md and results.json start with, once all have run
        _check_header_and_record(header, record)
    for name, method in methods.items():
        settings = evaluated_settings(method.settings, name, ids, n_items)
        if folder is not None and not method.settings:  # nothing says what made saved values:
            settings["run"] = distributed.on_main(lambda: uuid.uuid4().hex)  # reuse none
        if "ranks" in measures:
            reports[name], saved = _ranks(name, method, samples, settings, folder, n_items, ks,
                                          n_resamples, seed, resample, shard_size)
            reused += [f"ranks:{name}"] if saved else []
        if "likelihood" in measures and isinstance(method, LikelihoodMethod):
            likelihoods[name], saved = _likelihoods(name, method, samples, settings, folder,
                                                    n_resamples, seed, resample, shard_size)
            reused += [f"likelihood:{name}"] if saved else []
    evaluation = Evaluation(reports, reference, likelihoods, len(samples), n_resamples, seed,
                            tuple(reused), resample, header)
    if folder is not None:  # every process returns once the folder is written
        record = _with_summary(record, ks if "ranks" in measures else None, n_resamples, seed,
                               resample)
        distributed.on_main(lambda: folder.write_results(evaluation.to_json(record),
                                                         evaluation.markdown()))
    return evaluation


def _check_header_and_record(header: object, record: object) -> None:
    if header is not None and not isinstance(header, str):
        raise AutomrError(f"header (the text above results.md's tables) must be a str, got a "
                          f"{type(header).__name__}")
    try:
        if not isinstance(record, Mapping):
            raise TypeError(f"a {type(record).__name__}, not a dict")
        json.dumps(dict(record))
    except (TypeError, ValueError) as error:
        raise AutomrError(f"record is not a JSON dict ({error}): give strings, numbers, lists "
                          f"and dicts") from None


def _with_summary(record: Mapping[str, Any], ks: Sequence[int] | None, n_resamples: int,
                  seed: int, resample: str) -> dict[str, Any]:
    """``record`` with the cut-offs and the bootstrap the tables were summarised with in its
    ``config`` (what an export of the folder is read back with), over what it says of them."""
    config = record.get("config", {})
    if not isinstance(config, Mapping):
        return dict(record)
    summary = ({"n_resamples": n_resamples, "seed": seed, "resample": resample}
               | ({} if ks is None else {"ks": list(ks)}))
    return {**record, "config": {**config, **summary}}


def _per_sample(name: str, returned: Any, count: int, said: tuple[str, str, str, str]
                ) -> list:
    """What a method's call returned as a list of ``count`` values, one per sample; ``said``:
    the call, its verb, one value and the values, as its refusals name them."""
    call, verb, one, many = said
    if isinstance(returned, (Mapping, Set)):  # unordered, or keyed: not in sample order
        raise AutomrError(f"{name}'s {call}() returned a {type(returned).__name__}: it returns "
                          f"a list of {many} in the order of the samples")
    try:
        values = returned.tolist() if hasattr(returned, "tolist") else list(returned)
        if not isinstance(values, list):  # a 0-dim tensor or array: one number
            raise TypeError
    except TypeError:
        raise AutomrError(f"{name}'s {call}() returned {type(returned).__name__}, not a "
                          f"sequence of {many}") from None
    if len(values) != count:
        raise AutomrError(f"{name} {verb} {len(values)} of {count} samples: {call}() returns "
                          f"one {one} per sample")
    return values


def _checked_ranks(name: str, ranks: Any, count: int, n_items: int) -> list[int]:
    """A method's ranks as ints, one per sample, each a 0-based place in the catalog or
    ``n_items`` for a miss (:func:`~automr.evaluation.metrics.rank_in_list`'s): a float (a
    mid-rank for ties, say) would be cut to its floor in the table, silently."""
    values = _per_sample(name, ranks, count, ("rank", "ranked", "rank", "ranks"))
    bad = next((v for v in values if isinstance(v, bool) or not isinstance(v, numbers.Integral)
                or not 0 <= v <= n_items), None)
    if bad is not None:
        raise AutomrError(f"{name} returned the rank {bad!r}: ranks are ints in [0, {n_items}] "
                          f"(0 = first, {n_items} = a miss; break ties yourself, e.g. against "
                          f"the target)")
    return [int(v) for v in values]


def _checked_likelihoods(name: str, pairs: Any, count: int) -> list[tuple[float, int]]:
    """A method's ``(log-likelihood, token count)`` per sample, as floats and ints."""
    values = _per_sample(name, pairs, count, ("target_log_likelihoods", "scored", "pair",
                                              "(log-likelihood, token count) pairs"))
    try:
        checked = [(float(v), int(n)) for v, n in values]
    except (TypeError, ValueError):
        checked = None
    if checked is None or any(n < 1 or int(n) != n for (_, n) in values):
        raise AutomrError(f"{name} returned {values[:3]!r}...: each sample's value is a pair "
                          f"(log-likelihood, token count >= 1)")
    bad = next((v for v, _ in checked if not math.isfinite(v)), None)
    if bad is not None:
        raise AutomrError(f"{name} returned the log-likelihood {bad} for a true title: each is "
                          f"a finite number of nats (log P <= 0)")
    positive = next((v for v, _ in checked if v > POSITIVE_TOLERANCE), None)
    if positive is not None:  # a loss (the negative log-likelihood) flips every comparison
        raise AutomrError(f"{name} returned the log-likelihood {positive} for a true title: "
                          f"log P <= 0 (a negative log-likelihood, a loss, has the other sign)")
    return checked


def _ranks(name, method, samples, settings, folder, n_items, ks, n_resamples, seed, resample,
           shard_size) -> tuple[MetricReport, bool]:
    """The method's report, and whether its ranks were read back rather than computed."""
    # read on the main process for all: another could read a file the main one rewrites
    saved = None if folder is None else distributed.on_main(
        lambda: folder.saved_report(name, settings))
    details: dict | None = None  # read back: the details saved with the ranks stay
    if saved is not None:
        report = saved.resampled(ks, n_resamples, seed, resample=resample)
        if report is saved:
            _clear_shards(folder, name, "ranks")  # a run cut before it removed them
            return saved, True
    else:
        ranks, details = run_sharded(lambda given: _checked_ranks(name, method.rank(given),
                                                                  len(given), n_items),
                                     method, samples, settings, folder, name, "ranks",
                                     shard_size)
        report = build_report(name, [s.id for s in samples],
                              torch.tensor(list(ranks), dtype=torch.long), n_items, ks=ks,
                              n_resamples=n_resamples, seed=seed, resample=resample)
    if folder is not None and distributed.is_main():
        folder.save(report, settings, details)
    _clear_shards(folder, name, "ranks")
    return report, saved is not None


def _likelihoods(name, method, samples, settings, folder, n_resamples, seed, resample,
                 shard_size) -> tuple[LikelihoodReport, bool]:
    """The method's report, and whether its values were read back rather than computed."""
    saved = None if folder is None else distributed.on_main(  # as in _ranks
        lambda: folder.saved_likelihoods(name, settings))
    details: dict | None = None  # read back: the details saved with the values stay
    if saved is not None:
        report = saved.resampled(n_resamples, seed, resample=resample)
        if report is saved:
            _clear_shards(folder, name, "loglik")  # a run cut before it removed them
            return saved, True
    else:
        pairs, details = run_sharded(
            lambda given: _checked_likelihoods(name, method.target_log_likelihoods(given),
                                               len(given)),
            method, samples, settings, folder, name, "loglik", shard_size)
        report = build_likelihood_report(name, [s.id for s in samples],
                                         [(float(v), int(n)) for v, n in pairs],
                                         n_resamples=n_resamples, seed=seed,
                                         resample=resample)
    if folder is not None and distributed.is_main():
        folder.save_likelihoods(report, settings, details)
    _clear_shards(folder, name, "loglik")
    return report, saved is not None


def _clear_shards(folder: EvaluationFolder | None, name: str, kind: str) -> None:
    """Remove ``name``'s shard files of ``kind`` (on the main process) once its values are
    saved: also when they are read back, as a run cut between saving them and removing its
    shards left those behind."""
    if folder is not None and distributed.is_main():
        folder.clear_shards(name, kind)
