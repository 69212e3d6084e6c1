"""A prepared dataset and its folder (JSON lines, reloads identically).

Folder layout::

    DIR/config.json          format, source (kind, domain, sha256 of every input, options),
                             protocol, resolved split times (Unix seconds)
    DIR/stats.json           DatasetStats (raw counts, merges, skips, filtering, samples)
    DIR/items.jsonl          the catalog after filtering: {"id", "title", "extra"}
    DIR/interactions.jsonl   filtered in-window interactions {"user", "item", "timestamp"},
                             grouped into user timelines (users by first appearance, each
                             user's interactions oldest -> newest, ties in source order)
    DIR/samples/{train,valid,test}.jsonl
                             {"user", "target", "timestamp",
                              "history_start", "recent_start", "history_end"}

A sample line stores its history as positions in its user's timeline (the user's lines of
``interactions.jsonl``, counted from 0): memory = ``timeline[history_start:recent_start]``,
recent = ``timeline[recent_start:history_end]``. This keeps the files small (ML-100K: ~9 MB
instead of ~100 MB with the lists spelled out) and loading fast; :class:`Sample` validation on
load re-checks that every history is strictly older than its sample.

Samples are read lazily, one split at a time, the first time :meth:`PreparedDataset.samples`
asks for it, and kept as positions (:class:`~automr.data.samples.SplitSamples`): each sample
is built when read.
"""

import bisect
import json
import os
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
from beartype.roar import BeartypeCallHintViolation

from automr.checks import beartype
from automr.data.catalog import Catalog
from automr.data.prompts import PROMPT_DOMAINS, PromptConfig
from automr.data.protocol import SPLITS, ProtocolConfig, SplitBoundaries
from automr.data.records import Interaction, Item, Sample
from automr.data.samples import SplitSamples, check_unique_ids
from automr.data.stats import DatasetStats
from automr.errors import AutomrError
from automr.paths import home_path
from automr.storage import fresh_partial, write_json_atomic

FORMAT = "automr.prepared-dataset/1"
_DAMAGED = (KeyError, TypeError, ValueError, IndexError, OverflowError,
            BeartypeCallHintViolation)
"""What reading a damaged folder's rows raises: a missing key, a value of the wrong type (the
records' type checks) or out of range."""


def _reason(error: Exception) -> str:
    """The first line of ``error`` (a type check's message runs over several)."""
    return (str(error).splitlines() or [type(error).__name__])[0]


@beartype
@attrs.frozen
class SourceInfo:
    """Where a prepared dataset came from: loader kind, prompt domain, sha256 per input file,
    and the loader options (paths, flags)."""

    kind: str
    domain: str
    fingerprints: Mapping[str, str] = attrs.field(factory=dict, converter=dict)
    options: Mapping[str, str] = attrs.field(factory=dict, converter=dict)


@beartype
@attrs.frozen
class PreparedDataset:
    """Catalog, filtered interactions and per-split samples under one protocol.

    ``samples(split)`` gives a split's samples (``"train"``, ``"valid"``, ``"test"``);
    ``catalog`` is the ranking universe (items that survived filtering).
    """

    catalog: Catalog
    interactions: tuple[Interaction, ...]
    protocol: ProtocolConfig
    boundaries: SplitBoundaries
    stats: DatasetStats
    source: SourceInfo
    path: Path | None = None
    _samples: dict[str, Sequence[Sample]] = attrs.field(factory=dict, eq=False, repr=False)
    _stamp: dict | None = attrs.field(default=None, eq=False, repr=False)
    """The files at :attr:`path` when it was loaded (:func:`_stamp`): its splits are read
    later, from those files only."""

    def __attrs_post_init__(self) -> None:
        for split, samples in self._samples.items():
            check_unique_ids(samples, f"the {split} split")

    def __repr__(self) -> str:  # attrs' would print every interaction and item
        return (f"PreparedDataset({str(self.path) if self.path else 'in memory'}: "
                f"{self.source.kind}, {len(self.catalog):,} items, "
                f"{len(self.interactions):,} interactions, samples "
                f"{', '.join(f'{s} {n:,}' for s, n in self.stats.samples.items())})")

    def samples(self, split: str) -> Sequence[Sample]:
        """A split's samples; their ids (:attr:`Sample.id`) are unique within the split. A
        prepared split is a :class:`~automr.data.samples.SplitSamples`: each sample is built
        when read, so a split of millions fits in memory."""
        if split not in SPLITS:
            raise AutomrError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}.")
        if split not in self._samples:
            if self.path is None:
                raise RuntimeError(f"split {split} is neither in memory nor on disk")
            if self._stamp is not None and _stamp(self.path) != self._stamp:
                raise AutomrError(f"{self.path} changed since this dataset was loaded "
                                  f"(prepared again, moved or removed), so its {split} samples "
                                  f"may not be the loaded dataset's; load it again")
            path = self.path / "samples" / f"{split}.jsonl"
            timelines = _timelines(self.interactions)
            users = {user: index for index, user in enumerate(timelines)}
            targets: dict[str, int] = {}
            rows = array("q")
            try:
                for row in _read_jsonl(path):
                    sample = _sample(row, timelines)  # checked, then let go: built when read
                    rows.extend((users[sample.user], sample.timestamp,
                                 targets.setdefault(sample.target, len(targets)),
                                 row["history_start"], row["recent_start"], row["history_end"]))
            except _DAMAGED as error:
                raise AutomrError(f"{path} is damaged ({type(error).__name__}: "
                                  f"{_reason(error)}). Prepare the dataset again with "
                                  f"`automr data prepare ...`.") from None
            samples = SplitSamples(list(timelines), list(timelines.values()), list(targets),
                                   np.array(rows, dtype=np.int64))
            check_unique_ids(samples, str(path))
            _check_count(path, len(samples), self.stats.samples.get(split), "samples")
            self._samples[split] = samples
        return self._samples[split]

    @property
    def prompt_config(self) -> PromptConfig:
        """The prompt preset for this dataset's domain (``movies`` for ML-100K)."""
        return PROMPT_DOMAINS.get(self.source.domain, PROMPT_DOMAINS["items"])

    def save(self, folder: Path) -> None:
        """Write the folder layout (module docstring) into ``folder`` (which must exist)."""
        samples = {split: self.samples(split) for split in SPLITS}  # all read before writing
        config = {
            "format": FORMAT,
            "source": attrs.asdict(self.source),
            "protocol": self.protocol.to_json(),
            "boundaries": attrs.asdict(self.boundaries),
        }
        write_json_atomic(folder / "config.json", config, indent=2)
        write_json_atomic(folder / "stats.json", self.stats.to_json(), indent=2)
        _write_jsonl(folder / "items.jsonl", (attrs.asdict(i) for i in self.catalog))
        _write_jsonl(folder / "interactions.jsonl", (attrs.asdict(i) for i in self.interactions))
        (folder / "samples").mkdir(exist_ok=True)
        timelines = _timelines(self.interactions)
        for split in SPLITS:
            stored = (samples[split].stored_rows(timelines)
                      if isinstance(samples[split], SplitSamples) else None)
            _write_jsonl(folder / "samples" / f"{split}.jsonl", stored if stored is not None
                         else (_sample_row(s, timelines[s.user]) for s in samples[split]))

    @classmethod
    def load(cls, folder: Path | str) -> "PreparedDataset":
        """Read a folder written by :meth:`save` / ``automr data prepare``."""
        folder = home_path(folder)
        stamp = _stamp(folder)
        header = read_header(folder)
        try:
            dataset = cls(
                interactions=tuple(Interaction(**row)
                                   for row in _read_jsonl(folder / "interactions.jsonl")),
                **header, path=folder, stamp=stamp)
        except (*_DAMAGED, FileNotFoundError) as error:
            raise AutomrError(f"{folder} holds a damaged prepared dataset ({_reason(error)}). "
                              f"Prepare it again with `automr data prepare ...`.") from None
        _check_count(folder / "interactions.jsonl", len(dataset.interactions),
                     dataset.stats.filtered.interactions, "interactions")
        counts = {split: dataset.stats.samples.get(split, 0) for split in SPLITS}
        if not all(counts.values()):
            window = dataset.stats.window
            raise AutomrError(
                f"{folder} has an empty split (samples train / valid / test "
                f"{' / '.join(f'{n:,}' for n in counts.values())}; window "
                f"{window.get('start')} .. {window.get('end')}). Prepare it again with a window "
                f"that gives every split samples (--start/--end, --train-months).")
        return dataset


def read_header(folder: Path) -> dict[str, Any]:
    """A prepared dataset's ``catalog``, ``protocol``, ``boundaries``, ``stats`` and
    ``source``: all of :class:`PreparedDataset` but its interactions (and splits), checked as
    :meth:`PreparedDataset.load` checks them."""
    if not is_prepared_dir(folder):
        raise AutomrError(f"{folder} is not a prepared dataset (no config.json with format "
                          f"{FORMAT}). Create one with `automr data prepare ...`.")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    try:
        header = {
            "catalog": Catalog(tuple(Item(**row) for row in _read_jsonl(folder / "items.jsonl"))),
            "protocol": _protocol(config["protocol"]),
            "boundaries": SplitBoundaries(**config["boundaries"]),
            "stats": _read_stats(folder / "stats.json"),
            "source": SourceInfo(**config["source"]),
        }
    except (*_DAMAGED, FileNotFoundError) as error:
        raise AutomrError(f"{folder} holds a damaged prepared dataset ({_reason(error)}). "
                          f"Prepare it again with `automr data prepare ...`.") from None
    _check_count(folder / "items.jsonl", len(header["catalog"]), header["stats"].filtered.items,
                 "items")
    return header


def _stamp(folder: Path) -> dict[str, tuple[int, int, int] | None]:
    """What a new preparation into ``folder`` changes: its ``config.json``'s and split files'
    inode, size and modification time (None: missing). The folder's inode alone is not enough:
    a new folder may get the freed inode, and a copy into the folder keeps it."""
    found: dict[str, tuple[int, int, int] | None] = {}
    for name in ("config.json", *(f"samples/{split}.jsonl" for split in SPLITS)):
        try:
            info = os.stat(folder / name)
        except (FileNotFoundError, NotADirectoryError):
            found[name] = None
        else:
            found[name] = (info.st_ino, info.st_size, info.st_mtime_ns)
    return found


def _protocol(data: dict[str, object]) -> ProtocolConfig:
    """The recorded protocol, a refusal of its fields' checks (:mod:`automr.checks`, an
    :class:`AutomrError`) raised as the damage it is (a ValueError, one of ``_DAMAGED``)."""
    try:
        return ProtocolConfig.from_json(data)
    except AutomrError as error:
        raise ValueError(str(error)) from None


def _read_stats(path: Path) -> DatasetStats:
    """``stats.json``; a missing or damaged one is one line naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return DatasetStats.from_json(data)
    except (OSError, *_DAMAGED) as error:
        raise AutomrError(f"{path} is missing or damaged ({_reason(error)}): {path.parent} holds a "
                          f"damaged prepared dataset. Prepare it again with `automr data "
                          f"prepare ...`.") from None


def _check_count(path: Path, count: int, recorded: int | None, what: str) -> None:
    """Refuse a file of the folder holding fewer or more rows than ``stats.json`` records
    (a copy cut at a line end parses, and would silently lose rows)."""
    if recorded is not None and count != recorded:
        raise AutomrError(f"{path} holds {count:,} {what}, but the dataset's stats.json "
                          f"records {recorded:,}: the prepared dataset is damaged (cut short or "
                          f"edited). Prepare it again with `automr data prepare ...`.")


def is_prepared_dir(folder: Path) -> bool:
    """Whether ``folder/config.json`` is a JSON object whose ``format`` is :data:`FORMAT`
    (False for a missing or unreadable file, never an error)."""
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get(
            "format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


_Timeline = tuple[list[str], list[int]]


def _timelines(interactions: Iterable[Interaction]) -> dict[str, _Timeline]:
    """user -> (items, timestamps) in stored order (the timeline order)."""
    out: dict[str, _Timeline] = {}
    for inter in interactions:
        items, times = out.setdefault(inter.user, ([], []))
        items.append(inter.item)
        times.append(inter.timestamp)
    return out


def _sample_row(sample: Sample, timeline: _Timeline) -> dict[str, object]:
    items, times = timeline
    end = bisect.bisect_left(times, sample.timestamp)
    start = end - len(sample.memory) - len(sample.recent)
    row = {"user": sample.user, "target": sample.target, "timestamp": sample.timestamp,
           "history_start": start, "recent_start": end - len(sample.recent), "history_end": end}
    if start < 0 or tuple(items[start:end]) != sample.history:
        raise ValueError(f"sample of user {sample.user} at {sample.timestamp} does not match "
                         f"the stored interactions")
    return row


def _sample(row: dict, timelines: dict[str, _Timeline]) -> Sample:
    items, times = timelines[row["user"]]
    start, cut, end = row["history_start"], row["recent_start"], row["history_end"]
    if not 0 <= start <= cut <= end <= len(items):
        raise ValueError(f"history positions {start}, {cut}, {end} out of range")
    return Sample(
        user=row["user"], target=row["target"], timestamp=row["timestamp"],
        recent=tuple(items[cut:end]), recent_timestamps=tuple(times[cut:end]),
        memory=tuple(items[start:cut]), memory_timestamps=tuple(times[start:cut]),
    )


def _write_jsonl(path: Path, rows: Iterable[object]) -> None:
    """``rows`` as JSON lines, written beside ``path`` and renamed over it: a save cut
    part-way (Ctrl-C) leaves the file before it whole, not cut short."""
    encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    tmp = fresh_partial(path)
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.writelines(encode(row) + "\n" for row in rows)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_jsonl(path: Path) -> Iterator[dict]:
    if not path.is_file():
        raise AutomrError(f"{path} is missing from the prepared dataset. Prepare it again with "
                          f"`automr data prepare ...`.")
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            try:
                yield json.loads(line)
            except ValueError:
                raise AutomrError(f"{path} line {number} is not valid JSON; the prepared "
                                  f"dataset is damaged. Prepare it again.") from None
