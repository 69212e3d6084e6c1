"""From a prepared dataset and a model to a grounder: catalog targets, base-model embeddings
(cached), and one builder for every grounder kind the CLI exposes."""

import contextlib
import hashlib
import json
import math
from pathlib import Path

import torch

from automr.cache import resolve_cache_dir
from automr.data import PreparedDataset, format_target
from automr.data.popularity import popularity
from automr.data.prompts import text_token_ids
from automr.errors import AutomrError
from automr.grounding.constrained import ConstrainedGrounder
from automr.grounding.embedding import embed_texts
from automr.grounding.l2 import L2Grounder
from automr.grounding.likelihood import LikelihoodGrounder
from automr.grounding.prior import min_max
from automr.grounding.targets import CatalogTargets, catalog_targets
from automr.interfaces import Grounder, require_instance
from automr.llm.loading import LoadedModel, dtype_name
from automr.progress import Progress
from automr.storage import read_safetensors, save_safetensors

GROUNDER_KINDS = ("l2", "constrained", "likelihood", "constrained-pop")
"""The grounders :func:`build_grounder` makes; ``constrained-pop``: the constrained beams with
the rest of the catalog ordered by BIGRec's popularity injection
(:mod:`automr.grounding.prior`). The L2 grounding's injections (``l2-pop``, ``l2-sasrec``)
re-weight its distances per sample: :class:`~automr.methods.injection.PriorWeightedMethod`."""


def dataset_targets(loaded: LoadedModel, dataset: PreparedDataset) -> CatalogTargets:
    """Every catalog item's response text (as in training) tokenized with ``loaded``'s tokenizer."""
    texts = [format_target(item.title, dataset.prompt_config) for item in dataset.catalog]
    return catalog_targets(loaded.tokenizer, texts)


EMBEDDING_RULES = 2
"""How catalog titles are embedded, in the cache's file names; raise it when that changes. 2:
shortest titles first (9f45410), which rounds otherwise in bfloat16 (501 of 1,194 rows of an
older cache differed, up to 0.04): an older cache was read back as today's."""


def catalog_embeddings(
    loaded: LoadedModel, targets: CatalogTargets, base_fingerprint: str,
    cache_dir: Path | str | None = None, progress: bool = True,
) -> torch.Tensor:
    """Base-model embeddings of every catalog response text (float32, on the CPU: as the
    cache reads them back), cached by model, dtype (the fingerprint is the same in every
    dtype, the embeddings are not) and the token ids embedded (the texts with the special
    tokens the tokenizer adds: a tokenizer's files are not in the model's fingerprint). A
    cache that cannot be written (shared, read-only) is only read. ``base_fingerprint`` must be
    ``loaded``'s or, for a fine-tune, its base's."""
    loaded.check_base_fingerprint(base_fingerprint, "catalog embeddings")
    embedded = text_token_ids(loaded.tokenizer, targets.texts)
    catalog_hash = hashlib.sha256(json.dumps(embedded).encode()).hexdigest()
    dtype = dtype_name(loaded.model.dtype)
    path = (resolve_cache_dir(cache_dir, create=False) / "grounding" /
            f"{base_fingerprint[:16]}-{dtype}-{catalog_hash[:16]}-e{EMBEDDING_RULES}.safetensors")
    if path.exists():
        return read_safetensors(path, "any grounding run (delete the file to recompute it)")[
            "embeddings"]
    with Progress(disable=not progress) as bar:
        task = bar.add_task("embedding catalog titles", total=len(targets))
        embeddings = embed_texts(loaded.model, loaded.tokenizer, targets.texts,
                                 progress=lambda n: bar.advance(task, n))
    embeddings = embeddings.cpu()  # where the cache reads back to: each run ranks alike
    with contextlib.suppress(OSError):  # not cached: computed again next time
        path.parent.mkdir(parents=True, exist_ok=True)
        save_safetensors(path, {"embeddings": embeddings.contiguous()}, metadata={
            "model": base_fingerprint, "dtype": dtype, "catalog": catalog_hash})
    return embeddings


def one_row_per_title(embeddings: torch.Tensor, targets: CatalogTargets) -> torch.Tensor:
    """``embeddings`` with the items of a repeated title (Amazon editions) given the row of
    its first item: embedded in batches of other padding, copies of a text round apart in
    bfloat16, and their L2 distances would rank a target above or below its other editions
    by rounding, where an evaluation ties them against it."""
    first = torch.arange(len(targets))
    for head, items in targets.sharing().items():
        first[list(items)] = head
    return embeddings[first.to(embeddings.device)]


def build_grounder(
    kind: str, loaded: LoadedModel, dataset: PreparedDataset, base_fingerprint: str,
    num_beams: int | None = None, cache_dir: Path | str | None = None, progress: bool = True,
    gamma: float = 0.0,
) -> Grounder:
    """A grounder of ``kind`` (:data:`GROUNDER_KINDS`) over ``dataset``'s catalog.

    ``base_fingerprint`` names the base model (without adapter) whose catalog embeddings the
    ``l2`` and ``constrained`` grounders use; they are computed once and cached under
    ``cache_dir`` (default: the automr cache), with a progress bar unless ``progress`` is
    False. ``num_beams`` (None: 4 for ``l2``, 10 for the constrained kinds; ``likelihood``
    has none) is the beam width of the generation.
    ``constrained-pop`` orders the catalog after its beams by distances weighted by the
    training-period popularity with exponent ``gamma``
    (:func:`~automr.grounding.prior.choose_gamma` picks it on validation samples).
    """
    if kind not in GROUNDER_KINDS:
        raise AutomrError(f"unknown grounder {kind!r}; choose one of {', '.join(GROUNDER_KINDS)}")
    require_instance(loaded, LoadedModel, "model", "automr.load_model or FinetunedRun.load")
    require_instance(dataset, PreparedDataset, "dataset", "automr.PreparedDataset.load(folder)")
    if num_beams is not None and (isinstance(num_beams, bool) or num_beams < 1):
        raise AutomrError(f"num_beams must be an int >= 1 (None: the grounder's default), got "
                          f"{num_beams!r}")
    if not math.isfinite(gamma):
        raise AutomrError(f"gamma (the popularity exponent) must be finite, got {gamma}")
    targets = dataset_targets(loaded, dataset)
    if kind == "likelihood":
        return LikelihoodGrounder(targets)
    # distances are measured where the LM runs (the catalog moved once), in every run alike
    device = next(loaded.model.parameters()).device
    embeddings = one_row_per_title(
        catalog_embeddings(loaded, targets, base_fingerprint, cache_dir, progress),
        targets).to(device)
    if kind == "l2":
        return L2Grounder(loaded.model, loaded.tokenizer, embeddings,
                          num_beams=4 if num_beams is None else num_beams,
                          max_new_tokens=max(map(len, targets.token_ids)) + 4)
    prior = min_max(popularity(dataset)).float() if kind.endswith("-pop") else None
    return ConstrainedGrounder(targets, embeddings, num_beams=10 if num_beams is None else
                               num_beams, prior=prior, gamma=gamma)
