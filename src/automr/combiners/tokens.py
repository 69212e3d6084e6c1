"""The paper's three combiners (DESIGN.md §1): prepend-token, append-token and concat.

All three insert layer-L vectors as extra positions of the prompt, through
:func:`~automr.combiners.insert.insert_memory`; they differ in where the vectors go and in
what they are (a retrieved element's pooled key, or its per-token states).
"""

from collections.abc import Callable, Sequence
from typing import final

import attrs
import torch
from jaxtyping import jaxtyped
from torch import Tensor

from automr.checks import beartype
from automr.combiners.insert import insert_memory
from automr.combiners.names import COMBINER_NAMES
from automr.errors import AutomrError
from automr.interfaces import Combiner, MemoryTokens
from automr.state import LayerState


@final
@attrs.frozen
class PrependToken:
    """Each retrieved element's pooled key as one soft token *before* the prompt.

    ``memory.hidden`` is ``[batch n hidden]`` with one vector per retrieved element (n = k of
    top-k); the prompt's states follow. The prompt cannot share work across elements in this
    layout (its positions and attention depend on the memory).
    """

    uses_token_states = False

    @jaxtyped(typechecker=beartype)
    def combine(self, query: LayerState, memory: MemoryTokens) -> LayerState:
        """``query`` with ``memory``'s vectors as soft tokens before the prompt
        (:func:`insert_memory`)."""
        return insert_memory(query, memory, "before")


@final
@attrs.frozen
class AppendToken:
    """Each retrieved element's pooled key as one soft token *after* the prompt.

    The memory sits just before the response: new tokens in decoding (and the target tokens
    in annotation) follow it. Exact with right-padded queries too (see
    :mod:`automr.combiners.insert`). The prompt's states do not depend on the memory, which
    is what lets annotation share the prompt's upper-layer work across elements.
    """

    uses_token_states = False

    @jaxtyped(typechecker=beartype)
    def combine(self, query: LayerState, memory: MemoryTokens) -> LayerState:
        """``query`` with ``memory``'s vectors as soft tokens after the prompt
        (:func:`insert_memory`)."""
        return insert_memory(query, memory, "after")


@final
@attrs.frozen
class Concat:
    """A retrieved element's token states (``[batch n hidden]``, n = its token count) before
    the prompt: prepend with the whole encoded element instead of its pooled key."""

    uses_token_states = True

    @jaxtyped(typechecker=beartype)
    def combine(self, query: LayerState, memory: MemoryTokens) -> LayerState:
        """``query`` with the element's token states before the prompt (:func:`insert_memory`)."""
        return insert_memory(query, memory, "before")


@jaxtyped(typechecker=beartype)
def pad_memory(rows: Sequence[Tensor]) -> MemoryTokens:
    """One :class:`MemoryTokens` from per-query vectors of different counts (right-padded).

    ``rows[i]`` holds query ``i``'s vectors in order (``[n_i, hidden]``, floating, all of
    one dtype and device: e.g. the concatenated token states of its retrieved elements, or its
    top-k pooled keys); an empty row (of any dtype) gives an all-masked row.
    """
    if not rows:
        raise AutomrError("pad_memory needs at least one row (one per query)")
    # the first row with vectors sets the dtype and device: an empty row's are not read
    first = next((row for row in rows if row.ndim == 2 and len(row)), rows[0])
    odd = next((i for i, row in enumerate(rows) if _unlike(row, first)), None)
    if odd is not None:  # checked here: beartype checks some items of a sequence, not each
        raise AutomrError(f"pad_memory: row {odd} is {rows[odd].dtype} "
                          f"{tuple(rows[odd].shape)} on {rows[odd].device}, the first with "
                          f"vectors {first.dtype} {tuple(first.shape)} on {first.device}: every "
                          f"row is [vectors, hidden] of one floating dtype and device")
    width = max(row.shape[0] for row in rows)
    hidden = first.new_zeros(len(rows), width, first.shape[1])
    mask = torch.zeros(len(rows), width, dtype=torch.bool, device=first.device)
    for index, row in enumerate(rows):
        hidden[index, : row.shape[0]] = row
        mask[index, : row.shape[0]] = True
    return MemoryTokens(hidden=hidden, mask=mask)


def _unlike(row: Tensor, first: Tensor) -> bool:
    """Whether ``row`` cannot be padded beside ``first``: not ``[vectors, hidden]`` of its
    hidden size or, holding vectors, not of its floating dtype and device."""
    if row.ndim != 2 or first.ndim != 2 or row.shape[1] != first.shape[1]:
        return True
    return len(row) > 0 and (not row.is_floating_point() or row.dtype != first.dtype
                             or row.device != first.device)


COMBINERS: dict[str, Callable[[], Combiner]] = dict(
    zip(COMBINER_NAMES, (PrependToken, AppendToken, Concat), strict=True))
"""The registry the CLI exposes: name -> constructor (all are stateless)."""
