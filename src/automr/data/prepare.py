"""Source -> prepared dataset: window, filter, split, samples, statistics, folder.

:func:`prepare_dataset` applies a :class:`ProtocolConfig` to any loaded source. The three
``prepare_*`` functions are what ``automr data prepare <kind>`` calls, one per entry of
:data:`DATASET_KINDS`, with the same parameters as the command.
"""

import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import attrs

from automr.checks import beartype
from automr.data.amazon import load_amazon
from automr.data.movielens import load_movielens, load_movielens_100k
from automr.data.prepared import PreparedDataset, SourceInfo, is_prepared_dir
from automr.data.prompts import check_domain
from automr.data.protocol import (
    SPLITS,
    ProtocolConfig,
    SplitBoundaries,
    kcore_filter,
    resolve_boundaries,
    to_iso,
    to_unix,
)
from automr.data.records import Interaction, Sample
from automr.data.samples import build_samples, timeline_order
from automr.data.source import SkipCounter, SourceData, drop_repeats, skip_label
from automr.data.stats import Counts, DatasetStats, memory_lengths
from automr.data.tabular import load_csv
from automr.errors import AutomrError
from automr.paths import home_path
from automr.storage import atomic_dir


def prepare_dataset(
    source: SourceData, protocol: ProtocolConfig, out: Path | str | None = None
) -> PreparedDataset:
    """Apply ``protocol`` to ``source``; with ``out``, also write the dataset folder there.

    Steps: keep one interaction per user, item and second (repeats - after merging duplicate
    items, a user who rated both ids in one second - are counted as ``same_second_repeats``),
    keep interactions inside the window, k-core filter them (items first, then users), build
    samples per split (:func:`automr.data.build_samples`), count everything. A split without
    samples is an :class:`AutomrError` that shows the counts, the window and the data's time
    range. The folder is written atomically: on any error nothing is left at ``out``.
    """
    if not isinstance(source, SourceData) or not isinstance(protocol, ProtocolConfig):
        raise AutomrError(f"prepare_dataset takes a SourceData (automr.load_csv, load_amazon, "
                          f"load_movielens_100k) and a ProtocolConfig; got a "
                          f"{type(source).__name__} and a {type(protocol).__name__}")
    check_domain(source.domain)
    target = _check_out(out)
    skips = SkipCounter(source.skipped)
    loaded = drop_repeats(source.interactions, skips, "same_second_repeats")
    if not loaded:  # no window to derive, no interaction to keep: say what the loader skipped
        raise AutomrError(f"the source holds no interaction after loading"
                          f"{_loader_skips(source, '; the loader skipped ')}; check the input "
                          f"files")
    boundaries = resolve_boundaries(protocol, loaded)
    windowed = [i for i in loaded if boundaries.split_of(i.timestamp) is not None]
    filtered = kcore_filter(windowed, protocol.min_item_interactions,
                            protocol.min_user_interactions, protocol.iterative_filter)
    interactions = timeline_order(filtered.interactions)
    if loaded and not windowed:
        times = [i.timestamp for i in loaded]
        raise AutomrError(
            f"none of the {len(loaded):,} loaded interactions lies in the window "
            f"{to_iso(boundaries.start)} .. {to_iso(boundaries.end)}: they lie in "
            f"{to_iso(min(times))} .. {to_iso(max(times))}; set --start/--end (YYYY-MM-DD) "
            f"around the period you want")
    if not interactions:
        skipped = _loader_skips(source)
        raise AutomrError(
            f"no interactions left after the window and filtering ({len(windowed)} in the "
            f"window; items need >= {protocol.min_item_interactions}, users >= "
            f"{protocol.min_user_interactions}). Lower the thresholds or widen the window"
            + (f"; before it, the loader skipped {skipped}." if skipped else "."))
    samples = build_samples(interactions, boundaries, protocol)
    _require_samples(samples, interactions, loaded, boundaries, protocol)
    kept_items = {i.item for i in interactions}
    stats = DatasetStats(
        users=source.raw_users, items=source.raw_items, interactions=source.raw_interactions,
        merged_items=source.merge.merged_items,
        remapped_interactions=source.merge.remapped_interactions,
        skipped=skips.as_dict(),
        loaded=Counts(len({i.user for i in loaded}), len(source.catalog), len(loaded)),
        outside_window=len(loaded) - len(windowed),
        filtered=Counts(len({i.user for i in interactions}), len(kept_items), len(interactions)),
        filter_rounds=filtered.rounds,
        samples={split: len(rows) for split, rows in samples.items()},
        memory_length=memory_lengths(samples),
        window=boundaries.to_json(),
    )
    dataset = PreparedDataset(
        catalog=source.catalog.subset(kept_items), interactions=interactions, protocol=protocol,
        boundaries=boundaries, stats=stats,
        source=SourceInfo(source.kind, source.domain, source.fingerprints, source.options),
        samples=dict(samples),
    )
    if target is not None:
        with atomic_dir(target) as tmp:
            dataset.save(tmp)
        dataset = attrs.evolve(dataset, path=target)
    return dataset


def _require_samples(
    samples: Mapping[str, Sequence[Sample]],
    interactions: Sequence[Interaction],
    loaded: Sequence[Interaction],
    boundaries: SplitBoundaries,
    protocol: ProtocolConfig,
) -> None:
    """Refuse a dataset with an empty split, saying why and what to change."""
    counts = {split: len(rows) for split, rows in samples.items()}
    empty = [split for split, n in counts.items() if n == 0]
    if not empty:
        return
    in_split = Counter(boundaries.split_of(i.timestamp) for i in interactions)
    times = sorted(i.timestamp for i in loaded)
    distinct = sorted(set(times))
    tail = max(1, len(times) // 100) if len(times) > 2 else 0
    auto = [name for name, day in (("start", protocol.start), ("end", protocol.end))
            if day is None]
    derived = f"; {' and '.join(auto)} derived from the data" if auto else ""
    raise AutomrError(
        f"the {' and '.join(empty)} split{'s' if len(empty) > 1 else ''} would be empty: "
        f"samples train / valid / test {' / '.join(f'{n:,}' for n in counts.values())}, "
        f"interactions after filtering "
        f"{' / '.join(f'{in_split[split]:,}' for split in SPLITS)}. "
        f"Window {to_iso(boundaries.start)} .. {to_iso(boundaries.end)} (train to "
        f"{to_iso(boundaries.train_end)}, validation to {to_iso(boundaries.valid_end)}{derived}). "
        f"The loaded interactions' earliest times are "
        f"{', '.join(to_iso(t) for t in distinct[:3])}, the latest "
        f"{', '.join(to_iso(t) for t in distinct[-3:])}; all but the {tail:,} earliest and "
        f"{tail:,} latest lie in {to_iso(times[tail])} .. {to_iso(times[-1 - tail])}. "
        f"If a few rows lie far from the "
        f"rest (a damaged timestamp), fix or remove them; or set the window with --start/--end "
        f"(YYYY-MM-DD) around the period you want, or change --train-months (now "
        f"{protocol.train_months}) or --min-history.")


def _check_out(out: Path | str | None) -> Path | None:
    if out is None:
        return None
    target = home_path(out)
    if target.exists() and not (is_prepared_dir(target) or
                                (target.is_dir() and not any(target.iterdir()))):
        raise AutomrError(f"{target} exists and is not a prepared dataset; refusing to replace "
                          f"it. Pass a new folder to --out (or delete that one).")
    if os.path.ismount(target):  # the folder is written beside it and renamed into its place
        raise AutomrError(f"{target} is a mount point, which cannot be replaced by a folder "
                          f"written beside it; pass a folder inside it to --out (e.g. "
                          f"{target / 'prepared'})")
    return target


def _loader_skips(source: SourceData, before: str = "") -> str:
    """What the loader skipped (``3 items without a title, ...``) after ``before``, or ""."""
    skipped = ", ".join(f"{n} {skip_label(reason)}" for reason, n in source.skipped.items() if n)
    return before + skipped if skipped else ""


def prepare_movielens_100k(
    out: Path | str | None,
    *,
    cache_dir: Path | str | None = None,
    source: Path | str | None = None,
    protocol: ProtocolConfig | None = None,
) -> PreparedDataset:
    """MovieLens-100K (RecBole wheel, or the GroupLens folder ``source``) -> prepared dataset.
    Default protocol: :meth:`ProtocolConfig.movielens_100k`."""
    _check_out(out)
    data = load_movielens_100k(cache_dir=cache_dir, source=source)
    return prepare_dataset(data, protocol or ProtocolConfig.movielens_100k(), out)


def prepare_movielens(
    source: Path | str,
    out: Path | str | None,
    *,
    protocol: ProtocolConfig | None = None,
) -> PreparedDataset:
    """A later MovieLens release's GroupLens folder (ML-1M to ML-32M, :func:`load_movielens`)
    -> prepared dataset. Default protocol: the whole range, 10 training months, as for CSV."""
    _check_out(out)
    return prepare_dataset(load_movielens(source), protocol or ProtocolConfig(start=None, end=None),
                           out)


def prepare_amazon(
    reviews: Path | str,
    meta: Path | str,
    out: Path | str | None,
    *,
    protocol: ProtocolConfig | None = None,
    domain: str = "items",
    merge_same_title: bool = False,
    progress: bool = False,
) -> PreparedDataset:
    """Amazon Reviews 2014, 2018 or 2023 files -> prepared dataset (default protocol: the
    paper's 2017).
    Reviews outside the protocol's window are dropped while streaming."""
    _check_out(out)
    protocol = protocol or ProtocolConfig.amazon_2017()
    data = load_amazon(
        reviews, meta,
        start=to_unix(protocol.start) if protocol.start is not None else None,
        end=to_unix(protocol.end) if protocol.end is not None else None,
        domain=domain, merge_same_title=merge_same_title, progress=progress,
    )
    return prepare_dataset(data, protocol, out)


def prepare_csv(
    interactions: Path | str,
    items: Path | str,
    out: Path | str | None,
    *,
    protocol: ProtocolConfig | None = None,
    domain: str = "items",
    merge_same_title: bool = False,
    progress: bool = False,
    columns: Mapping[str, str] | None = None,
) -> PreparedDataset:
    """Generic CSV/TSV files -> prepared dataset (default: whole range, 10 training months);
    ``columns`` maps the format's column names to the files' (``{"user": "userId"}``)."""
    _check_out(out)
    data = load_csv(interactions, items, domain=domain, merge_same_title=merge_same_title,
                    progress=progress, columns=columns)
    return prepare_dataset(data, protocol or ProtocolConfig(start=None, end=None), out)


@beartype
@attrs.frozen
class DatasetKind:
    """One dataset kind the CLI exposes: its preparer, protocol defaults and prompt domain."""

    description: str
    prepare: Callable[..., PreparedDataset]
    protocol: ProtocolConfig
    domain: str


DATASET_KINDS: dict[str, DatasetKind] = {
    "ml-100k": DatasetKind("MovieLens-100K (RecBole wheel or a GroupLens folder)",
                           prepare_movielens_100k, ProtocolConfig.movielens_100k(), "movies"),
    "movielens": DatasetKind("MovieLens 1M to 32M: a GroupLens release folder",
                             prepare_movielens, ProtocolConfig(start=None, end=None), "movies"),
    "amazon": DatasetKind("Amazon Reviews 2014, 2018 or 2023: reviews + metadata JSON lines "
                          "(.gz ok)",
                          prepare_amazon, ProtocolConfig.amazon_2017(), "items"),
    "csv": DatasetKind("generic CSV/TSV: interactions (user,item,timestamp) + items (item,title)",
                       prepare_csv, ProtocolConfig(start=None, end=None), "items"),
}
