"""ReLLa adapted to generation: the long-term items most similar to the short-term history.

ReLLa (Lin et al., 2024) retrieves the user's past items most relevant to the *target* item.
A generative recommender has no target to score, so, as in the AutoMR paper, the query is the
short-term history: the mean of the recent items' title embeddings. Every title is embedded
with the base LM (last layer, last token: the same cached embeddings BIGRec's grounding uses);
each long-term (memory) item is scored by cosine similarity to the query and the top ``k`` are
listed oldest first: ``Earlier, the user has also watched: "A", "B".``
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from jaxtyping import Float, jaxtyped
from torch import Tensor

from automr.checks import beartype, int_field
from automr.contexts.spec import ContextSpec
from automr.data import Catalog, PreparedDataset, PromptConfig, Sample
from automr.data.prompts import format_titles
from automr.grounding.catalog import catalog_embeddings, dataset_targets
from automr.llm.loading import LoadedModel

RELLA_TEMPLATE = "Earlier, the user has also {verb}: {titles}."


@jaxtyped(typechecker=beartype)
def rella_scores(
    memory: Float[Tensor, "mem hidden"], recent: Float[Tensor, "recent hidden"]
) -> Float[Tensor, " mem"]:
    """Cosine similarity of each memory item to the mean of the recent items' embeddings."""
    query = recent.mean(0, keepdim=True)
    return torch.nn.functional.cosine_similarity(memory, query, dim=-1)


@beartype
@attrs.frozen
class ReLLaContext:
    """:class:`~automr.interfaces.PromptContext` listing the ``k`` long-term items most similar
    to the recent ones (``embeddings``: one row per catalog item, in catalog order)."""

    embeddings: Tensor = attrs.field(repr=False)
    catalog: Catalog = attrs.field(repr=False)
    prompt: PromptConfig = attrs.field(repr=False)
    k: int = int_field(attrs.validators.gt(0), default=5)

    def __attrs_post_init__(self) -> None:
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != len(self.catalog):
            raise ValueError(f"ReLLaContext: embeddings {tuple(self.embeddings.shape)} need one "
                             f"row per catalog item ({len(self.catalog)})")

    @property
    def config(self) -> dict[str, Any]:
        """``{"kind": "rella", "k": k}`` (:meth:`ContextSpec.to_json`)."""
        return ContextSpec(kind="rella", k=self.k).to_json()

    def selected(self, sample: Sample) -> tuple[str, ...]:
        """The chosen memory items of ``sample``, oldest first (a repeated item counts once,
        at its latest position; ties go to the more recent item)."""
        latest = {item: position for position, item in enumerate(sample.memory)}
        if not latest or not sample.recent:
            return ()
        positions = sorted(latest.values())
        rows = torch.tensor(self.catalog.positions(sample.memory[p] for p in positions))
        recent = torch.tensor(self.catalog.positions(sample.recent))
        scores = rella_scores(self.embeddings[rows].float(), self.embeddings[recent].float())
        order = sorted(range(len(positions)), key=lambda j: (-float(scores[j]), -positions[j]))
        chosen = sorted(positions[j] for j in order[: self.k])
        return tuple(sample.memory[p] for p in chosen)

    def text(self, sample: Sample) -> str | None:
        """``"Earlier, the user has also {verb}: {titles}."`` with the :meth:`selected` items'
        titles; None when none is selected (no long-term or no recent history)."""
        items = self.selected(sample)
        if not items:
            return None
        titles = format_titles(self.catalog.titles(items), self.prompt)
        return RELLA_TEMPLATE.format(verb=self.prompt.verb, titles=titles)

    def texts(self, samples: Sequence[Sample]) -> list[str | None]:
        """:meth:`text` of each sample."""
        return [self.text(sample) for sample in samples]


def rella_context(
    loaded: LoadedModel, dataset: PreparedDataset, base_fingerprint: str, k: int = 5,
    cache_dir: Path | str | None = None, progress: bool = True,
) -> ReLLaContext:
    """ReLLa over ``dataset`` with the base model of ``loaded`` (its adapter, if any, is
    switched off while embedding; embeddings are cached under ``base_fingerprint``)."""
    targets = dataset_targets(loaded, dataset)
    embeddings = catalog_embeddings(loaded, targets, base_fingerprint, cache_dir, progress)
    return ReLLaContext(embeddings.cpu(), dataset.catalog, dataset.prompt_config, k)
