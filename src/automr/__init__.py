"""automr: memory retrieval for LLM-based generative recommenders (AutoMR)."""

__version__ = "0.1.0"
