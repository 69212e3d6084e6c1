"""Data layer: sources -> catalog + interactions -> protocol -> samples -> prompts.

- Records: :class:`Item`, :class:`Interaction`, :class:`Sample`; :class:`Catalog`.
- Loaders (each returns a :class:`SourceData`): :func:`load_movielens_100k`,
  :func:`load_movielens` (the later releases), :func:`load_amazon`, :func:`load_csv`.
- Protocol: :class:`ProtocolConfig`, :func:`build_samples`, :func:`prepare_dataset` and the
  per-kind ``prepare_*`` functions behind ``automr data prepare`` (:data:`DATASET_KINDS`).
- Persistence: :class:`PreparedDataset` (``.load(dir)``, ``.catalog``, ``.samples(split)``: a
  :class:`SplitSamples`, each sample built when read; ``.stats``).
- Prompts: :class:`PromptConfig`, :func:`format_prompt`, :func:`format_target`,
  :func:`sample_texts`, :func:`tokenize_example`, :func:`tokenize_sample`.

See ``docs/data.md`` for the protocol, the file formats and the skip/error policy.
"""

from automr.data.amazon import load_amazon
from automr.data.catalog import Catalog, MergeReport, display_title, merge_duplicates
from automr.data.movielens import load_movielens, load_movielens_100k
from automr.data.prepare import (
    DATASET_KINDS,
    DatasetKind,
    prepare_amazon,
    prepare_csv,
    prepare_dataset,
    prepare_movielens,
    prepare_movielens_100k,
)
from automr.data.prepared import PreparedDataset, SourceInfo
from automr.data.prompts import (
    IGNORE_INDEX,
    PROMPT_DOMAINS,
    PromptConfig,
    TokenizedExample,
    format_prompt,
    format_target,
    prompt_config,
    sample_texts,
    tokenize_example,
    tokenize_sample,
)
from automr.data.protocol import (
    SPLITS,
    ProtocolConfig,
    SplitBoundaries,
    kcore_filter,
    resolve_boundaries,
)
from automr.data.records import Interaction, Item, Sample
from automr.data.samples import SplitSamples, build_samples
from automr.data.source import SourceData
from automr.data.stats import DatasetStats
from automr.data.tabular import load_csv

__all__ = [
    "DATASET_KINDS",
    "IGNORE_INDEX",
    "PROMPT_DOMAINS",
    "SPLITS",
    "Catalog",
    "DatasetKind",
    "DatasetStats",
    "Interaction",
    "Item",
    "MergeReport",
    "PreparedDataset",
    "PromptConfig",
    "ProtocolConfig",
    "Sample",
    "SourceData",
    "SourceInfo",
    "SplitBoundaries",
    "SplitSamples",
    "TokenizedExample",
    "build_samples",
    "display_title",
    "format_prompt",
    "format_target",
    "kcore_filter",
    "load_amazon",
    "load_csv",
    "load_movielens",
    "load_movielens_100k",
    "merge_duplicates",
    "prepare_amazon",
    "prepare_csv",
    "prepare_dataset",
    "prepare_movielens",
    "prepare_movielens_100k",
    "prompt_config",
    "resolve_boundaries",
    "sample_texts",
    "tokenize_example",
    "tokenize_sample",
]
