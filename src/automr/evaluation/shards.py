"""One method's per-sample values computed in shards of samples: resumable, and shared among
the processes of a launcher (:mod:`automr.distributed`).

The samples are cut into shards of ``shard_size`` in order (keep it a multiple of the methods'
batch sizes: then every batch is the one a single pass makes, and the values are bit-equal).
Each process computes its round-robin share of the shards; with an evaluation folder each
finished shard is saved (values and the details the method gained on it), so a cut run
resumes per shard, whatever the number of processes before. Every process then holds all
values, in sample order.
"""

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from automr import distributed
from automr.data.records import Sample
from automr.evaluation.folder import EvaluationFolder
from automr.interfaces import Explained

DEFAULT_SHARD_SIZE = 64


def run_sharded(
    compute: Callable[[Sequence[Sample]], Sequence[Any]], method: object,
    samples: Sequence[Sample], settings: Mapping[str, Any], folder: EvaluationFolder | None,
    name: str, kind: str, shard_size: int = DEFAULT_SHARD_SIZE,
) -> tuple[list[Any], dict[str, dict[str, Any]]]:
    """``compute`` over ``samples`` shard by shard: the values in sample order (JSON values:
    tuples come back as lists) and, for an :class:`~automr.interfaces.Explained` ``method``,
    the details it gained (``{kind: {key: value}}``, merged in shard order)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    shards = [samples[i : i + shard_size] for i in range(0, len(samples), shard_size)]
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()
                            ).hexdigest()
    done: dict[int, dict[str, Any]] = {}
    # the first shard computed here keeps what the method noted before it (e.g. a gamma
    # tuned when it was built), as a method built on first use notes it during that shard
    first = True
    for number in distributed.share(len(shards)):
        key = {"settings": digest, "samples": [s.id for s in shards[number]]}
        saved = None if folder is None else folder.saved_shard(name, number, key, kind)
        if saved is None:
            before = {} if first else _details(method)
            first = False
            values = json.loads(json.dumps(list(compute(shards[number]))))
            gained = _gained(before, _details(method))
            saved = {"values": values, "details": gained}
            if folder is not None:
                folder.save_shard(name, number, key, values, gained, kind)
        done[number] = {"values": saved["values"], "details": saved["details"]}
    for part in distributed.gather(done):
        done.update(part)
    values: list[Any] = []
    details: dict[str, dict[str, Any]] = {}
    for number in range(len(shards)):
        values += done[number]["values"]
        for detail, entries in done[number]["details"].items():
            details.setdefault(detail, {}).update(entries)
    return values, details


def _details(method: object) -> dict[str, dict[str, Any]]:
    if not isinstance(method, Explained):
        return {}
    return {kind: dict(entries) for kind, entries in method.details().items()}


def _gained(before: Mapping[str, Mapping[str, Any]], after: Mapping[str, Mapping[str, Any]]
            ) -> dict[str, dict[str, Any]]:
    """Entries of ``after`` that ``before`` lacks or holds with another value (JSON)."""
    gained = {}
    for kind, entries in after.items():
        old = before.get(kind, {})
        new = {k: v for k, v in entries.items() if k not in old or old[k] != v}
        if new:
            gained[kind] = new
    return json.loads(json.dumps(gained))
