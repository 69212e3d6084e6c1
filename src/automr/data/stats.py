"""Dataset statistics: what was read, merged, skipped, filtered and turned into samples.

Saved as ``stats.json``; the top-level ``users`` / ``items`` / ``interactions`` are the *raw*
counts (before merging, skipping, windowing and filtering), ``samples`` holds the per-split
sample counts.
"""

from collections.abc import Mapping, Sequence

import attrs

from automr.checks import beartype
from automr.data.records import Sample
from automr.data.samples import SplitSamples
from automr.data.source import skip_label


@beartype
@attrs.frozen
class Counts:
    """Numbers of users, items and interactions at one stage of preparation."""

    users: int
    items: int
    interactions: int


@beartype
@attrs.frozen
class LengthStats:
    """Mean and max of a length (memory size per sample)."""

    mean: float
    max: int

    @classmethod
    def of(cls, lengths: Sequence[int]) -> "LengthStats":
        """The mean (rounded to 3 decimals) and max of ``lengths``; ``(0.0, 0)`` when empty."""
        if not lengths:
            return cls(0.0, 0)
        return cls(round(sum(lengths) / len(lengths), 3), max(lengths))


@beartype
@attrs.frozen
class DatasetStats:
    """Every count a prepared dataset reports.

    - ``users`` / ``items`` / ``interactions``: raw, as read from the source;
    - ``merged_items``: item ids merged into another with the same title (and year);
      ``remapped_interactions``: interactions that now point at the kept id;
    - ``skipped``: records dropped on purpose, by reason (see ``SkipCounter``), including
      ``duplicate_interactions`` (repeated input rows) and ``same_second_repeats`` (one user,
      one merged item, one second, more than once; ML-100K: 39);
    - ``loaded``: catalog and interactions after skips, merging and dropping repeats (what the
      protocol starts from); ``outside_window``: loaded interactions outside the protocol's
      window;
    - ``filtered``: users / items / interactions after k-core filtering, ``filter_rounds``;
    - ``samples``: samples per split; ``memory_length``: memory size per split (mean/max);
    - ``window``: the split times (ISO 8601, UTC).
    """

    users: int
    items: int
    interactions: int
    merged_items: int
    remapped_interactions: int
    skipped: Mapping[str, int]
    loaded: Counts
    outside_window: int
    filtered: Counts
    filter_rounds: int
    samples: Mapping[str, int]
    memory_length: Mapping[str, LengthStats]
    window: Mapping[str, str]

    def to_json(self) -> dict[str, object]:
        """Every field as plain JSON (``attrs.asdict``, nested counts as dicts)."""
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> "DatasetStats":
        """The stats of a :meth:`to_json` dict (nested counts and lengths rebuilt)."""
        values = dict(data)
        values["loaded"] = Counts(**values["loaded"])  # type: ignore[arg-type]
        values["filtered"] = Counts(**values["filtered"])  # type: ignore[arg-type]
        lengths = values["memory_length"]
        if not isinstance(lengths, Mapping):
            raise TypeError(f"memory_length is {type(lengths).__name__}, not an object")
        values["memory_length"] = {k: LengthStats(**v)  # type: ignore[arg-type]
                                   for k, v in lengths.items()}
        return cls(**values)  # type: ignore[arg-type]

    def rows(self) -> list[tuple[str, str]]:
        """``(label, value)`` rows for a printed table, in reading order."""
        f, lo, w = self.filtered, self.loaded, self.window
        rows = [
            ("raw users / items / interactions",
             f"{self.users:,} / {self.items:,} / {self.interactions:,}"),
            ("merged duplicate items", f"{self.merged_items:,}"),
            ("remapped interactions", f"{self.remapped_interactions:,}"),
        ]
        rows += [(f"skipped: {skip_label(reason)}", f"{count:,}")
                 for reason, count in self.skipped.items()]
        rows += [
            ("loaded items / interactions", f"{lo.items:,} / {lo.interactions:,}"),
            ("outside the time window, of those loaded", f"{self.outside_window:,}"),
            ("filtered users / items / interactions",
             f"{f.users:,} / {f.items:,} / {f.interactions:,}"),
            ("filter rounds", str(self.filter_rounds)),
            ("train from", w["start"]),
            ("valid from", w["train_end"]),
            ("test from", w["valid_end"]),
            ("window end (exclusive)", w["end"]),
        ]
        rows += [(f"samples {split}", f"{n:,}") for split, n in self.samples.items()]
        rows += [(f"memory length {split} (mean / max)", f"{m.mean:.1f} / {m.max}")
                 for split, m in self.memory_length.items()]
        return rows


def memory_lengths(samples: Mapping[str, Sequence[Sample]]) -> dict[str, LengthStats]:
    """Per split and ``"all"``: mean / max memory size."""
    lengths = {split: rows.memory_lengths() if isinstance(rows, SplitSamples)
               else [len(s.memory) for s in rows] for split, rows in samples.items()}
    out = {split: LengthStats.of(values) for split, values in lengths.items()}
    out["all"] = LengthStats.of([n for values in lengths.values() for n in values])
    return out
