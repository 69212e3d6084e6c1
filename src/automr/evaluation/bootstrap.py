"""Percentile-bootstrap intervals for metric means, single and paired.

Both functions resample the *samples* (evaluation cases) with replacement: resample ``r``
draws ``n`` sample indices uniformly from ``0..n-1`` and takes the mean of the per-sample
values at those indices. All resamples come from one ``[n_resamples, n]`` index matrix drawn
from a ``torch.Generator`` seeded with ``seed`` (built in row blocks of at most
``_BLOCK_ELEMENTS`` indices so memory stays bounded for large test sets; the same values in
the same order and seed always give the same numbers: the indices are positions, so the same
values listed in another order draw other resamples, and the interval moves within its
resampling noise). The interval is the ``(1 - confidence) / 2`` and
``(1 + confidence) / 2`` quantiles (linear interpolation) of the resampled means: the
percentile bootstrap.

The same ``seed`` and sample count give the same index matrix, so metrics bootstrapped with
one seed share their resamples, and a paired comparison resamples the two methods together.

With ``groups`` (one label per sample, e.g. its user from :func:`users_of`) both functions
resample the *groups* instead (the cluster bootstrap): resample ``r`` draws ``G`` of the ``G``
distinct labels with replacement, in the same way, and its mean is over every sample of every
drawn group (a group drawn twice counts twice). Samples of one user share most of their history,
so their values are correlated and the sample bootstrap's intervals are too narrow. With one
sample per group it is the sample bootstrap (the same numbers, up to float rounding).
"""

import re
from collections.abc import Sequence
from typing import Any

import attrs
import torch
from jaxtyping import Float, jaxtyped
from torch import Tensor

from automr.checks import beartype, require_int
from automr.defaults import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES
from automr.errors import AutomrError

_BLOCK_ELEMENTS = 1 << 22  # indices per block of the resample matrix (32 MiB of int64)
_SAMPLE_ID = re.compile(r"(.+?)@-?\d+:.", re.DOTALL)  # user@timestamp:target; no user id
# holds "@<digits>:", and one may hold a line break (a quoted CSV field)


def _not_below_low(interval: "Interval | PairedDifference", _: attrs.Attribute,
                   high: float) -> None:
    if not interval.low <= high:
        raise AutomrError(f"interval low {interval.low} exceeds high {high}")


def _share(_: object, __: attrs.Attribute, share: float) -> None:
    if not 0.0 <= share <= 1.0:
        raise AutomrError(f"share_leq_zero must lie in [0, 1], got {share}")


@beartype
@attrs.frozen
class Interval:
    """The mean of a metric over samples and its bootstrap confidence interval ``[low, high]``."""

    mean: float
    low: float
    high: float = attrs.field(validator=_not_below_low)
    confidence: float = DEFAULT_CONFIDENCE


@beartype
@attrs.frozen
class PairedDifference:
    """Method A minus method B on the same samples, with a paired bootstrap interval.

    ``mean`` is ``mean(a - b)`` over the samples; ``low``/``high`` bound it at ``confidence``.
    ``share_leq_zero`` is the fraction of bootstrap resamples whose mean difference is
    ``<= 0``: the bootstrap estimate of how often A would *not* beat B. Read it as a
    one-sided p-value-like number for "A is better than B" (small = A reliably better; 1.0
    when A never beats B, e.g. a method compared with itself). It is not a calibrated
    hypothesis test; with ``n_resamples`` resamples its resolution is ``1 / n_resamples``.
    """

    mean: float
    low: float
    high: float = attrs.field(validator=_not_below_low)
    share_leq_zero: float = attrs.field(validator=_share)
    n_samples: int = attrs.field()
    confidence: float = DEFAULT_CONFIDENCE


RESAMPLE_UNITS = ("samples", "users")
"""What a bootstrap may resample: the evaluation samples (the default), or the users
(:func:`users_of` their ids), taking all of a drawn user's samples."""


def groups_for(resample: str, sample_ids: Sequence[str]) -> tuple[str, ...] | None:
    """The ``groups`` that resample ``resample`` (one of :data:`RESAMPLE_UNITS`) of samples
    ``sample_ids``: None for samples, their users for users."""
    check_resample(resample)
    return None if resample == "samples" else users_of(sample_ids)


def check_resample(resample: object) -> None:
    """Refuse a ``resample`` that is none of :data:`RESAMPLE_UNITS`."""
    if resample not in RESAMPLE_UNITS:
        raise AutomrError(f"resample must be one of {', '.join(RESAMPLE_UNITS)}, got "
                          f"{resample!r}")


def check_seed(seed: object) -> int:
    """A bootstrap ``seed`` as a Python int (a numpy integer too), refused unless an int
    torch can seed with (-2**63 to 2**64 - 1): beyond, it failed only once every method had
    run."""
    seed = require_int(seed, "seed (of the bootstrap)")
    if not -2**63 <= seed < 2**64:
        raise AutomrError(f"seed (of the bootstrap) must be an int from -2**63 to 2**64 - 1, "
                          f"got {seed!r}")
    return seed


def resample_field() -> Any:
    """The ``resample`` field of a report (``samples`` unless said), checked by
    :func:`check_resample`."""
    return attrs.field(default="samples", validator=lambda _, __, value: check_resample(value))


def users_of(sample_ids: Sequence[str]) -> tuple[str, ...]:
    """The user of each sample id (``user@timestamp:target``, :attr:`automr.data.Sample.id`):
    the ``groups`` that resample users."""
    users = []
    for sample_id in sample_ids:
        match = _SAMPLE_ID.match(sample_id)
        if match is None:
            raise AutomrError(f"sample id {sample_id!r} is not user@timestamp:target")
        users.append(match.group(1))
    return tuple(users)


def _group_sums(values: Tensor, groups: Sequence[str]) -> tuple[Tensor, Tensor]:
    """Per group (in order of first appearance): the ``[..., G]`` sums of ``values`` and the
    ``[G]`` sample counts."""
    if len(groups) != values.shape[-1]:
        raise AutomrError(f"{len(groups)} groups for {values.shape[-1]} samples")
    first: dict[str, int] = {}
    index = torch.tensor([first.setdefault(g, len(first)) for g in groups], dtype=torch.long)
    sums = values.new_zeros((*values.shape[:-1], len(first))).index_add_(-1, index, values)
    counts = values.new_zeros(len(first)).index_add_(0, index, values.new_ones(len(groups)))
    return sums, counts


def _bootstrap_means(values: Tensor, *, n_resamples: int, seed: int,
                     groups: Sequence[str] | None = None) -> tuple[Tensor, Tensor]:
    """The ``[..., n_resamples]`` means (float64) of bootstrap resamples of ``values``
    (``[..., n]``: each row resampled with the same indices) and the ``[n_resamples]`` sample
    count of each resample (``n`` unless ``groups`` resamples groups of samples).

    Vectorised: each block of resamples is one index matrix and one gather + mean.
    """
    n = values.shape[-1]
    if n == 0:
        raise AutomrError("cannot bootstrap zero samples")
    if n_resamples < 1:
        raise AutomrError(f"n_resamples must be >= 1, got {n_resamples}")
    values = values.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(values).all()):  # inf passed for an interval beside its mean
        bad = int((~torch.isfinite(values)).sum())
        raise AutomrError(f"cannot bootstrap non-finite values ({bad} of {values.numel()} are "
                          f"inf or nan): a mean and its interval need finite samples")
    if groups is not None:
        sums, counts = _group_sums(values, groups)
    generator = torch.Generator().manual_seed(seed)
    units = n if groups is None else counts.shape[0]
    rows_per_block = max(1, _BLOCK_ELEMENTS // units)
    source = values if groups is None else sums
    # one index block and one gathered block, filled again for each block of resamples: fresh
    # ones each time grew the process to the size of the whole matrix (glibc kept them)
    block = torch.empty(min(rows_per_block, n_resamples) * units, dtype=torch.long)
    gathered = source.new_empty((*source.shape[:-1], block.numel()))
    means, sizes = [], []
    for start in range(0, n_resamples, rows_per_block):
        rows = min(rows_per_block, n_resamples - start)
        index = torch.randint(0, units, (rows, units), generator=generator,
                              out=block[: rows * units].view(rows, units))
        picked = torch.index_select(source, -1, index.view(-1),
                                    out=gathered[..., : rows * units]
                                    ).view(*source.shape[:-1], rows, units)
        if groups is None:
            means.append(picked.mean(dim=-1))
            sizes.append(torch.full((rows,), float(n), dtype=torch.float64))
        else:
            sizes.append(counts[index].sum(dim=-1))
            means.append(picked.sum(dim=-1) / sizes[-1])
    return torch.cat(means, dim=-1), torch.cat(sizes)


@jaxtyped(typechecker=beartype)
def bootstrap_ci(
    values: Float[Tensor, " batch"],
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
    groups: Sequence[str] | None = None,
) -> Interval:
    """The mean of ``values`` with its percentile-bootstrap ``confidence`` interval
    (resampling the samples, or the ``groups`` of samples when given: one label per sample)."""
    _check_confidence(confidence)
    means, _ = _bootstrap_means(values, n_resamples=n_resamples, seed=seed, groups=groups)
    low, high = _percentiles(means, confidence)
    mean = float(values.detach().to(torch.float64).mean())
    return Interval(mean=mean, low=low, high=high, confidence=confidence)


@jaxtyped(typechecker=beartype)
def paired_bootstrap(
    values_a: Float[Tensor, " batch"],
    values_b: Float[Tensor, " batch"],
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
    groups: Sequence[str] | None = None,
) -> PairedDifference:
    """Paired bootstrap of ``mean(a) - mean(b)`` where ``a[i]`` and ``b[i]`` are the same sample.

    Resampling the per-sample differences keeps each sample's two values together, so the
    interval reflects only how the methods differ, not how hard the samples are. ``groups``
    (one label per sample) resamples groups of samples instead, as :func:`bootstrap_ci`.
    """
    _check_confidence(confidence)
    diff = values_a.detach().to(torch.float64) - values_b.detach().to(torch.float64)
    (means, magnitudes), sizes = _bootstrap_means(torch.stack([diff, diff.abs()]),
                                                  n_resamples=n_resamples, seed=seed,
                                                  groups=groups)
    # a resample whose differences cancel exactly (1 - 1/log2(3) and its negative) sums to a
    # few ulps either side of 0: within the sum's rounding bound it is 0, so <= 0
    rounding = sizes * torch.finfo(torch.float64).eps * magnitudes
    low, high = _percentiles(means, confidence)
    return PairedDifference(
        mean=float(diff.mean()),
        low=low,
        high=high,
        share_leq_zero=float((means <= rounding).to(torch.float64).mean()),
        n_samples=diff.shape[0],
        confidence=confidence,
    )


def _percentiles(means: Tensor, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0
    bounds = torch.quantile(means, torch.tensor([tail, 1.0 - tail], dtype=means.dtype))
    low, high = float(bounds[0]), float(bounds[1])
    return low, max(low, high)  # guard against interpolation round-off on constant data


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise AutomrError(f"confidence must lie in (0, 1), got {confidence}")
