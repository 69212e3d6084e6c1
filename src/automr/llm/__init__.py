"""Loading Hugging Face causal LMs and splitting them exactly at layer L.

Names are imported on first use, so the layer-state types do not pull in transformers.
"""

from typing import TYPE_CHECKING

from automr._lazy import lazy_exports, typed_exports

if TYPE_CHECKING:  # the exports, as type checkers read them; imported on first use
    from automr.defaults import (
        DEFAULT_MODEL as DEFAULT_MODEL,
    )
    from automr.llm.loading import (
        LoadedModel as LoadedModel,
        load_model as load_model,
    )
    from automr.llm.split import (
        HFSplitLLM as HFSplitLLM,
        attention_bias as attention_bias,
        token_positions as token_positions,
    )
    from automr.state import (
        KVCache as KVCache,
        LayerState as LayerState,
    )

_EXPORTS = typed_exports(__file__)
__all__ = sorted(_EXPORTS)
if not TYPE_CHECKING:  # a checker reads the imports above, not a __getattr__ of any name
    __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
