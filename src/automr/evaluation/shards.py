"""One method's per-sample values computed in shards of samples: resumable, and shared among
the processes of a launcher (:mod:`automr.distributed`).

The samples are cut into shards of ``shard_size`` in order (keep it a multiple of the methods'
batch sizes: then every batch is the one a single pass makes, and the values are bit-equal).
Each process computes its round-robin share of the shards; with an evaluation folder each
finished shard is saved (values and the details the method gained on it), so a cut run
resumes per shard, whatever the number of processes before. Every process then holds all
values, in sample order.
"""

import json
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from automr import distributed
from automr.data.records import Sample
from automr.errors import AutomrError
from automr.evaluation.folder import RANKING_ONLY_DETAILS, EvaluationFolder, settings_digest
from automr.interfaces import Explained

DEFAULT_SHARD_SIZE = 64


def run_sharded(
    compute: Callable[[Sequence[Sample]], Sequence[Any]], method: object,
    samples: Sequence[Sample], settings: Mapping[str, Any], folder: EvaluationFolder | None,
    name: str, kind: str, shard_size: int = DEFAULT_SHARD_SIZE,
) -> tuple[list[Any], dict[str, dict[str, Any]]]:
    """``compute`` over ``samples`` shard by shard: the values in sample order (JSON values:
    tuples come back as lists) and, for an :class:`~automr.interfaces.Explained` ``method``,
    its details of the samples and its notes (``{kind: {key: value}}``, merged in shard
    order; the likelihood measure's without :data:`RANKING_ONLY_DETAILS`)."""
    if shard_size < 1:
        raise AutomrError(f"shard_size must be >= 1, got {shard_size}")
    shards = [samples[i : i + shard_size] for i in range(0, len(samples), shard_size)]
    digest = settings_digest(settings)
    done: dict[int, dict[str, Any]] = {}
    measured = _measured_before(method)  # this method's earlier samples, and these: counted
    measured |= {s.id for s in samples}  # before any runs, so a run cut here counts too
    omit = RANKING_ONLY_DETAILS if kind == "loglik" else ()
    first = True  # the first shard computed here also keeps the method's notes
    for number in distributed.share(len(shards)):
        key = {"settings": digest, "samples": [s.id for s in shards[number]]}
        saved = None if folder is None else folder.saved_shard(name, number, key, kind)
        if saved is None:
            values = json.loads(json.dumps(list(compute(shards[number]))))
            try:
                details = _shard_details(_details(name, method), key["samples"], measured,
                                         first, omit)
            except (TypeError, ValueError) as error:  # saved beside the values, as JSON
                raise AutomrError(f"the details of {name} are not JSON ({error}): details() "
                                  f"values are strings, numbers, lists and dicts") from None
            first = False
            saved = {"values": values, "details": details}
            if folder is not None:
                folder.save_shard(name, number, key, values, details, kind)
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


_MEASURED: dict[int, set[str]] = {}
"""The ids of the samples each method object (by ``id``, while it lives) was measured on in
this process: a method used again for other samples still holds their details, which are
not notes of the new evaluation."""


def _measured_before(method: object) -> set[str]:
    """The (live) set of the sample ids ``method`` was measured on before; an empty one not
    kept for an object that cannot be referred to weakly (its details are then read as a
    first evaluation's)."""
    key = id(method)
    if key not in _MEASURED:
        try:
            weakref.finalize(method, _MEASURED.pop, key, None)
        except TypeError:
            return set()
        _MEASURED[key] = set()
    return _MEASURED[key]


def _details(name: str, method: object) -> Mapping[str, Mapping[str, Any]]:
    """The method's details as it holds them (read, not copied: a shard reads its own)."""
    if not isinstance(method, Explained):
        return {}
    details = method.details()
    if not isinstance(details, Mapping):
        raise AutomrError(f"the details() of {name} returned a {type(details).__name__}: it "
                          f"maps each kind to {{sample id: value}}")
    EvaluationFolder.check_detail_kinds(name, details)
    for kind, entries in details.items():
        if not isinstance(entries, Mapping):
            raise AutomrError(f"the details of {name} of kind {kind!r} are a "
                              f"{type(entries).__name__}: details() maps each kind to "
                              f"{{sample id: value}}")
    return details


def _shard_details(details: Mapping[str, Mapping[str, Any]], shard: Sequence[str],
                   measured: set[str], notes: bool, omit: Sequence[str]
                   ) -> dict[str, dict[str, Any]]:
    """What the method's ``details`` hold of a shard's samples (in sample order, JSON), after,
    with ``notes``, what is not about a sample of ``measured``, this evaluation's and the
    method's earlier ones' (a tuned gamma, the validation titles it was tuned on). The same
    whichever measure or process ran before, so a resumed or launched run writes the details
    a single pass does (but for notes about samples an earlier evaluation of the same object
    measured: its validation titles, after it evaluated the validation split)."""
    kept = {}
    for kind, entries in details.items():
        if kind in omit:
            continue
        own = {k: v for k, v in entries.items() if k not in measured} if notes else {}
        own.update((k, entries[k]) for k in shard if k in entries)  # a shard's own: O(shard)
        if own:
            kept[kind] = own
    return json.loads(json.dumps(kept))
