"""Retrievers: score a user's memory for a query (eq. 3), select top-k, and train (eq. 6).

``RETRIEVERS`` is the registry the CLI exposes (``mlp``, ``semantic``, ``random``).
"""

from automr.retrievers.dataset import RetrievalDataset, RetrievalSample, collate
from automr.retrievers.mlp import MLPRetriever, MLPRetrieverConfig
from automr.retrievers.random_retriever import RandomRetriever
from automr.retrievers.registry import (
    RETRIEVERS,
    RetrieverKind,
    build_retriever,
    load_retriever,
)
from automr.retrievers.selection import (
    copies_scored_as_first,
    masked_log_softmax,
    retrieved_memory,
    top_k,
)
from automr.retrievers.semantic import SemanticRetriever, mean_key
from automr.retrievers.training import (
    RetrievalMetrics,
    RetrieverTrainingConfig,
    RetrieverTrainingHistory,
    evaluate_retriever,
    kl_loss,
    train_mlp_retriever,
)

__all__ = [
    "RETRIEVERS",
    "MLPRetriever",
    "MLPRetrieverConfig",
    "RandomRetriever",
    "RetrievalDataset",
    "RetrievalMetrics",
    "RetrievalSample",
    "RetrieverKind",
    "RetrieverTrainingConfig",
    "RetrieverTrainingHistory",
    "SemanticRetriever",
    "build_retriever",
    "collate",
    "copies_scored_as_first",
    "evaluate_retriever",
    "kl_loss",
    "load_retriever",
    "masked_log_softmax",
    "mean_key",
    "retrieved_memory",
    "top_k",
    "train_mlp_retriever",
]
