"""Seeded subsets of samples (the same seed always picks the same samples)."""

from collections.abc import Sequence
from typing import TypeVar

import torch

from automr.checks import require_int
from automr.errors import AutomrError

T = TypeVar("T")


def seeded_subset(samples: Sequence[T], limit: int | None, seed: int) -> list[T]:
    """``limit`` samples drawn without replacement with ``seed``, kept in their original order.
    The draw is by position: the same samples in another order (a source with rows of one
    second in another order, docs/data.md) give another subset.

    ``limit=None`` (or a ``limit`` not smaller than the number of samples) keeps all of them;
    ``limit=0`` keeps none (an empty list). A negative ``limit`` is an :class:`AutomrError`
    (slicing would otherwise read it as "all but the last n"). The CLI's ``--samples 0`` means
    "all": commands turn 0 into None before calling this.
    """
    if limit is not None:  # a numpy integer too, as a Python int
        limit = require_int(limit, "the sample count")
        if limit < 0:
            raise AutomrError(f"the sample count must be >= 0, got {limit} (on the command "
                              f"line, 0 means all samples).")
    seed = require_int(seed, "the subset's seed")
    if not -2**63 <= seed < 2**64:
        raise AutomrError(f"the subset's seed must be a 64-bit whole number, got {seed!r}.")
    if limit is None or limit >= len(samples):
        return list(samples)
    generator = torch.Generator().manual_seed(seed)
    keep = sorted(torch.randperm(len(samples), generator=generator)[:limit].tolist())
    return [samples[i] for i in keep]
