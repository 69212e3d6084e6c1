"""Combiners: join retrieved memory to a query's layer-L states (the paper's eq. 4).

``COMBINERS`` is the registry the CLI exposes: name -> constructor (all are stateless);
``COMBINER_NAMES`` are its names, for settings that must not import torch. Names here are imported
on first use.
"""

from typing import TYPE_CHECKING

from automr._lazy import lazy_exports, typed_exports

if TYPE_CHECKING:  # the exports, as type checkers read them; imported on first use
    from automr.combiners.insert import (
        insert_memory as insert_memory,
    )
    from automr.combiners.names import (
        COMBINER_NAMES as COMBINER_NAMES,
    )
    from automr.combiners.tokens import (
        COMBINERS as COMBINERS,
        AppendToken as AppendToken,
        Concat as Concat,
        PrependToken as PrependToken,
        pad_memory as pad_memory,
    )

_EXPORTS = typed_exports(__file__)
__all__ = sorted(_EXPORTS)
if not TYPE_CHECKING:  # a checker reads the imports above, not a __getattr__ of any name
    __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
