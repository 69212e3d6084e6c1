"""Training-period statistics of a prepared dataset: what the floors and BIGRec's popularity
injection count (the validation and test periods are never looked at)."""

import torch

from automr.data.prepared import PreparedDataset


def training_sequences(dataset: PreparedDataset) -> dict[str, list[int]]:
    """Every user's training-period items as catalog indices, in timeline order."""
    items: dict[str, list[str]] = {}
    for interaction in dataset.interactions:
        if dataset.boundaries.split_of(interaction.timestamp) == "train":
            items.setdefault(interaction.user, []).append(interaction.item)
    return {user: dataset.catalog.positions(ids) for user, ids in items.items()}


def popularity(dataset: PreparedDataset) -> torch.Tensor:
    """Training-period interaction count of every catalog item (float64, catalog order)."""
    items = [item for items in training_sequences(dataset).values() for item in items]
    return torch.bincount(torch.tensor(items, dtype=torch.long),
                          minlength=len(dataset.catalog)).double()
