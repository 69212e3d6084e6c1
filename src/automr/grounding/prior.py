"""BIGRec's statistical information injection (Bao et al. 2023, §3.3 and their released
``adjust_pda.py``): re-weight the grounding distance by a prior over items.

With ``d`` an item's L2 distance to the generated text, min-max normalised over the catalog
per sample, and ``p`` its prior score min-max normalised to [0, 1], items are ranked by
``d * (1 + p) ** -gamma`` (smallest first). ``gamma = 0`` is the plain L2 ranking; a large
``gamma`` tends to the prior's ranking after the nearest title, which stays first (its
normalised distance is 0), as in BIGRec's code. ``gamma`` is chosen on validation samples from
BIGRec's grid (0, 0.01, ..., 0.99, 1, 2, ..., 99: their ``adjust_ci.py``'s; the 0, 1, ..., 99 of
their ``adjust_pda.py`` is part of it). The prior is one score per item
(training-period popularity: their ``adjust_pda.py``) or one row per sample (a conventional
model's scores, "collaborative information": their ``adjust_ci.py`` with SASRec).
"""

import math
from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float, Int, jaxtyped
from torch import Tensor

from automr.checks import beartype
from automr.errors import AutomrError
from automr.evaluation.metrics import per_sample_metrics, ranks_from_scores

GAMMA_GRID = tuple(i / 100 for i in range(100)) + tuple(float(i) for i in range(1, 100))


@jaxtyped(typechecker=beartype)
def min_max(values: Float[Tensor, "*batch items"]) -> Float[Tensor, "*batch items"]:
    """Scale each row to [0, 1] (a constant row becomes 0)."""
    low = values.amin(-1, keepdim=True)
    span = values.amax(-1, keepdim=True) - low
    return (values - low) / torch.where(span > 0, span, torch.ones_like(span))


@jaxtyped(typechecker=beartype)
def adjusted_distances(
    distances: Float[Tensor, "batch items"], prior: Float[Tensor, "*prior_batch items"],
    gamma: float,
) -> Float[Tensor, "batch items"]:
    """``min_max(distances) * (1 + prior) ** -gamma`` (``prior`` already in [0, 1]: one row
    for every sample, or one per sample)."""
    return _weighted(min_max(distances), prior, gamma)


def _weighted(normalised: Tensor, prior: Tensor, gamma: float) -> Tensor:
    """``normalised * (1 + prior) ** -gamma``: :func:`adjusted_distances` after its min-max."""
    return normalised * (1 + prior.to(normalised)) ** -gamma


@jaxtyped(typechecker=beartype)
def choose_gamma(
    distances: Float[Tensor, "batch items"], prior: Float[Tensor, "*prior_batch items"],
    targets: Int[Tensor, " batch"], metric: str = "ndcg@5",
    grid: Sequence[float] = GAMMA_GRID, exclude: Bool[Tensor, "batch items"] | None = None,
) -> tuple[float, dict[float, float]]:
    """The ``gamma`` of ``grid`` with the best mean ``metric`` on these (validation) samples
    (the smallest on ties), and every gamma's value; ``exclude`` as in
    :func:`~automr.evaluation.metrics.ranks_from_scores` (e.g. the samples' seen items)."""
    return best_gamma(gamma_metrics(distances, prior, targets, metric, grid, exclude), grid)


@jaxtyped(typechecker=beartype)
def gamma_metrics(
    distances: Float[Tensor, "batch items"], prior: Float[Tensor, "*prior_batch items"],
    targets: Int[Tensor, " batch"], metric: str = "ndcg@5",
    grid: Sequence[float] = GAMMA_GRID, exclude: Bool[Tensor, "batch items"] | None = None,
) -> Float[Tensor, "grid batch"]:
    """Each sample's ``metric`` under each gamma of ``grid`` (row ``i``: ``grid[i]``), as
    :func:`choose_gamma` weighs them. A sample's values depend on its own row only, so the
    samples can be taken a chunk at a time (a large catalog's ``[samples, items]`` matrices
    need not all be held at once) and the columns joined for :func:`best_gamma`."""
    k = int(metric.split("@")[1])
    normalised = min_max(distances)  # once, not per gamma: the same adjusted distances
    ranks_from_scores(-normalised, targets, exclude)  # its checks (NaN, targets), once
    targets = targets.to(device=distances.device, dtype=torch.long)[:, None]
    counted = (torch.ones_like(normalised, dtype=torch.bool) if exclude is None
               else ~exclude.to(distances.device))
    counted.scatter_(1, targets, False)  # the target does not outrank itself
    # every gamma in the same buffers: new [samples, items] tensors for each of 199 gammas
    # fragmented the heap (100k items, 167 samples at a time: 0.9 -> 1.6 GB held)
    base = 1 + prior.to(normalised)
    weight, adjusted = torch.empty_like(base), torch.empty_like(normalised)
    outranks = torch.empty_like(counted)
    rows = []
    for gamma in grid:  # ranks_from_scores(-adjusted, ...) of each gamma, in fewer passes
        torch.mul(normalised, torch.pow(base, -gamma, out=weight), out=adjusted)  # _weighted
        torch.le(adjusted, adjusted.gather(1, targets), out=outranks)
        ranks = outranks.logical_and_(counted).sum(1)
        rows.append(per_sample_metrics(ranks, (k,))[metric].cpu())
    return torch.stack(rows) if rows else torch.zeros(0, len(distances), dtype=torch.float64)


@jaxtyped(typechecker=beartype)
def best_gamma(
    per_sample: Float[Tensor, "grid batch"], grid: Sequence[float] = GAMMA_GRID,
) -> tuple[float, dict[float, float]]:
    """The gamma of ``grid`` whose row of :func:`gamma_metrics` has the best mean (the
    smallest on ties), and every gamma's mean."""
    if len(per_sample) != len(grid) or 0 in per_sample.shape:
        raise AutomrError(f"best_gamma takes one value per gamma ({len(grid)}) and sample, "
                          f"got {tuple(per_sample.shape)}")
    # an exact mean: equal ranks in another sample order, equal value
    values = {gamma: math.fsum(row) / len(row)
              for gamma, row in zip(grid, per_sample.tolist(), strict=True)}
    best = max(values.values())  # a tie goes to the smallest gamma
    return min(g for g, v in values.items() if v == best), values
