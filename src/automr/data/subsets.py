"""Seeded subsets of samples (the same seed always picks the same samples)."""

from collections.abc import Sequence
from typing import TypeVar

import torch

T = TypeVar("T")


def seeded_subset(samples: Sequence[T], limit: int | None, seed: int) -> list[T]:
    """``limit`` samples drawn without replacement with ``seed``, kept in their original order;
    all of them when ``limit`` is None or not smaller than the number of samples."""
    if limit is None or limit >= len(samples):
        return list(samples)
    generator = torch.Generator().manual_seed(seed)
    keep = sorted(torch.randperm(len(samples), generator=generator)[:limit].tolist())
    return [samples[i] for i in keep]
