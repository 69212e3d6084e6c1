"""Full-ranking next-item metrics, computed from the rank of the one target item.

Every evaluation sample has exactly one relevant item (the next item the user interacted
with). A method ranks the *whole* catalog (full-ranking protocol, paper §5.1.3) and all that
matters is the 0-based ``rank`` of the target in that ranking:

- ``Recall@K = 1`` if ``rank < K`` else ``0`` (with one relevant item, Recall@K equals HR@K);
- ``NDCG@K = 1 / log2(rank + 2)`` if ``rank < K`` else ``0`` (the ideal DCG of a single
  relevant item is ``1 / log2(2) = 1``, so no normalisation is left to do).

A *miss* (the target does not appear in a method's ranked list at all) has rank equal to the
catalog size ``n_items`` and scores 0 on every metric: given ``n_items``, the metrics count a
rank at or above it as a miss at any ``K`` (a ``K`` above the catalog's size included, where
the rank alone would be below ``K``).

Seen items: by default the ranking keeps the items the user already interacted with (the
paper does not say either way). ``exclude`` masks (or lists) remove such items from the
ranking - every item except the target itself - which can only move the target up.
"""

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence

import torch
from jaxtyping import Bool, Float, Int, jaxtyped
from torch import Tensor

from automr.checks import beartype
from automr.defaults import DEFAULT_KS
from automr.errors import AutomrError, WrongTypeError


def metric_names(ks: Sequence[int] = DEFAULT_KS) -> tuple[str, ...]:
    """The metric keys for cut-offs ``ks``: ``recall@K`` for each K, then ``ndcg@K``."""
    check_ks(ks)
    return tuple(f"recall@{k}" for k in ks) + tuple(f"ndcg@{k}" for k in ks)


@jaxtyped(typechecker=beartype)
def ranks_from_scores(
    scores: Float[Tensor, "batch items"],
    targets: Int[Tensor, " batch"],
    exclude: Bool[Tensor, "batch items"] | None = None,
) -> Int[Tensor, " batch"]:
    """The 0-based rank of each target when every catalog item is ranked by score (highest first).

    ``scores[b, i]`` is the score of item ``i`` for sample ``b``; ``targets[b]`` is the column
    of sample ``b``'s target. Ties are broken *pessimistically*: the rank is the number of
    other items whose score is ``>=`` the target's score, so a target tied with ``m`` other
    items is ranked below all of them, and a constant score vector ranks every target last
    (``items - 1``). This keeps a degenerate model (all scores equal) from looking good.

    ``exclude[b, i] = True`` removes item ``i`` from sample ``b``'s ranking (e.g. items the user
    has already seen, see :func:`seen_mask`); the target itself is never removed. ``-inf``
    scores are allowed (an item that can never be recommended, e.g. a padding id); NaN is not.
    """
    n_items = scores.shape[1]
    if torch.isnan(scores).any():
        raise AutomrError("scores contain NaN; every catalog item needs a comparable score")
    if targets.numel() and (targets.min() < 0 or targets.max() >= n_items):
        raise AutomrError(
            f"target indices must lie in [0, {n_items}); got range "
            f"[{int(targets.min())}, {int(targets.max())}]"
        )
    targets = targets.to(device=scores.device, dtype=torch.long)
    target_scores = scores.gather(1, targets[:, None])
    at_least_as_good = scores >= target_scores
    at_least_as_good.scatter_(1, targets[:, None], False)  # the target does not outrank itself
    if exclude is not None:
        at_least_as_good &= ~exclude.to(scores.device)
    return at_least_as_good.sum(dim=1)


@jaxtyped(typechecker=beartype)
def seen_mask(histories: Sequence[Iterable[int]], n_items: int) -> Bool[Tensor, "batch items"]:
    """A ``[len(histories), n_items]`` mask that is True at every item id in each history.

    Pass it as ``exclude`` to :func:`ranks_from_scores` to rank only unseen items (plus the
    target). Ids must be valid column indices of the score matrix (``0 <= id < n_items``).
    """
    mask = torch.zeros(len(histories), n_items, dtype=torch.bool)
    for row, history in enumerate(histories):
        ids = torch.as_tensor(list(history), dtype=torch.long)
        if ids.numel() and (ids.min() < 0 or ids.max() >= n_items):
            raise AutomrError(f"history {row} has item ids outside [0, {n_items})")
        mask[row, ids] = True
    return mask


@beartype
def rank_in_list(
    ranked: Sequence[int], target: int, n_items: int, exclude: Iterable[int] = ()
) -> int:
    """The 0-based rank of ``target`` in an explicit ranked list of item ids (best first).

    For methods that output a ranked list (e.g. grounded generations) instead of scores.
    A target missing from the list is a miss: rank ``n_items`` (the catalog size), which
    scores 0 on every metric. Items in ``exclude`` other than the target are dropped from the
    list before the target is located; repeated ids count once (at their first position).
    Ids are catalog indices in ``[0, n_items)``, as :func:`ranks_from_scores` takes them.
    """
    if n_items < 1:
        raise AutomrError(f"n_items must be >= 1, got {n_items}")
    outside = [item for item in (target, *ranked) if not 0 <= item < n_items]
    if outside:  # a target beyond the catalog was a hit, a long list ranked past n_items
        raise AutomrError(f"item ids must lie in [0, {n_items}) (catalog indices); got "
                          f"{outside[0]}")
    skip = set(exclude) - {target}
    seen: set[int] = set()
    rank = 0
    for item in ranked:
        if item in skip or item in seen:
            continue
        if item == target:
            return rank
        seen.add(item)
        rank += 1
    return n_items


@jaxtyped(typechecker=beartype)
def recall_at_k(ranks: Int[Tensor, " batch"], k: int,
                n_items: int | None = None) -> Float[Tensor, " batch"]:
    """Per-sample Recall@K: 1.0 where the target's rank is below ``k`` (and, given the
    catalog's size ``n_items``, below it: not a miss), else 0.0."""
    return _hits(ranks, k, n_items).to(torch.float64)


@jaxtyped(typechecker=beartype)
def ndcg_at_k(ranks: Int[Tensor, " batch"], k: int,
              n_items: int | None = None) -> Float[Tensor, " batch"]:
    """Per-sample NDCG@K with one relevant item: ``1 / log2(rank + 2)`` if ``rank < k`` (and,
    given ``n_items``, not a miss), else 0."""
    hits = _hits(ranks, k, n_items)
    gain = 1.0 / torch.log2(ranks.to(torch.float64) + 2.0)
    return torch.where(hits, gain, torch.zeros_like(gain))


@jaxtyped(typechecker=beartype)
def per_sample_metrics(
    ranks: Int[Tensor, " batch"], ks: Sequence[int] = DEFAULT_KS, n_items: int | None = None,
) -> dict[str, Float[Tensor, " batch"]]:
    """Every metric of :func:`metric_names` for every sample (float64), keyed by name (a rank
    at or above ``n_items``, when given, a miss)."""
    values = {f"recall@{k}": recall_at_k(ranks, k, n_items) for k in ks}
    values.update({f"ndcg@{k}": ndcg_at_k(ranks, k, n_items) for k in ks})
    return values


@jaxtyped(typechecker=beartype)
def mean_metrics(ranks: Int[Tensor, " batch"], ks: Sequence[int] = DEFAULT_KS,
                 n_items: int | None = None) -> dict[str, float]:
    """The mean of every metric over the samples (no intervals; see ``evaluation.report``)."""
    if ranks.numel() == 0:
        raise AutomrError("cannot average metrics over zero samples")
    return {name: float(v.mean()) for name, v in per_sample_metrics(ranks, ks, n_items).items()}


def _hits(ranks: Tensor, k: int, n_items: int | None) -> Tensor:
    check_ks((k,))
    _check_ranks(ranks)
    if n_items is not None and n_items < 1:
        raise AutomrError(f"n_items must be >= 1, got {n_items}")
    return ranks < (k if n_items is None else min(k, n_items))


def ndcg_of_rank(rank: int, k: int) -> float:
    """NDCG@K of a single rank, as a plain float (reference for tests and docs)."""
    return 1.0 / math.log2(rank + 2) if rank < k else 0.0


def check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    """Cut-offs as a tuple of Python ints (numpy integers too), refused unless distinct
    positive integers (an empty list too)."""
    if isinstance(ks, (str, Mapping)) or not isinstance(ks, Iterable):
        raise WrongTypeError(f"cut-offs K are a sequence of positive integers (e.g. (5, 10)), "
                             f"got {ks!r}")
    ks = list(ks)
    if any(isinstance(k, bool) or not isinstance(k, numbers.Integral) for k in ks):
        raise WrongTypeError(f"cut-offs K must be positive integers, got {tuple(ks)}")
    if not ks or any(k < 1 for k in ks):
        raise AutomrError(f"cut-offs K must be positive integers, got {tuple(ks)}")
    if len(set(ks)) != len(ks):
        raise AutomrError(f"cut-offs K must be distinct, got {tuple(ks)}")
    return tuple(int(k) for k in ks)


def _check_ranks(ranks: Tensor) -> None:
    if ranks.numel() and ranks.min() < 0:
        raise AutomrError("ranks are 0-based and cannot be negative")
