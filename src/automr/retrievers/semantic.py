"""Untrained semantic retrieval: cosine similarity between the query and each key.

ReLLa retrieves the history items most similar to the target item in a text-embedding space;
for generation the target is unknown, so (as in the paper's adaptation) the short-term
history - here its pooled layer-L state ``z_t`` - is the query, and similarity is measured
between layer-L states. LLM hidden states are anisotropic (they share a large common
component), which makes every cosine close to 1; subtracting a mean vector first
(``center``, e.g. :func:`mean_key` over the memory) removes it.
"""

from collections.abc import Mapping
from pathlib import Path
from typing import final

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, jaxtyped
from torch import Tensor

from automr.checks import beartype
from automr.errors import AutomrError
from automr.retrievers.storage import WEIGHTS_FILE, read_retriever, saved_setting, write_retriever


@final
class SemanticRetriever:
    """Scores = cosine(query - center, key - center); ``center`` is optional (default none).

    Computed (and returned) in float32 or wider, whatever the inputs' dtype. Zero vectors (after
    centering) score 0. Masked elements come back as ``-inf``.
    """

    @jaxtyped(typechecker=beartype)
    def __init__(
        self, center: Float[Tensor, " hidden"] | None = None, eps: float = 1e-8,
        provenance: Mapping[str, str] | None = None,
    ) -> None:
        self.center = None if center is None else center.detach()
        self.eps = eps
        self.provenance = dict(provenance or {})

    @classmethod
    @jaxtyped(typechecker=beartype)
    def centered(
        cls, keys: Float[Tensor, "batch mem hidden"], mask: Bool[Tensor, "batch mem"],
        eps: float = 1e-8, provenance: Mapping[str, str] | None = None,
    ) -> "SemanticRetriever":
        """A retriever centred on the mean of the real ``keys`` (see :func:`mean_key`)."""
        return cls(center=mean_key(keys, mask), eps=eps, provenance=provenance)

    @jaxtyped(typechecker=beartype)
    def scores(
        self, query: Float[Tensor, "batch hidden"], keys: Float[Tensor, "batch mem hidden"],
        mask: Bool[Tensor, "batch mem"],
    ) -> Float[Tensor, "batch mem"]:
        """``cosine(query - center, key - center)`` per element (no centring without
        ``center``); ``-inf`` at masked elements. In at least float32, under autocast too (a
        memory-aware fine-tune's ``--autocast bf16`` picked another element for 27 of 96
        examples, ties at the top for 41)."""
        # at least float32: float16 cannot hold ``eps``, so a zero vector was 0/0 = NaN there
        dtype = torch.promote_types(torch.promote_types(query.dtype, keys.dtype), torch.float32)
        with torch.autocast(query.device.type, enabled=False):
            query, keys = query.to(dtype), keys.to(dtype).masked_fill(~mask.unsqueeze(-1), 0.0)
            if self.center is not None:
                center = self.center.to(dtype=query.dtype, device=query.device)
                query, keys = query - center, keys - center
            query = F.normalize(query, dim=-1, eps=self.eps)
            keys = F.normalize(keys, dim=-1, eps=self.eps)
            return torch.einsum("bh,bmh->bm", query, keys).masked_fill(~mask, -torch.inf)

    def save(self, directory: Path | str) -> None:
        """Write ``config.json`` (and the centre, if any, as ``retriever.safetensors``)."""
        tensors = None if self.center is None else {"center": self.center}
        hidden = None if self.center is None else int(self.center.shape[0])
        write_retriever(directory, "semantic", {"eps": self.eps}, self.provenance,
                        tensors=tensors, hidden_size=hidden)

    @classmethod
    def load(
        cls, directory: Path | str, device: str | torch.device = "cpu",
        expect: Mapping[str, str] | None = None, hidden_size: int | None = None,
    ) -> "SemanticRetriever":
        """Rebuild a retriever written by :meth:`save`."""
        meta, tensors = read_retriever(directory, "semantic", expect, hidden_size)
        center = tensors.get("center")
        if center is None and meta.get("hidden_size") is not None:  # saved with a centre
            raise AutomrError(f"{directory} holds a centred semantic retriever without its "
                              f"centre ({WEIGHTS_FILE} is missing or holds none); save it again")
        if center is not None and center.shape != (meta.get("hidden_size"),):
            raise AutomrError(f"{directory} holds a centre of shape {tuple(center.shape)} for "
                              f"keys of size {meta.get('hidden_size')}; save it again")
        return cls(center=None if center is None else center.to(device),
                   eps=saved_setting(directory, meta, "eps", float),
                   provenance=meta.get("provenance"))


@jaxtyped(typechecker=beartype)
def mean_key(
    keys: Float[Tensor, "batch mem hidden"], mask: Bool[Tensor, "batch mem"]
) -> Float[Tensor, " hidden"]:
    """The mean of all real keys (every row's real elements pooled together), summed in at
    least float32 (a float16 sum of a memory's keys overflows) and returned in their dtype."""
    count = mask.sum()
    if int(count) == 0:
        raise ValueError("mean_key: there are no real keys to average")
    wide = keys.to(torch.promote_types(keys.dtype, torch.float32))
    total = wide.masked_fill(~mask.unsqueeze(-1), 0.0).sum((0, 1))
    return (total / count).to(keys.dtype)
