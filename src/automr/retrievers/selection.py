"""From scores to retrieved memory: top-k over real elements, masked log-softmax, gathering."""

import torch
from jaxtyping import Bool, Float, Int, jaxtyped
from torch import Tensor

from automr.checks import beartype
from automr.interfaces import MemoryTokens


@jaxtyped(typechecker=beartype)
def top_k(
    scores: Float[Tensor, "batch mem"], mask: Bool[Tensor, "batch mem"], k: int
) -> tuple[Int[Tensor, "batch k"], Float[Tensor, "batch k"]]:
    """The ``k`` best real elements of each row: ``(indices, values)``, best first.

    * Masked elements are never selected (their scores are treated as -inf).
    * ``k`` is clamped to the largest number of real elements in any row (so the result has
      ``min(k, max real count)`` columns, possibly 0). A row with fewer real elements than
      that is filled with index ``-1`` and value ``-inf`` after its real ones: use
      ``indices >= 0`` as the mask of what was retrieved.
    * Ties are broken deterministically by the lowest index first (a stable sort), so equal
      scores (e.g. identical keys) always give the same selection.
    * A real element whose score is ``-inf`` is still selected (after the finite ones) with
      its value ``-inf``; NaN at a real element is an error.
    """
    if k < 0:
        raise ValueError(f"top_k needs k >= 0, got {k}")
    if bool(torch.isnan(scores).masked_fill(~mask, False).any()):
        raise ValueError("top_k: the retriever produced NaN scores at real memory elements")
    filled = scores.masked_fill(~mask, -torch.inf)
    # Lexicographic order (real first, then score descending, then index ascending) from two
    # stable sorts: by score first, then by the real flag.
    by_score = torch.sort(filled, dim=1, descending=True, stable=True).indices
    by_real = torch.sort(mask.gather(1, by_score).to(torch.uint8), dim=1, descending=True,
                         stable=True).indices
    order = by_score.gather(1, by_real)
    width = min(k, int(mask.sum(1).max())) if mask.numel() else 0
    indices = order[:, :width]
    real = mask.gather(1, indices)
    values = filled.gather(1, indices).masked_fill(~real, -torch.inf)
    return indices.masked_fill(~real, -1), values


@jaxtyped(typechecker=beartype)
def copies_scored_as_first(
    scores: Float[Tensor, "batch mem"], keys: Float[Tensor, "batch mem hidden"],
    mask: Bool[Tensor, "batch mem"],
) -> Float[Tensor, "batch mem"]:
    """``scores`` where each real element whose key equals an earlier real element's of its
    row (a copy: an item met twice) takes that element's score, so :func:`top_k`'s rule, the
    lowest index first among equals, picks the first copy. For a retriever whose score is a
    function of the query and the key alone (semantic, MLP; not one that scores copies apart
    or by position, as the random retriever does). A batched product rounds one key's
    score by its slot and the batch's width: copies came out an ulp apart, and which of them
    was retrieved changed with the batch size."""
    scored = scores.clone()
    for row in range(scores.shape[0]):
        real = mask[row].nonzero().squeeze(1)
        if len(real) < 2:
            continue
        _, group = torch.unique(keys[row, real], dim=0, return_inverse=True)
        groups = int(group.max()) + 1
        if groups == len(real):  # no copies
            continue
        order = torch.arange(len(real), device=real.device)
        first = order.new_full((groups,), len(real)).scatter_reduce(0, group, order, "amin")
        scored[row, real] = scores[row, real[first[group]]]
    return scored


@jaxtyped(typechecker=beartype)
def masked_log_softmax(
    scores: Float[Tensor, "batch mem"], mask: Bool[Tensor, "batch mem"]
) -> Float[Tensor, "batch mem"]:
    """Log-softmax over each row's real elements; masked elements get ``-inf``.

    A row without real elements is all ``-inf`` (not NaN), and masked scores have no effect
    on the result or on gradients (whatever they hold).
    """
    has_any = mask.any(dim=1, keepdim=True)
    filled = scores.masked_fill(~mask, -torch.inf).masked_fill(~has_any, 0.0)
    return torch.log_softmax(filled, dim=1).masked_fill(~mask, -torch.inf)


@jaxtyped(typechecker=beartype)
def retrieved_memory(
    keys: Float[Tensor, "batch mem hidden"], indices: Int[Tensor, "batch k"]
) -> MemoryTokens:
    """The selected keys as :class:`MemoryTokens` for a token combiner (index -1 = masked).

    Feed ``top_k``'s indices: slot ``j`` of row ``b`` holds ``keys[b, indices[b, j]]``, in the
    retriever's order (best first).
    """
    real = indices >= 0
    index = indices.clamp(min=0).unsqueeze(-1).expand(-1, -1, keys.shape[-1])
    hidden = keys.gather(1, index).masked_fill(~real.unsqueeze(-1), 0.0)
    return MemoryTokens(hidden=hidden, mask=real)
