"""The on-disk layout of a memory folder: safetensors shards and a JSON index.

Folder layout::

    DIR/config.json                 MemoryRecord: model name + fingerprint, layer, encoder,
                                    pooling, dtypes, hidden size, prompt config, dataset
    DIR/index.json                  which shards exist, and per user: its elements' item ids
                                    and timestamps (time order) and where their rows live
    DIR/shard-00000.safetensors     keys    [N hidden]   one row per element
                                    states  [T hidden]   (optional) every element's token
                                                         states, concatenated
                                    offsets [N+1] int64  (with states) element i's states are
                                                         rows offsets[i]:offsets[i+1]

A shard holds a few large tensors (safetensors headers are capped, DESIGN.md §5) and is written
under a temporary name and renamed; the index is rewritten atomically after each shard, so a
crash never leaves a half-written shard in the index. A user's elements are rows of one or more
*segments* ``(shard, row, count)``: one per build, one more per append.
"""

import json
import os
from pathlib import Path
from typing import Any, Final

import attrs
import torch
from safetensors.torch import save_file
from torch import Tensor

from automr.errors import AutomrError
from automr.memory.config import MEMORY_FORMAT
from automr.storage import write_json_atomic

INDEX_FORMAT: Final = "automr.memory-index/1"
INDEX_FILE: Final = "index.json"


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.safetensors"


@attrs.define
class ShardEntry:
    """One written shard: its file, element count, token count (= token-state rows when
    stored), its users and the seconds spent encoding it."""

    file: str
    elements: int
    tokens: int
    users: list[str]
    seconds: float = 0.0


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
            "shards": [attrs.asdict(s) for s in self.shards],
            "users": {u: {"items": e.items, "timestamps": e.timestamps,
                          "segments": [list(s) for s in e.segments]}
                      for u, e in sorted(self.users.items())},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "MemoryIndex":
        return cls(
            shards=[ShardEntry(**s) for s in data["shards"]],
            users={u: UserEntry(list(e["items"]), [int(t) for t in e["timestamps"]],
                                [(int(a), int(b), int(c)) for a, b, c in e["segments"]])
                   for u, e in data["users"].items()},
            complete=bool(data["complete"]),
        )

    def write(self, folder: Path) -> None:
        write_json_atomic(folder / INDEX_FILE, self.to_json())

    @classmethod
    def read(cls, folder: Path) -> "MemoryIndex":
        path = folder / INDEX_FILE
        if not path.is_file():
            raise AutomrError(f"{path} is missing; the memory folder is damaged. Rebuild it.")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != INDEX_FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {INDEX_FORMAT!r}")
            return cls.from_json(data)
        except (KeyError, TypeError, ValueError) as error:
            raise AutomrError(f"{path} is damaged ({error}); rebuild the memory.") from None


def write_shard(
    folder: Path, number: int, keys: Tensor, states: Tensor | None, offsets: Tensor | None,
    metadata: dict[str, str],
) -> str:
    """Write shard ``number`` under a temporary name and rename it into place; its file name."""
    tensors = {"keys": keys.detach().cpu().contiguous()}
    if states is not None and offsets is not None:
        tensors["states"] = states.detach().cpu().contiguous()
        tensors["offsets"] = offsets.to(torch.int64).cpu().contiguous()
    name = shard_name(number)
    tmp = folder / f".{name}.tmp-{os.getpid()}"
    save_file(tensors, tmp, metadata={"format": MEMORY_FORMAT, **metadata})
    tmp.replace(folder / name)
    return name
