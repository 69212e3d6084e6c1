"""Target likelihood as a metric: per sample, the log-likelihood of the true next title.

A :class:`LikelihoodReport` keeps every sample's ``log P(title + EOS | prompt [+ memory])``
and its token count (from :meth:`~automr.interfaces.LikelihoodMethod.target_log_likelihoods`),
with bootstrap intervals of the mean per sample (``target_ll``) and of the mean per-token
value (``target_ll_per_token``). Paired differences resolve effects far smaller than hit
counts can: this is the quantity eq. 5 optimises.
"""

import math
from collections.abc import Sequence
from pathlib import Path

import attrs
import torch

from automr.checks import beartype
from automr.defaults import DEFAULT_CONFIDENCE
from automr.errors import AutomrError
from automr.evaluation.bootstrap import (
    DEFAULT_RESAMPLES,
    Interval,
    PairedDifference,
    bootstrap_ci,
    groups_for,
    paired_bootstrap,
    resample_field,
)
from automr.storage import fields_of, read_json, whole, write_json_atomic

POSITIVE_TOLERANCE = 1e-3
"""How far above 0 a returned log-likelihood may be (a sum's rounding) before it is refused."""
LIKELIHOOD_FORMAT = "automr.likelihood_report/1"
LIKELIHOOD_METRICS = ("target_ll", "target_ll_per_token")


@beartype
@attrs.frozen
class LikelihoodReport:
    """One method's target log-likelihoods on one set of samples, with intervals (from
    ``n_resamples`` resamples of ``seed`` of the ``resample`` units: samples or users)."""

    method: str
    sample_ids: tuple[str, ...]
    log_likelihoods: tuple[float, ...]
    tokens: tuple[int, ...]
    metrics: dict[str, Interval]
    n_resamples: int = DEFAULT_RESAMPLES
    seed: int = 0
    resample: str = resample_field()

    def __attrs_post_init__(self) -> None:
        if not len(self.sample_ids) == len(self.log_likelihoods) == len(self.tokens):
            raise AutomrError(f"likelihood report {self.method!r}: ids, values and token "
                              f"counts differ in length")
        if len(set(self.sample_ids)) != len(self.sample_ids):
            raise AutomrError(f"likelihood report {self.method!r} has duplicate sample ids")
        if any(n < 1 for n in self.tokens):
            raise AutomrError(f"likelihood report {self.method!r}: a target has no token")
        if not all(math.isfinite(v) for v in self.log_likelihoods):
            raise AutomrError(f"likelihood report {self.method!r} holds a log-likelihood that "
                              f"is not a finite number")
        positive = next((v for v in self.log_likelihoods if v > POSITIVE_TOLERANCE), None)
        if positive is not None:  # a loss (the negative log-likelihood) flips every comparison
            raise AutomrError(f"likelihood report {self.method!r} holds the log-likelihood "
                              f"{positive}: log P <= 0 (a loss has the other sign)")

    def values(self) -> dict[str, torch.Tensor]:
        """Per-sample values of each metric, in ``sample_ids`` order."""
        ll = torch.tensor(self.log_likelihoods, dtype=torch.float64)
        return {"target_ll": ll,
                "target_ll_per_token": ll / torch.tensor(self.tokens, dtype=torch.float64)}

    def resampled(self, n_resamples: int, seed: int, confidence: float = DEFAULT_CONFIDENCE,
                  resample: str = "samples") -> "LikelihoodReport":
        """This report with intervals from ``n_resamples`` resamples of ``seed`` of the
        ``resample`` units at ``confidence`` (itself when they are those already)."""
        if ((self.n_resamples, self.seed, self.resample) == (n_resamples, seed, resample)
                and all(iv.confidence == confidence for iv in self.metrics.values())):
            return self
        return build_likelihood_report(
            self.method, self.sample_ids, list(zip(self.log_likelihoods, self.tokens,
                                                   strict=True)),
            n_resamples=n_resamples, confidence=confidence, seed=seed, resample=resample)

    def save(self, path: Path | str) -> None:
        write_json_atomic(path, {
            "format": LIKELIHOOD_FORMAT, "method": self.method, "n_resamples": self.n_resamples,
            "seed": self.seed, "resample": self.resample,
            "metrics": {k: attrs.asdict(v) for k, v in self.metrics.items()},
            "samples": [{"id": s, "log_likelihood": v, "tokens": n} for s, v, n in
                        zip(self.sample_ids, self.log_likelihoods, self.tokens, strict=True)],
        })

    @classmethod
    def load(cls, path: Path | str) -> "LikelihoodReport":
        made_by = "`automr evaluate --measures likelihood`"
        data = read_json(path, made_by, LIKELIHOOD_FORMAT)
        with fields_of(path, made_by):
            samples = data["samples"]
            return cls(method=data["method"], sample_ids=tuple(s["id"] for s in samples),
                       log_likelihoods=tuple(float(s["log_likelihood"]) for s in samples),
                       tokens=tuple(whole(s["tokens"]) for s in samples),
                       metrics={k: Interval(**v) for k, v in data["metrics"].items()},
                       n_resamples=data["n_resamples"], seed=data["seed"],
                       resample=data.get("resample", "samples"))  # before it: samples


def _whole(count: object) -> bool:
    """Whether ``count`` is a whole number (of any numeric type: 2.9 in float32 too)."""
    try:
        return bool(int(count) == count)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return False


def build_likelihood_report(
    method: str, sample_ids: Sequence[str], values: Sequence[tuple[float, int]], *,
    n_resamples: int = DEFAULT_RESAMPLES, confidence: float = DEFAULT_CONFIDENCE, seed: int = 0,
    resample: str = "samples",
) -> LikelihoodReport:
    """Bootstrap the per-sample ``(log-likelihood, tokens)`` pairs of one method (intervals
    at ``confidence``, resampling ``samples`` or ``users``)."""
    if not values:
        raise AutomrError("cannot build a likelihood report from zero samples")
    fractional = next((n for _, n in values if not _whole(n)), None)
    if fractional is not None:  # floored, 2.9 tokens were 2: another per-token value
        raise AutomrError(f"likelihood report {method!r}: a token count of {fractional} is no "
                          f"whole number")
    report = LikelihoodReport(method=method, sample_ids=tuple(sample_ids),
                              log_likelihoods=tuple(float(v) for v, _ in values),
                              tokens=tuple(int(n) for _, n in values), metrics={},
                              n_resamples=n_resamples, seed=seed, resample=resample)
    groups = groups_for(resample, report.sample_ids)
    metrics = {k: bootstrap_ci(v, n_resamples=n_resamples, confidence=confidence, seed=seed,
                               groups=groups)
               for k, v in report.values().items()}
    return attrs.evolve(report, metrics=metrics)


def compare_likelihoods(
    report_a: LikelihoodReport, report_b: LikelihoodReport, *,
    n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0, resample: str = "samples",
) -> dict[str, PairedDifference]:
    """Paired bootstrap of A minus B per metric, samples aligned by id (resampling
    ``samples`` or ``users``)."""
    if set(report_a.sample_ids) != set(report_b.sample_ids):
        raise AutomrError(f"likelihood reports {report_a.method!r} and {report_b.method!r} "
                          f"cover different samples")
    position = {s: i for i, s in enumerate(report_b.sample_ids)}
    order = torch.tensor([position[s] for s in report_a.sample_ids], dtype=torch.long)
    values_a, values_b = report_a.values(), report_b.values()
    groups = groups_for(resample, report_a.sample_ids)
    return {k: paired_bootstrap(values_a[k], values_b[k][order], n_resamples=n_resamples,
                                seed=seed, groups=groups) for k in LIKELIHOOD_METRICS}
