"""Annotated retrieval samples for training a retriever (eq. 6): query, memory, labels S'.

One row per training sample ``(u, y, t)``: the pooled query ``z_t``, the user's memory
``M_{u,t}`` padded to a common width with a mask, and the annotated distribution ``S'`` over
the real elements (eq. 5). Memory is stored per sample (a user's memory repeats across their
samples), which is simple and fast for the sizes retriever training sees.
"""

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Final

import attrs
import torch
from jaxtyping import Bool, Float, Int, jaxtyped
from torch import Tensor

from automr.checks import beartype
from automr.errors import AutomrError
from automr.storage import load_component, save_component

DATASET_FORMAT: Final = "automr.retrieval-dataset/1"
DATA_FILE: Final = "data.safetensors"
SUM_TOLERANCE: Final = 1e-3


@beartype
@attrs.frozen(eq=False)
class RetrievalSample:
    """One annotated sample before padding: query, its memory's keys, and labels ``S'``."""

    query: Float[Tensor, " hidden"]
    keys: Float[Tensor, "mem hidden"]
    targets: Float[Tensor, " mem"]


def _real_keys_finite(keys: Tensor, mask: Tensor, rows: int = 256) -> bool:
    """Whether every real key (``mask``) is finite, checked ``rows`` samples at a time: a copy
    of the real keys and its check cost about three times the keys' memory."""
    return all(bool(torch.isfinite(keys[i : i + rows]).logical_or_(~mask[i : i + rows, :, None])
                    .all()) for i in range(0, len(keys), rows))


@beartype
@attrs.frozen(eq=False)
class RetrievalDataset:
    """``N`` annotated samples with memories padded to ``mem`` elements.

    Checked on construction: shapes agree; every row has at least one real element; targets
    are non-negative, zero at masked elements and sum to 1 over each row (within 1e-3);
    queries and real keys are finite. ``metadata`` (free-form strings such as the model
    fingerprint, layer and pooling of the keys, or the label variant) is saved along and
    passed on to retrievers trained on the dataset as their provenance.
    """

    queries: Float[Tensor, "n hidden"]
    keys: Float[Tensor, "n mem hidden"]
    mask: Bool[Tensor, "n mem"]
    targets: Float[Tensor, "n mem"]
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=dict)

    def __attrs_post_init__(self) -> None:
        n, hidden = self.queries.shape
        if self.keys.shape[0] != n or self.keys.shape[2] != hidden:
            raise AutomrError(
                f"RetrievalDataset: keys {tuple(self.keys.shape)} do not match queries "
                f"{tuple(self.queries.shape)} (expected [{n}, mem, {hidden}])"
            )
        if self.mask.shape != self.keys.shape[:2] or self.targets.shape != self.mask.shape:
            raise AutomrError(
                f"RetrievalDataset: mask {tuple(self.mask.shape)} and targets "
                f"{tuple(self.targets.shape)} must both be [{n}, {self.keys.shape[1]}]"
            )
        if n and not bool(self.mask.any(1).all()):
            raise AutomrError("RetrievalDataset: every sample needs at least one real memory "
                              "element (drop samples with an empty memory)")
        if not bool(torch.isfinite(self.queries).all()) or not _real_keys_finite(self.keys,
                                                                                self.mask):
            raise AutomrError("RetrievalDataset: queries and real keys must be finite")
        targets = self.targets
        if not bool(torch.isfinite(targets).all()) or bool((targets < 0).any()):
            raise AutomrError("RetrievalDataset: targets must be finite and non-negative")
        if bool((targets.masked_fill(self.mask, 0.0) != 0).any()):
            raise AutomrError("RetrievalDataset: targets must be 0 at masked elements")
        sums = targets.double().sum(1)
        if n and not bool(((sums - 1).abs() <= SUM_TOLERANCE).all()):
            worst = float((sums - 1).abs().max())
            raise AutomrError(
                f"RetrievalDataset: targets must sum to 1 over each row (off by up to "
                f"{worst:.3g}); pass the softmax of eq. 5, not raw deltas"
            )

    def __len__(self) -> int:
        return self.queries.shape[0]

    @property
    def hidden_size(self) -> int:
        """The width of queries and keys."""
        return self.queries.shape[1]

    @property
    def mem_size(self) -> int:
        """The padded memory width ``mem`` (the most elements of any sample)."""
        return self.mask.shape[1]

    def to(self, device: str | torch.device) -> "RetrievalDataset":
        """A copy with queries, keys, mask and targets on ``device`` (metadata kept; float64
        targets become float32 on MPS, which has no float64)."""
        targets = self.targets
        if torch.device(device).type == "mps" and targets.dtype == torch.float64:
            targets = targets.float()
        return self._derived(queries=self.queries.to(device), keys=self.keys.to(device),
                             mask=self.mask.to(device), targets=targets.to(device))

    @jaxtyped(typechecker=beartype)
    def select(self, indices: Int[Tensor, " k"]) -> "RetrievalDataset":
        """The rows at ``indices``, with trailing all-padding memory columns dropped."""
        mask = self.mask[indices]
        used = mask.any(0).nonzero()
        width = int(used.max()) + 1 if used.numel() else 0
        return self._derived(queries=self.queries[indices], keys=self.keys[indices, :width],
                             mask=mask[:, :width], targets=self.targets[indices, :width])

    def _derived(self, **tensors: Tensor) -> "RetrievalDataset":
        """This dataset with ``tensors`` in place of its own: rows of it (a subset, a batch, a
        copy on another device), which hold only what its checks passed, so they are not
        checked again (a full check of every batch cost more than training on it)."""
        derived = object.__new__(RetrievalDataset)
        for field in attrs.fields(RetrievalDataset):
            value = tensors.get(field.name, getattr(self, field.name))
            object.__setattr__(derived, field.name, dict(value) if field.name == "metadata"
                               else value)
        return derived

    def batches(
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator["RetrievalDataset"]:
        """Consecutive (or, with ``shuffle``, randomly ordered) batches of ``batch_size`` rows.

        Every row comes exactly once; the last batch may be smaller. Each batch is trimmed to
        its own widest memory. ``generator`` seeds the shuffle (on the data's device).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        device = self.queries.device
        if shuffle:
            order = torch.randperm(len(self), generator=generator, device=device)
        else:
            order = torch.arange(len(self), device=device)
        for start in range(0, len(self), batch_size):
            yield self.select(order[start : start + batch_size])

    def save(self, directory: Path | str) -> None:
        """Write ``config.json`` and ``data.safetensors`` into ``directory`` (created); the
        metadata goes in as the provenance."""
        tensors = {"queries": self.queries, "keys": self.keys, "mask": self.mask,
                   "targets": self.targets}
        save_component(directory, DATASET_FORMAT,
                       {"size": len(self), "mem": self.mem_size, "hidden_size": self.hidden_size},
                       tensors, DATA_FILE, self.metadata)

    @classmethod
    def load(cls, directory: Path | str, hidden_size: int | None = None) -> "RetrievalDataset":
        """Read a dataset written by :meth:`save`; refuse one of another ``hidden_size``."""
        meta, tensors = load_component(directory, DATASET_FORMAT, DATA_FILE,
                                       "RetrievalDataset.save")
        if not tensors:
            raise AutomrError(f"{directory} is not a saved retrieval dataset: {DATA_FILE} is "
                              f"missing (write it with RetrievalDataset.save)")
        if hidden_size is not None and meta["hidden_size"] != hidden_size:
            raise AutomrError(
                f"the retrieval dataset in {directory} has hidden size {meta['hidden_size']}, "
                f"but {hidden_size} is expected: it was built with another model"
            )
        metadata = meta.get("provenance", meta.get("metadata", {}))  # "metadata": older saves
        return cls(queries=tensors["queries"], keys=tensors["keys"], mask=tensors["mask"],
                   targets=tensors["targets"], metadata=metadata)


@beartype
def collate(
    samples: Sequence[RetrievalSample], metadata: Mapping[str, str] | None = None
) -> RetrievalDataset:
    """Pad samples with memories of different sizes into one :class:`RetrievalDataset`."""
    if not samples:
        raise AutomrError("collate needs at least one sample")
    hidden = samples[0].query.shape[0]
    width = max(s.keys.shape[0] for s in samples)
    keys = samples[0].keys.new_zeros(len(samples), width, hidden)  # in the keys' dtype
    mask = torch.zeros(len(samples), width, dtype=torch.bool, device=keys.device)
    targets = samples[0].targets.new_zeros(len(samples), width)  # in the labels' dtype
    for row, sample in enumerate(samples):
        if sample.query.shape[0] != hidden or sample.keys.shape[1] != hidden:
            raise AutomrError(f"collate: sample {row} has hidden size "
                              f"{sample.keys.shape[1]}, the first has {hidden}")
        if sample.targets.shape[0] != sample.keys.shape[0]:
            raise AutomrError(f"collate: sample {row} has {sample.keys.shape[0]} keys but "
                              f"{sample.targets.shape[0]} targets")
        size = sample.keys.shape[0]
        keys[row, :size] = sample.keys
        mask[row, :size] = True
        targets[row, :size] = sample.targets
    queries = torch.stack([s.query for s in samples])
    return RetrievalDataset(queries=queries, keys=keys, mask=mask, targets=targets,
                            metadata=metadata or {})
