"""The floors every learned recommender must clear: popularity and item-to-item co-occurrence.

Both count the *training period* only (interactions before the validation window), like
SASRec's training data, and learn nothing.

- :class:`PopularityMethod` (``pop``): items by their number of training-period interactions.
- :class:`CooccurrenceMethod` (``cooc``): an item ``b`` scores, for a sample, the number of
  times ``b`` followed one of the sample's last ``query_items`` history items within
  ``window`` steps in some user's training-period sequence (each such follow counts 1);
  popularity breaks ties, so an item that never followed the history is ranked by popularity.
  Defaults (``window=10``, ``query_items=5``) have the best validation NDCG@5 of a grid
  ``window`` in {1, 2, 3, 5, 10} x ``query_items`` in {1, 3, 5, 10} on ML-100K's 4,899
  validation samples (``docs/results/floors/cooc-grid.json``).
"""

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import torch

from automr.checks import beartype, int_field
from automr.data import PreparedDataset, Sample
from automr.data.popularity import popularity, training_sequences
from automr.evaluation.metrics import ranks_from_scores, seen_mask


def _rank(scores: torch.Tensor, dataset: PreparedDataset, samples: Sequence[Sample],
          exclude_seen: bool) -> list[int]:
    """Ranks of the targets; with ``exclude_seen``, the sample's history items are removed
    from its ranking (the target never is)."""
    catalog = dataset.catalog
    targets = torch.tensor(catalog.positions(s.target for s in samples), dtype=torch.long)
    exclude = (seen_mask([catalog.positions(s.history) for s in samples], scores.shape[1])
               if exclude_seen else None)
    return ranks_from_scores(scores, targets, exclude).tolist()


def _csr_counts(rows: list[int] | torch.Tensor, cols: list[int] | torch.Tensor,
                shape: tuple[int, int]) -> torch.Tensor:
    """Sparse CSR float64 matrix of ``shape``: entry ``(r, c)`` counts the pairs ``(r, c)``
    in ``zip(rows, cols)``. The pairs are counted by one sort of their row-major keys (a COO
    tensor's coalesce took three times as long at 24 M pairs)."""
    width = shape[1]
    keys, counts = torch.unique(torch.as_tensor(rows, dtype=torch.long) * width
                                + torch.as_tensor(cols, dtype=torch.long), return_counts=True)
    crow = torch.zeros(shape[0] + 1, dtype=torch.long)
    crow[1:] = torch.bincount(keys // width, minlength=shape[0]).cumsum(0)
    with warnings.catch_warnings():  # CSR is marked beta; products and to_dense are exact
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, keys % width, counts.double(), shape,
                                       check_invariants=True)


def follow_pairs(sequences: Sequence[Sequence[int]], window: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ``(a, b)`` where ``b`` comes 1 to ``window`` steps after ``a`` in one of
    ``sequences`` (item positions), as two int64 tensors: all sequences at once, one gap at a
    time, a pair kept where both ends lie in the same sequence."""
    items = torch.tensor([i for sequence in sequences for i in sequence], dtype=torch.long)
    owner = torch.repeat_interleave(torch.tensor([len(s) for s in sequences], dtype=torch.long))
    rows, cols = [], []
    for gap in range(1, window + 1):
        same = owner[:-gap] == owner[gap:]
        rows.append(items[:-gap][same])
        cols.append(items[gap:][same])
    return torch.cat(rows), torch.cat(cols)


@beartype
@attrs.define(eq=False)
class PopularityMethod:
    """The same ranking for everyone: training-period popularity (ties ranked pessimistically)."""

    dataset: PreparedDataset
    exclude_seen: bool = False
    _counts: torch.Tensor | None = attrs.field(default=None, init=False, repr=False)

    @property
    def settings(self) -> Mapping[str, Any]:
        """What decides the ranks: the training-period popularity and ``exclude_seen``."""
        return {"popularity": "training period", "exclude_seen": self.exclude_seen}

    def rank(self, samples: Sequence[Sample]) -> list[int]:
        """Each sample's target's 0-based rank among all catalog items by training-period
        popularity (ties pessimistic; the history left out with ``exclude_seen``). The counts
        are computed on the first call and kept."""
        if self._counts is None:
            self._counts = popularity(self.dataset)
        return _rank(self._counts.expand(len(samples), -1), self.dataset, samples,
                     self.exclude_seen)


@beartype
@attrs.define(eq=False)
class CooccurrenceMethod:
    """Counts of "followed within ``window`` steps" from the sample's last ``query_items``
    history items, popularity as the tie-break (module docstring)."""

    dataset: PreparedDataset
    window: int = int_field(attrs.validators.gt(0), default=10)
    query_items: int = int_field(attrs.validators.gt(0), default=5)
    exclude_seen: bool = False
    _follows: torch.Tensor | None = attrs.field(default=None, init=False, repr=False)
    _tie_break: torch.Tensor | None = attrs.field(default=None, init=False, repr=False)

    @property
    def settings(self) -> Mapping[str, Any]:
        """What decides the ranks: ``window``, ``query_items`` and ``exclude_seen``."""
        return {"cooccurrence": {"window": self.window, "query_items": self.query_items},
                "exclude_seen": self.exclude_seen}

    def follows(self) -> torch.Tensor:
        """Sparse CSR ``[items, items]``: entry ``(a, b)`` counts ``b`` within ``window``
        steps after ``a`` in a training-period sequence (built once)."""
        if self._follows is None:
            rows, cols = follow_pairs(list(training_sequences(self.dataset).values()),
                                      self.window)
            n = len(self.dataset.catalog)
            self._follows = _csr_counts(rows, cols, (n, n))
        return self._follows

    def tie_break(self) -> torch.Tensor:
        """Popularity scaled below 1, so that it only orders items with equal counts
        (computed once)."""
        if self._tie_break is None:
            pop = popularity(self.dataset)
            self._tie_break = pop / (pop.max() + 1)
        return self._tie_break

    def counts(self, samples: Sequence[Sample]) -> torch.Tensor:
        """Dense ``[samples, items]`` (float64): the rows of :meth:`follows` of each sample's
        last ``query_items`` history items, summed (an item there twice counts twice). The
        rows are gathered: torch's sparse CSR product kept ~8 MB of every product at 100k
        items and never gave it back (a whole test split: GBs)."""
        catalog, follows = self.dataset.catalog, self.follows()
        queried = [s.history[-self.query_items:] for s in samples]
        rows = torch.tensor([row for row, items in enumerate(queried) for _ in items],
                            dtype=torch.long)
        items = torch.tensor(catalog.positions(i for items in queried for i in items),
                             dtype=torch.long)
        crow, cols, values = follows.crow_indices(), follows.col_indices(), follows.values()
        starts, lengths = crow[items], crow[items + 1] - crow[items]
        at = (torch.repeat_interleave(starts - (lengths.cumsum(0) - lengths), lengths)
              + torch.arange(int(lengths.sum())))  # each queried item's row entries
        counts = torch.zeros(len(samples), len(catalog), dtype=values.dtype)
        return counts.index_put_((torch.repeat_interleave(rows, lengths), cols[at]),
                                 values[at], accumulate=True)

    def rank(self, samples: Sequence[Sample]) -> list[int]:
        """Each sample's target's 0-based rank by follow counts plus the popularity tie-break
        (ties pessimistic; the history left out with ``exclude_seen``), 256 samples at a time."""
        tie_break = self.tie_break()
        ranks: list[int] = []
        for start in range(0, len(samples), 256):
            chunk = samples[start : start + 256]
            ranks += _rank(self.counts(chunk) + tie_break, self.dataset, chunk,
                           self.exclude_seen)
        return ranks
