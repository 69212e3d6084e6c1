"""The one operation every combiner here is made of: memory tokens joined to a query's states.

Positions and attention in the upper half derive from the mask alone (a token's rotary
position is the number of real tokens before it; padding is never attended), so joining two
padded tensors along the sequence axis is exact whatever the padding side:

* ``before``: ``[memory | query]``. The real memory tokens take positions ``0..r-1`` and the
  prompt's real tokens follow at ``r..``, as if the memory had been part of the prompt; masked
  memory slots and the query's padding (left or right) are invisible.
* ``after``: ``[query | memory]``. With a right-padded query the padding sits between the
  prompt and the memory, but it is masked, so the first real memory token still gets the
  position right after the prompt's last real token and attends to the whole prompt: exactly
  as if it had been written right after it. Decoding caches append new tokens after the
  memory, which is the intended layout (memory just before the response).

Masked memory slots are zeroed, so whatever they hold (even NaN) cannot leak into the result.
"""

from typing import Literal

import torch
from jaxtyping import jaxtyped

from automr.checks import beartype
from automr.errors import AutomrError
from automr.interfaces import MemoryTokens
from automr.state import LayerState

Where = Literal["before", "after"]


@jaxtyped(typechecker=beartype)
def insert_memory(query: LayerState, memory: MemoryTokens, where: Where) -> LayerState:
    """Join ``memory`` to ``query`` at layer ``query.layer``, ``before`` or ``after`` the prompt.

    The memory is cast to the query's dtype and device; its masked slots are zeroed. With
    ``memory.hidden.shape[1] == 0`` the query comes back unchanged.
    """
    if memory.hidden.shape[0] != query.batch_size:
        raise AutomrError(
            f"memory has {memory.hidden.shape[0]} rows but the query batch has "
            f"{query.batch_size}; build one MemoryTokens row per query"
        )
    if memory.hidden.shape[2] != query.hidden.shape[2]:
        raise AutomrError(
            f"memory vectors have hidden size {memory.hidden.shape[2]} but the model's layer-"
            f"{query.layer} states have {query.hidden.shape[2]}: the memory was built with "
            f"another model"
        )
    if memory.hidden.shape[1] == 0:
        return query
    mask = memory.mask.to(query.mask.device)
    hidden = memory.hidden.to(dtype=query.hidden.dtype, device=query.hidden.device)
    hidden = hidden.masked_fill(~mask.unsqueeze(-1), 0.0)
    parts = [(hidden, mask), (query.hidden, query.mask)]
    if where == "after":
        parts.reverse()
    return LayerState(
        hidden=torch.cat([parts[0][0], parts[1][0]], 1),
        mask=torch.cat([parts[0][1], parts[1][1]], 1),
        layer=query.layer,
    )
