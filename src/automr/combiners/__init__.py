"""Combiners: join retrieved memory to a query's layer-L states (the paper's eq. 4).

``COMBINERS`` is the registry the CLI exposes: name -> constructor (all are stateless).
"""

from collections.abc import Callable

from automr.combiners.insert import insert_memory
from automr.combiners.tokens import AppendToken, Concat, PrependToken, pad_memory
from automr.interfaces import Combiner

COMBINERS: dict[str, Callable[[], Combiner]] = {
    "prepend-token": PrependToken,
    "append-token": AppendToken,
    "concat": Concat,
}

__all__ = [
    "COMBINERS",
    "AppendToken",
    "Concat",
    "PrependToken",
    "insert_memory",
    "pad_memory",
]
