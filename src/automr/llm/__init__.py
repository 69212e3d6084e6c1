"""Loading Hugging Face causal LMs and splitting them exactly at layer L.

Names are imported on first use, so the layer-state types do not pull in transformers.
"""

from automr._lazy import lazy_exports

__all__ = ["DEFAULT_MODEL", "HFSplitLLM", "KVCache", "LayerState", "LoadedModel",
           "attention_bias", "load_model", "token_positions"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "DEFAULT_MODEL": "automr.defaults",
    "HFSplitLLM": "automr.llm.split",
    "KVCache": "automr.state",
    "LayerState": "automr.state",
    "LoadedModel": "automr.llm.loading",
    "attention_bias": "automr.llm.split",
    "load_model": "automr.llm.loading",
    "token_positions": "automr.llm.split",
})
