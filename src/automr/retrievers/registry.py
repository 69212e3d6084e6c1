"""The retriever kinds the CLI exposes: one explicit dict, plus build/load helpers."""

from collections.abc import Callable, Mapping
from pathlib import Path

import attrs
import torch

from automr.checks import beartype
from automr.devices import resolve_device
from automr.errors import AutomrError
from automr.interfaces import Retriever
from automr.retrievers.mlp import MLPRetriever, MLPRetrieverConfig
from automr.retrievers.random_retriever import RandomRetriever
from automr.retrievers.semantic import SemanticRetriever
from automr.retrievers.storage import read_config


@beartype
@attrs.frozen
class RetrieverKind:
    """One retriever kind: how to build a fresh one and how to load a saved one.

    ``build(hidden_size, seed)`` gives an untrained retriever (for ``mlp``, seeded random
    weights: train it with :func:`~automr.retrievers.training.train_mlp_retriever`).
    ``load(directory, device=..., expect=..., hidden_size=...)`` reads one written by its
    ``save``.
    """

    description: str
    build: Callable[[int, int], Retriever]
    load: Callable[..., Retriever]
    trainable: bool


def _build_mlp(hidden_size: int, seed: int) -> MLPRetriever:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return MLPRetriever(MLPRetrieverConfig(hidden_size=hidden_size)).eval()


RETRIEVERS: dict[str, RetrieverKind] = {
    "mlp": RetrieverKind(
        description="AutoMR (eq. 3): softmax(MLP(z_t)^T M), trained with KL(S'||S)",
        build=_build_mlp, load=MLPRetriever.load, trainable=True,
    ),
    "semantic": RetrieverKind(
        description="ReLLa adapted: cosine similarity of layer-L states (untrained)",
        build=lambda hidden_size, seed: SemanticRetriever(), load=SemanticRetriever.load,
        trainable=False,
    ),
    "random": RetrieverKind(
        description="random retrieval baseline: seeded hash scores",
        build=lambda hidden_size, seed: RandomRetriever(seed=seed), load=RandomRetriever.load,
        trainable=False,
    ),
}


@beartype
def build_retriever(kind: str, hidden_size: int, seed: int = 0) -> Retriever:
    """A fresh retriever of ``kind`` (a key of :data:`RETRIEVERS`)."""
    if kind not in RETRIEVERS:
        raise AutomrError(f"unknown retriever {kind!r}; choose one of {', '.join(RETRIEVERS)}")
    if hidden_size < 1:
        raise AutomrError(f"a retriever scores keys of the model's hidden size, which is >= 1 "
                          f"(got {hidden_size}); give the memory's (`store.hidden_size`)")
    return RETRIEVERS[kind].build(hidden_size, seed)


@beartype
def load_retriever(
    directory: Path | str, device: str | torch.device = "cpu",
    expect: Mapping[str, str] | None = None, hidden_size: int | None = None,
) -> Retriever:
    """Load any saved retriever, dispatching on the ``kind`` in its ``config.json``, onto
    ``device`` (``auto``, ``cpu``, ``mps``, ``cuda[:N]``, as a model loads; or a
    ``torch.device``).

    Refused (:class:`~automr.errors.AutomrError`): a retriever saved for another
    ``hidden_size`` (when given), or whose provenance contradicts a key of ``expect`` (e.g.
    ``store.record.provenance()``, the model, layer, encoder and pooling of the keys it
    will score; ``load_retriever_for`` in :mod:`automr.recommenders.automr` does this).
    """
    device = resolve_device(device)
    kind = read_config(directory).get("kind")
    if kind not in RETRIEVERS:
        raise AutomrError(f"{directory} holds an unknown retriever kind {kind!r}; known: "
                          f"{', '.join(RETRIEVERS)}")
    return RETRIEVERS[kind].load(directory, device=device, expect=expect,
                                 hidden_size=hidden_size)
