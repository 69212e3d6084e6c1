"""Per-user memory: one layer-L element per past interaction (DESIGN.md §1, paper eq. 2).

- Encoding: :class:`Pooling` (:data:`POOLINGS`), :class:`LayerEncoder` (the
  :class:`~automr.interfaces.Encoder`), element encoders :class:`WindowEncoder` (eq. 2) and
  :class:`ItemEncoder` (:data:`ENCODERS`: add an :class:`EncoderKind` of your own
  :class:`ElementEncoder` there), :class:`Backbone` (split LM + tokenizer + fingerprint).
- Building: :class:`MemoryConfig`, :func:`build_memory` (resumable), :func:`append_memory`,
  :func:`memory_encoder`.
- Reading: :class:`MemoryStore` (the :class:`~automr.interfaces.Memory`): ``view``,
  ``view_sample``, ``request_for``, ``padded_keys``, ``token_states``.

The folder layout is described in :mod:`automr.memory.shards`.
"""

from automr.memory.build import append_memory, build_memory, memory_encoder, plan_shards
from automr.memory.config import MemoryConfig, MemoryRecord
from automr.memory.encoders import (
    ENCODERS,
    Backbone,
    ElementEncoder,
    Encoded,
    EncoderKind,
    ItemEncoder,
    LayerEncoder,
    WindowEncoder,
)
from automr.memory.pooling import POOLINGS, Pooling, last_pool, mean_pool
from automr.memory.store import MemoryStore

__all__ = [
    "ENCODERS",
    "POOLINGS",
    "Backbone",
    "ElementEncoder",
    "Encoded",
    "EncoderKind",
    "ItemEncoder",
    "LayerEncoder",
    "MemoryConfig",
    "MemoryRecord",
    "MemoryStore",
    "Pooling",
    "WindowEncoder",
    "append_memory",
    "build_memory",
    "last_pool",
    "mean_pool",
    "memory_encoder",
    "plan_shards",
]
