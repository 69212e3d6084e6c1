"""AutoMR at inference: pool the prompt's layer-L states, retrieve from memory, combine.

``MemoryRetrieval.insert_for(samples)`` gives the ``insert`` every grounder accepts, so AutoMR
differs from BIGRec only by the memory joined at layer L (the lower half never sees it). A
method takes any :class:`Retrieval`, the shape of ``MemoryRetrieval`` (here, not in
:mod:`automr.interfaces`: it names the memory store, which is above the Protocols).
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import attrs
import torch

from automr.combiners import pad_memory
from automr.data import Sample
from automr.errors import AutomrError
from automr.interfaces import Combiner, Insert, MemoryTokens, Retriever, require
from automr.memory import MemoryStore
from automr.retrievers import (
    MLPRetriever,
    SemanticRetriever,
    copies_scored_as_first,
    load_retriever,
    retrieved_memory,
    top_k,
)
from automr.state import LayerState


def _check_scores(retriever: object, scores: object, mask: torch.Tensor) -> None:
    """Refuse in one line scores a retriever got wrong (another shape, not floats, NaN at a
    real element), which failed inside ``top_k`` with a shape check's or a ValueError's."""
    name = type(retriever).__name__
    if not isinstance(scores, torch.Tensor) or not scores.is_floating_point() \
            or scores.shape != mask.shape:
        what = (f"a {type(scores).__name__}" if not isinstance(scores, torch.Tensor)
                else f"{scores.dtype} scores of shape {tuple(scores.shape)}")
        raise AutomrError(f"{name}.scores gave {what} for memories of shape "
                          f"{tuple(mask.shape)}: one float score per element, [batch, mem]")
    if bool(torch.isnan(scores).masked_fill(~mask, False).any()):
        raise AutomrError(f"{name}.scores gave NaN for a real memory element: every element "
                          f"needs a comparable score (-inf is allowed)")


@runtime_checkable
class Retrieval(Protocol):
    """What joins memory to the prompts of a batch of samples, at the memory's layer.

    :class:`MemoryRetrieval` is AutoMR's: a retriever picks each sample's top ``k`` elements
    of its own memory and a combiner joins them. Write another where the choice needs more
    than the tensors a retriever sees, e.g. the sample itself (``examples/oracle_ranking.py``
    inserts the element picked for each sample id). A
    :class:`~automr.methods.GenerativeMethod` checks ``store`` against its model and data,
    passes each batch's ``insert_for`` to its grounder and reads ``retrieved`` for the
    evaluation's details.
    """

    @property
    def store(self) -> MemoryStore:
        """The memory the inserted elements come from (its layer is the method's split)."""
        ...

    @property
    def retrieved(self) -> list[list[int]]:
        """Per sample passed through an insert so far, in order: the timeline positions of
        the elements inserted, in the order they were inserted."""
        ...

    def insert_for(self, samples: Sequence[Sample]) -> Insert:
        """The ``insert`` (:data:`~automr.interfaces.Insert`) for the prompts of ``samples``
        (a batch, in order): called once with their layer-L state (rows in that order,
        padded on either side: read its mask), it joins each sample's elements and appends
        their positions to ``retrieved``."""
        ...


KEY_SCORED = (SemanticRetriever, MLPRetriever)
"""Retrievers whose score of an element is a function of the query and its key alone: copies
of a key are one element to them (:func:`~automr.retrievers.copies_scored_as_first`). Not the
random retriever, which scores copies apart on purpose (a draw uniform over elements), nor a
user's, which may score by position (the newest, a picked element)."""


@attrs.define
class MemoryRetrieval:
    """Retrieval of the top ``k`` memory elements per sample and their combination.

    ``store``'s keys are scored by ``retriever`` against the prompt's layer-L state pooled
    as the memory was (its record's pooling); ``combiner`` joins the top ``k`` (default 1)
    to that state. A combiner that inserts token states (concat) needs a memory that stores
    them or a store opened with ``recompute=`` (else :class:`~automr.errors.AutomrError`).
    ``retrieved`` collects, per sample passed through an insert, the absolute element
    indices (positions in the user's timeline) that were retrieved, for inspection.
    """

    store: MemoryStore
    retriever: Retriever
    combiner: Combiner
    k: int = 1
    retrieved: list[list[int]] = attrs.field(factory=list)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.store, MemoryStore):
            raise AutomrError(f"the store is a {type(self.store).__name__}, not a MemoryStore: "
                              f"open a memory folder with automr.MemoryStore.open(folder) (or "
                              f"FinetunedRun.open_memory)")
        require(self.retriever, Retriever, "retriever", "a built-in one by name is "
                "automr.build_retriever(name, store.hidden_size)")
        if (isinstance(self.retriever, MLPRetriever)
                and self.retriever.config.hidden_size != self.store.hidden_size):
            raise AutomrError(f"the MLP retriever scores keys of size "
                              f"{self.retriever.config.hidden_size}, but the memory in "
                              f"{self.store.folder} holds keys of size {self.store.hidden_size}: "
                              f"build or train one for this memory")
        center = getattr(self.retriever, "center", None)
        if (isinstance(self.retriever, SemanticRetriever) and center is not None
                and center.shape != (self.store.hidden_size,)):
            raise AutomrError(f"the semantic retriever's centre has shape {tuple(center.shape)}, "
                              f"but the memory in {self.store.folder} holds keys of size "
                              f"{self.store.hidden_size}: centre it on this memory's keys")
        require(self.combiner, Combiner, "combiner",
                "a built-in one by name is automr.COMBINERS[name]()")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise AutomrError(f"k must be an int >= 1 (elements retrieved per sample), got "
                              f"{self.k!r}: k=0 would insert nothing, which is BIGRec")
        if (self.combiner.uses_token_states and not self.store.record.store_token_states
                and self.store.recompute is None):
            raise AutomrError(
                f"the {type(self.combiner).__name__} combiner inserts the retrieved elements' "
                f"token states, but the memory in {self.store.folder} stores none: build it "
                f"with `automr memory build --store-token-states` (the default) or use "
                f"--combiner append-token")

    def insert_for(self, samples: Sequence[Sample]) -> Insert:
        """The ``insert`` (:data:`~automr.interfaces.Insert`) for a batch of ``samples``, in
        order: called once with their prompts' layer-L state (rows in that order, padded on
        either side), it retrieves each sample's top ``k``
        elements of its own memory (:meth:`MemoryStore.request_for`), appends their positions
        to :attr:`retrieved` and returns the combined state. Pass it to a grounder's
        ``rank``/``generate`` (:class:`~automr.methods.GenerativeMethod` does)."""
        requests = [self.store.request_for(s) for s in samples]
        keys, mask = self.store.padded_keys(requests)

        def insert(state: LayerState) -> LayerState:
            if state.batch_size != len(requests):
                raise AutomrError(f"the insert for {len(requests)} samples got {state.batch_size} "
                                  f"prompt rows: a grounder applies it once, to the layer-L "
                                  f"state of the whole batch, rows in the samples' order")
            query = self.store.record.pooling(state.hidden, state.mask)
            scores = (self.retriever.scores(query.to(keys.dtype), keys.to(query.device),
                                            mask.to(query.device)) if keys.shape[1]
                      else query.new_zeros(len(requests), 0))  # no memory in the batch
            _check_scores(self.retriever, scores, mask.to(query.device))
            if isinstance(self.retriever, KEY_SCORED):
                scores = copies_scored_as_first(scores, keys.to(query.device),
                                                mask.to(query.device))
            indices, _ = top_k(scores, mask.to(query.device), self.k)
            self.retrieved += [[requests[row][2] + i for i in chosen if i >= 0]
                               for row, chosen in enumerate(indices.tolist())]
            return self.combiner.combine(state, self._tokens(requests, keys, indices))

        return insert

    def _tokens(self, requests, keys: torch.Tensor, indices: torch.Tensor) -> MemoryTokens:
        if not self.combiner.uses_token_states:
            return retrieved_memory(keys.to(indices.device), indices)
        rows = []
        for (user, _, start), chosen in zip(requests, indices.tolist(), strict=True):
            states = [self.store.token_states(user, start + i) for i in chosen if i >= 0]
            rows.append(torch.cat(states) if states  # an empty row as the memory's keys
                        else keys.new_zeros((0, self.store.hidden_size)))
        return pad_memory(rows)


def load_retriever_for(store: MemoryStore, directory: Path | str,
                       combiner: str | None = None) -> Retriever:
    """The saved retriever in ``directory``, refused unless it was trained on keys like the
    memory's (its model, layer, encoder and pooling), and on labels annotated with the
    registry combiner named ``combiner`` (those it recorded), and hidden size."""
    expect = {**store.record.provenance(), **({} if combiner is None else {"combiner": combiner})}
    return load_retriever(directory, device=str(store.device), expect=expect,
                          hidden_size=store.hidden_size)
