"""``automr.evaluate``: any methods on the same samples, with intervals and paired tables.

::

    evaluation = automr.evaluate({"bigrec": bigrec, "mine": mine}, samples, n_items, out="runs/x")
    print(evaluation.markdown())

Each method is a :class:`~automr.interfaces.Method`; the names are yours. With ``out``, each
method's ranks are saved there (:class:`~automr.evaluation.folder.EvaluationFolder`) and a
rerun reuses the ranks of every method whose ``settings`` are unchanged.
"""

import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from automr.data.records import Sample
from automr.errors import AutomrError
from automr.evaluation.bootstrap import DEFAULT_RESAMPLES, PairedDifference
from automr.evaluation.folder import EvaluationFolder
from automr.evaluation.metrics import DEFAULT_KS
from automr.evaluation.report import MetricReport, build_report, compare_reports
from automr.interfaces import Explained, Method


@attrs.frozen
class Evaluation:
    """Every method's report on the same samples, and paired differences against
    ``reference``."""

    reports: dict[str, MetricReport]
    reference: str

    @property
    def samples(self) -> int:
        return len(next(iter(self.reports.values())).ranks)

    @property
    def n_resamples(self) -> int:
        return next(iter(self.reports.values())).n_resamples

    def paired(self) -> dict[str, dict[str, PairedDifference]]:
        """Each other method minus the reference, per metric (paired bootstrap)."""
        reference = self.reports[self.reference]
        return {m: compare_reports(r, reference) for m, r in self.reports.items()
                if m != self.reference}

    def to_json(self, record: Mapping[str, Any] = {}) -> dict[str, Any]:
        """The tables as JSON, after ``record`` (what the caller wants to keep with them)."""
        return {
            **record, "reference": self.reference, "samples": self.samples,
            "machine": {"platform": platform.platform(), "torch": torch.__version__,
                        "threads": torch.get_num_threads()},
            "methods": {m: {k: attrs.asdict(v) for k, v in r.metrics.items()}
                        for m, r in self.reports.items()},
            "paired_vs_reference": {m: {k: attrs.asdict(v) for k, v in diffs.items()}
                                    for m, diffs in self.paired().items()},
        }

    def markdown(self, header: str | None = None) -> str:
        """Each metric's mean [95% CI], then the paired differences against the reference."""
        keys = list(next(iter(self.reports.values())).metrics)
        rule = "|---" * (len(keys) + 1) + "|"
        lines = [f"| method | {' | '.join(keys)} |", rule]
        for method, report in self.reports.items():
            cells = [f"{iv.mean:.4f} [{iv.low:.4f}, {iv.high:.4f}]"
                     for iv in report.metrics.values()]
            lines.append(f"| {method} | {' | '.join(cells)} |")
        lines += ["", f"Paired bootstrap difference vs `{self.reference}` (mean [95% CI]):", "",
                  f"| method | {' | '.join(keys)} |", rule]
        for method, diffs in self.paired().items():
            cells = [f"{d.mean:+.4f} [{d.low:+.4f}, {d.high:+.4f}]" for d in diffs.values()]
            lines.append(f"| {method} | {' | '.join(cells)} |")
        header = header or (f"{self.samples} samples, full ranking over the catalog, "
                            f"{self.n_resamples} bootstrap resamples.")
        return header + "\n\n" + "\n".join(lines) + "\n"


def evaluate(
    methods: Mapping[str, Method], samples: Sequence[Sample], n_items: int, *,
    out: Path | str | None = None, reference: str | None = None,
    ks: Sequence[int] = DEFAULT_KS, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
    record: Mapping[str, Any] = {}, header: str | None = None,
) -> Evaluation:
    """Rank ``samples`` with every method; bootstrap each metric; pair each method with
    ``reference`` (default: the first method whose name starts with ``bigrec``, else the
    first).

    With ``out``: ranks, settings and details are saved per method as it finishes (a method
    already saved with equal settings is not ranked again), then ``results.json`` (after
    ``record``) and ``results.md`` (after ``header``).
    """
    if not methods:
        raise AutomrError("evaluate needs at least one method")
    if not samples:
        raise AutomrError("evaluate needs at least one sample")
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        raise AutomrError("the samples to evaluate repeat an id (user@timestamp:target)")
    names = list(methods)
    reference = reference or next((m for m in names if m.startswith("bigrec")), names[0])
    if reference not in methods:
        raise AutomrError(f"the reference {reference!r} is not among the methods {names}")
    folder = None if out is None else EvaluationFolder(out)
    reports: dict[str, MetricReport] = {}
    for name, method in methods.items():
        settings = {"method": name, "samples": ids, "n_items": n_items, **method.settings}
        saved = None if folder is None else folder.saved_report(name, settings)
        if saved is not None and saved.ks == tuple(ks) and saved.n_resamples == n_resamples:
            reports[name] = saved
            continue
        ranks = saved.ranks if saved is not None else method.rank(samples)
        report = build_report(name, ids, torch.tensor(list(ranks), dtype=torch.long), n_items,
                              ks=ks, n_resamples=n_resamples, seed=seed)
        if folder is not None:
            details = method.details() if isinstance(method, Explained) else {}
            folder.save(report, settings, {} if saved is not None else details)
        reports[name] = report
    evaluation = Evaluation(reports, reference)
    if folder is not None:
        folder.write_results(evaluation.to_json(record), evaluation.markdown(header))
    return evaluation
