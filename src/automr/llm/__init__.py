"""Loading Hugging Face causal LMs and splitting them exactly at layer L."""

from automr.llm.split import HFSplitLLM, attention_bias, token_positions
from automr.llm.state import KVCache, LayerState

__all__ = ["HFSplitLLM", "KVCache", "LayerState", "attention_bias", "token_positions"]
