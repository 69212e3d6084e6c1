"""Metric reports: per-sample ranks plus bootstrap summaries, saved as JSON and compared pairwise.

A :class:`MetricReport` keeps the raw material (every sample's id and target rank, the catalog
size) next to the summaries computed from it (each metric's mean and 95% interval). Keeping
the ranks is what makes paired comparisons possible later: :func:`compare_reports` aligns two
reports by sample id and bootstraps the per-sample differences.
"""

from collections.abc import Sequence
from pathlib import Path

import attrs
import torch
from jaxtyping import Int, jaxtyped
from torch import Tensor

from automr.checks import beartype
from automr.defaults import DEFAULT_CONFIDENCE, DEFAULT_KS, DEFAULT_RESAMPLES
from automr.errors import AutomrError
from automr.evaluation.bootstrap import (
    Interval,
    PairedDifference,
    bootstrap_ci,
    groups_for,
    paired_bootstrap,
    resample_field,
)
from automr.evaluation.metrics import metric_names, per_sample_metrics
from automr.storage import fields_of, read_json, whole, write_json_atomic

REPORT_FORMAT = "automr.metric_report/1"


@beartype
@attrs.frozen
class MetricReport:
    """One method's full-ranking results on one set of evaluation samples.

    ``ranks[i]`` is the 0-based rank of sample ``sample_ids[i]``'s target (``n_items`` for a
    miss). ``metrics`` maps each name of :func:`metric_names` (``ks``) to its mean and
    bootstrap interval, computed with ``n_resamples`` resamples from ``seed`` of the
    ``resample`` units (``samples`` or ``users``).
    """

    method: str
    n_items: int
    ks: tuple[int, ...]
    sample_ids: tuple[str, ...]
    ranks: tuple[int, ...]
    metrics: dict[str, Interval]
    n_resamples: int = DEFAULT_RESAMPLES
    seed: int = 0
    resample: str = resample_field()

    def __attrs_post_init__(self) -> None:
        if len(self.sample_ids) != len(self.ranks):
            raise AutomrError(
                f"{len(self.sample_ids)} sample ids but {len(self.ranks)} ranks in report "
                f"{self.method!r}"
            )
        if len(set(self.sample_ids)) != len(self.sample_ids):
            raise AutomrError(f"report {self.method!r} has duplicate sample ids")
        if any(not 0 <= r <= self.n_items for r in self.ranks):
            raise AutomrError(f"report {self.method!r} has ranks outside [0, {self.n_items}]")
        if set(self.metrics) != set(metric_names(self.ks)):
            raise AutomrError(f"report {self.method!r} metrics do not match ks={self.ks}")

    def resampled(self, ks: Sequence[int], n_resamples: int, seed: int,
                  confidence: float = DEFAULT_CONFIDENCE,
                  resample: str = "samples") -> "MetricReport":
        """This report with its summaries at ``ks`` from ``n_resamples`` resamples of ``seed``
        of the ``resample`` units at ``confidence`` (itself when they are those already)."""
        if ((self.ks, self.n_resamples, self.seed, self.resample)
                == (tuple(ks), n_resamples, seed, resample)
                and all(iv.confidence == confidence for iv in self.metrics.values())):
            return self
        return build_report(self.method, self.sample_ids, self.rank_tensor(), self.n_items,
                            ks=ks, n_resamples=n_resamples, confidence=confidence, seed=seed,
                            resample=resample)

    @jaxtyped(typechecker=beartype)
    def rank_tensor(self) -> Int[Tensor, " batch"]:
        """The ranks as an int64 tensor, in ``sample_ids`` order."""
        return torch.tensor(self.ranks, dtype=torch.long)

    def save(self, path: Path | str) -> None:
        """Write the report as one JSON file (parents created, atomically)."""
        payload = {
            "format": REPORT_FORMAT,
            "method": self.method,
            "n_items": self.n_items,
            "ks": list(self.ks),
            "n_resamples": self.n_resamples,
            "seed": self.seed,
            "resample": self.resample,
            "metrics": {name: attrs.asdict(iv) for name, iv in self.metrics.items()},
            "samples": [
                {"id": s, "rank": r} for s, r in zip(self.sample_ids, self.ranks, strict=True)
            ],
        }
        write_json_atomic(path, payload, indent=1)

    @classmethod
    def load(cls, path: Path | str) -> "MetricReport":
        """Read a report written by :meth:`save`."""
        payload = read_json(path, "`automr evaluate`", REPORT_FORMAT)
        with fields_of(path, "`automr evaluate`"):
            return cls(
                method=payload["method"],
                n_items=payload["n_items"],
                ks=tuple(payload["ks"]),
                sample_ids=tuple(str(s["id"]) for s in payload["samples"]),
                ranks=tuple(whole(s["rank"]) for s in payload["samples"]),
                metrics={name: Interval(**iv) for name, iv in payload["metrics"].items()},
                n_resamples=payload["n_resamples"],
                seed=payload["seed"],
                resample=payload.get("resample", "samples"),  # before it: samples
            )


@jaxtyped(typechecker=beartype)
def build_report(
    method: str,
    sample_ids: Sequence[str],
    ranks: Int[Tensor, " batch"],
    n_items: int,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
    resample: str = "samples",
) -> MetricReport:
    """Summarise per-sample ranks: each metric's mean and percentile-bootstrap interval.

    Every metric is bootstrapped from the same ``seed``, so they share one set of resamples;
    ``resample``: ``samples``, or ``users`` (each drawn user brings all its samples, the user
    read off each ``user@timestamp:target`` id).
    """
    if len(sample_ids) != ranks.shape[0]:
        raise AutomrError(f"{len(sample_ids)} sample ids for {ranks.shape[0]} ranks")
    if ranks.shape[0] == 0:
        raise AutomrError("cannot build a metric report from zero samples")
    values = per_sample_metrics(ranks, ks, n_items)
    groups = groups_for(resample, sample_ids)
    metrics = {
        name: bootstrap_ci(v, n_resamples=n_resamples, confidence=confidence, seed=seed,
                           groups=groups)
        for name, v in values.items()
    }
    return MetricReport(
        method=method,
        n_items=n_items,
        ks=tuple(ks),
        sample_ids=tuple(sample_ids),
        ranks=tuple(int(r) for r in ranks.tolist()),
        metrics=metrics,
        n_resamples=n_resamples,
        seed=seed,
        resample=resample,
    )


@beartype
def compare_reports(
    report_a: MetricReport,
    report_b: MetricReport,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
    resample: str = "samples",
) -> dict[str, PairedDifference]:
    """Paired bootstrap of A minus B for every metric both reports share (cut-offs in common).

    The reports must cover the same sample ids (in any order) and rank catalogs of one size
    (as ``automr compare`` requires); samples are aligned by id. ``resample``: ``samples`` or
    ``users``, as :func:`build_report`.
    """
    ids_a, ids_b = set(report_a.sample_ids), set(report_b.sample_ids)
    if ids_a != ids_b:
        raise AutomrError(
            f"reports {report_a.method!r} and {report_b.method!r} cover different samples "
            f"({len(ids_a - ids_b)} only in the first, {len(ids_b - ids_a)} only in the "
            "second); evaluate both methods on the same test samples"
        )
    if report_a.n_items != report_b.n_items:  # full rankings of different catalogs
        raise AutomrError(f"reports {report_a.method!r} and {report_b.method!r} rank catalogs "
                          f"of different sizes ({report_a.n_items} and {report_b.n_items} "
                          f"items); evaluate both methods on the same dataset")
    ks = tuple(k for k in report_a.ks if k in report_b.ks)
    if not ks:
        raise AutomrError("the two reports share no cut-off K")
    position_b = {s: i for i, s in enumerate(report_b.sample_ids)}
    order_b = torch.tensor([position_b[s] for s in report_a.sample_ids], dtype=torch.long)
    values_a = per_sample_metrics(report_a.rank_tensor(), ks, report_a.n_items)
    values_b = per_sample_metrics(report_b.rank_tensor()[order_b], ks, report_b.n_items)
    groups = groups_for(resample, report_a.sample_ids)
    return {
        name: paired_bootstrap(
            values_a[name], values_b[name],
            n_resamples=n_resamples, confidence=confidence, seed=seed, groups=groups,
        )
        for name in metric_names(ks)
    }
