"""Seeded subsets of a sample's memory elements, for annotating only some of them.

Eq. 6's KL(S' || S) is defined on any subset of a sample's memory: the labels S' are the
softmax of eq. 5 over the annotated elements and the retriever's S the softmax of its scores
over the same elements. Annotating ``size`` elements per sample instead of all of them cuts the
upper-half work of the concat layout (where nothing of the prompt can be shared) by
``count / size``. The subset depends only on the seed and the sample's id, so it is the same
whatever order, shard or machine the sample is annotated in.
"""

import zlib

import torch

from automr.errors import AutomrError


def element_subset(count: int, size: int | None, seed: int, key: str) -> list[int]:
    """Ascending indices of ``size`` of a sample's ``count`` memory elements, drawn without
    replacement with a generator seeded by ``seed`` and the sample id ``key``; all of them
    (``0..count-1``) when ``size`` is None or not smaller than ``count``."""
    if size is not None and size < 1:
        raise AutomrError(f"the element subset size must be at least 1 (or None for all), "
                          f"got {size}")
    if size is None or size >= count:
        return list(range(count))
    # torch's CPU generator keeps 32 bits of a seed: hash the seed and the key together into them
    generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}\0{key}".encode()))
    return sorted(torch.randperm(count, generator=generator)[:size].tolist())
