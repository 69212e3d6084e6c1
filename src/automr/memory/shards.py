"""The on-disk layout of a memory folder: safetensors shards and a JSON index.

Folder layout::

    DIR/config.json                 MemoryRecord: model name + fingerprint, layer, encoder,
                                    pooling, dtypes, hidden size, prompt config, dataset
    DIR/index.json                  which shards exist, and per user: its elements' item ids
                                    and timestamps (time order) and where their rows live
    DIR/shard-00000.safetensors     keys    [R hidden]   one row per stored element
                                    states  [T hidden]   (optional) every stored element's
                                                         token states, concatenated
                                    offsets [R+1] int64  (with states) stored row r's states
                                                         are rows offsets[r]:offsets[r+1]
                                    rows    [N] int64    (shared shards only) element i's
                                                         stored row

A window memory stores one row per element (R = N, no ``rows``). An item memory's elements
depend on the item alone, so its shards are *shared*: each distinct item of the shard is
stored once (R = its distinct items, in order of first use; T their tokens) and ``rows`` maps
every element to its item's row. Its ``ShardEntry.distinct`` is R (``None`` for one row per
element, as every ``automr.memory/1`` shard has).

A shard holds a few large tensors (safetensors headers are capped, DESIGN.md §5) and is written
under a temporary name and renamed, with its index entry in its metadata; the index is written
atomically once every shard is done, so a crash never leaves a half-written shard in it (a
resumed build finds the finished shards by their files). A user's elements are rows of one or more
*segments* ``(shard, row, count)``: one per build, one more per append.
"""

from pathlib import Path
from typing import Any, Final

import attrs
import torch
from torch import Tensor

from automr.errors import AutomrError
from automr.memory.config import MEMORY_FORMAT
from automr.storage import read_json, save_safetensors, write_json_atomic

INDEX_FORMAT: Final = "automr.memory-index/1"
INDEX_FILE: Final = "index.json"
MADE_BY: Final = "`automr memory build` (delete the damaged folder first)"


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.safetensors"


@attrs.define
class ShardEntry:
    """One written shard: its file, element count, token count (of the stored rows: the
    token-state rows when stored), its users and, for a shared shard, how many distinct rows it
    stores (``None``: one per element). What the index holds decides every key, so no timing
    is kept here (a shard's metadata says how long it took): a memory built again with the
    same settings and data has the same index, and the same :meth:`MemoryStore.digest`."""

    file: str
    elements: int
    tokens: int
    users: list[str]
    distinct: int | None = None

    @property
    def stored(self) -> int:
        """Rows of its ``keys`` tensor."""
        return self.elements if self.distinct is None else self.distinct


@attrs.define
class UserEntry:
    """One user's elements in time order and the segments ``(shard, row, count)`` holding
    their rows, in the same order."""

    items: list[str] = attrs.field(factory=list)
    timestamps: list[int] = attrs.field(factory=list)
    segments: list[tuple[int, int, int]] = attrs.field(factory=list)

    def locate(self, index: int) -> tuple[int, int]:
        """``(shard, row)`` of the user's element ``index``."""
        position = 0
        for shard, row, count in self.segments:
            if index < position + count:
                return shard, row + index - position
            position += count
        raise IndexError(index)

    def rows(self, start: int, stop: int) -> list[tuple[int, int, int]]:
        """``(shard, first row, row stop)`` pieces covering elements ``start:stop``."""
        pieces = []
        position = 0
        for shard, row, count in self.segments:
            lo, hi = max(start, position), min(stop, position + count)
            if lo < hi:
                pieces.append((shard, row + lo - position, row + hi - position))
            position += count
        return pieces


@attrs.define
class MemoryIndex:
    """The ``index.json`` of a memory folder (users sorted by id)."""

    shards: list[ShardEntry] = attrs.field(factory=list)
    users: dict[str, UserEntry] = attrs.field(factory=dict)
    complete: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "format": INDEX_FORMAT,
            "complete": self.complete,
            "shards": [attrs.asdict(s, filter=lambda a, v: a.name != "distinct" or v is not None)
                       for s in self.shards],
            "users": {u: {"items": e.items, "timestamps": e.timestamps,
                          "segments": [list(s) for s in e.segments]}
                      for u, e in sorted(self.users.items())},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "MemoryIndex":
        return cls(
            shards=[ShardEntry(**{k: v for k, v in s.items() if k != "seconds"})
                    for s in data["shards"]],  # indexes of older versions kept timings
            users={u: UserEntry(list(e["items"]), [int(t) for t in e["timestamps"]],
                                [(int(a), int(b), int(c)) for a, b, c in e["segments"]])
                   for u, e in data["users"].items()},
            complete=_flag(data["complete"]),
        )

    def write(self, folder: Path) -> None:
        write_json_atomic(folder / INDEX_FILE, self.to_json())

    @classmethod
    def read(cls, folder: Path) -> "MemoryIndex":
        """The index of ``folder``; a missing, unparsable or inconsistent one (shards outside
        the folder, segments pointing at shards that do not exist) is refused."""
        path = folder / INDEX_FILE
        data = read_json(path, MADE_BY)
        try:
            if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT:
                found = data.get("format") if isinstance(data, dict) else None
                raise ValueError(f"format {found!r}, expected {INDEX_FORMAT!r}")
            index = cls.from_json(data)
            index.check()
        except (AttributeError, KeyError, TypeError, ValueError, OverflowError) as error:
            raise AutomrError(f"{path} is damaged ({error}); rebuild the memory with "
                              f"{MADE_BY}.") from None  # (OverflowError: int(Infinity))
        return index

    def check(self) -> None:
        """``ValueError`` unless every shard file is a plain name inside the folder and every
        segment lies within a listed shard (``MemoryStore.open`` checks more)."""
        for entry in self.shards:
            if not is_plain_name(entry.file):
                raise ValueError(f"shard file {entry.file!r} is not a file name inside the "
                                 f"memory folder")
            if entry.distinct is not None and not 0 <= entry.distinct <= entry.elements:
                raise ValueError(f"shard {entry.file!r} claims {entry.distinct} distinct rows "
                                 f"for {entry.elements} elements")
        for user, entry in self.users.items():
            if len(entry.timestamps) != len(entry.items):
                raise ValueError(f"user {user!r} has {len(entry.items)} items but "
                                 f"{len(entry.timestamps)} timestamps")
            for shard, row, count in entry.segments:
                if not 0 <= shard < len(self.shards) or row < 0 or count < 0 or (
                        row + count > self.shards[shard].elements):
                    raise ValueError(f"user {user!r} has a segment {(shard, row, count)} "
                                     f"outside the {len(self.shards)} listed shards")

    def shard_path(self, folder: Path, number: int) -> Path:
        """The file of shard ``number`` (a plain name in ``folder``, checked on read)."""
        return folder / self.shards[number].file


def is_plain_name(name: str) -> bool:
    """A file name with no folder part: nothing that could point outside its folder."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
            and "\\" not in name and "\x00" not in name and Path(name).name == name
            and not Path(name).is_absolute())


def write_shard(
    folder: Path, number: int, keys: Tensor, states: Tensor | None, offsets: Tensor | None,
    metadata: dict[str, str], rows: Tensor | None = None,
) -> str:
    """Write shard ``number`` under a temporary name and rename it into place; its file name.
    ``rows`` (a shared shard) maps each element to its row of ``keys`` (and ``offsets``)."""
    tensors = {"keys": keys.detach().cpu().contiguous()}
    if states is not None and offsets is not None:
        tensors["states"] = states.detach().cpu().contiguous()
        tensors["offsets"] = offsets.to(torch.int64).cpu().contiguous()
    if rows is not None:
        tensors["rows"] = rows.to(torch.int64).cpu().contiguous()
    name = shard_name(number)
    save_safetensors(folder / name, tensors, metadata={"format": MEMORY_FORMAT, **metadata})
    return name


def _flag(value: object) -> bool:
    """A JSON boolean as written (``"false"`` by hand was ``bool("false")``, true)."""
    if not isinstance(value, bool):
        raise TypeError(f"'complete' is {value!r}, not true or false")
    return value
