"""Pooling a sequence's layer-L states into one key vector (the registry the CLI exposes).

- ``mean``: the mean over real tokens, leaving out each sequence's first ``skip_first`` real
  positions (default 1). Large LLMs put "massive activations" on the first token (BOS or not;
  DESIGN.md §5), which would otherwise dominate every key. A sequence with no more than
  ``skip_first`` real tokens falls back to the mean over all its real tokens.
- ``last``: the state of the last real token (the position a causal LM has read everything at).

Both work for left and right padding alike: only the mask decides which positions are real.
Pooling is computed in float32 and returned in the states' dtype.
"""

from collections.abc import Callable
from typing import Final

import attrs
import torch
from jaxtyping import Bool, Float, jaxtyped
from torch import Tensor

from automr.checks import beartype, int_field

PoolFn = Callable[[Tensor, Tensor, int], Tensor]


@jaxtyped(typechecker=beartype)
def mean_pool(
    hidden: Float[Tensor, "batch seq hidden"], mask: Bool[Tensor, "batch seq"], skip_first: int
) -> Float[Tensor, "batch hidden"]:
    """Mean over real tokens after each sequence's first ``skip_first`` real ones."""
    rank = mask.long().cumsum(1) - 1  # index of each real token among its sequence's real ones
    keep = mask & (rank >= skip_first)
    keep = torch.where(keep.any(1, keepdim=True), keep, mask)  # too short: use every real token
    weights = keep.to(torch.float32).unsqueeze(-1)
    total = (hidden.to(torch.float32) * weights).sum(1)
    return (total / weights.sum(1).clamp(min=1.0)).to(hidden.dtype)


@jaxtyped(typechecker=beartype)
def last_pool(
    hidden: Float[Tensor, "batch seq hidden"], mask: Bool[Tensor, "batch seq"], skip_first: int
) -> Float[Tensor, "batch hidden"]:
    """The last real token's state (``skip_first`` is ignored)."""
    index = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask, index, -1).amax(1).clamp(min=0)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


POOLINGS: Final[dict[str, PoolFn]] = {"mean": mean_pool, "last": last_pool}
"""Pooling kinds by name (``automr`` CLI ``--pooling``)."""


def _known_pooling(instance: object, attribute: attrs.Attribute, value: str) -> None:
    if value not in POOLINGS:
        raise ValueError(f"unknown pooling {value!r}; choose one of {', '.join(POOLINGS)}")


@beartype
@attrs.frozen
class Pooling:
    """Which pooling (a key of :data:`POOLINGS`) and how many first positions ``mean`` skips."""

    kind: str = attrs.field(default="mean", validator=_known_pooling)
    skip_first: int = int_field(attrs.validators.ge(0), default=1)

    @jaxtyped(typechecker=beartype)
    def __call__(
        self, hidden: Float[Tensor, "batch seq hidden"], mask: Bool[Tensor, "batch seq"]
    ) -> Float[Tensor, "batch hidden"]:
        return POOLINGS[self.kind](hidden, mask, self.skip_first)
