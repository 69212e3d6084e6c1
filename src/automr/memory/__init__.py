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

Names are imported on first use, so reading a memory does not pull in the model loader.
"""

from automr._lazy import lazy_exports

_EXPORTS = {
    "Backbone": "automr.memory.encoders",
    "ENCODERS": "automr.memory.encoders",
    "ElementEncoder": "automr.memory.encoders",
    "Encoded": "automr.memory.encoders",
    "EncoderKind": "automr.memory.encoders",
    "ItemEncoder": "automr.memory.encoders",
    "LayerEncoder": "automr.memory.encoders",
    "MemoryConfig": "automr.memory.config",
    "MemoryRecord": "automr.memory.config",
    "MemoryStore": "automr.memory.store",
    "POOLINGS": "automr.memory.pooling",
    "Pooling": "automr.memory.pooling",
    "WindowEncoder": "automr.memory.encoders",
    "append_memory": "automr.memory.build",
    "build_memory": "automr.memory.build",
    "last_pool": "automr.memory.pooling",
    "mean_pool": "automr.memory.pooling",
    "memory_encoder": "automr.memory.build",
    "plan_shards": "automr.memory.build",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
