"""Building a prompt context from its spec (fine-tuning and evaluation share this)."""

from pathlib import Path

from automr.contexts.rella import rella_context
from automr.contexts.spec import ContextSpec
from automr.contexts.trsr import trsr_context
from automr.data import PreparedDataset
from automr.interfaces import PromptContext
from automr.llm.loading import LoadedModel


def build_context(
    spec: ContextSpec, loaded: LoadedModel, dataset: PreparedDataset, base_fingerprint: str,
    cache_dir: Path | str | None = None, batch_size: int = 8, progress: bool = True,
) -> PromptContext:
    """The context ``spec`` describes, computed with the base model of ``loaded`` (a peft
    adapter is switched off) whose fingerprint is ``base_fingerprint`` (the cache key)."""
    if spec.kind == "rella":
        return rella_context(loaded, dataset, base_fingerprint, spec.k, cache_dir, progress)
    return trsr_context(loaded, dataset.catalog, dataset.prompt_config, base_fingerprint, spec,
                        cache_dir, batch_size=batch_size, progress=progress)
