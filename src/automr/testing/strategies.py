"""Hypothesis strategies for retrievers and combiners (reusable in your own tests).

Tensors are drawn *through hypothesis* (lists of floats, or a seed fed to a
:class:`torch.Generator` for larger ones), never with the global torch RNG, so examples
shrink and replay. Masks are drawn element by element, so padding can be anywhere: left,
right, or holes in the middle.
"""

from collections.abc import Sequence
from typing import Literal

import attrs
import torch
from hypothesis import strategies as st
from jaxtyping import Bool, Float
from torch import Tensor

from automr.checks import beartype
from automr.interfaces import MemoryTokens
from automr.state import LayerState

Padding = Literal["left", "right", "mixed", "any"]
"""How padding is laid out in drawn masks: all rows left- or right-padded, each row left or
right at random (``mixed``), or any pattern with holes anywhere (``any``)."""

FLOATS = st.floats(min_value=-4.0, max_value=4.0, allow_nan=False, width=32)
"""Default element strategy: finite float32 values of moderate size."""
SEEDED_FROM = 128
"""Width from which :func:`padded_memories` draws its tensors from a seed."""


def float_tensors(
    shape: Sequence[int], elements: st.SearchStrategy[float] = FLOATS
) -> st.SearchStrategy[Tensor]:
    """A float32 tensor of ``shape`` whose values are drawn one by one by hypothesis."""
    size = 1
    for dim in shape:
        size *= dim
    return st.lists(elements, min_size=size, max_size=size).map(
        lambda values: torch.tensor(values, dtype=torch.float32).reshape(tuple(shape))
    )


def seeded_tensors(shape: Sequence[int], scale: float = 1.0) -> st.SearchStrategy[Tensor]:
    """A standard-normal float32 tensor of ``shape`` (times ``scale``) from a drawn seed.

    For tensors too large to draw value by value; the seed is what hypothesis shrinks.
    """
    def build(seed: int) -> Tensor:
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(tuple(shape), generator=generator) * scale

    return st.integers(min_value=0, max_value=2**32 - 1).map(build)


@st.composite
def masks(
    draw: st.DrawFn, batch: int, width: int, min_real: int = 0, padding: Padding = "any"
) -> Bool[Tensor, "batch width"]:
    """A ``[batch, width]`` boolean mask with at least ``min_real`` real entries per row."""
    if min_real > width:
        raise ValueError(f"min_real={min_real} cannot exceed width={width}")
    rows = []
    for _ in range(batch):
        if padding == "any":
            row = draw(st.lists(st.booleans(), min_size=width, max_size=width))
            missing = [i for i, real in enumerate(row) if not real]
            for index in missing[: max(0, min_real - sum(row))]:
                row[index] = True
        else:
            real = draw(st.integers(min_value=min_real, max_value=width))
            side = padding if padding != "mixed" else draw(st.sampled_from(["left", "right"]))
            row = [False] * (width - real) + [True] * real
            if side == "right":
                row.reverse()
        rows.append(row)
    return torch.tensor(rows, dtype=torch.bool).reshape(batch, width)


@beartype
@attrs.frozen(eq=False)
class PaddedMemory:
    """A retriever's inputs: queries, padded keys and the mask of real elements."""

    query: Float[Tensor, "batch hidden"]
    keys: Float[Tensor, "batch mem hidden"]
    mask: Bool[Tensor, "batch mem"]


@st.composite
def padded_memories(
    draw: st.DrawFn, hidden: int, max_batch: int = 3, max_mem: int = 6, min_real: int = 0,
    elements: st.SearchStrategy[float] | None = None,
) -> PaddedMemory:
    """Queries ``[b, hidden]``, keys ``[b, m, hidden]`` and a mask with holes anywhere.

    ``b`` in ``1..max_batch``, ``m`` in ``max(min_real, 1)..max_mem``; masked keys hold drawn
    values too (a retriever must ignore them). Values: ``elements`` (default :data:`FLOATS`);
    without ``elements``, from ``hidden`` = :data:`SEEDED_FROM` on (a real model's width),
    from a drawn seed (:func:`seeded_tensors`): drawn one by one they would exceed what
    hypothesis generates per example.
    """
    batch = draw(st.integers(1, max_batch))
    mem = draw(st.integers(max(min_real, 1), max(max_mem, min_real, 1)))
    wide = elements is None and hidden >= SEEDED_FROM  # a real model's width: from a seed

    def tensors(shape: tuple[int, ...]) -> st.SearchStrategy[Tensor]:
        return seeded_tensors(shape) if wide else float_tensors(shape, elements or FLOATS)

    return PaddedMemory(
        query=draw(tensors((batch, hidden))),
        keys=draw(tensors((batch, mem, hidden))),
        mask=draw(masks(batch, mem, min_real=min_real)),
    )


@st.composite
def memory_tokens(
    draw: st.DrawFn, batch: int, hidden: int, min_n: int = 0, max_n: int = 4,
    padding: Padding = "any", elements: st.SearchStrategy[float] = FLOATS,
) -> MemoryTokens:
    """Memory tokens ``[batch, n, hidden]`` with a drawn mask (some rows may be all masked)."""
    n = draw(st.integers(min_n, max_n))
    return MemoryTokens(
        hidden=draw(float_tensors((batch, n, hidden), elements)),
        mask=draw(masks(batch, n, padding=padding)),
    )


@st.composite
def layer_states(
    draw: st.DrawFn, hidden: int, max_batch: int = 3, max_seq: int = 6, layer: int = 0,
    padding: Padding = "any", elements: st.SearchStrategy[float] = FLOATS,
) -> LayerState:
    """A query's layer-``layer`` state with at least one real position per row."""
    batch = draw(st.integers(1, max_batch))
    seq = draw(st.integers(1, max_seq))
    return LayerState(
        hidden=draw(float_tensors((batch, seq, hidden), elements)),
        mask=draw(masks(batch, seq, min_real=1, padding=padding)),
        layer=layer,
    )


def padding_sides(count: int) -> st.SearchStrategy[list[str]]:
    """One padding side (``"left"`` / ``"right"``) per row: mixed sides in one batch."""
    return st.lists(st.sampled_from(["left", "right"]), min_size=count, max_size=count)


@beartype
def pad_sequences(
    seqs: Sequence[Sequence[int]], sides: Sequence[str], pad_id: int = 0
) -> tuple[Tensor, Tensor]:
    """Pad token lists to a batch, each row on its own side; returns ids and a bool mask."""
    width = max((len(seq) for seq in seqs), default=0)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.bool)
    for row, (seq, side) in enumerate(zip(seqs, sides, strict=True)):
        span = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[row, span] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, span] = True
    return ids, mask


@st.composite
def element_memories(
    draw: st.DrawFn, hidden: int, max_elements: int = 6, max_prefix: int = 3,
    max_own: int = 4, max_holes: int = 2,
) -> MemoryTokens:
    """One sample's memory for the concat layout: one row per element, ``[mem, n, hidden]``.

    Each element is a run of token states: a leading prefix that every element shares bit for
    bit (0..``max_prefix`` vectors, like the template tokens every element text starts with),
    then 0..``max_own`` vectors of its own. The real vectors are spread over a width with up to
    ``max_holes`` masked slots placed anywhere (masked slots hold drawn values too). Values come
    from a drawn seed (see :func:`seeded_tensors`).
    """
    count = draw(st.integers(0, max_elements))
    prefix = draw(st.integers(0, max_prefix))
    lengths = draw(st.lists(st.integers(0, max_own), min_size=count, max_size=count))
    width = max((prefix + n for n in lengths), default=0) + draw(st.integers(0, max_holes))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    shared = torch.randn(prefix, hidden, generator=generator)
    hidden_states = torch.randn(count, width, hidden, generator=generator)
    mask = torch.zeros(count, width, dtype=torch.bool)
    for row, own in enumerate(lengths):
        real = prefix + own
        slots = sorted(draw(st.lists(st.integers(0, width - 1), unique=True, min_size=real,
                                     max_size=real))) if real else []
        index = torch.tensor(slots, dtype=torch.long)
        mask[row, index] = True
        hidden_states[row, index[:prefix]] = shared
    return MemoryTokens(hidden=hidden_states, mask=mask)
