"""Combiners: join retrieved memory to a query's layer-L states (the paper's eq. 4).

``COMBINERS`` is the registry the CLI exposes: name -> constructor (all are stateless);
``COMBINER_NAMES`` are its names, for settings that must not import torch. Names here are imported
on first use.
"""

from automr._lazy import lazy_exports

_EXPORTS = {
    "COMBINER_NAMES": "automr.combiners.names",
    "insert_memory": "automr.combiners.insert",
    **{name: "automr.combiners.tokens" for name in (
        "COMBINERS", "AppendToken", "Concat", "PrependToken", "pad_memory")},
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
