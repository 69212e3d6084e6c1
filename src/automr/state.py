"""What flows between the two halves of a split LM: layer-L states and per-half KV caches."""

from typing import TYPE_CHECKING

import attrs
import torch
from jaxtyping import Bool, Float, Int, jaxtyped
from torch import Tensor

from automr.checks import beartype

if TYPE_CHECKING:
    from transformers import DynamicCache


@attrs.frozen
class LayerState:
    """Hidden states entering layer ``layer`` (the output of layers ``0..layer-1``).

    ``mask`` marks real positions (``False`` = padding). Positions for rotary embeddings are
    not stored: they are always the number of real tokens before a position (plus what a KV
    cache already holds), so left padding, right padding and inserted memory tokens all get
    consistent positions from the mask alone.
    """

    hidden: Float[Tensor, "batch seq hidden"]
    mask: Bool[Tensor, "batch seq"]
    layer: int = attrs.field(validator=attrs.validators.ge(0))

    def __attrs_post_init__(self) -> None:
        if self.hidden.shape[:2] != self.mask.shape:
            raise ValueError(
                f"LayerState: hidden {tuple(self.hidden.shape)} and mask "
                f"{tuple(self.mask.shape)} disagree on [batch, seq]"
            )
        if self.mask.device != self.hidden.device:
            raise ValueError("LayerState: hidden and mask live on different devices")
        _check_layer_state(self.hidden, self.mask)

    @property
    def batch_size(self) -> int:
        """The number of sequences (``hidden.shape[0]``)."""
        return self.hidden.shape[0]

    @property
    def seq_len(self) -> int:
        """The padded length, inserted memory positions included (``hidden.shape[1]``)."""
        return self.hidden.shape[1]

    def last_positions(self) -> Int[Tensor, "batch 1"]:
        """Index of each sequence's last real position (works for left and right padding)."""
        index = torch.arange(self.seq_len, device=self.mask.device).expand_as(self.mask)
        return torch.where(self.mask, index, -1).amax(dim=1, keepdim=True)


@jaxtyped(typechecker=beartype)
def _check_layer_state(
    hidden: Float[Tensor, "batch seq hidden"], mask: Bool[Tensor, "batch seq"]
) -> None:
    """Shape/dtype check in a scope of its own.

    A class-level ``@beartype`` would check the hints inside whatever ``@jaxtyped`` function
    builds the record, binding ``seq`` to that function's sequences, so two states of
    different lengths built in one function would clash. Here the fields agree with each
    other and with nothing else.
    """


@attrs.define
class KVCache:
    """The keys/values one half of a split LM has seen, with the mask of those positions.

    A split model decodes with two of these: the lower half's cache never sees memory tokens,
    the upper half's does. Each tracks its own past mask and position counter, so positions
    in the upper half are shifted by inserted tokens while the lower half's are not, and the
    attention mask is built from this bookkeeping rather than from the HF cache's length
    (which, for a cache whose first layers are empty, is the silent mask bug of DESIGN.md §5).
    """

    layers: "DynamicCache"
    past_mask: Bool[Tensor, "batch past"] | None = None
    recurrent: dict[int, tuple[Tensor, ...]] = attrs.field(factory=dict)
    """Each linear-attention layer's state (the Gated DeltaNet of Qwen 3.5 and Qwen3-Next, the
    Mamba2 of Granite 4.0-H, Bamba, Nemotron-H, Falcon-H1 and Mamba2 models, the Mamba1 of Mamba
    FalconMamba and Jamba, the short convolution of LFM2 and LFM3): the last inputs of its causal
    convolution ``[batch, kernel - 1, channels]`` and its recurrent state (``[batch, heads,
    key, value]``; Mamba2's ``[batch, heads, head_dim, state]``; Mamba1's ``[batch, d_inner,
    state]``; the short convolution has none), all after the last real position."""

    @property
    def past_len(self) -> int:
        """How many positions (padding included) the cache holds; 0 before the first call."""
        return 0 if self.past_mask is None else self.past_mask.shape[1]

    def next_positions(self) -> Int[Tensor, "batch 1"] | None:
        """Count of real tokens seen so far per sequence (the next token's position)."""
        return None if self.past_mask is None else self.past_mask.sum(1, keepdim=True)

    def extend(self, mask: Bool[Tensor, "batch seq"]) -> None:
        """Record that positions with ``mask`` were appended (called after a forward)."""
        self.past_mask = mask if self.past_mask is None else torch.cat([self.past_mask, mask], 1)

    def repeat_interleave(self, repeats: int) -> None:
        """Repeat every sequence ``repeats`` times along the batch (e.g. for beams)."""
        self.layers.batch_repeat_interleave(repeats)
        self.repeat_recurrent(repeats)
        if self.past_mask is not None:
            self.past_mask = self.past_mask.repeat_interleave(repeats, dim=0)

    def select(self, indices: Int[Tensor, " n"]) -> None:
        """Keep (and reorder to) the sequences at ``indices`` of the batch."""
        self.layers.batch_select_indices(indices)
        self.select_recurrent(indices)
        if self.past_mask is not None:
            self.past_mask = self.past_mask[indices]

    def repeat_recurrent(self, repeats: int) -> None:
        """Repeat every row of the linear-attention states ``repeats`` times."""
        self.recurrent = {index: tuple(part.repeat_interleave(repeats, dim=0) for part in state)
                          for index, state in self.recurrent.items()}

    def select_recurrent(self, indices: Int[Tensor, " n"]) -> None:
        """Keep (and reorder to) the rows at ``indices`` of the linear-attention states."""
        self.recurrent = {index: tuple(part.index_select(0, indices) for part in state)
                          for index, state in self.recurrent.items()}
