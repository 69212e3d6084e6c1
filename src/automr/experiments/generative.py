"""Ranking test samples with a generative recommender (base, BIGRec, later AutoMR)."""

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from automr.cache import resolve_cache_dir
from automr.data import PreparedDataset, Sample, format_target, tokenize_sample
from automr.errors import AutomrError
from automr.grounding import (
    CatalogTargets,
    ConstrainedGrounder,
    L2Grounder,
    LikelihoodGrounder,
    catalog_targets,
    embed_texts,
)
from automr.interfaces import Grounder, Insert
from automr.llm.loading import LoadedModel
from automr.llm.split import HFSplitLLM
from automr.progress import Progress

InsertFor = Callable[[Sequence[Sample]], Insert]
"""Builds the memory insertion for a batch of samples (AutoMR); None for memory-free methods."""


def dataset_targets(loaded: LoadedModel, dataset: PreparedDataset) -> CatalogTargets:
    """Every catalog item's response text (as in training) tokenized with ``loaded``'s tokenizer."""
    texts = [format_target(item.title, dataset.prompt_config) for item in dataset.catalog]
    return catalog_targets(loaded.tokenizer, texts)


def catalog_embeddings(
    loaded: LoadedModel, targets: CatalogTargets, base_fingerprint: str,
    cache_dir: Path | str | None = None, progress: bool = True,
) -> torch.Tensor:
    """Base-model embeddings of every catalog response text, cached by model and catalog."""
    catalog_hash = hashlib.sha256("\n".join(targets.texts).encode()).hexdigest()
    path = (resolve_cache_dir(cache_dir) / "grounding" /
            f"{base_fingerprint[:16]}-{catalog_hash[:16]}.safetensors")
    if path.exists():
        return load_file(path)["embeddings"]
    with Progress(disable=not progress) as bar:
        task = bar.add_task("embedding catalog titles", total=len(targets))
        embeddings = embed_texts(loaded.model, loaded.tokenizer, targets.texts,
                                 progress=lambda n: bar.advance(task, n))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    save_file({"embeddings": embeddings.contiguous()}, tmp,
              metadata={"model": base_fingerprint, "catalog": catalog_hash})
    tmp.replace(path)
    return embeddings


def build_grounder(
    kind: str, loaded: LoadedModel, targets: CatalogTargets, embeddings: torch.Tensor | None,
    num_beams: int | None = None,
) -> Grounder:
    """One of :data:`automr.grounding.GROUNDER_KINDS`."""
    if kind == "l2":
        return L2Grounder(loaded.model, loaded.tokenizer, embeddings, num_beams=num_beams or 4,
                          max_new_tokens=max(map(len, targets.token_ids)) + 4)
    if kind == "constrained":
        return ConstrainedGrounder(targets, embeddings, num_beams=num_beams or 10)
    if kind == "likelihood":
        return LikelihoodGrounder(targets)
    raise AutomrError(f"unknown grounder {kind!r}; choose l2, constrained or likelihood")


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


def rank_samples(
    loaded: LoadedModel, dataset: PreparedDataset, samples: Sequence[Sample], grounder: Grounder,
    layer: int, batch_size: int = 8, insert_for: InsertFor | None = None,
    exclude_seen: bool = False, progress: bool = True, label: str = "ranking",
    contexts: Sequence[str | None] | None = None,
) -> list[int]:
    """The 0-based rank of each sample's target in the grounder's full catalog ranking
    (``contexts``: one prompt context per sample, for the ReLLa/TRSR baselines)."""
    llm = HFSplitLLM(loaded.model)
    index = {item_id: i for i, item_id in enumerate(dataset.catalog.ids)}
    ranks: list[int] = []
    with Progress(disable=not progress) as bar:
        task = bar.add_task(label, total=len(samples))
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            ids, mask = left_padded_prompts(
                loaded, dataset, chunk,
                None if contexts is None else contexts[start : start + batch_size])
            insert = insert_for(chunk) if insert_for is not None else None
            with torch.no_grad():
                rankings = grounder.rank(llm, ids.to(llm.device), mask.to(llm.device), layer,
                                         insert)
            for sample, ranking in zip(chunk, rankings.tolist(), strict=True):
                seen = {index[i] for i in sample.history} - {index[sample.target]}
                ranked = [i for i in ranking if i not in seen] if exclude_seen else ranking
                ranks.append(ranked.index(index[sample.target]))
            bar.advance(task, len(chunk))
    return ranks
