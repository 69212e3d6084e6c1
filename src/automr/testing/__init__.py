"""Reusable test helpers: tiny offline models and tokenizers, hypothesis strategies, contracts."""
