"""LM-based methods: BIGRec, the untuned base model, AutoMR and its retrieval variants, and
the prompt-context baselines (ReLLa, TRSR) - one class, composed from parts.

A :class:`GenerativeMethod` is a loaded LM + a grounder, optionally a
:class:`~automr.recommenders.automr.Retrieval` (memory joined at layer L: AutoMR's
:class:`~automr.recommenders.automr.MemoryRetrieval` with any retriever object) and a
:class:`~automr.interfaces.PromptContext` (ReLLa, TRSR).
"""

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import torch

from automr.checks import int_field, is_bool
from automr.data import Catalog, PreparedDataset, Sample, tokenize_sample
from automr.defaults import DEFAULT_LAYER
from automr.errors import AutomrError
from automr.evaluation.metrics import ranks_from_scores, seen_mask
from automr.grounding.l2 import L2Grounder
from automr.grounding.likelihood import (
    LoweredBatches,
    lower_targets,
    target_log_likelihoods_from,
)
from automr.grounding.targets import CatalogTargets
from automr.interfaces import Grounder, PromptContext, require, require_instance
from automr.llm.loading import LoadedModel, weight_versions, weights_written
from automr.llm.split import HFSplitLLM
from automr.memory import MemoryStore
from automr.progress import Progress
from automr.recommenders.automr import Retrieval

INPUT_DETAILS = ("retrieved", "contexts")
"""The details a method makes of every sample it runs, whatever it computes: the memory
elements retrieved and the prompt context (not ``generated``, an L2 grounding's own)."""


def left_padded_prompts(
    loaded: LoadedModel, dataset: PreparedDataset, samples: Sequence[Sample],
    contexts: Sequence[str | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt ids (exactly as in training, with each sample's prompt context if given)
    left-padded into one batch, and their mask."""
    contexts = [None] * len(samples) if contexts is None else contexts
    prompts = [tokenize_sample(loaded.tokenizer, s, dataset.catalog, dataset.prompt_config,
                               context=c).prompt_ids
               for s, c in zip(samples, contexts, strict=True)]
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), loaded.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    return ids, mask


Likelihood = tuple[float, int, dict[str, Any]]
"""A sample's target log-likelihood, its token count and the details it was computed with
(:data:`INPUT_DETAILS`)."""


@attrs.define(eq=False)
class KeptLikelihoods:
    """Target log-likelihoods by sample, kept apart for each set of inputs that decides
    them: the loaded model, dataset, retrieval and prompt context (the same objects) and the
    layer. Grounding does not change them, so methods that differ in their grounder (or batch
    size, ...) share them through one of these (the registry's do: a second grounder computes
    none again), and a method made from another with ``attrs.evolve`` and another retrieval,
    context, layer or model computes its own."""

    _tables: list[tuple[tuple[int, Hashable], tuple[object, ...], dict[Sample, Likelihood]]] = (
        attrs.field(factory=list, init=False))

    def table(self, layer: int, inputs: tuple[object, ...],
              weights: Hashable = "") -> dict[Sample, Likelihood]:
        """The values kept for ``inputs`` (compared by identity) at ``layer`` with ``weights``
        (the model's fingerprint and the retrieval's weights' versions: the same objects
        trained further are others), by sample (not its id: a user's sample served again with
        another history is another): the same dict for the same inputs, a new one for others."""
        for key, kept, table in self._tables:
            if key == (layer, weights) and len(kept) == len(inputs) and all(
                    a is b for a, b in zip(kept, inputs, strict=True)):
                return table
        table: dict[Sample, Likelihood] = {}
        self._tables.append(((layer, weights), inputs, table))
        return table


def _kept(likelihoods: object) -> None:
    """Refuse, at construction or assignment, ``likelihoods`` that are not a
    :class:`KeptLikelihoods` (a dict, their type before) in one line."""
    require_instance(likelihoods, KeptLikelihoods, "likelihoods",
                     "share another method's .likelihoods, or leave it out")


def _each_item_once(rankings: torch.Tensor) -> bool:
    """Whether every row of ``[rows items]`` holds each of ``0 .. items-1`` once (counted,
    not sorted: O(items))."""
    if rankings.is_floating_point() or rankings.is_complex() or rankings.dtype == torch.bool:
        return False
    if not bool(((rankings >= 0) & (rankings < rankings.shape[1])).all()):
        return False
    rankings = rankings.long()  # scatter takes int64 (or int32) indices only
    counts = torch.zeros_like(rankings).scatter_add_(1, rankings, torch.ones_like(rankings))
    return bool((counts == 1).all())


@attrs.define(eq=False)
class GenerativeMethod:
    """Ranks the catalog with an LM: prompt -> lower half -> (memory) -> upper half -> grounder.

    ``layer`` is the split layer; with ``retrieval`` (a
    :class:`~automr.recommenders.automr.Retrieval`: AutoMR's
    :class:`~automr.recommenders.automr.MemoryRetrieval` or a user's own) it must be the
    memory's layer (its keys are layer-L states), and ``dataset`` the one the memory was built
    from (as annotation refuses another). ``context`` puts a prompt context (ReLLa, TRSR) in
    every prompt: the one ``loaded`` was fine-tuned with
    (:func:`automr.contexts.build.build_context` of ``FinetunedRun.context``). ``batch_size``
    samples run per forward; ``exclude_seen`` leaves each sample's history items out of its
    ranking (the target stays); ``progress`` shows a bar named ``label``. ``settings`` describes
    the method for resuming an evaluation folder: give everything that changes the ranks (the
    registry's builders do). A method serves the model's weights it was built with: once they
    change (a caller's own training steps) it refuses to go on; build the grounder and the
    method again; the same holds for the weights of its retrieval's retriever and combiner
    (modules).
    """

    loaded: LoadedModel
    dataset: PreparedDataset
    grounder: Grounder
    layer: int = int_field(default=DEFAULT_LAYER)
    retrieval: Retrieval | None = None
    context: PromptContext | None = None
    batch_size: int = int_field(attrs.validators.gt(0), default=8)
    exclude_seen: bool = attrs.field(default=False, validator=is_bool)
    progress: bool = attrs.field(default=False, validator=is_bool)
    label: str = "ranking"
    settings: Mapping[str, Any] = attrs.field(factory=dict)
    likelihoods: KeptLikelihoods = attrs.field(factory=KeptLikelihoods,
                                               validator=lambda _, __, value: _kept(value))
    """Where each sample's target log-likelihood is kept once computed, with the details it
    was computed with: methods of one model, retrieval and context may share one (the
    registry's do: a second grounder computes none again, and its details still name what
    was retrieved); one with other inputs keeps its own there."""
    lowered: LoweredBatches | None = None
    """Where the lower half's work on each likelihood batch is kept for methods of the same
    model scoring the same batches with other memory or none (the registry's methods share
    one: BIGRec, AutoMR and random retrieval of a fine-tune run the lower half of a batch
    once, as it never sees memory); None: not kept. The method is one of its readers from
    when it is made, so build the methods that share one before running them."""
    _details: dict[str, dict[str, Any]] = attrs.field(factory=dict, init=False)
    _embeddings: dict[Sample, torch.Tensor] = attrs.field(factory=dict, init=False)
    _kept: dict[str, dict[str, Any]] = attrs.field(factory=dict, init=False)
    _weights: str = attrs.field(default="", init=False)
    _retrieval_weights: list = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.loaded, LoadedModel):
            raise AutomrError(f"loaded is a {type(self.loaded).__name__}, not a LoadedModel: "
                              f"pass what automr.load_model (or FinetunedRun.load) returns")
        require_instance(self.dataset, PreparedDataset, "dataset",
                         "open a prepared folder with automr.PreparedDataset.load(folder)")
        require(self.grounder, Grounder, "grounder", "a built-in one by name is "
                "automr.build_grounder(name, loaded, dataset, fingerprint)")
        if self.context is not None:
            require(self.context, PromptContext, "context",
                    "a fine-tune's is automr.contexts.build_context(run.context, ...)")
        llm = HFSplitLLM(self.loaded.model)
        if not 0 <= self.layer <= llm.num_layers:
            raise AutomrError(f"layer {self.layer!r} is outside 0..{llm.num_layers} for this "
                              f"model")
        if self.retrieval is not None:
            self._check_retrieval(self.retrieval, llm)
        self._weights = self.loaded.fingerprint()
        if self.lowered is not None:
            self.lowered.expect(self, self.loaded.model, self.layer, (
                id(self.likelihoods), id(self.dataset), id(self.retrieval), id(self.context)))
        self._retrieval_weights = [
            version for part in (self.retrieval, getattr(self.retrieval, "retriever", None),
                                 getattr(self.retrieval, "combiner", None))
            if isinstance(part, torch.nn.Module) for version in weight_versions(part)]

    def _check_weights(self) -> None:
        """Refuse to go on once the model's weights changed since this method was built (a
        caller's training steps): its grounder's catalog embeddings and the values it kept are
        the old weights'."""
        if self.loaded.fingerprint() != self._weights:
            raise AutomrError(f"the weights of {self.loaded.name} changed since this "
                              f"{type(self).__name__} was built (its grounder's catalog "
                              f"embeddings and the values it kept are the old weights'): "
                              f"build the grounder and the method again")
        if weights_written(self._retrieval_weights):
            raise AutomrError(f"the weights of the retrieval's retriever or combiner changed "
                              f"since this {type(self).__name__} was built (the values it kept "
                              f"are the old weights'): build the method again")

    def _check_retrieval(self, retrieval: Retrieval, llm: HFSplitLLM) -> None:
        require(retrieval, Retrieval, "retrieval",
                "AutoMR's is automr.MemoryRetrieval(store, retriever, combiner)")
        store = retrieval.store
        require_instance(store, MemoryStore, "retrieval's store",
                         "open a memory folder with automr.MemoryStore.open(folder)")
        if self.layer != store.layer:
            raise AutomrError(f"the memory holds layer-{store.layer} states; it cannot be "
                              f"joined at layer {self.layer}")
        store.check_dataset(self.dataset)  # its keys encode another dataset's titles or prompts
        if store.hidden_size != llm.hidden_size:
            raise AutomrError(f"the memory in {store.folder} holds states of size "
                              f"{store.hidden_size}, the model's are of size "
                              f"{llm.hidden_size}: it was built with another model")
        store.check_model(self.loaded)  # of this size, another model's states

    def rank(self, samples: Iterable[Sample]) -> list[int]:
        """The 0-based rank of each sample's target in the grounder's full catalog ranking.

        The L2 grounder's is made from :meth:`distances` (:meth:`ranks_by_distance`, ties
        broken against the target as every score-based method's), so ranking after an
        injection of the same method (or before one) generates nothing again."""
        samples = list(samples)  # a generator's samples are read more than once
        self._check_weights()
        if isinstance(self.grounder, L2Grounder):
            return self.ranks_by_distance(samples, self.distances(samples))
        ranks: list[int] = []
        for chunk, rankings in self._batches(samples, self._rank_batch):
            ranks += self.ranks_in_order(chunk, rankings.cpu())
        return ranks

    def ranks_in_order(self, samples: Sequence[Sample], rankings: torch.Tensor) -> list[int]:
        """Each target's 0-based rank in its row of ``rankings`` (``[samples items]``, catalog
        indices best first, an order of the whole catalog), counting only the items left in
        with ``exclude_seen`` (the history out, the target in).

        The model writes a title, not an item: items it writes alike (:func:`title_ties`) that
        the grounder lists together with the target are ties, broken against the target as
        :func:`~automr.evaluation.metrics.ranks_from_scores` breaks them (the target counts
        from the last of them). A grounder whose ``tie_key`` (one value per item) is set
        tells such items apart by it: only those with the target's value are ties."""
        n_items = len(self.dataset.catalog)
        if rankings.ndim != 2 or len(rankings) != len(samples):
            raise AutomrError(f"{type(self.grounder).__name__}.rank gave {self.label} "
                              f"{tuple(rankings.shape)} item indices for {len(samples)} "
                              f"samples: a grounder returns [prompts, items], one row per "
                              f"prompt")
        if rankings.shape[1] != n_items or not _each_item_once(rankings):
            raise AutomrError(f"{type(self.grounder).__name__}.rank gave {self.label} "
                              f"{rankings.shape[1]} item indices per sample that are not an "
                              f"order of the whole catalog ({n_items} items): a grounder ranks "
                              f"every item")
        rankings = rankings.long()  # narrower integers index otherwise (uint8 as a mask)
        catalog = self.dataset.catalog
        targets = catalog.positions(s.target for s in samples)
        seen = (seen_mask([catalog.positions(s.history) for s in samples], n_items)
                if self.exclude_seen else torch.zeros(len(samples), n_items, dtype=torch.bool))
        ranks = []
        for row, (sample, target) in enumerate(zip(samples, targets, strict=True)):
            seen[row, target] = False
            kept = rankings[row][~seen[row][rankings[row]]]
            at = int((kept == target).nonzero()[0, 0])
            ties = title_ties(catalog, sample.target, self.grounder)
            ranks.append(at + int(ties[kept[at + 1:]].long().cumprod(0).sum()))
        return ranks

    def ranks_by_distance(self, samples: Sequence[Sample],
                          distances: torch.Tensor) -> list[int]:
        """Each target's 0-based rank when the catalog is ordered by ``distances``
        (``[samples items]``, nearest first; the history left out with ``exclude_seen``): the
        number of other items at most as far, so a title shared by several items ranks below
        all of them (:func:`~automr.evaluation.metrics.ranks_from_scores`)."""
        catalog = self.dataset.catalog
        targets = torch.tensor(catalog.positions(s.target for s in samples), dtype=torch.long)
        exclude = (seen_mask([catalog.positions(s.history) for s in samples], len(catalog))
                   if self.exclude_seen else None)
        return ranks_from_scores(-distances, targets, exclude).tolist()

    def target_log_likelihoods(self, samples: Iterable[Sample]) -> list[tuple[float, int]]:
        """``(log P(true title + EOS | prompt [+ memory]), its token count)`` per sample.
        Each sample's value is kept (:attr:`likelihoods`), so asking again (an injection of
        this method, another grounder of its model) computes nothing."""
        samples = list(samples)  # a generator's samples are read more than once
        self._check_weights()
        versions = tuple((id(ref()), was) for ref, was in self._retrieval_weights)
        kept = self.likelihoods.table(self.layer, (self.loaded, self.dataset, self.retrieval,
                                                   self.context), (self._weights, versions))
        todo = list(dict.fromkeys(s for s in samples if s not in kept))
        for chunk, (scores, counts) in self._batches(todo, self._likelihood_batch):
            for sample, score, count in zip(chunk, scores.tolist(), counts, strict=True):
                made = {kind: self._details[kind][sample.id] for kind in INPUT_DETAILS
                        if sample.id in self._details.get(kind, {})}
                kept[sample] = (score, count, made)
        for sample in samples:  # computed by another method sharing them: its details too
            for kind, value in kept[sample][2].items():
                self._details.setdefault(kind, {})[sample.id] = value
        return [kept[s][:2] for s in samples]

    def distances(self, samples: Iterable[Sample]) -> torch.Tensor:
        """``[samples, items]``: the L2 grounder's distance of every catalog title to what was
        generated for each sample. Each sample's generated text's embedding is kept (not its
        row of the catalog's size), so asking again (another prior's injection) generates
        nothing and memory grows with the hidden size, not the catalog."""
        samples = list(samples)  # a generator's samples are read more than once
        self._check_weights()
        if not isinstance(self.grounder, L2Grounder):
            raise AutomrError(f"{type(self.grounder).__name__} gives no distances (the L2 "
                              f"grounder does)")
        todo = list(dict.fromkeys(s for s in samples if s not in self._embeddings))
        generated = self._kept.get("generated", {})
        kept = [s for s in todo if s.id in generated]
        for start in range(0, len(kept), self.batch_size):  # measured, not generated again
            chunk = kept[start : start + self.batch_size]
            rows = self.grounder.embed([generated[s.id] for s in chunk])
            self._embeddings.update(zip(chunk, rows.cpu(), strict=True))
            for kind, entries in self._kept.items():
                self._details.setdefault(kind, {}).update(
                    {s.id: entries[s.id] for s in chunk if s.id in entries})
        todo = [s for s in todo if s.id not in generated]
        for chunk, rows in self._batches(todo, self._generated_embeddings):
            self._embeddings.update(zip(chunk, rows.cpu(), strict=True))
        if not samples:
            return torch.zeros(0, len(self.dataset.catalog))
        return self.grounder.distances_from(
            torch.stack([self._embeddings[s] for s in samples])).cpu()

    def keep(self, details: Mapping[str, Mapping[str, Any]]) -> None:
        """Take per-sample details this method wrote before with the same settings (from an
        evaluation folder): the samples whose ``generated`` text an L2 grounding kept are
        measured to it, not generated for again, and keep their other details (retrieved
        elements, contexts)."""
        for kind, entries in details.items():
            self._kept.setdefault(kind, {}).update(entries)

    def note(self, kind: str, values: Mapping[str, Any]) -> None:
        """Keep something the method used beyond per-sample details (e.g. a tuned weight);
        an evaluation folder saves it as ``KIND/METHOD.json``."""
        self._details[kind] = dict(values)

    def details(self) -> Mapping[str, Mapping[str, Any]]:
        """Per sample id: the memory elements retrieved (timeline positions), the prompt
        context used and, with an L2 grounder, the generated title, for the samples ranked or
        scored so far."""
        return self._details

    def _batches(self, samples: Sequence[Sample], run):
        for sample in samples:  # an item of another catalog: one line before any batch runs
            self.dataset.catalog.positions((sample.target, *sample.history))
        llm = HFSplitLLM(self.loaded.model)
        contexts = None if self.context is None else self.context.texts(samples)
        if contexts is not None and len(contexts) != len(samples):
            raise AutomrError(f"{type(self.context).__name__}.texts gave {len(contexts)} texts "
                              f"for {len(samples)} samples: one per sample (None for none)")
        if contexts is not None:
            self._details.setdefault("contexts", {}).update(
                zip((s.id for s in samples), contexts, strict=True))
        with Progress(disable=not self.progress) as bar:
            task = bar.add_task(self.label, total=len(samples))
            for start in range(0, len(samples), self.batch_size):
                chunk = samples[start : start + self.batch_size]
                texts = None if contexts is None else contexts[start : start + self.batch_size]
                ids, mask = left_padded_prompts(self.loaded, self.dataset, chunk, texts)
                insert = None
                if self.retrieval is not None:
                    before = len(self.retrieval.retrieved)
                    insert = self.retrieval.insert_for(chunk)
                with torch.no_grad():
                    result = run(llm, chunk, ids.to(llm.device), mask.to(llm.device), insert,
                                 texts)
                if self.retrieval is not None:
                    retrieved = self.retrieval.retrieved[before:]
                    if len(retrieved) != len(chunk):
                        raise AutomrError(
                            f"{type(self.retrieval).__name__} added {len(retrieved)} entries "
                            f"to retrieved for a batch of {len(chunk)} samples: one per sample "
                            f"(the elements it inserted). A grounder applies insert once per "
                            f"batch; a method called from two threads at once counts both (one "
                            f"method and model per thread)")
                    self._details.setdefault("retrieved", {}).update(
                        zip((s.id for s in chunk), retrieved, strict=True))
                yield chunk, result
                bar.advance(task, len(chunk))

    def _rank_batch(self, llm, chunk, ids, mask, insert, texts):
        return self.grounder.rank(llm, ids, mask, self.layer, insert)

    def _generated_embeddings(self, llm, chunk, ids, mask, insert, texts):
        generated = self.grounder.generate(llm, ids, mask, self.layer, insert)
        self._details.setdefault("generated", {}).update(
            zip((s.id for s in chunk), generated, strict=True))
        return self.grounder.embed(generated)

    def _likelihood_batch(self, llm, chunk, ids, mask, insert, texts):
        texts = [None] * len(chunk) if texts is None else texts
        targets = []
        for sample, text in zip(chunk, texts, strict=True):
            example = tokenize_sample(self.loaded.tokenizer, sample, self.dataset.catalog,
                                      self.dataset.prompt_config, context=text)
            targets.append(example.input_ids[len(example.prompt_ids):])
        if self.lowered is None:
            lowered = lower_targets(llm, ids, mask, self.layer, targets)
        else:
            batch = (self.loaded.model, self.layer, tuple(s.id for s in chunk), ids, targets)
            lowered = self.lowered.get(*batch, reader=self)
            if lowered is None:
                lowered = lower_targets(llm, ids, mask, self.layer, targets)
                self.lowered.put(*batch, lowered, reader=self)
        scores = target_log_likelihoods_from(llm, lowered, insert)
        return scores, [len(t) for t in targets]


def title_ties(catalog: Catalog, target: str, grounder: object) -> torch.Tensor:
    """``[items]``: the items a grounder's order ties with item ``target`` (those the model
    writes alike: the same token sequence where the grounder holds its
    :class:`~automr.grounding.targets.CatalogTargets`, else the same title; where the grounder
    sets a ``tie_key``, only those with the target's value), which an evaluation ranks above
    the target (:meth:`GenerativeMethod.ranks_in_order`)."""
    [position] = catalog.positions([target])
    targets = getattr(grounder, "targets", None)
    if isinstance(targets, CatalogTargets):
        ties = targets.groups == targets.groups[position]
    else:
        ties = torch.zeros(len(catalog), dtype=torch.bool)
        ties[catalog.positions(catalog.ids_for_title(catalog.title(target)))] = True
    key = getattr(grounder, "tie_key", None)
    if key is not None:
        ties &= key.cpu() == key[position].cpu()
    return ties
