"""The random-retrieval baseline (the paper's RQ2): scores unrelated to usefulness.

Scores are a seeded *hash* of each key and of the row's memory (bit patterns of the float32
values of its real keys, mixed with an integer hash), mapped to ``[0, 1)``. So:

* the same seed and the same memory (its keys in the same dtype) give the same scores, in any
  process and on any device;
* scores are pseudo-random across elements and across memories, and carry no information about
  content (unlike a random projection, similar keys do not get similar scores);
* copies of one key in a memory (an item the user met twice, in an item memory) get scores
  of their own, so the top element is a draw uniform over the elements, as the exact
  ``random`` expectation (the mean over elements) assumes;
* an element's score depends only on (seed, its row's real keys in order, its key): not on
  the query, the other rows of the batch, the padding width, the batch order or how many
  calls came before. Calls therefore do **not** advance a random stream; to draw a different
  selection, change ``seed``.

Keys are read from the memory as saved, so their bits are the same however the samples are
batched; the query is not hashed, as its last bits move with the batch's padding (a sample's
pick would change with the batch size). A memory built again on another CPU or on a GPU can
differ in its keys' last bits, and then the draws differ (equally random; a memory built on
an H200 drew the same element for 55 of 992 samples): compare random arms drawn from one
memory.
"""

import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import final

import torch
from jaxtyping import Bool, Float, Int, jaxtyped
from torch import Tensor

from automr.checks import beartype
from automr.errors import AutomrError
from automr.retrievers.storage import read_retriever, saved_setting, write_retriever

_MASK32 = 0xFFFFFFFF


def _mul32(x: Tensor, constant: int) -> Tensor:
    """``x * constant mod 2**32`` for int64 tensors holding uint32 values, without overflow."""
    low, high = x & 0xFFFF, x >> 16
    return (low * constant + (((high * (constant & 0xFFFF)) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer finaliser (lowbias32, C. Wellons): every input bit affects every output
    bit."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _seed_word(seed: int) -> int:
    """The 32 bits a seed is hashed with: the seed itself in ``[0, 2**32)`` (every draw made so
    far), else a CRC-32 of its digits, so that seeds ``2**32`` apart (or ``-1`` and
    ``2**32 - 1``), which kept only their low 32 bits, draw apart."""
    return seed if 0 <= seed <= _MASK32 else zlib.crc32(str(seed).encode())


def _hash_vectors(vectors: Float[Tensor, "... hidden"], seed: int) -> Int[Tensor, "..."]:
    """A 32-bit hash of each vector's float32 bit pattern (coordinate order matters)."""
    bits = vectors.detach().float().contiguous().view(torch.int32).long() & _MASK32
    hidden = vectors.shape[-1]
    index = torch.arange(hidden, dtype=torch.long, device=vectors.device)
    seed_hash = _mix32(torch.tensor(_seed_word(seed), dtype=torch.long, device=vectors.device))
    salt = _mix32((index + seed_hash + 1) & _MASK32)
    return _mix32(_mix32(bits ^ salt).sum(-1) & _MASK32)


def _copies_apart(hashes: Int[Tensor, "batch mem"], mask: Bool[Tensor, "batch mem"]
                  ) -> Int[Tensor, "batch mem"]:
    """``hashes`` with the k-th repeat (k >= 1) of a key in its row, counted among the row's
    real elements in order, hashed again with k: copies of one key (an item met twice) get
    scores of their own, so a draw is uniform over elements, not over distinct keys. A first
    occurrence keeps its hash."""
    same = (hashes.unsqueeze(2) == hashes.unsqueeze(1)) & mask.unsqueeze(1) & mask.unsqueeze(2)
    earlier = torch.ones(same.shape[1:], dtype=torch.bool, device=hashes.device).tril(-1)
    copy = (same & earlier).sum(-1)
    return torch.where(copy > 0, _mix32((hashes + _mix32(copy)) & _MASK32), hashes)


@final
class RandomRetriever:
    """Seeded pseudo-random scores in ``[0, 1)`` (see the module docstring for the guarantees).

    Masked elements come back as ``-inf``.
    """

    def __init__(self, seed: int = 0, provenance: Mapping[str, str] | None = None) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise AutomrError(f"the random retriever's seed must be a whole number, got "
                              f"{seed!r}")
        self.seed = seed
        self.provenance = dict(provenance or {})

    @jaxtyped(typechecker=beartype)
    def scores(
        self, query: Float[Tensor, "batch hidden"], keys: Float[Tensor, "batch mem hidden"],
        mask: Bool[Tensor, "batch mem"],
    ) -> Float[Tensor, "batch mem"]:
        """A score in ``[0, 1)`` per real element from the seed, its key and its row's real
        keys (``query`` unused); ``-inf`` at masked elements."""
        hashes = _hash_vectors(keys, self.seed).masked_fill(~mask, 0)
        row = _mix32((hashes.sum(-1) + 0x632BE5AB) & _MASK32)  # of the row's real keys, any order
        element = _mix32(_copies_apart(hashes, mask) ^ row.unsqueeze(1))
        uniform = (element >> 8).to(torch.float32) / 2.0**24  # 24 bits: exact, below 1
        return uniform.masked_fill(~mask, -torch.inf)

    def save(self, directory: Path | str) -> None:
        """Write ``config.json`` (the seed is the whole state)."""
        write_retriever(directory, "random", {"seed": self.seed}, self.provenance)

    @classmethod
    def load(
        cls, directory: Path | str, device: str | torch.device = "cpu",
        expect: Mapping[str, str] | None = None, hidden_size: int | None = None,
    ) -> "RandomRetriever":
        """Rebuild a retriever written by :meth:`save` (``device`` is accepted for symmetry)."""
        meta, _ = read_retriever(directory, "random", expect, hidden_size)
        return cls(seed=saved_setting(directory, meta, "seed", int),
                   provenance=meta.get("provenance"))
