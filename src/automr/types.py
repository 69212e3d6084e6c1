"""Tensor type aliases and the one axis vocabulary used across automr.

Axis names (jaxtyping dimension strings):

- ``batch``: independent sequences or samples processed together.
- ``seq``: token positions of one sequence (prompt, possibly with inserted memory tokens).
- ``past``: positions already held in a KV cache.
- ``hidden``: the LM's hidden size (576 for SmolLM2-135M).
- ``vocab``: the LM's vocabulary.
- ``mem``: elements of a user's memory (one per past interaction).
- ``k``: selected positions or retrieved elements (top-k, logits-at positions).
- ``items``: the catalog.

Masks are boolean (``True`` = a real token); integer 0/1 masks from tokenizers are accepted at
the public boundary and converted with :func:`as_bool_mask`.
"""

import torch
from jaxtyping import Bool, Float, Int, jaxtyped
from torch import Tensor

from automr.checks import beartype

TokenIds = Int[Tensor, "batch seq"]
"""Token ids of a padded batch."""

TokenMask = Bool[Tensor, "batch seq"] | Int[Tensor, "batch seq"]
"""Attention mask as given by a tokenizer (1/True = real token, 0/False = padding)."""

Hidden = Float[Tensor, "batch seq hidden"]
"""Hidden states at some layer for every position."""

Logits = Float[Tensor, "batch k vocab"]
"""Next-token logits at ``k`` selected positions of each sequence."""

Positions = Int[Tensor, "batch k"]
"""Indices into the ``seq`` axis (e.g. where to compute logits)."""


@jaxtyped(typechecker=beartype)
def as_bool_mask(mask: Tensor) -> Bool[Tensor, "..."]:
    """A boolean view of a 0/1 or boolean attention mask."""
    return mask if mask.dtype == torch.bool else mask != 0

